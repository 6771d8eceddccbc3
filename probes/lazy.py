"""Lazy package exports (PEP 562): a package's public names resolve on first use, so importing the
package loads nothing heavy."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to its
    module, a submodule name (``"split"``) or an absolute one (``"probes.models.load"``)."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module if module.startswith("probes.") else f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__

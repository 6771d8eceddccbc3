"""Provenance of a run: where the numbers came from.

Implements DESIGN.md "Results, runs and figures" (after inspect_ai's `EvalSpec`/`EvalRevision`,
STYLE.md habit 7): git commit and dirty flag, package versions, platform, command line,
seed, and the model's spec, weights hash, device and dtype. Collection never fails a run:
anything that cannot be determined is recorded as None.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["collect", "git_state", "package_versions"]

PACKAGES = (
    "probes",
    "torch",
    "transformers",
    "transformer-lens",
    "nnsight",
    "numpy",
    "safetensors",
    "tokenizers",
    "scipy",
    "scikit-learn",
    "pandas",
    "sympy",
    "plotly",
    "kaleido",
)


def _git(directory: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock while others commit.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """`{"root", "commit", "dirty"}` of the git work tree containing `directory`; None values outside git.

    `dirty` counts changes to tracked files only: run outputs and caches are untracked.
    """
    root = _git(Path(directory), "rev-parse", "--show-toplevel")
    if root is None:
        return {"root": None, "commit": None, "dirty": None}
    commit = _git(Path(root), "rev-parse", "HEAD")
    status = _git(Path(root), "status", "--porcelain", "--untracked-files=no")
    return {"root": root, "commit": commit, "dirty": None if status is None else bool(status)}


def _repo_state() -> dict[str, Any]:
    """Git state of the working directory's repository, else of the repository holding `probes`."""
    state = git_state(Path.cwd())
    if state["root"] is None:
        state = git_state(Path(__file__).resolve().parent)
    return state


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution; None when it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _config_record(config: Any) -> dict[str, Any]:
    if config is None:
        return {"class": None, "sha256": None}
    resolved = config.to_dict() if hasattr(config, "to_dict") else _jsonable(config)
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    cls = type(config)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}" if hasattr(config, "to_dict") else None,
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
    }


def _model_record(model: Any) -> dict[str, Any] | None:
    # Duck-typed on the attributes of probes.models.Model, so the run store does not import it.
    if model is None:
        return None
    device = getattr(model, "device", None)
    dtype = getattr(model, "dtype", None)
    return {
        "spec": _jsonable(getattr(model, "spec", None)),
        "weights_hash": getattr(model, "weights_hash", None),
        "device": None if device is None else str(device),
        "dtype": None if dtype is None else str(dtype),
    }


def collect(config: Any = None, model: Any = None, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to tell where a run's numbers came from, as a JSON-serialisable dict."""
    try:
        hostname: str | None = socket.gethostname()
    except OSError:
        hostname = None
    return {
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": _repo_state(),
        "python": sys.version,
        "platform": platform.platform(),
        "hostname": hostname,
        "argv": list(sys.argv),
        "cwd": str(Path.cwd()),
        "packages": package_versions(),
        "seed": seed,
        "config": _config_record(config),
        "model": _model_record(model),
    }

"""Run directories.

Implements DESIGN.md "Results, runs and figures": a run directory holds `config.json`
(the config as passed and as resolved), `provenance.json` and artifacts, all written
atomically through `probes.io` (safetensors only; pickle checkpoints are refused).

    run = Run.create("steering", cfg, seed=0, model=model)   # runs/steering/<run-id>/
    run.save_tensors("vector", {"v": v})                     # runs/.../vector.safetensors
    run.save_table("sweep", rows)                            # runs/.../sweep.parquet
    Run.open(run.path).load_tensors("vector")
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import Config
from probes.io import atomic_write_json, atomic_write_text, load_table, load_tensors, save_table, save_tensors
from probes.runs.provenance import collect as collect_provenance

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = ["Run", "runs_root"]

RUNS_ENV = "PROBES_RUNS"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


# -- runs ---------------------------------------------------------------------------------------


def runs_root() -> Path:
    """Where runs go: `$PROBES_RUNS` if set, else `./runs` relative to the working directory."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def _new_run_id() -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def _check_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{kind} {name!r} is not a safe directory name: use letters, digits and . _ = + -")
    return name


class Run:
    """One run directory: config, provenance and artifacts, all written atomically."""

    CONFIG = "config.json"
    PROVENANCE = "provenance.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @classmethod
    def create(
        cls,
        experiment: str,
        config: Config | Mapping[str, Any] | None,
        root: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        model: Any = None,
        seed: int | None = None,
    ) -> Run:
        """Make `<root>/<experiment>/<run-id>/` with `config.json` and `provenance.json`.

        `root` defaults to `runs_root()`; `run_id` to a UTC timestamp plus a random suffix.
        `config.json` is `{"passed": ..., "resolved": ..., "class": ..., "experiment": ...}`: for a
        `Config`, what the user gave and the full config with defaults; a plain mapping is both.
        `experiment` there tells a resume which experiment wrote the run.
        """
        root = Path(root) if root is not None else runs_root()
        path = root / _check_name("experiment", experiment) / _check_name("run id", run_id or _new_run_id())
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise FileExistsError(f"run directory {path} exists: use Run.open({str(path)!r}) to resume it") from None
        run = cls(path)
        if isinstance(config, Config):
            record = {
                "passed": config.passed(),
                "resolved": config.to_dict(),
                "class": f"{type(config).__module__}.{type(config).__qualname__}",
            }
        else:
            plain = dict(config or {})
            record = {"passed": plain, "resolved": plain, "class": None}
        record["experiment"] = experiment
        atomic_write_json(path / cls.CONFIG, record)
        atomic_write_json(path / cls.PROVENANCE, collect_provenance(config=config, model=model, seed=seed))
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """Reopen an existing run directory (to resume a sweep or read its artifacts)."""
        path = Path(path)
        if not (path / cls.CONFIG).is_file():
            raise FileNotFoundError(f"{path} is not a run directory: it has no {cls.CONFIG}")
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config as saved in `config.json`."""
        return self.load_json(self.CONFIG)["resolved"]

    @property
    def provenance(self) -> dict[str, Any]:
        return self.load_json(self.PROVENANCE)

    def artifact(self, name: str | os.PathLike[str]) -> Path:
        """Path of artifact `name` inside the run directory (parent folders are created)."""
        path = self._inside(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _inside(self, name: str | os.PathLike[str]) -> Path:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"artifact name {str(name)!r} must be a relative path inside the run")
        return self.path / relative

    def _named(self, name: str, suffix: str, *, for_writing: bool) -> Path:
        name = name if Path(name).suffix else f"{name}{suffix}"
        return self.artifact(name) if for_writing else self._inside(name)

    def save_json(self, name: str, obj: Any) -> Path:
        """Save `obj` as `<name>.json` (suffix added when `name` has none)."""
        return atomic_write_json(self._named(name, ".json", for_writing=True), obj)

    def load_json(self, name: str) -> Any:
        return json.loads(self._named(name, ".json", for_writing=False).read_text(encoding="utf-8"))

    def save_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.artifact(name), text)

    def save_tensors(
        self, name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> Path:
        """Save tensors as `<name>.safetensors`."""
        return save_tensors(self._named(name, ".safetensors", for_writing=True), tensors, metadata)

    def load_tensors(self, name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self._named(name, ".safetensors", for_writing=False), device=device)

    def save_table(self, name: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
        """Save rows as `<name>.parquet`."""
        return save_table(self._named(name, ".parquet", for_writing=True), rows)

    def load_table(self, name: str) -> pd.DataFrame:
        return load_table(self._named(name, ".parquet", for_writing=False))

"""Saving result value objects as a safetensors file of arrays beside a JSON file of
everything else (DESIGN.md "Results, runs and figures").

``save_artifact("out/receivers", ...)`` writes ``out/receivers.safetensors`` and then
``out/receivers.json`` (both atomically, through ``probes.io``); a path ending in
``.safetensors`` or ``.json`` names the same pair. The JSON names the result type, so
loading one type's files as another fails with a clear message. Arrays keep their dtype and
shape exactly (NaNs included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from probes.io import atomic_write_json, save_tensors

_FORMAT = 1


def artifact_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(arrays file, JSON file) of the artifact named by ``path``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_artifact(path: str | os.PathLike[str], kind: str, arrays: Mapping[str, np.ndarray],
                  fields: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (numpy) as safetensors and ``fields`` (JSON-able) as JSON; returns
    the safetensors path. The JSON is written last, so a complete pair always has it."""
    import torch

    tensors_path, json_path = artifact_paths(path)
    save_tensors(tensors_path, {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()})
    atomic_write_json(json_path, {"type": kind, "format": _FORMAT, "arrays": sorted(arrays), "fields": dict(fields)})
    return tensors_path


def load_artifact(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, fields) of an artifact written by ``save_artifact`` for type ``kind``."""
    tensors_path, json_path = artifact_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} does not exist: a saved {kind} is a pair {tensors_path.name} + "
                                f"{json_path.name}; pass the path given to save()")
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if meta.get("type") != kind:
        raise ValueError(f"{json_path} holds a {meta.get('type')!r}, not a {kind}: load it with {meta.get('type')}.load")
    arrays = {k: v.numpy() for k, v in _read_tensors(tensors_path).items()}
    missing = set(meta.get("arrays", ())) - set(arrays)
    if missing:
        raise ValueError(f"{tensors_path} lacks {sorted(missing)}: the pair is incomplete; save the result again")
    return arrays, meta.get("fields", {})


def _read_tensors(path: Path, device: str = "cpu") -> dict:
    """The tensors of a safetensors file. Not ``probes.io.load_tensors``: its pickle sniffing
    refuses any safetensors file whose header length has 0x80 as low byte; safetensors never
    unpickles, so reading the file directly is as safe."""
    from safetensors.torch import load_file

    return load_file(path, device=device)

"""Atomic writes, safetensors/JSON/parquet helpers and hashing: the bottom layer of probes.

Implements DESIGN.md "Flow of data" (``probes.io`` imports nothing of probes). Every write
goes to a temporary file in the same directory, is fsynced, then renamed over the target,
so a reader (or a resumed run) never sees a half-written file; a killed write leaves only a
``.NAME.<hex>.tmp`` file, which ``remove_stale_temps`` clears. Tensors are stored as
safetensors only: pickle checkpoints are refused because loading them runs code. A result
value object saves as ``<name>.safetensors`` (its arrays) and then ``<name>.json`` (the rest,
with the result type), so a pair with its JSON is complete (DESIGN.md "Results, runs and figures").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

__all__ = [
    "PickleRefusedError",
    "atomic_directory",
    "artifact_paths",
    "load_artifact",
    "save_artifact",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_table",
    "load_tensors",
    "read_jsonl",
    "read_tensor_metadata",
    "remove_stale_temps",
    "save_table",
    "save_tensors",
    "state_dict_hash",
    "json_hash",
    "weights_hash",
]

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
_CHUNK = 1 << 20


class PickleRefusedError(ValueError):
    """A tensor file is a pickle (torch.save, .bin, .pkl); only safetensors are loaded."""


# -- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_open(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`.

    If the body raises, the temp file is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600); "x" mode honours the umask like a plain write.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform lets a directory be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    with _atomic_open(path, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    with _atomic_open(path, "w") as f:
        f.write(text)
    return path


def read_jsonl(path: str | os.PathLike[str], parse: Callable[[dict[str, Any]], Any] = dict, *,
               fix: str = "fix or remove the line") -> list[Any]:
    """``parse(row)`` of every JSON object of a JSON-lines file, blank lines skipped. A line that is not a
    JSON object, or that ``parse`` rejects (ValueError, KeyError, TypeError), raises one ValueError
    ``<path>:<line>: <why>; <fix>``; a missing file raises FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a line must be one JSON object, got {type(row).__name__}")
            out.append(parse(row))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); {fix}") from None
        except KeyError as e:
            raise ValueError(f"{path}:{n}: missing field {e}; {fix}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}:{n}: {e}; {fix}") from None
    return out


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically; if serialisation fails, `path` is untouched."""
    path = Path(path)
    with _atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return path


# -- tensors and tables ------------------------------------------------------------------------


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save named tensors as safetensors (atomically), with optional string metadata."""
    from safetensors.torch import save

    path = Path(path)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"safetensors metadata must map str to str; {key!r} maps to {type(value).__name__}: "
                "json.dumps non-string values first"
            )
    data = save(
        {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()},
        metadata=dict(metadata) if metadata else None,
    )
    return atomic_write_bytes(path, data)


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file is an 8-byte little-endian header length, then the JSON header ("{").
    # Pickles start with the PROTO opcode 0x80; torch.save writes a zip ("PK\x03\x04").
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if path.suffix.lower() in _PICKLE_SUFFIXES or (not safetensors and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04")):
        raise PickleRefusedError(
            f"{path}: pickle checkpoints are refused: convert to safetensors "
            "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'x.safetensors'))"
        )


def load_tensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file; pickle files raise `PickleRefusedError`."""
    from safetensors.torch import load_file

    path = Path(path)
    _refuse_pickle(path)
    return load_file(path, device=device)


def read_tensor_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (empty when none)."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_pickle(path)
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def save_table(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Save rows (a list of dicts or a DataFrame) as parquet, atomically."""
    import pandas as pd

    path = Path(path)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    with _atomic_open(path, "wb") as f:
        frame.to_parquet(f, index=False)
    return path


def load_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a parquet table written by `save_table`."""
    import pandas as pd

    return pd.read_parquet(Path(path))


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files that killed atomic writes left anywhere under ``directory``."""
    removed = [p for p in Path(directory).rglob(".*.tmp") if p.is_file() and _TEMP.match(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out_dir``; on a clean exit it replaces
    ``out_dir`` (a previous directory is moved aside, then removed), so a directory written by
    ``save_pretrained`` appears whole or not at all. If the body raises, the temporary directory is
    removed and ``out_dir`` is left as it was."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes private (0700) directories; a plain mkdir honours the umask
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():  # some writers (safetensors via save_pretrained) make private files
            f.chmod(0o666 & ~umask)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(6)}.old")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)


# -- result value objects: arrays as safetensors beside a JSON of everything else ---------------------

_FORMAT = 1


def artifact_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(arrays file, JSON file) of the artifact named by ``path``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_artifact(path: str | os.PathLike[str], kind: str, arrays: Mapping[str, np.ndarray | torch.Tensor],
                  fields: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (numpy or torch) as safetensors and ``fields`` (JSON-able) as JSON; returns
    the safetensors path. The JSON is written last, so a complete pair always has it."""
    import numpy as np
    import torch

    tensors_path, json_path = artifact_paths(path)
    save_tensors(tensors_path, {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
                                for k, v in arrays.items()})
    atomic_write_json(json_path, {"type": kind, "format": _FORMAT, "arrays": sorted(arrays), "fields": dict(fields)})
    return tensors_path


def load_artifact(path: str | os.PathLike[str], kind: str, *, device: str | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, fields) of an artifact written by ``save_artifact`` for type ``kind``: numpy
    arrays, or torch tensors on ``device`` when one is given."""
    tensors_path, json_path = artifact_paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} does not exist: a saved {kind} is a pair {tensors_path.name} + "
                                f"{json_path.name}; pass the path given to save()")
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    if meta.get("type") != kind:
        raise ValueError(f"{json_path} holds a {meta.get('type')!r}, not a {kind}: load it with {meta.get('type')}.load")
    loaded = load_tensors(tensors_path, device=device or "cpu")
    arrays = loaded if device else {k: v.numpy() for k, v in loaded.items()}
    missing = set(meta.get("arrays", ())) - set(arrays)
    if missing:
        raise ValueError(f"{tensors_path} lacks {sorted(missing)}: the pair is incomplete; save the result again")
    return arrays, meta.get("fields", {})


# -- hashing ------------------------------------------------------------------------------------


def weights_hash(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 (hex) over the bytes of the given weight files, in sorted file-name order."""
    files = sorted((Path(p) for p in paths), key=lambda p: (p.name, str(p)))
    if not files:
        raise ValueError("weights_hash needs at least one file: pass the model's *.safetensors paths")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def json_hash(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as compact JSON (the data hash of contrast sets, texts, probes)."""
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def state_dict_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over names, shapes, dtypes and bytes of an in-memory state dict, sorted by name."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        # Viewed as raw bytes so that dtypes numpy lacks (bfloat16) hash the same way.
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()

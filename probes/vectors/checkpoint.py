"""A Hugging Face checkpoint directory read tensor by tensor (``reference/task_vectors.md`` §5 "Recommended engine").

``Checkpoint`` indexes a directory's safetensors files (one file, or shards listed by
``model.safetensors.index.json``) from their headers only; ``get(name)`` reads one tensor's bytes
(a positioned read at its offset in the shard) into a tensor of its own, so nothing holds a whole model:
no shard stays memory-mapped, so its pages read so far do not count in the process's resident memory
(with ``safe_open`` they all did, and a tensor changed in place kept a private copy of its pages
mapped until the end). Pickle checkpoints are refused (``probes.io.PickleRefusedError``): safetensors only.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from probes.io import PickleRefusedError, weights_hash

INDEX = "model.safetensors.index.json"
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class Checkpoint:
    """The tensors of a checkpoint (a directory, ``zoo:NAME`` or a hub name: ``checkpoint_dir``; names,
    shapes, dtypes from the headers), its config and hash."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = checkpoint_dir(os.fspath(path))
        index = self.path / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({self.path / f for f in weight_map.values()})
        else:
            files = sorted(self.path.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in _PICKLES)
            if pickles:
                raise PickleRefusedError(f"{self.path} holds only pickle weights ({', '.join(pickles[:3])}): "
                                         "convert them to safetensors (save_pretrained(..., safe_serialization=True))")
            raise FileNotFoundError(f"{self.path} holds no *.safetensors weights")
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: shards {missing} listed in {INDEX} are missing")
        self.files = files
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        self._span: dict[str, tuple[int, int]] = {}
        for f in files:
            for name, (shape, dtype, span) in _header(f).items():
                if name in self._where:
                    raise ValueError(f"{self.path}: tensor {name} is in two shards ({self._where[name].name}, {f.name})")
                self._where[name], self._meta[name], self._span[name] = f, (shape, dtype), span
        self._open: dict[Path, Any] = {}

    @cached_property
    def names(self) -> list[str]:
        """Tensor names, shard by shard in file order, then by name within a shard."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self._where, key=lambda n: (order[self._where[n]], n))

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> str:
        """The safetensors dtype string (``F32``, ``BF16``, ``F16``, …)."""
        return self._meta[name][1]

    def nbytes(self, name: str) -> int:
        n = 1
        for d in self.shape(name):
            n *= d
        return n * _ITEMSIZE.get(self.dtype(name), 4)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard into memory it owns: a fresh tensor at every call, which the
        caller may change in place without changing any other read."""
        f = self._where[name]
        shape, dtype = self._meta[name]
        begin, end = self._span[name]
        if dtype not in _TORCH or end - begin != self.nbytes(name) or sys.byteorder != "little":
            from safetensors import safe_open

            if f not in self._open:
                self._open[f] = safe_open(f, framework="pt")
            return self._open[f].get_tensor(name).clone()
        data = torch.empty(end - begin, dtype=torch.uint8)
        view, done = memoryview(data.numpy()), 0
        with open(f, "rb", buffering=0) as h:
            h.seek(begin)
            while done < len(view):
                n = h.readinto(view[done:])
                if not n:
                    raise OSError(f"{f}: ends inside tensor {name} (bytes {begin}..{end}): the shard is truncated")
                done += n
        return data.view(_TORCH[dtype]).reshape(shape)

    def close(self) -> None:
        self._open.clear()

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.path / "config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @cached_property
    def vocab(self) -> dict[int, str] | None:
        """Token id → token string from ``tokenizer.json`` (``None`` without one): ids must mean the same
        tokens in the target and the donors (§3 "Vocabulary mismatch")."""
        path = self.path / "tokenizer.json"
        if not path.is_file():
            return None
        tok = json.loads(path.read_text(encoding="utf-8"))
        vocab = tok.get("model", {}).get("vocab")
        out = {int(i): t for t, i in vocab.items()} if isinstance(vocab, dict) else {}
        out |= {int(a["id"]): a["content"] for a in tok.get("added_tokens", [])}
        return out

    @property
    def tied(self) -> bool:
        """Whether the output head is the input embedding (no ``lm_head`` tensor stored, §3 "Tied weights")."""
        cfg = self.config.get("text_config", self.config)
        return bool(cfg.get("tie_word_embeddings", self.config.get("tie_word_embeddings", False)))

    @cached_property
    def sha256(self) -> str:
        """sha256 over the weight files (``probes.io.weights_hash``)."""
        return weights_hash(self.files)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self._where)} tensors, {len(self.files)} files)"


HUB_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer*", "*.txt", "*.model"]
"""What a hub checkpoint needs locally: weights (safetensors only), config, tokenizer, chat template."""


def vocab_mismatch(a: dict[int, str] | None, b: dict[int, str] | None) -> str | None:
    """The first id (among those both vocabularies have) that maps to different tokens, described; ``None``
    when they agree or a side has no tokenizer.json to compare."""
    if a is None or b is None:
        return None
    for i in sorted(set(a) & set(b)):
        if a[i] != b[i]:
            return f"id {i} is {a[i]!r} in one tokenizer and {b[i]!r} in the other"
    return None


def checkpoint_dir(spec: str, revision: str | None = None) -> Path:
    """The local directory of ``spec``: ``zoo:NAME``, a directory, or a hub name (downloaded once into
    the Hugging Face cache, safetensors and config/tokenizer files only)."""
    if spec.startswith("zoo:"):
        from probes.models.zoo_registry import zoo_path

        return zoo_path(spec[4:])
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.count("/") != 1:
        raise ValueError(f"{spec!r} is neither a checkpoint directory, zoo:NAME, nor a hub name (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, revision=revision, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, gated, missing: one clear line
        raise ValueError(f"{spec} could not be fetched from the Hugging Face hub ({type(e).__name__}: {e}); "
                         "download it on a machine with access and pass its directory") from None


_ITEMSIZE = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4,
             "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
"""safetensors dtype → torch dtype for the positioned reads (others go through ``safe_open``)."""


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str, tuple[int, int]]]:
    """Each tensor's shape, safetensors dtype and byte range in a safetensors file, from its header (an
    8-byte little-endian length, then that many bytes of JSON whose ``data_offsets`` count from the
    header's end); a file that does not parse as one is an error naming it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as h:
            n = int.from_bytes(h.read(8), "little")
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(h.read(n))
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            begin, end = (8 + n + int(o) for o in v["data_offsets"])
            if not 8 + n <= begin <= end <= size:
                raise ValueError(f"tensor {k} at bytes {begin}..{end} lies outside the file")
            out[k] = (tuple(int(d) for d in v["shape"]), str(v["dtype"]), (begin, end))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): re-download or re-save it") from None


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

"""Streaming task arithmetic over checkpoints (``reference/task_vectors.md`` §1, §3, §5).

θ′ = θ_target + Σ_k α_k·(m_k ⊙ v_k), tensor by tensor: the vectors' slices and then the target tensor
are read from their shards, upcast to float32, combined, cast to the output dtype and appended to a
shard buffer, which is written first whenever the tensor would not fit in ``shard_bytes``; then
everything is freed. Peak memory is one shard buffer, or two or three copies of the largest tensor
when it starts a shard, whatever the model size.

Every decision is planned from the headers before any data is read (``plan``): tensors the policy
keeps, tied heads (a tied target gets no ``lm_head``; an untied target takes tied donors' embedding
delta on its head when ``tied="mirror"``), vocabulary-size mismatches by the policy's choice, and one
error listing every other mismatch. The output directory is written beside its final path and renamed
into place at the end (``probes.io.atomic_directory``), with config, tokenizer, chat template and
generation config copied from the target and ``vectors_manifest.json`` (``probes.vectors.manifest``).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probes.vectors.checkpoint import INDEX, TORCH_DTYPES, Checkpoint, vocab_mismatch
from probes.vectors.manifest import Manifest, TensorRecord
from probes.vectors.policy import EMBEDDING, LM_HEAD, Policy, is_vocab_tensor
from probes.vectors.sources import MANIFEST, Difference

SHARD_BYTES = 1 << 30
"""Default output shard size: 1 GiB (a small buffer, §5)."""


@dataclass(frozen=True)
class Term:
    """α·(m ⊙ v): a vector source (``Difference``, ``SavedVector``, ``RandomLike``), its α, per-module
    α (regex → α, the first match wins over ``alpha``) and its mask: a regex (only matching tensors
    take this vector; ``None``: all) and a magnitude ``density`` (§2: within each tensor only the
    top ``density`` share of |v| is kept, ``magnitude_mask``; 1: all). A source's ``delta(name)``
    returns a fresh float32 tensor at each call, which ``merge`` may change in place."""

    source: Any
    alpha: float = 1.0
    alphas: Mapping[str, float] = field(default_factory=dict)
    mask: str | None = None
    density: float = 1.0

    def __post_init__(self):
        for a in (self.alpha, *self.alphas.values()):
            if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a):
                raise ValueError(f"α = {a!r}: every α must be a finite number (1 adds the vector, −1 negates it)")
        if isinstance(self.density, bool) or not isinstance(self.density, numbers.Real) or not 0 < self.density <= 1:
            raise ValueError(f"density = {self.density!r}: the share of each tensor's entries kept, in (0, 1] "
                             "(1: no magnitude mask)")
        try:
            [re.compile(p) for p in (*self.alphas, *([self.mask] if self.mask else []))]
        except re.error as e:
            raise ValueError(f"a module regex does not compile: {e}") from None

    def alpha_for(self, name: str) -> float:
        for pattern, a in self.alphas.items():
            if re.search(pattern, name):
                return float(a)
        return float(self.alpha)

    def covers(self, name: str) -> bool:
        return self.mask is None or re.search(self.mask, name) is not None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source.describe(), "alpha": self.alpha, "alphas": dict(self.alphas), "mask": self.mask,
                "density": self.density}


def magnitude_mask(v: torch.Tensor, density: float) -> torch.Tensor:
    """Zero, in place, all but the ``int(density · numel)`` entries of ``v`` with the largest |v|
    (mergekit's magnitude sparsification, without rescaling; entries tied at the threshold are all
    kept); returns ``v``."""
    k = int(density * v.numel())
    if k >= v.numel():
        return v
    if k == 0:
        return v.zero_()
    a = v.abs()
    threshold = a.flatten().kthvalue(a.numel() - k + 1).values
    return v.masked_fill_(a < threshold, 0.0)


@dataclass(frozen=True)
class Step:
    """What happens to one output tensor: ``(term index, source tensor, rows)`` per contributing
    vector (rows: ``None`` = all, else the first ``rows``), the action and why."""

    name: str
    parts: tuple[tuple[int, str, int | None], ...]
    action: str
    reason: str = ""


def _embedding_of(source) -> str | None:
    return next((n for n in source.names if EMBEDDING.search(n)), None)


def plan(target: Checkpoint, terms: Sequence[Term], policy: Policy) -> tuple[list[Step], list[dict[str, str]]]:
    """Every output tensor's step, and the source tensors dropped (with why); one ValueError listing
    every mismatch the policy does not resolve. Reads headers only."""
    if not terms:
        raise ValueError("no vectors to apply: give at least one (a donor pair or a saved vector)")
    errors: list[str] = []
    for t in terms:
        arch, mine = t.source.config.get("architectures"), target.config.get("architectures")
        if arch and mine and arch != mine:
            errors.append(f"architectures differ: the target is {mine}, a vector's donors are {arch}")
        differ = vocab_mismatch(target.vocab, getattr(t.source, "vocab", None))
        if differ:
            errors.append(f"the target's and a vector's donors' tokenizers differ ({differ}): ids must mean the "
                          "same tokens (§3)")
    steps, dropped = [], []
    names = [set(t.source.names) for t in terms]
    for name in target.names:
        why = policy.excluded_by(name)
        if why:
            steps.append(Step(name, (), "kept", why))
            continue
        parts, notes = [], []
        for k, t in enumerate(terms):
            if not t.covers(name):
                notes.append(f"vector {k}: outside its mask")
                continue
            src = name
            if name in getattr(t.source, "excluded", {}):
                notes.append(f"vector {k}: left out when extracted ({t.source.excluded[name]})")
                continue
            if name not in names[k]:
                if LM_HEAD.search(name) and t.source.tied:
                    if policy.tied == "skip":
                        notes.append(f"vector {k}: donors are tied (tied=skip)")
                        continue
                    src = _embedding_of(t.source)
                    if src is None:  # a saved vector that left the embedding out has no delta to mirror
                        left = [r for n, r in getattr(t.source, "excluded", {}).items() if EMBEDDING.search(n)]
                        if left:
                            notes.append(f"vector {k}: tied donors' embedding left out when extracted ({left[0]})")
                        else:
                            errors.append(f"{name}: vector {k}'s donors are tied but hold no embedding to mirror")
                        continue
                    notes.append(f"vector {k}: tied donors' embedding delta mirrored")
                else:
                    errors.append(f"{name}: missing from vector {k}'s donors")
                    continue
            have, want = t.source.shape(src), target.shape(name)
            rows = None
            if have != want:
                if is_vocab_tensor(name) and have[1:] == want[1:]:
                    if policy.vocab == "error":
                        errors.append(f"{name}: {have[0]} vocabulary rows in vector {k}, {want[0]} in the target "
                                      "(choose vocab='common-rows' or 'skip')")
                        continue
                    if policy.vocab == "skip":
                        notes.append(f"vector {k}: vocabulary size differs (vocab=skip)")
                        continue
                    rows = min(have[0], want[0])
                    notes.append(f"vector {k}: common rows [0, {rows})")
                else:
                    errors.append(f"{name}: shape {tuple(have)} in vector {k}, {tuple(want)} in the target")
                    continue
            parts.append((k, src, rows))
        action = ("truncated" if any(r is not None for _, _, r in parts) else
                  "mirrored" if any("mirrored" in n for n in notes) else "applied") if parts else "kept"
        steps.append(Step(name, tuple(parts), action, "; ".join(notes)))
    for k, t in enumerate(terms):
        for name in t.source.names:
            if name in target:
                continue
            if LM_HEAD.search(name) and target.tied:
                dropped.append({"vector": str(k), "tensor": name, "reason": "the target is tied: its head is the "
                                "embedding, which takes the embedding delta"})
            else:
                errors.append(f"{name}: in vector {k}'s donors but not in the target")
    if errors:
        raise ValueError(f"{len(errors)} tensor mismatches: " + "; ".join(errors[:8])
                         + (f"; … {len(errors) - 8} more" if len(errors) > 8 else ""))
    return steps, dropped


class ShardWriter:
    """Buffers output tensors and writes a safetensors shard whenever the buffer reaches ``shard_bytes``;
    ``close()`` names the shards ``model-0000i-of-0000N.safetensors`` with their index (one shard:
    ``model.safetensors``)."""

    def __init__(self, directory: Path, shard_bytes: int = SHARD_BYTES):
        if shard_bytes < 1:
            raise ValueError(f"shard size must be positive, got {shard_bytes}")
        self.dir, self.limit = Path(directory), int(shard_bytes)
        self.buffer: dict[str, torch.Tensor] = {}
        self.size, self.shards, self.weight_map = 0, [], {}
        self.total = 0

    def make_room(self, nbytes: int) -> None:
        """Write the buffered shard now if ``nbytes`` more would not fit: ``add`` would write it then
        anyway, and doing it before that tensor is computed keeps the full buffer and the tensor's
        temporaries out of memory at the same time."""
        if self.buffer and self.size + nbytes > self.limit:
            self._flush()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        self.make_room(nbytes)
        self.buffer[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.dir / f".shard-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.buffer)))
        self.buffer, self.size = {}, 0

    def close(self) -> list[Path]:
        if self.buffer or not self.shards:
            self._flush()
        n, out = len(self.shards), []
        for i, (path, names) in enumerate(self.shards, 1):
            final = self.dir / ("model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors")
            os.replace(path, final)
            out.append(final)
            self.weight_map |= dict.fromkeys(names, final.name)
        if n > 1:
            from probes.io import atomic_write_json

            atomic_write_json(self.dir / INDEX, {"metadata": {"total_size": self.total}, "weight_map": self.weight_map})
        return out


COPIED = re.compile(r"^(config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|added_tokens\.json|"
                    r"vocab\..*|merges\.txt|chat_template.*|preprocessor_config\.json)$")
"""The target's files copied beside the merged weights (§5 step 4); never its card or records."""


def _copy_target_files(target: Checkpoint, out: Path, dtype: str | None) -> None:
    """Config, tokenizer, chat template and generation config from the target (§5 step 4)."""
    import json

    for f in target.path.iterdir():
        if f.is_file() and COPIED.match(f.name):
            shutil.copy2(f, out / f.name)
    cfg = out / "config.json"
    if dtype and cfg.is_file():
        c = json.loads(cfg.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in c or key == "dtype":
                c[key] = dtype
        cfg.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _out_dir(out: str | os.PathLike[str], overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose a new directory or pass overwrite=True (--overwrite)")
    return out


def merge(target: str | os.PathLike[str] | Checkpoint, terms: Sequence[Term], out: str | os.PathLike[str], *,
          policy: Policy | None = None, dtype: str | None = None, shard_bytes: int = SHARD_BYTES,
          overwrite: bool = False, progress: bool = False) -> Manifest:
    """Write θ_target + Σ_k α_k·(m_k ⊙ v_k) to ``out`` (§1, §5), streaming tensor by tensor; ``dtype``
    (float32, bfloat16, float16; default: each tensor keeps the target's) is the output dtype, the
    arithmetic is float32. Returns the manifest also written beside the weights."""
    from tqdm.auto import tqdm

    from probes.io import atomic_directory

    policy = policy or Policy.preset("all")
    if dtype is not None and dtype not in TORCH_DTYPES:
        raise ValueError(f"output dtype {dtype!r}: choose one of {', '.join(TORCH_DTYPES)}")
    out = _out_dir(out, overwrite)
    target = target if isinstance(target, Checkpoint) else Checkpoint(target)
    steps, dropped = plan(target, terms, policy)
    records = []
    with atomic_directory(out) as tmp, ThreadPoolExecutor(1) as pool:
        # the inputs' sha256 for the manifest, on the other core while the tensors stream
        described = pool.submit(lambda: (target.sha256, [t.describe() for t in terms]))
        writer = ShardWriter(tmp, shard_bytes)
        for step in tqdm(steps, desc="tensors", disable=not progress):
            if not step.parts:
                theta = target.get(step.name)
                writer.add(step.name, theta.to(TORCH_DTYPES[dtype] if dtype else theta.dtype))
                records.append(TensorRecord(step.name, step.action, step.reason, 0.0, _norm(theta)))
                continue
            shape = target.shape(step.name)
            writer.make_room(target.nbytes(step.name) if dtype is None else math.prod(shape) * TORCH_DTYPES[dtype].itemsize)
            delta = None
            for k, src, rows in step.parts:
                term = terms[k]
                v = term.source.delta(src)
                if term.density < 1:
                    magnitude_mask(v, term.density)
                a = term.alpha_for(step.name)
                if delta is None and rows is None and v.dtype == torch.float32 and v.shape == shape:
                    # the same sum into zeros, 0 + α·v, written over v: the sources return a fresh
                    # tensor per call, so no zeroed buffer beside it
                    delta = torch.add(torch.zeros((), dtype=v.dtype), v, alpha=a, out=v)
                else:
                    if delta is None:
                        delta = torch.zeros(shape, dtype=torch.float32)
                    if rows is None:
                        delta.add_(v, alpha=a)
                    else:
                        delta[:rows].add_(v[:rows], alpha=a)
                del v
            # θ is read once the deltas are in: with a donor pair, two tensors of this size at a time
            theta = target.get(step.name)
            out_dtype = TORCH_DTYPES[dtype] if dtype else theta.dtype
            theta_norm = _norm(theta)
            new = theta.float()  # theta itself when it is float32: it is not read again below
            new.add_(delta)
            writer.add(step.name, new.to(out_dtype))
            records.append(TensorRecord(step.name, step.action, step.reason, _norm(delta), theta_norm))
            del theta, new, delta
        writer.close()
        _copy_target_files(target, tmp, dtype)
        sha256, described = described.result()
        manifest = Manifest(kind="merged", target={"path": str(target.path), "sha256": sha256, "tied": target.tied},
                            terms=described, policy=policy.to_json(), dtype=dtype,
                            tensors=records, dropped=dropped)
        manifest.save(tmp / MANIFEST)
    return manifest


def extract(a: str | os.PathLike[str], b: str | os.PathLike[str], out: str | os.PathLike[str], *,
            policy: Policy | None = None, shard_bytes: int = SHARD_BYTES, overwrite: bool = False,
            progress: bool = False) -> Manifest:
    """Save v = θ_a − θ_b (float32, the tensors the policy moves) to ``out``, to apply later with
    ``SavedVector(out)``; its manifest records the donors and per-tensor ‖v‖, ‖θ_b‖."""
    from tqdm.auto import tqdm

    from probes.io import atomic_directory

    policy = policy or Policy.preset("all")
    out = _out_dir(out, overwrite)
    diff = Difference(a, b, common_rows=policy.vocab == "common-rows")
    records = []
    with atomic_directory(out) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        for name in tqdm(diff.names, desc="tensors", disable=not progress):
            why = policy.excluded_by(name)
            if why:
                records.append(TensorRecord(name, "skipped", why, 0.0, 0.0))
                continue
            v, b_norm = diff.delta_and_norm(name)
            writer.add(name, v)
            records.append(TensorRecord(name, "extracted", "", _norm(v), b_norm))
        writer.close()
        for name in ("config.json", "tokenizer.json"):  # the architecture and the id mapping, checked when applied
            if (diff.a.path / name).is_file():
                shutil.copy2(diff.a.path / name, tmp / name)
        manifest = Manifest(kind="task_vector", target=None, terms=[], policy=policy.to_json(), dtype="float32",
                            tensors=records, dropped=[], source=diff.describe())
        manifest.save(tmp / MANIFEST)
    return manifest


def _norm(t: torch.Tensor) -> float:
    return float(t.float().norm())

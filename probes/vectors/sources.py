"""Where a task vector's per-tensor delta comes from (``reference/task_vectors.md`` §1, §6).

* ``Difference(a, b)``: v = θ_a − θ_b (e.g. θ_RL − θ_SFT), read tensor by tensor from two checkpoints;
* ``SavedVector(dir)``: a vector written by ``extract`` (float32 deltas and their manifest);
* ``RandomLike(source, seed)``: the norm-matched random control, per tensor Gaussian noise rescaled to
  the source's ‖v_tensor‖₂, seeded by (seed, tensor name), so it is the same whatever the order;
* the negated vector is a ``Term`` with −α.

Every delta is float32 (§2 "Compute dtype"). A source names its tensors, their shapes, and whether its
donors are tied (no stored ``lm_head``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from probes.vectors.checkpoint import Checkpoint, vocab_mismatch
from probes.vectors.policy import is_vocab_tensor

MANIFEST = "vectors_manifest.json"


class Difference:
    """v = θ_a − θ_b over the tensors of ``a``; ``b`` must hold the same tensors (a vocabulary-size
    difference of the embedding / head is cut to the common rows only when ``common_rows``)."""

    kind = "difference"

    def __init__(self, a: str | os.PathLike[str] | Checkpoint, b: str | os.PathLike[str] | Checkpoint, *,
                 common_rows: bool = False):
        self.a = a if isinstance(a, Checkpoint) else Checkpoint(a)
        self.b = b if isinstance(b, Checkpoint) else Checkpoint(b)
        self.common_rows = common_rows
        _check_architectures(self.a, self.b)
        differ = vocab_mismatch(self.a.vocab, self.b.vocab)
        if differ:
            raise ValueError(f"{self.a.path} and {self.b.path} have different tokenizers ({differ}): a task vector "
                             "needs one id mapping (task_vectors.md §3)")
        only_a, only_b = sorted(set(self.a.names) - set(self.b.names)), sorted(set(self.b.names) - set(self.a.names))
        if only_a or only_b:
            raise ValueError(f"{self.a.path} and {self.b.path} hold different tensors (only in the first: {only_a[:5]}; "
                             f"only in the second: {only_b[:5]}): a task vector needs two checkpoints of one architecture")
        bad = [n for n in self.a.names if self.a.shape(n) != self.b.shape(n)
               and not (common_rows and is_vocab_tensor(n) and self.a.shape(n)[1:] == self.b.shape(n)[1:])]
        if bad:
            raise ValueError(f"{self.a.path} and {self.b.path} differ in shape at {bad[:5]}"
                             + (" (vocabulary rows: pass vocab='common-rows' to use the common rows)"
                                if all(is_vocab_tensor(n) for n in bad) else ""))

    @property
    def names(self) -> list[str]:
        return self.a.names

    def shape(self, name: str) -> tuple[int, ...]:
        sa, sb = self.a.shape(name), self.b.shape(name)
        return sa if sa == sb else (min(sa[0], sb[0]), *sa[1:])

    @property
    def tied(self) -> bool:
        return self.a.tied

    @property
    def config(self) -> dict[str, Any]:
        return self.a.config

    @property
    def vocab(self) -> dict[int, str] | None:
        return self.a.vocab

    def delta(self, name: str) -> torch.Tensor:
        return _subtract(self.a.get(name).float(), self.b.get(name).float())

    def delta_and_norm(self, name: str) -> tuple[torch.Tensor, float]:
        """v for ``name`` and ‖θ_b‖₂ of that tensor (for the manifest), each tensor read once."""
        a, b = self.a.get(name).float(), self.b.get(name).float()
        norm = float(b.norm())
        return _subtract(a, b), norm

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": str(self.a.path), "a_sha256": self.a.sha256, "b": str(self.b.path),
                "b_sha256": self.b.sha256, "tied": self.tied}


def _subtract(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a − b, over the common rows when the vocabulary sizes differ; in place into ``a`` (a fresh tensor
    from ``Checkpoint.get``: no third buffer) when the shapes agree."""
    if a.shape != b.shape:
        r = min(a.shape[0], b.shape[0])
        return a[:r] - b[:r]
    return a.sub_(b)


class SavedVector:
    """A vector directory written by ``extract``: its float32 deltas and the donors it came from."""

    kind = "saved"

    def __init__(self, path: str | os.PathLike[str]):
        from probes.vectors.manifest import Manifest

        self.path = Path(path)
        self.manifest = Manifest.load(self.path)
        if self.manifest.kind != "task_vector":
            raise ValueError(f"{self.path} holds a {self.manifest.kind!r}, not a task vector: pass the output "
                             "of `probes vectors extract`")
        self.checkpoint = Checkpoint(self.path)
        self.excluded = {t.name: t.reason for t in self.manifest.tensors if t.action == "skipped"}
        """Tensors of the donors that the extraction's policy left out, and why."""

    @property
    def names(self) -> list[str]:
        return self.checkpoint.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.checkpoint.shape(name)

    @property
    def tied(self) -> bool:
        return bool(self.manifest.source["tied"])

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config

    @property
    def vocab(self) -> dict[int, str] | None:
        return self.checkpoint.vocab

    def delta(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(name).float()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.checkpoint.sha256, "tied": self.tied,
                "source": self.manifest.source}


class RandomLike:
    """The norm-matched random control of ``source`` (§6): per tensor, standard Gaussian noise seeded by
    (``seed``, tensor name) and rescaled to ‖source.delta(name)‖₂."""

    kind = "random"

    def __init__(self, source, seed: int = 0):
        self.source, self.seed = source, int(seed)

    @property
    def names(self) -> list[str]:
        return self.source.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    @property
    def tied(self) -> bool:
        return self.source.tied

    @property
    def config(self) -> dict[str, Any]:
        return self.source.config

    @property
    def vocab(self) -> dict[int, str] | None:
        return self.source.vocab

    @property
    def excluded(self) -> dict[str, str]:
        """The source's tensors left out when it was extracted (a saved vector's), and why."""
        return getattr(self.source, "excluded", {})

    def delta(self, name: str) -> torch.Tensor:
        v = self.source.delta(name)
        return norm_matched_noise(v, self.seed, name)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "source": self.source.describe(), "tied": self.tied}


def norm_matched_noise(v: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """Gaussian noise shaped like ``v`` with ‖noise‖₂ = ‖v‖₂, from a CPU generator seeded by (seed, name)."""
    g = torch.Generator().manual_seed(_seed(seed, name))
    noise = torch.randn(v.shape, generator=g)
    return noise * (v.float().norm().cpu() / noise.norm().clamp(min=1e-12))


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _check_architectures(a: Checkpoint, b: Checkpoint) -> None:
    arch_a, arch_b = a.config.get("architectures"), b.config.get("architectures")
    if arch_a and arch_b and arch_a != arch_b:
        raise ValueError(f"the architectures differ: {a.path} is {arch_a}, {b.path} is {arch_b}; task arithmetic "
                         "needs one architecture (task_vectors.md §1 'Compatibility')")

"""The record beside every vector and merged checkpoint (``reference/task_vectors.md`` §5 step 3).

``vectors_manifest.json``: what was done (``kind``: ``task_vector`` or ``merged``), the inputs with
their sha256, the policy, α values and masks, the output dtype, and per tensor the action (applied,
mirrored, truncated, kept, skipped, extracted), why, ‖δ‖₂, ‖θ‖₂ and their ratio; the source tensors
dropped and why. ``profile()`` is the per-layer ‖δ‖ by module type; ``summary()`` is what
``probes vectors inspect`` prints.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from probes.vectors.policy import layer_of, module_type


@dataclass(frozen=True)
class TensorRecord:
    name: str
    action: str
    reason: str
    delta_norm: float
    theta_norm: float

    @property
    def ratio(self) -> float:
        return self.delta_norm / self.theta_norm if self.theta_norm else 0.0


@dataclass(frozen=True)
class Manifest:
    kind: str
    target: dict[str, Any] | None
    terms: list[dict[str, Any]]
    policy: dict[str, Any]
    dtype: str | None
    tensors: list[TensorRecord]
    dropped: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        from probes.io import atomic_write_json

        d = asdict(self)
        d["tensors"] = [{**asdict(t), "ratio": t.ratio} for t in self.tensors]
        d["format"] = 1
        atomic_write_json(path, d)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        from pathlib import Path

        from probes.vectors.sources import MANIFEST

        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: pass a directory written by `probes vectors extract` "
                                    "or `probes vectors apply`")
        d = json.loads(path.read_text(encoding="utf-8"))
        d.pop("format", None)
        d["tensors"] = [TensorRecord(t["name"], t["action"], t["reason"], t["delta_norm"], t["theta_norm"])
                        for t in d["tensors"]]
        return cls(**d)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.action] = out.get(t.action, 0) + 1
        return out

    def profile(self) -> dict[str, dict[int, float]]:
        """Module type → layer → ‖δ‖₂ over that layer's tensors of that type (tensors outside the
        blocks under layer −1)."""
        out: dict[str, dict[int, float]] = {}
        for t in self.tensors:
            layer = layer_of(t.name)
            cell = out.setdefault(module_type(t.name), {})
            key = -1 if layer is None else layer
            cell[key] = (cell.get(key, 0.0) ** 2 + t.delta_norm ** 2) ** 0.5
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def summary(self, top: int = 10) -> str:
        """The manifest in a few lines: inputs, policy, actions, the largest relative changes, drops."""
        lines = [f"kind: {self.kind}"]
        if self.target:
            lines.append(f"target: {self.target['path']} (sha256 {self.target['sha256'][:12]}…, "
                         f"{'tied' if self.target.get('tied') else 'untied'})")
        if self.source:
            lines.append(f"source: {_describe(self.source)}")
        for k, t in enumerate(self.terms):
            extra = ((f", per-module α {t['alphas']}" if t["alphas"] else "") + (f", mask {t['mask']!r}" if t["mask"] else "")
                     + (f", magnitude density {t['density']:g}" if t.get("density", 1) < 1 else ""))
            lines.append(f"vector {k}: α = {t['alpha']:g}{extra}; {_describe(t['source'])}")
        pol = {k: v for k, v in self.policy.items() if v not in ((), [], None)}
        lines.append(f"policy: {pol}; output dtype: {self.dtype or 'as the target'}")
        lines.append("tensors: " + ", ".join(f"{n} {a}" for a, n in sorted(self.counts().items())))
        moved = sorted((t for t in self.tensors if t.delta_norm > 0), key=lambda t: -t.ratio)[:top]
        if moved:
            w = max(len(t.name) for t in moved)
            lines.append("largest ‖δ‖/‖θ‖:\n" + "\n".join(f"  {t.name:<{w}}  ‖δ‖ {t.delta_norm:.4g}  ‖θ‖ {t.theta_norm:.4g}  "
                                                            f"ratio {t.ratio:.3g}  {t.action}" for t in moved))
        for d in self.dropped:
            lines.append(f"dropped: vector {d['vector']} {d['tensor']}: {d['reason']}")
        kept = [t for t in self.tensors if t.action in ("kept", "skipped") and t.reason]
        if kept:
            reasons: dict[str, int] = {}
            for t in kept:
                reasons[t.reason] = reasons.get(t.reason, 0) + 1
            lines.append("unchanged: " + "; ".join(f"{n} × {r}" for r, n in reasons.items()))
        return "\n".join(lines)


def _describe(src: dict[str, Any]) -> str:
    if src["kind"] == "difference":
        return f"{src['a']} − {src['b']}"
    if src["kind"] == "saved":
        return f"saved vector {src['path']}"
    if src["kind"] == "random":
        return f"norm-matched random (seed {src['seed']}) of {_describe(src['source'])}"
    return str(src)

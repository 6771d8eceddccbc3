"""In-memory task arithmetic on a loaded model: v = θ_RL − θ_SFT, θ + α·v for quick α sweeps, and
the norm-matched random control (``reference/task_vectors.md`` §1, §3, §6, §7).

- ``task_vector(rl, sft)``: v per unique parameter tensor, computed in float32 (§7: bf16 deltas
  between close checkpoints lose precision); a tied tensor is one tensor (§3), so it moves once;
- ``with apply_vector(model, v, alpha):`` adds α·v to the model's weights in place (float32
  arithmetic, cast to each weight's dtype) and restores the saved weights bit for bit on exit: an α
  sweep without writing checkpoints. ``v`` is a ``{name: tensor}`` dict or any vector source of
  ``probes.vectors.sources`` (donor checkpoints or a saved vector, read tensor by tensor);
- ``random_like(v, seed)``: per tensor, Gaussian noise seeded by (seed, name) rescaled to ‖v_tensor‖₂
  (the same noise as the streamed ``RandomLike``).

Checkpoints of any size go through ``probes.vectors.stream`` instead.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping

import torch

from probes.vectors.sources import norm_matched_noise

__all__ = ["apply_vector", "l2_norm", "random_like", "task_vector", "unique_parameters"]


def unique_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter tensor of ``model`` once (tied tensors under their first name), detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


def _check_same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, tuple[int, ...]], what: str) -> None:
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    if missing or extra:
        raise ValueError(
            f"{what}: the tensors differ (only in the second: {missing[:5]}; only in the first: {extra[:5]}). "
            "Task vectors need the same architecture, with the same tied weights (task_vectors.md §1, §3)"
        )
    for name, t in a.items():
        if tuple(t.shape) != tuple(b[name]):
            raise ValueError(
                f"{what}: {name} has shape {tuple(t.shape)} against {tuple(b[name])}; task vectors need the same "
                "tensor shapes (a resized vocabulary needs a row policy: probes.vectors.stream, task_vectors.md §3)"
            )


def task_vector(rl: torch.nn.Module, sft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """v = θ_rl − θ_sft per unique parameter tensor, computed in float32 (task_vectors.md §1, §7)."""
    a, b = unique_parameters(rl), unique_parameters(sft)
    _check_same_tensors(a, {k: t.shape for k, t in b.items()}, "task_vector(rl, sft)")
    return {name: t.float() - b[name].float() for name, t in a.items()}


@contextlib.contextmanager
def apply_vector(model, v, alpha: float = 1.0) -> Iterator:
    """Inside the block, ``model`` (a ``probes`` Model or a torch module) has θ + α·v; on exit every
    changed weight is restored bit for bit from a saved copy. A tied tensor is one parameter, so it moves once."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"α = {alpha!r}: give a finite number (1 adds the vector, −1 negates it)")
    module = getattr(model, "hf", model)
    params = dict(module.named_parameters())
    shapes = {name: v[name].shape for name in v} if isinstance(v, Mapping) else {n: v.shape(n) for n in v.names}
    _check_same_tensors(params, shapes, "apply_vector(model, v)")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, p in params.items():
                delta = v[name] if isinstance(v, Mapping) else v.delta(name)
                saved[name] = p.detach().clone()
                p.copy_((p.float() + float(alpha) * delta.to(p.device, torch.float32)).to(p.dtype))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


def random_like(v: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The norm-matched random control (§6): per tensor, Gaussian noise seeded by (``seed``, name)
    rescaled to the tensor's ‖v‖₂."""
    return {name: norm_matched_noise(t, seed, name) for name, t in v.items()}


def l2_norm(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> float:
    """‖·‖₂ of all tensors together (a vector's, or a model's parameters'), in float32."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return float(sum(t.detach().float().norm() ** 2 for t in values) ** 0.5)

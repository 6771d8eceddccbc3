"""Task-vector arithmetic in weight space: v = θ_RL − θ_SFT, θ′ = θ_target + α·v, and the
norm-matched random control.

Implements ``reference/task_vectors.md``:

- §1 "Definition": v = θ_GRPO − θ_SFT element-wise over every tensor; θ′ = θ_target + α·v
  (α = 1 in the paper's runs, α = −1 is the negation ablation; no mask, m = 1);
- §2 "Knobs" and §7 "Pitfalls": deltas are computed and applied in float32 (bf16 deltas between
  close checkpoints lose precision);
- §3 "Which tensors to include": policy "all" (every parameter tensor); a tied tensor
  (embedding = lm_head) is one tensor, listed once by ``named_parameters``, so it moves once;
  donors and target must have the same tensors and shapes, and a mismatch fails loudly (§7);
- §6 "Controls": a random vector with each tensor Gaussian noise rescaled to ‖v_tensor‖₂.

Vectors are plain ``{name: float32 tensor}`` dicts keyed by ``named_parameters`` names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch

__all__ = ["apply_vector", "l2_norm", "random_like", "task_vector", "unique_parameters"]


def unique_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter tensor of ``model`` once (tied tensors under their first name), detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


def _check_same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str) -> None:
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    if missing or extra:
        raise ValueError(
            f"{what}: the tensors differ (only in the second: {missing[:5]}; only in the first: {extra[:5]}). "
            "Task vectors need the same architecture, with the same tied weights (task_vectors.md §1, §3)"
        )
    for name, t in a.items():
        if t.shape != b[name].shape:
            raise ValueError(
                f"{what}: {name} has shape {tuple(t.shape)} against {tuple(b[name].shape)}; "
                "task vectors need the same tensor shapes (a resized vocabulary needs a row policy, task_vectors.md §3)"
            )


def task_vector(rl: torch.nn.Module, sft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """v = θ_rl − θ_sft per unique parameter tensor, computed in float32 (task_vectors.md §1, §7)."""
    a, b = unique_parameters(rl), unique_parameters(sft)
    _check_same_tensors(a, b, "task_vector(rl, sft)")
    return {name: t.float() - b[name].float() for name, t in a.items()}


def apply_vector(model: torch.nn.Module, v: Mapping[str, torch.Tensor], alpha: float) -> torch.nn.Module:
    """A float32 copy of ``model`` with ``alpha · v`` added to each unique parameter (θ′ = θ + α·v);
    ``model`` itself is left unchanged. A tied tensor is one parameter, so it moves once (§3)."""
    out = copy.deepcopy(model).float()
    params = dict(out.named_parameters())
    _check_same_tensors(params, v, "apply_vector(model, v)")
    with torch.no_grad():
        for name, p in params.items():
            p.add_(v[name].to(p.device, torch.float32), alpha=alpha)
    return out.eval()


def random_like(v: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The norm-matched random control (task_vectors.md §6): per tensor, standard Gaussian noise
    (one seeded CPU generator, tensors in ``v``'s order) rescaled to the tensor's ‖v‖₂."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in v.items():
        noise = torch.randn(t.shape, generator=g)
        out[name] = noise * (t.float().norm().cpu() / noise.norm().clamp(min=1e-12))
    return out


def l2_norm(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> float:
    """‖·‖₂ of all tensors together (a vector's, or a model's parameters'), in float32."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return float(sum(t.detach().float().norm() ** 2 for t in values) ** 0.5)

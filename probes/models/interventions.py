"""Interventions: small values applied in a scope by ``with model.intervene(...)``.

Each intervention validates itself against the model and attaches hooks; the scope
removes every hook on exit, exceptions included. ``positions`` (``positions.py``)
are absolute token indices, spans, phases or token triggers; ``rows`` selects rows of
the batch the user passed (indices or a bool mask). Hand-computed expectations for
each live in ``tests/test_interventions.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from probes.models import positions as P
from probes.models.hooks import attach
from probes.models.sites import Site, resolve


def _vector(model, v, width: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(v)
    if v.shape[-1] != width:
        raise ValueError(f"{what} has width {v.shape[-1]} but the site has width {width} in {model.spec}")
    if v.dim() not in (1, 2):
        raise ValueError(f"{what} must be (d,) or (rows, d), got shape {tuple(v.shape)}")
    return v.to(model.device, torch.float32)


def _row_vec(v: torch.Tensor, model) -> torch.Tensor:
    """(d,) → (1, 1, d); (rows, d) → (B, 1, d) for the rows now in the batch."""
    if v.dim() == 1:
        return v.view(1, 1, -1)
    return v[model.ctx.row_ids].unsqueeze(1)


@dataclass(frozen=True, kw_only=True, eq=False)
class Intervention:
    positions: P.Positions = None
    rows: Sequence[int] | torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "positions", P.normalize(self.positions))

    def attach(self, model) -> list:
        raise NotImplementedError

    def _mask(self, model, length: int | None = None) -> torch.Tensor:
        """(B, T) where this intervention applies in the current forward; ``length``
        keeps the last positions only (the sampler computes logits for the last token)."""
        m = P.position_mask(self.positions, model.ctx)
        r = P.row_mask(self.rows, model.ctx)
        m = m if r is None else m & r.unsqueeze(1)
        return m if length is None else m[:, -length:]


def _tensor_site(model, site: str, what: str):
    point = resolve(model, site)
    if point.site.name in ("attn_scores", "attn_pattern", "router_logits", "expert_topk") or point.width is None:
        raise ValueError(
            f"{what} edits (batch, time, width) activations; {point.site} is not one. "
            "Use SuppressKeys for attention, ScaleExperts/ForceExperts for routing."
        )
    return point


@dataclass(frozen=True, kw_only=True, eq=False)
class AddVector(Intervention):
    """x ← x + scale · vector at the selected positions (activation addition)."""

    site: str
    vector: torch.Tensor
    scale: float = 1.0

    def attach(self, model):
        point = _tensor_site(model, self.site, "AddVector")
        vec = _vector(model, self.vector, point.width, "vector")

        def fn(x):
            m = self._mask(model, x.shape[1]).unsqueeze(-1)
            return x + (self.scale * _row_vec(vec, model) * m).to(x.dtype)

        return [attach(model, point, fn)]


@dataclass(frozen=True, kw_only=True, eq=False)
class ProjectOut(Intervention):
    """x ← x − (x·û) û at the selected positions (directional ablation)."""

    site: str
    direction: torch.Tensor

    def attach(self, model):
        point = _tensor_site(model, self.site, "ProjectOut")
        u = _vector(model, self.direction, point.width, "direction")
        if u.dim() != 1:
            raise ValueError("ProjectOut takes one direction of shape (d,)")
        u = u / u.norm().clamp_min(1e-12)

        def fn(x):
            m = self._mask(model, x.shape[1]).unsqueeze(-1)
            xf = x.float()
            proj = (xf @ u).unsqueeze(-1) * u
            return torch.where(m, xf - proj, xf).to(x.dtype)

        return [attach(model, point, fn)]


@dataclass(frozen=True, kw_only=True, eq=False)
class Patch(Intervention):
    """x[b, t] ← source[b, p] at the selected positions, where p is token t's absolute
    position: ``source`` is a (rows or 1, S, …) activation of the same site from another
    run (e.g. a ``Capture`` value), indexed by absolute position."""

    site: str
    source: torch.Tensor

    def attach(self, model):
        point = _tensor_site(model, self.site, "Patch")
        src = torch.as_tensor(self.source).to(model.device)
        if src.dim() < 3:
            raise ValueError(f"Patch source must be (rows, positions, ...), got shape {tuple(src.shape)}")

        def fn(x):
            m = self._mask(model, x.shape[1])
            if not m.any():
                return None
            if src.shape[2:] != x.shape[2:]:
                raise ValueError(f"Patch source trailing shape {tuple(src.shape[2:])} != site shape {tuple(x.shape[2:])}")
            pos = model.ctx.query_pos[:, -x.shape[1]:].masked_fill(~m, 0)
            if int(pos.max()) >= src.shape[1]:
                raise ValueError(f"Patch source covers positions 0..{src.shape[1] - 1}, asked for {int(pos.max())}")
            rows = model.ctx.row_ids if src.shape[0] > 1 else torch.zeros_like(model.ctx.row_ids)
            vals = src[rows.unsqueeze(1), pos].to(x.dtype)
            shape = m.shape + (1,) * (x.dim() - 2)
            return torch.where(m.view(shape), vals, x)

        return [attach(model, point, fn)]


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleHeads(Intervention):
    """Multiply chosen heads' outputs (before the output projection) by ``scale``
    (0 = zero-ablation). ``heads`` are (layer, head) pairs. With ``rescale_norm``, the
    whole per-layer head-output tensor is rescaled to its pre-ablation Frobenius norm
    (``reference/refusal.md`` A4, norm-preserving ablation)."""

    heads: Iterable[tuple[int, int]]
    scale: float = 0.0
    rescale_norm: bool = False

    def attach(self, model):
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            L = model.check_layer(layer, f"ScaleHeads layer {layer}")
            if not 0 <= head < model.n_heads:
                raise ValueError(f"head {head} out of range: {model.spec} has heads 0..{model.n_heads - 1}")
            by_layer.setdefault(L, []).append(head)
        handles = []
        for L, heads in by_layer.items():
            point = resolve(model, Site("head_out", L))
            factor = torch.ones(model.n_heads, device=model.device)
            factor[heads] = self.scale

            def fn(z, factor=factor):
                m = self._mask(model)[..., None, None]
                new = torch.where(m, z * factor.view(-1, 1).to(z.dtype), z)
                if self.rescale_norm:
                    new = new * (z.float().norm() / new.float().norm().clamp_min(1e-12)).to(z.dtype)
                return new

            handles.append(attach(model, point, fn))
        return handles


@dataclass(frozen=True, kw_only=True, eq=False)
class SuppressKeys(Intervention):
    """Set pre-softmax scores of keys at absolute positions in ``span`` to the dtype's
    minimum, for the queries selected by ``positions`` (default all), in ``layers``
    and ``heads`` (default all) (``reference/thought_anchors.md`` §7). ``span`` may be
    a list with one span per row of the batch (row r of the user's batch suppresses
    ``span[r]``), so many suppressed variants run as one batched forward."""

    span: P.Span | tuple[int, int] | Sequence[P.Span | tuple[int, int]]
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    def _bounds(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) per user row (one row when a single span is given)."""
        single = isinstance(self.span, P.Span) or (
            isinstance(self.span, tuple) and len(self.span) == 2 and all(isinstance(x, int) for x in self.span)
        )
        spans = [self.span] if single else list(self.span)
        spans = [sp if isinstance(sp, P.Span) else P.Span(*sp) for sp in spans]
        big = torch.iinfo(torch.long).max
        starts = torch.tensor([sp.start for sp in spans], device=model.device)
        ends = torch.tensor([big if sp.end is None else sp.end for sp in spans], device=model.device)
        return starts, ends

    def attach(self, model):
        starts, ends = self._bounds(model)
        per_row = starts.numel() > 1
        layers = range(model.n_layers) if self.layers is None else [model.check_layer(L, "SuppressKeys") for L in self.layers]
        head_sel = None
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < model.n_heads]
            if bad:
                raise ValueError(f"heads {bad} out of range: {model.spec} has heads 0..{model.n_heads - 1}")
            head_sel = torch.zeros(model.n_heads, dtype=torch.bool, device=model.device)
            head_sel[list(self.heads)] = True

        def fn(scores):
            ctx = model.ctx
            K = scores.shape[-1]
            kp, valid = ctx.key_pos[:, -K:], ctx.key_valid[:, -K:]
            if per_row:
                if int(ctx.row_ids.max()) >= starts.numel():
                    raise ValueError(f"SuppressKeys has {starts.numel()} spans but the batch has more rows")
                s, e = starts[ctx.row_ids].unsqueeze(1), ends[ctx.row_ids].unsqueeze(1)
            else:
                s, e = starts, ends
            keys = (kp >= s) & (kp < e) & valid
            m = self._mask(model)[:, None, :, None] & keys[:, None, None, :]
            if head_sel is not None:
                m = m & head_sel.view(1, -1, 1, 1)
            return scores.masked_fill(m, torch.finfo(scores.dtype).min)

        return [attach(model, resolve(model, Site("attn_scores", L)), fn) for L in layers]


def _router_rows(model, intervention: Intervention) -> torch.Tensor:
    return intervention._mask(model).reshape(-1)


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleExperts(Intervention):
    """RICE: w′ = β·w for routing weights of (layer, expert) pairs where the router
    selected them; never forces an expert in. ``renormalize`` rescales so Σw′ = Σw
    (``reference/moe_experts.md`` §2; off by default as in the paper)."""

    scales: Mapping[tuple[int, int], float]
    renormalize: bool = False

    def attach(self, model):
        by_layer: dict[int, torch.Tensor] = {}
        for (layer, expert), beta in self.scales.items():
            L = model.check_layer(layer, "ScaleExperts")
            model.router(L, "ScaleExperts")
            if not 0 <= expert < model.n_experts:
                raise ValueError(f"expert {expert} out of range: {model.spec} has experts 0..{model.n_experts - 1}")
            by_layer.setdefault(L, torch.ones(model.n_experts, device=model.device))[expert] = beta
        handles = []
        for L, factor in by_layer.items():

            def hook(_mod, _args, out, factor=factor):
                logits, w, idx = out
                m = _router_rows(model, self).unsqueeze(-1)
                new = w * factor[idx].to(w.dtype)
                if self.renormalize:
                    new = new * (w.sum(-1, keepdim=True) / new.sum(-1, keepdim=True))
                return logits, torch.where(m, new, w), idx

            handles.append(model.router(L).register_forward_hook(hook))
        return handles


@dataclass(frozen=True, kw_only=True, eq=False)
class ForceExperts(Intervention):
    """SteerMoE rerouting: in the router's log-softmax, experts in ``include`` are set to
    the row max + 0.01 and those in ``forbid`` to the row min − 0.01; then softmax,
    top-k and the family's renormalisation (``reference/moe_experts.md`` §3)."""

    layers: Sequence[int] | None = None
    include: Sequence[int] = field(default_factory=tuple)
    forbid: Sequence[int] = field(default_factory=tuple)

    def attach(self, model):
        inc, forb = list(self.include), list(self.forbid)
        if set(inc) & set(forb):
            raise ValueError(f"experts {sorted(set(inc) & set(forb))} are both included and forbidden")
        bad = [e for e in inc + forb if not 0 <= e < model.n_experts]
        if bad:
            raise ValueError(f"experts {bad} out of range: {model.spec} has experts 0..{model.n_experts - 1}")
        layers = model.moe_layers if self.layers is None else [model.check_layer(L, "ForceExperts") for L in self.layers]
        handles = []
        for L in layers:
            gate = model.router(L, "ForceExperts")
            k = int(gate.top_k)
            if len(inc) > k:
                raise ValueError(f"cannot force {len(inc)} experts into a top-{k} router")
            norm = model.adapter.always_norm_topk or bool(getattr(gate, "norm_topk_prob", False))

            def hook(_mod, _args, out, k=k, norm=norm):
                logits, w, idx = out
                lsm = torch.log_softmax(logits.float(), dim=-1)
                hi = lsm.max(-1, keepdim=True).values + 0.01
                lo = lsm.min(-1, keepdim=True).values - 0.01
                if inc:
                    lsm[:, inc] = hi.expand(-1, len(inc))
                if forb:
                    lsm[:, forb] = lo.expand(-1, len(forb))
                probs = torch.softmax(lsm, dim=-1)
                new_w, new_idx = torch.topk(probs, k, dim=-1)
                if norm:
                    new_w = new_w / new_w.sum(-1, keepdim=True)
                m = _router_rows(model, self).unsqueeze(-1)
                return logits, torch.where(m, new_w.to(w.dtype), w), torch.where(m, new_idx, idx)

            handles.append(gate.register_forward_hook(hook))
        return handles

"""Interventions: small values applied in a scope by ``with model.intervene(...)``.

Each intervention validates itself against the model and attaches hooks; the scope
removes every hook on exit, exceptions included. ``positions`` (``positions.py``)
are absolute token indices, spans, phases or token triggers; ``rows`` selects rows of
the batch the user passed (indices or a bool mask). Hand-computed expectations for
each live in ``tests/unit/test_interventions.py``.

The steering operators of ``reference/steering.md`` §2 (``AddVector``, ``ProjectOut``,
``AblateThenAdd``, ``ClampProjection``) share ``SteeringOperator``: a (batch, time,
width) site, optional per-token renormalisation (``rescale_norm``) and an optional
``SteeredRecord`` of which tokens were steered and by how much.

Attaching is all or nothing: every intervention of a scope is validated against the
model before any hook is attached (``attach_all``), so a bad one leaves no hook behind.
The interventions attached now are listed by ``active(model)``; views that cannot apply
them (``model.tl``) refuse to run while there are any.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch

from probes.models import positions as P
from probes.models.hooks import attach
from probes.models.sites import Site, resolve

#: A validated, not yet attached hook: calling it attaches the hook and returns its handle.
Step = Callable[[], Any]

#: model → interventions attached to it now (in attachment order).
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def active(model) -> tuple[Intervention, ...]:
    """The interventions attached to ``model`` now (inside ``model.intervene``)."""
    return tuple(_ACTIVE.get(model, ()))


class _ActiveMark:
    """Handle that lists an intervention in ``active(model)`` until removed."""

    def __init__(self, model, intervention: Intervention) -> None:
        self._model, self._iv = weakref.ref(model), intervention
        _ACTIVE.setdefault(model, []).append(intervention)

    def remove(self) -> None:
        model = self._model()
        ivs = _ACTIVE.get(model) if model is not None else None
        if ivs:
            for i, iv in enumerate(ivs):
                if iv is self._iv:
                    del ivs[i]
                    break


def _attach_steps(steps: Sequence[Step]) -> list:
    """Run ``steps``; if one fails, remove the hooks the earlier ones attached and re-raise."""
    handles: list = []
    try:
        for step in steps:
            handles.append(step())
    except BaseException:
        for h in reversed(handles):
            h.remove()
        raise
    return handles


class _Handles:
    """Several handles removed as one."""

    def __init__(self, handles) -> None:
        self._handles = list(handles)

    def remove(self) -> None:
        for h in reversed(self._handles):
            h.remove()


def attach_all(model, interventions: Sequence[Intervention]) -> list:
    """Validate every intervention against ``model``, then attach them all; returns the
    handles. If any is invalid, nothing is attached (the error names the problem)."""
    plans = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"model.intervene takes interventions (AddVector, SuppressKeys, ...), got {type(iv).__name__}")
        plans.append(iv.plan(model))
    records = [iv.record for iv in interventions if getattr(iv, "record", None) is not None]
    if len({id(r) for r in records}) < len(records):
        raise ValueError("two interventions share one SteeredRecord: give each its own (record=True)")
    steps: list[Step] = []
    for iv, plan in zip(interventions, plans):
        steps += plan if plan is not None else [lambda iv=iv: _Handles(iv.attach(model))]
        steps.append(lambda iv=iv: _ActiveMark(model, iv))
    return _attach_steps(steps)


def _vector(model, v, width: int, what: str, site=None) -> torch.Tensor:
    v = torch.as_tensor(v)
    if v.dim() not in (1, 2):
        raise ValueError(f"{what} must be (d,) or (rows, d), got shape {tuple(v.shape)}")
    if v.shape[-1] != width:
        where = "the site" if site is None else f"the site {site}"
        raise ValueError(f"{what} has width {v.shape[-1]} but {where} has width {width} in {model.spec}: "
                         f"give {width} numbers (a vector read at that site)")
    return v.to(model.device, torch.float32)


def _row_vec(v: torch.Tensor, model) -> torch.Tensor:
    """(d,) → (1, 1, d); (rows, d) → (B, 1, d) for the rows now in the batch."""
    if v.dim() == 1:
        return v.view(1, 1, -1)
    return v[model.ctx.row_ids].unsqueeze(1)


@dataclass(frozen=True, kw_only=True, eq=False)
class Intervention:
    """Base of every intervention: ``positions`` and ``rows`` select where it applies.

    A subclass implements ``plan(model)``: validate everything against the model and
    return one step per hook, attaching nothing, so ``model.intervene`` can check every
    intervention before it attaches any. (A subclass that overrides ``attach`` instead
    still works; it must leave nothing attached when it raises.)"""

    positions: P.Positions = None
    rows: Sequence[int] | torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "positions", P.normalize(self.positions))

    def plan(self, model) -> list[Step] | None:
        """Validate against ``model`` and return the steps that attach the hooks; attaches
        nothing. ``None`` means the subclass only implements ``attach`` (not validated apart)."""
        return None

    def varies_by_row(self) -> bool:
        """Whether rows of one batch may be changed differently (``rows``, per-row vectors,
        sources or spans); the sampler then prefills a shared prefix per row, not once."""
        return self.rows is not None

    def attach(self, model) -> list:
        """Attach the hooks and return their handles; nothing stays attached on an error."""
        steps = self.plan(model)
        if steps is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither plan() nor attach()")
        return _attach_steps(steps)

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


# ----- steering operators (reference/steering.md §2) --------------------------------------

#: Sites whose value is a (batch, time, width) tensor that a steering operator may edit.
STEERABLE_SITES = ("embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "final_norm", "logits")


def _steer_site(model, site: str, what: str):
    """The hook point of ``site`` if its value is a (batch, time, width) tensor; else an
    error naming a site or an intervention that fits."""
    point = resolve(model, site)
    name = point.site.name
    if name in STEERABLE_SITES:
        return point
    layer = 0 if point.layer is None else point.layer
    if name == "head_out":
        shape = "(batch, time, heads, d_head)"
        fix = f"steer attn_out[{layer}] (the heads' sum, in the residual stream's width) or scale heads with ScaleHeads"
    elif name in ("attn_scores", "attn_pattern"):
        shape, fix = "(batch, heads, query, key)", "use SuppressKeys to change attention"
    elif name in ("router_logits", "expert_topk"):
        shape, fix = "a routing value", "use ScaleExperts or ForceExperts to change routing"
    else:
        shape, fix = "a module output of unknown shape", f"name a site instead, e.g. resid_post[{layer}]"
    raise ValueError(f"{what} steers (batch, time, width) activations such as resid_post[L]; "
                     f"{point.site} is {shape}: {fix}")


def _finite(value, what: str) -> float:
    """``value`` as a float; a clear error for NaN, inf or a non-number."""
    if not isinstance(value, numbers.Real) and hasattr(value, "item"):  # a one-element tensor or array
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}: use a finite number")
    return value


def _steering_vector(model, v, width: int, what: str, site: str, *, one_row: bool, needs_direction: str | None):
    """``v`` checked against the site: its width, one row only when ``one_row``, finite
    values, and no zero vector when ``needs_direction`` names an operation that needs one."""
    v = _vector(model, v, width, what, site)
    if one_row and v.dim() != 1:
        raise ValueError(f"{what} must be one direction of shape ({width},), got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what} contains NaN or inf: use finite values")
    if needs_direction is not None:
        zero = (v.reshape(-1, width).norm(dim=-1) == 0).nonzero().flatten().tolist()
        if zero:
            which = f"{what} is zero" if v.dim() == 1 else f"rows {zero} of {what} are zero"
            raise ValueError(f"{which}, so it has no direction to {needs_direction}: use a nonzero vector")
    return v


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _ablate(h: torch.Tensor, u: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """h − weight·(h·u) u for a unit ``u`` of shape (d,) or (B, 1, d)."""
    c = (h * u).sum(-1, keepdim=True) if u.dim() > 1 else (h @ u).unsqueeze(-1)
    return h - (c if weight == 1.0 else weight * c) * u


def _derived(vec: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``f(vec)``, computed once; or at every call when ``vec`` requires grad, so each
    forward pass builds its own graph to it and can be backpropagated on its own."""
    if vec.requires_grad:
        return lambda: f(vec)
    value = f(vec)
    return lambda: value


#: ``rescale_norm`` leaves a token alone when the edit shrank it below this fraction of its
#: norm: what is left is float error (e.g. clamping a state's own direction to 0), and
#: rescaling it would blow that error up to the full norm.
_ZERO_NORM = 1e-4


class SteeredRecord:
    """Which tokens a steering operator steered, and by how much (``reference/steering.md``
    §6, "seeing which tokens were steered").

    Give a steering operator ``record=True`` (it makes one: ``op.record``) or a
    ``SteeredRecord`` of your own, one per operator. On every forward call (a pass
    without cache, a prefill, each decoding step) the operator's hook notes the absolute
    position (prompt + generated) of every token it steered and ‖Δh‖ there: the L2 norm
    of the change it made to the site's value (after any ``rescale_norm``), 0 where the
    edit changed nothing (e.g. a projection already at the clamp value). ``record[row]``
    is ``{absolute position: ‖Δh‖}`` for a row the user passed: a prompt of
    ``generate`` (left padding not counted), a continuation of ``sample``, a row of a
    forward pass. A prefix that ``sample`` prefills once for all rows counts as steered
    in every row; rows the sampler drops when they finish keep what they had.

    The record holds the latest run: a forward pass without a KV cache starts a new run
    and clears it; the decoding steps after a prefill continue it. So after
    ``model.generate(...)`` or ``model.sample(...)`` it describes that call, and after
    ``model.forward(...)`` that pass. A generation's last token is never fed back
    through the model, so it is never steered. Without a record the operator computes
    none of this.
    """

    def __init__(self) -> None:
        self._calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._run: int | None = None
        self._table: dict[int, dict[int, float]] | None = None

    def clear(self) -> None:
        """Forget everything recorded."""
        self._calls, self._run, self._table = [], None, None

    def _add(self, ctx, mask: torch.Tensor, delta_norm: torch.Tensor) -> None:
        """Note one forward call: ``mask`` (B, T) the steered tokens, ``delta_norm`` (B, T)
        ‖Δh‖. Keeps device tensors only (no synchronisation); ``by_row`` reads them."""
        if ctx.run_id != self._run:
            self.clear()
            self._run = ctx.run_id
        rows = ctx.prefix_rows if ctx.prefix_rows is not None else ctx.row_ids
        pos = torch.where(mask, ctx.query_pos[:, -mask.shape[1]:], -1)
        self._calls.append((rows, pos, delta_norm.detach()))
        self._table = None

    def by_row(self) -> dict[int, dict[int, float]]:
        """``{row: {absolute position: ‖Δh‖}}`` for every row with a steered token, rows and
        positions in increasing order. A position steered twice in a run keeps the latest value."""
        if self._table is None:
            table: dict[int, dict[int, float]] = {}
            for rows, pos, norm in self._calls:
                n, t = rows.numel(), pos.shape[1]
                rr = rows.view(-1, 1).expand(n, t).cpu()
                pp, nn = pos.expand(n, t).cpu(), norm.expand(n, t).float().cpu()
                sel = pp >= 0
                for r, p, d in zip(rr[sel].tolist(), pp[sel].tolist(), nn[sel].tolist()):
                    table.setdefault(r, {})[p] = d
            self._table = {r: dict(sorted(table[r].items())) for r in sorted(table)}
        return self._table

    def __getitem__(self, row: int) -> dict[int, float]:
        """``{absolute position: ‖Δh‖}`` of ``row`` (empty if nothing was steered there)."""
        return dict(self.by_row().get(int(row), {}))

    def positions(self, row: int) -> list[int]:
        """The absolute positions steered in ``row``, in increasing order."""
        return list(self.by_row().get(int(row), {}))

    def __repr__(self) -> str:
        table = self.by_row()
        return f"SteeredRecord({len(table)} rows, {sum(map(len, table.values()))} steered tokens)"


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringOperator(Intervention):
    """Base of the steering operators (``reference/steering.md`` §2): each edits a
    (batch, time, width) site (``STEERABLE_SITES``, e.g. ``resid_post[L]``) token by
    token at the selected positions, computing in float32.

    ``rescale_norm`` scales each steered token back to its norm before the edit,
    ‖h_new‖ = ‖h_old‖ (repeng's ``normalize=True``); a token the edit sends to 0 (below
    1e-4 of its norm: float error) is left as the edit made it, having no direction.
    ``record`` (``True`` or a ``SteeredRecord``) notes which tokens were steered and
    ‖Δh‖ there; off by default, and then nothing of it is computed.

    A subclass implements ``_edit(model, width)``: validate its inputs and return the
    function h ↦ h_new (float32, applied to every token of a forward call; the base
    keeps its value only where the positions and rows select)."""

    site: str
    rescale_norm: bool = False
    record: SteeredRecord | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.rescale_norm, bool):
            raise ValueError(f"rescale_norm is True or False, got {self.rescale_norm!r}")
        rec = self.record
        if rec is True:
            rec = SteeredRecord()
        elif rec is False:
            rec = None
        if rec is not None and not isinstance(rec, SteeredRecord):
            raise ValueError(f"record is True, False or a SteeredRecord, got {type(rec).__name__}")
        object.__setattr__(self, "record", rec)

    def _edit(self, model, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def plan(self, model):
        point = _steer_site(model, self.site, type(self).__name__)
        edit = self._edit(model, point.width)
        rescale, rec = self.rescale_norm, self.record

        def fn(x):
            m = self._mask(model, x.shape[1])
            xf = x.float()
            new = edit(xf)
            if rescale:
                before, after = xf.norm(dim=-1, keepdim=True), new.norm(dim=-1, keepdim=True)
                gone = after <= _ZERO_NORM * before  # numerically 0: float error, no direction to rescale
                new = new * torch.where(gone, 1.0, before / torch.where(gone, 1.0, after))
            out = torch.where(m.unsqueeze(-1), new, xf).to(x.dtype)
            if rec is not None:
                rec._add(model.ctx, m, (out.float() - xf).norm(dim=-1))
            return out

        return [lambda: attach(model, point, fn)]


@dataclass(frozen=True, kw_only=True, eq=False)
class AddVector(SteeringOperator):
    """h ← h + scale · vector at the selected positions (activation addition).
    ``vector`` is (d,), or (rows, d) for one vector per row the user passed."""

    vector: torch.Tensor
    scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "scale", _finite(self.scale, "AddVector scale"))

    def varies_by_row(self) -> bool:
        return super().varies_by_row() or torch.as_tensor(self.vector).dim() == 2

    def _edit(self, model, width):
        vec = _steering_vector(model, self.vector, width, "vector", self.site, one_row=False, needs_direction=None)
        scale = self.scale
        if vec.dim() == 1:
            sv = _derived(vec, lambda v: (scale * v).view(1, 1, -1))
            return lambda h: h + sv()
        sv = _derived(vec, lambda v: scale * v)
        return lambda h: h + _row_vec(sv(), model)


@dataclass(frozen=True, kw_only=True, eq=False)
class ProjectOut(SteeringOperator):
    """h ← h − weight·(h·û) û at the selected positions, û = direction/‖direction‖: ``weight`` 1
    (default) is directional ablation; another weight removes that share of the component (a
    partial ablation, heretic's ablation weight; above 1 it reverses the component)."""

    direction: torch.Tensor
    weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "weight", _finite(self.weight, "ProjectOut weight"))

    def _edit(self, model, width):
        u = _derived(_steering_vector(model, self.direction, width, "direction", self.site, one_row=True,
                                      needs_direction="project out"), _unit)
        return lambda h: _ablate(h, u(), self.weight)


@dataclass(frozen=True, kw_only=True, eq=False)
class AblateThenAdd(SteeringOperator):
    """h ← h − (h·v̂) v̂ + scale · v at the selected positions: remove the component along
    v̂ = v/‖v‖, then add the raw vector times ``scale`` (steering-vectors' ablation-then-
    addition operator). ``vector`` is (d,), or (rows, d) for one vector per row."""

    vector: torch.Tensor
    scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "scale", _finite(self.scale, "AblateThenAdd scale"))

    def varies_by_row(self) -> bool:
        return super().varies_by_row() or torch.as_tensor(self.vector).dim() == 2

    def _edit(self, model, width):
        vec = _steering_vector(model, self.vector, width, "vector", self.site, one_row=False,
                               needs_direction="ablate")
        scale = self.scale
        u, sv = _derived(vec, _unit), _derived(vec, lambda v: scale * v)
        if vec.dim() == 1:
            return lambda h: _ablate(h, u()) + sv()
        return lambda h: _ablate(h, _row_vec(u(), model)) + _row_vec(sv(), model)


@dataclass(frozen=True, kw_only=True, eq=False)
class ClampProjection(SteeringOperator):
    """h ← h + (value − h·û) û at the selected positions: the projection on
    û = direction/‖direction‖ is set to ``value``; the rest of h is kept."""

    direction: torch.Tensor
    value: float

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "value", _finite(self.value, "ClampProjection value"))

    def _edit(self, model, width):
        u = _derived(_steering_vector(model, self.direction, width, "direction", self.site, one_row=True,
                                      needs_direction="clamp along"), _unit)
        c = self.value

        def clamp(h):
            uu = u()
            return h + (c - h @ uu).unsqueeze(-1) * uu

        return clamp


@dataclass(frozen=True, kw_only=True, eq=False)
class Patch(Intervention):
    """x[b, t] ← source[b, p] at the selected positions, where p is token t's absolute
    position: ``source`` is a (rows or 1, S, …) activation of the same site from another
    run (e.g. a ``Capture`` value), indexed by absolute position."""

    site: str
    source: torch.Tensor

    def varies_by_row(self) -> bool:
        return super().varies_by_row() or torch.as_tensor(self.source).shape[0] > 1

    def plan(self, model):
        point = _tensor_site(model, self.site, "Patch")
        src = torch.as_tensor(self.source).to(model.device)
        if src.dim() < 3:
            raise ValueError(f"Patch source must be (rows, positions, ...), got shape {tuple(src.shape)}")
        if src.shape[-1] != point.width:
            raise ValueError(f"Patch source has width {src.shape[-1]} but {point.site} has width {point.width} in {model.spec}")

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

        return [lambda: attach(model, point, fn)]


class NormScope(StrEnum):
    """What the norm-preserving rescale of ``ScaleHeads`` measures the norm over."""

    #: each token's (heads × d_head) output on its own: the same in one forward pass and
    #: under KV-cache decoding, and the same for a row alone or in a batch (padding is
    #: never selected, so it is left as it is).
    TOKEN = "token"
    #: the whole (batch, time, heads, d_head) tensor of one forward call, as the reference
    #: code does (``reference/refusal.md`` A4): the prompt at prefill, then each decoding
    #: step on its own, over every row of the batch, padding included. So the same
    #: intervention gives different numbers in one forward pass and under the KV cache,
    #: and for a row alone and in a batch; use it to reproduce the reference.
    TENSOR = "tensor"


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleHeads(Intervention):
    """Multiply chosen heads' outputs (before the output projection) by ``scale``
    (0 = zero-ablation) at the selected positions. ``heads`` are (layer, head) pairs.

    With ``rescale_norm``, the layer's head outputs are rescaled to their pre-ablation
    Frobenius norm (``reference/refusal.md`` A4, norm-preserving ablation), measured
    over ``norm_over``: per token by default (``NormScope.TOKEN``: z_t ← z′_t·‖z_t‖/‖z′_t‖
    over heads × d_head, consistent across the KV cache and the batch), or over the
    whole tensor of each forward call as the reference does (``NormScope.TENSOR``:
    batch- and cache-dependent, see ``NormScope``). A token whose every head is scaled
    to 0 stays 0 (there is nothing to rescale)."""

    heads: Iterable[tuple[int, int]]
    scale: float = 0.0
    rescale_norm: bool = False
    norm_over: NormScope = NormScope.TOKEN

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.rescale_norm, bool):
            raise ValueError(
                f"rescale_norm is True or False, got {self.rescale_norm!r}; "
                f"choose the norm with norm_over={[n.value for n in NormScope]}"
            )
        try:
            object.__setattr__(self, "norm_over", NormScope(self.norm_over))
        except ValueError:
            raise ValueError(f"unknown norm_over {self.norm_over!r}: use one of {[n.value for n in NormScope]}") from None
        object.__setattr__(self, "heads", tuple((int(layer), int(head)) for layer, head in self.heads))

    def plan(self, model):
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            L = model.check_layer(layer, f"ScaleHeads layer {layer}")
            if not 0 <= head < model.n_heads:
                raise ValueError(f"head {head} out of range: {model.spec} has heads 0..{model.n_heads - 1}")
            by_layer.setdefault(L, []).append(head)
        steps = []
        for L, heads in by_layer.items():
            point = resolve(model, Site("head_out", L))
            factor = torch.ones(model.n_heads, device=model.device)
            factor[heads] = self.scale

            def fn(z, factor=factor):
                m = self._mask(model)[..., None, None]
                new = torch.where(m, z * factor.view(-1, 1).to(z.dtype), z)
                if self.rescale_norm:
                    dims = (-2, -1) if self.norm_over is NormScope.TOKEN else tuple(range(z.dim()))
                    before = z.float().pow(2).sum(dims, keepdim=True).sqrt()
                    after = new.float().pow(2).sum(dims, keepdim=True).sqrt()
                    new = new * (before / after.clamp_min(1e-12)).to(z.dtype)
                return new

            steps.append(lambda point=point, fn=fn: attach(model, point, fn))
        return steps


@dataclass(frozen=True, kw_only=True, eq=False)
class SuppressKeys(Intervention):
    """Remove keys at absolute positions in ``span`` from the attention of the queries
    selected by ``positions`` (default all), in ``layers`` and ``heads`` (default all):
    their pre-softmax scores become ``-inf``, so they get exactly zero weight and the
    other keys renormalise (``reference/thought_anchors.md`` §7). ``span`` may be a list
    with one span per row of the batch (row r of the user's batch suppresses
    ``span[r]``), so many suppressed variants run as one batched forward.

    Keys the causal and padding masks block stay blocked. A query whose every visible
    key is suppressed (e.g. query 0 with ``span=(0, 1)``) has nothing left to attend to:
    its attention weights are all zero and so is that head's output (``head_out``); the
    layer's attention output there is then only the output projection's bias, if any."""

    span: P.Span | tuple[int, int] | Sequence[P.Span | tuple[int, int]]
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    def _bounds(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) per user row (one row when a single span is given)."""
        spans = [self.span] if self._single() else list(self.span)
        if not spans:
            raise ValueError("SuppressKeys needs a span (start, end) or one span per row, got an empty list")
        spans = [sp if isinstance(sp, P.Span) else P.Span(*sp) for sp in spans]
        big = torch.iinfo(torch.long).max
        starts = torch.tensor([sp.start for sp in spans], device=model.device)
        ends = torch.tensor([big if sp.end is None else sp.end for sp in spans], device=model.device)
        return starts, ends

    def _single(self) -> bool:
        return isinstance(self.span, P.Span) or (
            isinstance(self.span, tuple) and len(self.span) == 2 and all(isinstance(x, int) for x in self.span)
        )

    def varies_by_row(self) -> bool:
        return super().varies_by_row() or (not self._single() and len(list(self.span)) > 1)

    def plan(self, model):
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
            # -inf, not the dtype's minimum: the mask blocks keys with that minimum, and the
            # attention function blocks them again at -inf after any edit (attention.py).
            return scores.masked_fill(m, float("-inf"))

        return [lambda L=L: attach(model, resolve(model, Site("attn_scores", L)), fn) for L in layers]


def _router_rows(model, intervention: Intervention) -> torch.Tensor:
    return intervention._mask(model).reshape(-1)


def _check_experts(model, experts, what: str) -> None:
    bad = [e for e in experts if not isinstance(e, numbers.Integral) or not 0 <= e < model.n_experts]
    if bad:
        raise ValueError(f"{what}: experts {bad} out of range: {model.spec} has experts 0..{model.n_experts - 1}")


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleExperts(Intervention):
    """RICE: w′ = β·w for routing weights of (layer, expert) pairs where the router
    selected them; never forces an expert in. ``renormalize`` rescales so Σw′ = Σw
    (``reference/moe_experts.md`` §2; off by default as in the paper). When the scaled
    weights of a token sum to 0 (every selected expert scaled by β = 0) no rescaling can
    restore the sum: that token keeps w′ = 0, so its routed experts contribute nothing."""

    scales: Mapping[tuple[int, int], float]
    renormalize: bool = False

    def plan(self, model):
        if not model.is_moe:
            model.router(0, "ScaleExperts")  # raises the dense-model error
        by_layer: dict[int, torch.Tensor] = {}
        for (layer, expert), beta in self.scales.items():
            L = model.check_layer(layer, "ScaleExperts")
            model.router(L, "ScaleExperts")
            _check_experts(model, [expert], "ScaleExperts")
            if not torch.isfinite(torch.tensor(float(beta))):
                raise ValueError(f"ScaleExperts scale for (layer {layer}, expert {expert}) is {beta}: use a finite number")
            by_layer.setdefault(L, torch.ones(model.n_experts, device=model.device))[expert] = beta
        steps = []
        for L, factor in by_layer.items():
            gate = model.router(L)

            def hook(_mod, _args, out, factor=factor):
                logits, w, idx = out
                m = _router_rows(model, self).unsqueeze(-1)
                new = w * factor[idx].to(w.dtype)
                if self.renormalize:
                    total = new.sum(-1, keepdim=True)
                    ratio = w.sum(-1, keepdim=True) / torch.where(total == 0, 1, total)
                    new = new * torch.where(total == 0, 1, ratio)
                return logits, torch.where(m, new, w), idx

            steps.append(lambda gate=gate, hook=hook: gate.register_forward_hook(hook))
        return steps


@dataclass(frozen=True, kw_only=True, eq=False)
class ForceExperts(Intervention):
    """SteerMoE rerouting: in the router's log-softmax, experts in ``include`` are set to
    the row max + 0.01 and those in ``forbid`` to the row min − 0.01; then softmax,
    top-k and the family's renormalisation (``reference/moe_experts.md`` §3).
    ``layers`` defaults to every MoE layer; naming a dense layer is an error."""

    layers: Sequence[int] | None = None
    include: Sequence[int] = field(default_factory=tuple)
    forbid: Sequence[int] = field(default_factory=tuple)

    def plan(self, model):
        if not model.is_moe:
            raise ValueError(f"ForceExperts needs a mixture-of-experts model, but {model.spec} ({model.family}) is dense")
        inc, forb = list(self.include), list(self.forbid)
        if set(inc) & set(forb):
            raise ValueError(f"experts {sorted(set(inc) & set(forb))} are both included and forbidden")
        _check_experts(model, inc + forb, "ForceExperts")
        layers = model.moe_layers if self.layers is None else [model.check_layer(L, "ForceExperts") for L in self.layers]
        gates = {L: model.router(L, "ForceExperts") for L in layers}  # every layer checked before any hook
        steps = []
        for L, gate in gates.items():
            k = int(gate.top_k)
            if len(inc) > k:
                raise ValueError(f"cannot force {len(inc)} experts into the top-{k} router of layer {L}")
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

            steps.append(lambda gate=gate, hook=hook: gate.register_forward_hook(hook))
        return steps

"""Attention with hook points on pre-softmax scores and on the pattern.

Registered with transformers' ``AttentionInterface`` under the name ``probes``. While
no score/pattern hook is attached to a layer it delegates to transformers' SDPA
kernel; otherwise it runs the eager computation (the same arithmetic as HF's
``eager_attention_forward``) and lets hooks read or edit the scores ``(B, H, Q, K)``
before the softmax and the pattern after it. Hooks can reduce the pattern per layer
inside the forward (receiver heads never hold every layer's T×T at once).

When a score hook edits the scores (returns a tensor), keys the attention mask blocks
(causal future, padding) are blocked again after it, at ``-inf``, so an edit can never
let a query see them; a query left with no key to attend to (every score ``-inf``, e.g.
``SuppressKeys`` over all of its past) gets all-zero weights and a zero attention
output. Hooks that only read leave the computation exactly HF's eager one.

The mask interface must be registered too: without it transformers builds no causal
mask for an unknown implementation name (``reference/stack.md`` §5, pitfall 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from probes.models.sites import HookKind

IMPLEMENTATION = "probes"

ScoreHook = Callable[[torch.Tensor], torch.Tensor | None]


#: Score/pattern hooks attached across all models; while 0, masks are built for SDPA
#: (which may skip them entirely), otherwise as eager float masks.
_ACTIVE = 0


class AttentionHooks:
    """Score and pattern hooks of one model, per layer; ``handle.remove()`` detaches."""

    def __init__(self) -> None:
        self.scores: dict[int, list[ScoreHook]] = defaultdict(list)
        self.pattern: dict[int, list[ScoreHook]] = defaultdict(list)
        #: layer → (K, V) of a prefix shared by every row (batch 1), set by the sampler
        #: while its cache stores only each row's continuation for that layer.
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, kind: HookKind, layer: int, fn: ScoreHook) -> _Handle:
        global _ACTIVE
        if kind not in (HookKind.SCORES, HookKind.PATTERN):
            raise ValueError(f"attention hooks are {HookKind.SCORES.value!r} or {HookKind.PATTERN.value!r}, got {kind!r}")
        table = self.scores if kind == HookKind.SCORES else self.pattern
        table[layer].append(fn)
        _ACTIVE += 1
        return _Handle(table[layer], fn)

    def active(self, layer: int) -> bool:
        return bool(self.scores.get(layer)) or bool(self.pattern.get(layer))


class _Handle:
    def __init__(self, lst: list, fn) -> None:
        self._lst, self._fn = lst, fn

    def remove(self) -> None:
        global _ACTIVE
        if self._fn in self._lst:
            self._lst.remove(self._fn)
            _ACTIVE -= 1


def attentions_requested() -> bool:
    """Whether the running HF forward collects attention weights (``output_attentions=True``)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # pragma: no cover - older transformers
        return False
    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def probes_mask(*args, **kwargs):
    """Eager float mask while any score/pattern hook is attached or attention weights
    are requested, else the SDPA mask."""
    from transformers.masking_utils import eager_mask, sdpa_mask

    return (eager_mask if _ACTIVE or attentions_requested() else sdpa_mask)(*args, **kwargs)


def probes_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention forward with score/pattern hooks; signature of transformers' interface."""
    hooks: AttentionHooks | None = getattr(module, "_probes_hooks", None)
    layer = getattr(module, "_probes_layer", None)
    # weights are computed when a hook needs them or the caller asked HF for them
    eager = (hooks is not None and hooks.active(layer)) or attentions_requested()
    prefix = hooks.prefix.get(layer) if hooks is not None else None
    if prefix is not None:
        if query.shape[2] == 1 and attention_mask is None and not eager:
            return shared_prefix_attention(query, *prefix, key, value, scaling)
        # hooks or a mask need the whole key sequence: materialise it for this step
        key = torch.cat([prefix[0].expand(key.shape[0], -1, -1, -1), key], dim=2)
        value = torch.cat([prefix[1].expand(value.shape[0], -1, -1, -1), value], dim=2)
    if not eager:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    inplace = not torch.is_grad_enabled()  # one (B, H, Q, K) buffer at a time when nothing needs gradients
    scores = torch.matmul(query, key.transpose(2, 3))
    scores = scores.mul_(scaling) if inplace else scores * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores.add_(mask) if inplace else scores + mask
    edited = False
    for fn in hooks.scores.get(layer, ()) if hooks is not None else ():
        out = fn(scores)
        if out is not None:
            scores, edited = out, True
    empty = None
    if edited:
        scores, empty = _keep_masked(scores, attention_mask, inplace)
    if inplace and scores.dtype == torch.float32:
        weights = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
        weights = weights.div_(weights.sum(-1, keepdim=True)).to(query.dtype)
    else:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if empty is not None:
        weights = weights.masked_fill_(empty, 0.0) if inplace else weights.masked_fill(empty, 0.0)
    for fn in hooks.pattern.get(layer, ()) if hooks is not None else ():
        out = fn(weights)
        weights = weights if out is None else out
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout, training=True)
    attn_output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return attn_output, weights


def _keep_masked(scores: torch.Tensor, attention_mask: torch.Tensor | None, inplace: bool):
    """Scores edited by a hook, with the keys the mask blocks set to ``-inf`` again, and
    the (B, H, Q, 1) bool of rows left with no key at all.

    The eager mask blocks a key by adding the dtype's minimum; an edit that writes that
    same minimum (or ``-inf``) elsewhere would otherwise tie with blocked keys, and a
    query whose every visible key was removed would spread its attention evenly over
    future and padding keys. Empty rows get score 0 (finite, so softmax and its
    gradient stay finite) and are zeroed after the softmax by the caller. No host sync."""
    fill = torch.Tensor.masked_fill_ if inplace else torch.Tensor.masked_fill
    if attention_mask is not None and attention_mask.dtype.is_floating_point:
        blocked = attention_mask[:, :, :, : scores.shape[-1]] <= torch.finfo(attention_mask.dtype).min
        scores = fill(scores, blocked, float("-inf"))
    empty = torch.isneginf(scores.amax(-1, keepdim=True))
    return fill(scores, empty, 0.0), empty


def shared_prefix_attention(query, prefix_key, prefix_value, key, value, scaling=None):
    """One decoding step of B rows that share a prefix (batch-1 ``prefix_key/value``)
    and each have their own continuation (``key/value``, B rows): the prefix is read
    once for all rows instead of once per row. Exactly softmax(q·[Kp; Ks]) [Vp; Vs]."""
    B, H, _, D = query.shape
    KV, P = prefix_key.shape[1], prefix_key.shape[2]
    n_rep = H // KV
    scaling = D**-0.5 if scaling is None else scaling
    q = query.reshape(B, KV, n_rep, D)  # head h uses KV head h // n_rep
    qp = q.permute(1, 0, 2, 3).reshape(KV, B * n_rep, D)
    sp = torch.matmul(qp, prefix_key[0].transpose(1, 2)).reshape(KV, B, n_rep, P).permute(1, 0, 2, 3)
    ss = torch.matmul(q, key.transpose(2, 3))
    w = torch.softmax(torch.cat([sp, ss], dim=-1).float() * scaling, dim=-1).to(query.dtype)
    wp = w[..., :P].permute(1, 0, 2, 3).reshape(KV, B * n_rep, P)
    out = torch.matmul(wp, prefix_value[0]).reshape(KV, B, n_rep, -1).permute(1, 0, 2, 3)
    out = out + torch.matmul(w[..., P:], value)
    return out.reshape(B, H, 1, -1).transpose(1, 2), None


_REGISTERED = False


def register() -> None:
    """Register the ``probes`` attention and mask functions with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, probes_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, probes_mask)
    _REGISTERED = True

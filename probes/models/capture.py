"""Capture: read only the requested sites, at requested positions (DESIGN.md "Capture only what is asked").

The forward stops right after the last decoder block a requested site needs when
neither ``final_norm`` nor ``logits`` is asked for. A per-site ``reduce`` function runs
inside the hook (e.g. sentence-averaging an attention pattern), so only its result is
kept: a 4k-token trace never holds every layer's T×T pattern at once.

With ``grad=True`` the values are kept in the autograd graph instead of detached
copies, so gradients flow from them back to tensors that require grad (e.g. the
vector of an ``AddVector`` being optimised); the model's weights are held constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from probes.models.hooks import attach
from probes.models.sites import Site, resolve


class _StopForward(Exception):
    pass


@dataclass
class Capture:
    """Values read during one forward, keyed by site string (``"resid_post[3]"``).

    Tensors are (B, T, …) in the batch's layout, or (B, n_positions, …) when absolute
    ``positions`` were requested. ``input_ids`` and ``attention_mask`` are the batch as run.
    """

    values: dict[str, Any]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None

    def __getitem__(self, site) -> Any:
        key = str(Site.parse(site))
        if key not in self.values:
            raise KeyError(f"{key} was not captured; captured: {', '.join(self.values)}")
        return self.values[key]

    def __contains__(self, site) -> bool:
        return str(Site.parse(site)) in self.values

    def keys(self):
        return self.values.keys()


def _select(x: torch.Tensor, query_pos: torch.Tensor, query_valid: torch.Tensor, positions: Sequence[int]):
    """Gather absolute ``positions`` from a (B, T, …) value: → (B, n, …)."""
    want = torch.as_tensor(list(positions), device=query_pos.device)
    hit = (query_pos.unsqueeze(-1) == want) & query_valid.unsqueeze(-1)  # (B, T, n)
    if not bool(hit.any(1).all()):
        raise ValueError(f"positions {list(positions)} are not all inside every row (row lengths differ?)")
    cols = hit.float().argmax(1)  # (B, n)
    idx = cols.view(*cols.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)


def run_capture(
    model,
    batch,
    sites: Sequence[str | Site],
    positions: Sequence[int] | None = None,
    reduce: Mapping[str, Callable] | None = None,
    stop_early: bool = True,
    grad: bool = False,
) -> Capture:
    points = [resolve(model, s) for s in sites]
    reduce = dict(reduce or {})
    values: dict[str, Any] = {}
    handles = []

    def reader(point):
        key = str(point.site)
        fn = reduce.get(key) or reduce.get(point.site.name)

        def keep(t: torch.Tensor, copy: bool = True) -> torch.Tensor:
            # copied (a gather copies too), so later in-place edits of the forward never reach the value
            t = t if grad else t.detach()
            return t.clone() if copy else t

        def read(v):
            ctx = model.ctx
            if fn is not None:
                values[key] = fn(v, point.site.layer) if point.site.layer is not None else fn(v)
                return None
            if isinstance(v, tuple):
                v = tuple(keep(t) for t in v)
                if positions is not None:
                    v = tuple(_select(t, ctx.query_pos, ctx.query_valid, positions) for t in v)
            elif positions is not None and not point.kind.in_attention:
                v = _select(keep(v, copy=False), ctx.query_pos, ctx.query_valid, positions)
            elif positions is not None:  # attention: select query rows, (B, H, n, K)
                v = _select(keep(v, copy=False).transpose(1, 2), ctx.query_pos, ctx.query_valid, positions).transpose(1, 2)
            else:
                v = keep(v)
            values[key] = v
            return None

        return read

    needs_all = any(p.layer is None for p in points)
    last = None if needs_all or not stop_early else max(p.layer for p in points)
    with model.scope():
        try:
            for p in points:
                handles.append(attach(model, p, reader(p)))
            if last is not None:

                def stop(*_):
                    raise _StopForward

                handles.append(model.layers[last].register_forward_hook(stop))
            try:
                model._run(batch, grad=grad)
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
    return Capture(values, batch["input_ids"], batch.get("attention_mask"))

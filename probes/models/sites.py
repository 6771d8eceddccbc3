"""Named sites: where activations are read and changed (DESIGN.md "One site vocabulary").

A site is a name from ``SITES`` with a layer where the name is per-layer
(``resid_post[3]``), or a raw module path (``model.layers.3.mlp.down_proj``) as the
escape hatch. ``resolve`` turns a site into a ``HookPoint``: the module (or the
attention function) to hook, and how to read and replace the value in the hook's
payload. Canonical shapes (batch B, time T):

- ``embed``, ``resid_pre/resid_mid/resid_post[L]``, ``attn_out[L]``, ``mlp_out[L]``,
  ``final_norm``: (B, T, d_model); ``logits``: (B, T, vocab)
- ``head_out[L]``: (B, T, n_heads, d_head), each head's output before the output projection
- ``attn_scores[L]`` (pre-softmax, mask added) and ``attn_pattern[L]``: (B, n_heads, T_q, T_k)
- ``router_logits[L]``: (B, T, n_experts); ``expert_topk[L]``: (ids, weights), each (B, T, k)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

LAYER_SITES = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "attn_scores",
    "attn_pattern",
    "head_out",
    "router_logits",
    "expert_topk",
)
GLOBAL_SITES = ("embed", "final_norm", "logits")
SITES = GLOBAL_SITES[:1] + LAYER_SITES + GLOBAL_SITES[1:]
MOE_SITES = ("router_logits", "expert_topk")
_SITE_RE = re.compile(r"^([a-z_]+)\[(-?\d+)\]$")


@dataclass(frozen=True)
class Site:
    """A named site (``name``, ``layer``) or a raw module path (``name="module"``, ``path``)."""

    name: str
    layer: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, site: str | Site) -> Site:
        if isinstance(site, Site):
            return site
        m = _SITE_RE.match(site)
        if m:
            name, layer = m.group(1), int(m.group(2))
            if name not in LAYER_SITES:
                raise ValueError(f"unknown site {site!r}: per-layer sites are {', '.join(LAYER_SITES)}")
            return cls(name, layer)
        if site in LAYER_SITES:
            raise ValueError(f"site {site!r} needs a layer, e.g. {site}[0]")
        if site in GLOBAL_SITES:
            return cls(site)
        if "." in site or site.isidentifier():
            return cls("module", path=site)
        raise ValueError(f"unknown site {site!r}: use one of {', '.join(SITES)} (with [layer]) or a module path")

    def __str__(self) -> str:
        if self.name == "module":
            return str(self.path)
        return self.name if self.layer is None else f"{self.name}[{self.layer}]"


class HookKind(StrEnum):
    """Where a site's hook runs (a ``StrEnum``: ``HookKind.FWD == "fwd"``)."""

    #: a torch forward hook on ``module`` (reads and replaces its output)
    FWD = "fwd"
    #: a torch forward pre-hook on ``module`` (reads and replaces its input)
    PRE = "pre"
    #: inside the ``probes`` attention function, on the pre-softmax scores of ``layer``
    SCORES = "scores"
    #: inside the ``probes`` attention function, on the softmax pattern of ``layer``
    PATTERN = "pattern"

    @property
    def in_attention(self) -> bool:
        return self in (HookKind.SCORES, HookKind.PATTERN)


@dataclass
class HookPoint:
    """How to reach one site: a torch hook on ``module`` (``HookKind.FWD``/``PRE``) or a
    hook inside the attention function of ``layer`` (``HookKind.SCORES``/``PATTERN``)."""

    site: Site
    kind: HookKind
    module: torch.nn.Module | None
    layer: int | None
    get: Callable[[Any], Any]
    put: Callable[[Any, Any], Any] | None
    width: int | None = None


def _out_get(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _out_put(out, value):
    return value if isinstance(out, torch.Tensor) else (value, *out[1:])


def _in_get(payload):
    args, kwargs = payload
    return args[0] if args else kwargs["hidden_states"]


def _in_put(payload, value):
    args, kwargs = payload
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _in_put_inplace(payload, value):
    # resid_mid is the input of the second norm, which is the same tensor object as the
    # block's residual: editing it in place edits both.
    _in_get(payload).copy_(value)
    return payload


def resolve(model, site: str | Site) -> HookPoint:
    """The hook point of ``site`` on ``model``; clear errors for bad layers or MoE sites on dense models."""
    site = Site.parse(site)
    ad, cfg = model.adapter, model.hf.config
    d_model = cfg.hidden_size
    if site.name == "module":
        try:
            mod = model.hf.get_submodule(site.path)
        except AttributeError:
            raise ValueError(f"no module {site.path!r} in {model.spec}; see `probes info` for the site table") from None
        return HookPoint(site, HookKind.FWD, mod, None, _out_get, _out_put)
    if site.name == "embed":
        return HookPoint(site, HookKind.FWD, model.hf.get_submodule(ad.embed), None, _out_get, _out_put, d_model)
    if site.name == "final_norm":
        return HookPoint(site, HookKind.FWD, model.hf.get_submodule(ad.final_norm), None, _out_get, _out_put, d_model)
    if site.name == "logits":
        return HookPoint(site, HookKind.FWD, model.hf.get_submodule(ad.lm_head), None, _out_get, _out_put, cfg.vocab_size)
    L = model.check_layer(site.layer, site)
    block = model.layers[L]
    if site.name == "resid_pre":
        return HookPoint(site, HookKind.PRE, block, L, _in_get, _in_put, d_model)
    if site.name == "resid_mid":
        return HookPoint(site, HookKind.PRE, block.get_submodule(ad.layer_mid_norm), L, _in_get, _in_put_inplace, d_model)
    if site.name == "resid_post":
        return HookPoint(site, HookKind.FWD, block, L, _out_get, _out_put, d_model)
    if site.name == "attn_out":
        return HookPoint(site, HookKind.FWD, block.get_submodule(ad.layer_attn), L, _out_get, _out_put, d_model)
    if site.name == "mlp_out":
        return HookPoint(site, HookKind.FWD, block.get_submodule(ad.layer_mlp), L, _out_get, _out_put, d_model)
    if site.name in ("attn_scores", "attn_pattern"):
        kind = HookKind.SCORES if site.name == "attn_scores" else HookKind.PATTERN
        return HookPoint(site, kind, None, L, lambda w: w, lambda _w, v: v)
    if site.name == "head_out":
        H, D = model.n_heads, model.d_head

        def get(payload):
            x = _in_get(payload)
            return x.view(*x.shape[:-1], H, D)

        def put(payload, value):
            return _in_put(payload, value.reshape(*value.shape[:-2], H * D))

        return HookPoint(site, HookKind.PRE, block.get_submodule(ad.layer_o_proj), L, get, put, D)
    if site.name in MOE_SITES:
        gate = model.router(L, site)
        if site.name == "router_logits":

            def get(out):
                B, T = model.ctx.batch_shape
                return out[0].view(B, T, -1)

            return HookPoint(site, HookKind.FWD, gate, L, get, None, model.n_experts)

        def get(out):
            B, T = model.ctx.batch_shape
            return out[2].view(B, T, -1), out[1].view(B, T, -1)

        def put(out, value):
            ids, w = value
            return out[0], w.reshape(out[1].shape).to(out[1].dtype), ids.reshape(out[2].shape)

        return HookPoint(site, HookKind.FWD, gate, L, get, put)
    raise AssertionError(site)

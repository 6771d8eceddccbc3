"""Attach a value function to a hook point; every attachment returns a removable handle.

``fn(value) -> new value | None`` sees the site's value in its canonical shape
(``sites.py``); returning ``None`` leaves the forward untouched (a read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probes.models.sites import HookKind, HookPoint


def attach(model, point: HookPoint, fn: Callable[[Any], Any]):
    if point.kind.in_attention:
        return model.attn_hooks.add(point.kind, point.layer, fn)
    if point.kind is HookKind.FWD:

        def fwd_hook(_module, _args, out):
            new = fn(point.get(out))
            return None if new is None else point.put(out, new)

        return point.module.register_forward_hook(fwd_hook)

    def pre_hook(_module, args, kwargs):
        new = fn(point.get((args, kwargs)))
        return None if new is None else point.put((args, kwargs), new)

    return point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

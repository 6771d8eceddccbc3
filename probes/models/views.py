"""nnsight and TransformerLens views over a probes ``Model`` (DESIGN.md "Views for people's habits").

``model.nnsight`` and ``model.tl`` let people keep the API they know while reading the
same weights as the torch-hook path (``model.capture`` / ``model.intervene``);
``tests/parity/test_views.py`` proves the three paths see the same numbers. Neither
library is imported until a view is built (``import probes`` stays light).

**Interventions.** ``model.nnsight`` runs ``model.hf`` itself, so inside
``with model.intervene(...)`` its traces see the interventions exactly as
``model.forward`` does. ``model.tl`` runs TransformerLens' own copy of the module tree
(below), which probes' hooks never reach: rather than silently return un-intervened
numbers, it raises while any intervention is active. Steer the bridge with its own
hooks (``model.tl.run_with_hooks``) outside the scope.

**nnsight** (``nnsight_view``): a ``LanguageModel`` around ``model.hf`` itself and
``model.tokenizer``. nnsight leaves the module tree alone; it sets an instance
``forward`` on each module (a pass-through outside traces) and, as any nnsight model
does, sets ``tokenizer.padding_side = "left"`` (and ``pad_token = eos_token`` when the
tokenizer has none). probes pads its own batches, so neither matters to it.

**TransformerLens** (``tl_view``): a ``TransformerBridge`` booted with
``boot_transformers(name, hf_model=..., tokenizer=...)``. Booting rewrites the module
it is given *in place* (``reference/stack.md`` §3 and TL's own ``build_bridge_from_module``
docstring): every embedding, block, attention, MLP and linear is replaced in its parent
by a TL wrapper (``model.layers.0`` becomes a ``BlockBridge`` holding the original
block, whose ``self_attn`` becomes an attention bridge that recomputes attention
itself), and the config is switched to eager attention. Booted over ``model.hf``
directly, that would leave ``Model.layers`` pointing at a detached list, route
``self_attn`` through TL's own attention so the ``probes`` attention function (and with
it ``attn_pattern``/``attn_scores`` captures and ``SuppressKeys``) silently never runs,
and make module-path sites resolve to wrappers. Re-installing the ``probes``
implementation afterwards does not help: TL's attention bridge never calls it.

So the bridge is booted over a *shell* of ``model.hf``: a structural copy whose
modules and config are new objects but whose every parameter and buffer is the very
tensor object of ``model.hf`` (``deepcopy`` with those tensors pre-seeded in the memo).
No weights are copied; in-place weight edits (``p.data``, ``p.copy_``, ablations that
write into weights) are seen by both. TL's rewiring, eager switch and hooks touch only
the shell, so ``model.hf`` keeps its tree, its ``probes`` attention and no foreign hooks.
The bridge gets its own tokenizer, reloaded from a saved copy of ``model.tokenizer``:
TL reloads the tokenizer by ``name_or_path`` and normalises (mutates) the one it uses.
Caveats of sharing tensors: ``model.tl.enable_compatibility_mode()`` (LayerNorm
folding, weight centring) rewrites weights, the fused MoE experts in place, so the view
first gives itself its own copy of every tensor (one more copy of the model in memory;
from then on it no longer follows edits to ``model.hf``). Build views after moving the
model (``model.hf.to(...)`` replaces buffers; ``del model.tl`` drops a cached view).
"""

from __future__ import annotations

import copy
import functools
import shutil
import tempfile
import warnings
import weakref

import torch

from probes.models.attention import IMPLEMENTATION


def nnsight_view(model):
    """An nnsight ``LanguageModel`` over ``model.hf`` itself (no copy) and ``model.tokenizer``."""
    from nnsight import LanguageModel

    try:
        from nnsight import NNsightDeprecationWarning
    except ImportError:  # pragma: no cover - older nnsight
        NNsightDeprecationWarning = DeprecationWarning
    with warnings.catch_warnings():
        # 0.8 renamed LanguageModel to TransformersModel(task="text-generation") and warns;
        # LanguageModel is the name people know (and a subclass), so it is what we hand out.
        warnings.simplefilter("ignore", NNsightDeprecationWarning)
        lm = LanguageModel(model.hf, tokenizer=model.tokenizer)
    if lm._module is not model.hf:  # pragma: no cover - guards a future nnsight change
        raise RuntimeError("nnsight wrapped a copy of the model; the view must share model.hf")
    return lm


_RUN_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks")


def _foreign(mod: torch.nn.Module) -> list[str]:
    """Instance attributes of ``mod`` that belong to other views, not to the model:
    the probes attention table (the shell runs TL's attention, not ours) and nnsight's
    pass-through ``forward`` with its back-reference. Another instance ``forward``
    (accelerate's device hooks) is part of how the model runs and is kept."""
    names = [n for n in ("_probes_hooks", "_probes_layer", "__nnsight__") if n in mod.__dict__]
    fwd = mod.__dict__.get("forward")
    if fwd is not None and ("__nnsight__" in mod.__dict__ or type(fwd).__module__.startswith("nnsight")):
        names.append("forward")
    return names


def shell(hf: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``hf`` that shares every parameter and buffer tensor.

    Modules, containers and the config are new objects; tensors registered as
    parameters or buffers are the same objects as in ``hf`` (tied weights stay tied).
    Forward/backward hooks, nnsight's instance ``forward`` and the probes attention
    attributes are left behind, never even copied (a bound-method hook would drag its
    owner into the copy).
    """
    memo: dict[int, object] = {}
    drop: list[tuple[str, str]] = []
    for path, mod in hf.named_modules(remove_duplicate=False):
        for t in (*mod._parameters.values(), *mod._buffers.values()):
            if t is not None:
                memo[id(t)] = t
        for name in _RUN_HOOKS:
            d = mod.__dict__.get(name)
            if d is not None:
                memo[id(d)] = type(d)()
        for name in _foreign(mod):
            value = mod.__dict__[name]
            if not isinstance(value, (int, float, str, bytes, bool)):  # the memo is by id: never map shared immutables
                memo[id(value)] = None
            drop.append((path, name))
    out = copy.deepcopy(hf, memo)
    for path, name in drop:
        out.get_submodule(path).__dict__.pop(name, None)
    return out


def _reloadable_tokenizer(tokenizer):
    """A fresh copy of ``tokenizer`` whose ``name_or_path`` is a directory it reloads from.

    Returns ``(tokenizer, directory)``; the directory must outlive the bridge's boot."""
    from transformers import AutoTokenizer

    directory = tempfile.mkdtemp(prefix="probes-tl-tokenizer-")
    try:
        tokenizer.save_pretrained(directory)
        return AutoTokenizer.from_pretrained(directory), directory
    except Exception:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _unshare(*modules: torch.nn.Module) -> None:
    """Give every parameter and buffer under ``modules`` its own storage (ties kept),
    including plain tensor attributes that alias them (TL components keep some)."""
    fresh: dict[int, torch.Tensor] = {}

    def swap(t, make):
        if id(t) not in fresh:
            new = make(t)
            fresh[id(t)] = fresh[id(new)] = new
        return fresh[id(t)]

    def param(t):
        return torch.nn.Parameter(t.detach().clone(), t.requires_grad)

    with torch.no_grad():
        everything = [m for root in modules for m in root.modules()]
        for mod in everything:
            for table, make in ((mod._parameters, param), (mod._buffers, torch.clone)):
                for key, t in table.items():
                    if t is not None:
                        table[key] = swap(t, make)
        for mod in everything:
            for key, value in list(mod.__dict__.items()):
                if isinstance(value, torch.Tensor) and id(value) in fresh:
                    mod.__dict__[key] = fresh[id(value)]


def _compat_on_own_weights(bridge, original, *args, **kwargs):
    """``enable_compatibility_mode`` that never writes into ``model.hf``'s tensors.

    Weight processing (LayerNorm folding, centring) rewrites weights, in place for some
    tensors (the fused MoE experts): processed weights cannot be shared, so the view
    takes its own copy of every tensor first (memory: one more copy of the model)."""
    if not kwargs.get("no_processing", False):
        _unshare(bridge, bridge.original_model)
    return original(*args, **kwargs)


def tl_view(model):
    """A TransformerLens 4 ``TransformerBridge`` over the weights of ``model.hf`` (shared, not copied).

    Booted over ``shell(model.hf)`` so TL's in-place rewiring of the module tree and its
    switch to eager attention leave ``model.hf`` (and the probes path) untouched."""
    from transformer_lens import TransformerBridge

    if model.tokenizer is None:
        raise ValueError(f"model.tl needs a tokenizer; {model.spec} has none")
    hf = shell(model.hf)
    if not getattr(hf.config, "architectures", None):
        # TL picks its adapter from config.architectures; configs built in memory
        # (Qwen3-MoE, OLMoE) have none and no fallback (reference/stack.md §3 fix 2).
        hf.config.architectures = [type(model.hf).__name__]
    tok, directory = _reloadable_tokenizer(model.tokenizer)
    try:
        bridge = TransformerBridge.boot_transformers(
            model.spec, hf_model=hf, tokenizer=tok, device=model.device, dtype=model.dtype
        )
    except Exception:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    weakref.finalize(bridge, shutil.rmtree, directory, True)
    if (
        model.hf.get_submodule(model.adapter.layers) is not model.layers
        or model.hf.config._attn_implementation != IMPLEMENTATION
    ):  # pragma: no cover - a future TL that reaches past the shell
        raise RuntimeError(
            "booting TransformerLens changed model.hf (module tree or attention implementation); "
            "the probes path would silently lose attn_pattern/attn_scores and SuppressKeys"
        )
    _refuse_inside_interventions(model, bridge)
    # enable_compatibility_mode rewrites weights (some in place): copy them first.
    original = bridge.enable_compatibility_mode
    object.__setattr__(
        bridge, "enable_compatibility_mode", functools.partial(_compat_on_own_weights, bridge, original)
    )
    return bridge


def _refuse_inside_interventions(model, bridge) -> None:
    """Make every run of the bridge (forward, run_with_cache, run_with_hooks, generate:
    all call the shell's forward) raise while ``model`` has interventions attached."""
    from probes.models.interventions import active

    ref = weakref.ref(model)

    def check(_module, _args, _kwargs):
        m = ref()
        ivs = active(m) if m is not None else ()
        if ivs:
            names = ", ".join(type(iv).__name__ for iv in ivs)
            raise RuntimeError(
                f"model.tl cannot apply the active interventions ({names}): TransformerLens runs its own copy of "
                "the module tree, which probes' hooks do not reach. Use model.forward / model.capture / "
                "model.sample or model.nnsight inside `with model.intervene(...)`, or steer the bridge with its "
                "own hooks (model.tl.run_with_hooks) outside it"
            )

    bridge.original_model.register_forward_pre_hook(check, with_kwargs=True)


__all__ = ["nnsight_view", "tl_view", "shell"]

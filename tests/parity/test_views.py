"""The three model paths (torch hooks via ``model.capture``/``model.intervene``, nnsight via
``model.nnsight``, TransformerLens via ``model.tl``) read and steer the same numbers, and
building the views leaves the probes path intact (DESIGN.md "Views for people's habits")."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from probes.models.interventions import AddVector, SuppressKeys
from tests.tiny import FAMILIES

TOL = 1e-5
T = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on
    shared cores (OpenMP barriers under contention), and it makes the sums deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _close(a, b, what):
    a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max abs difference {err:.3g} > {TOL}"


def _ids(model, rows=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, model.vocab_size, (rows, T), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def _envoy(lm, path):
    obj = lm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _layers(model):
    """The decoder blocks in nnsight: ``lm.model.layers`` (``lm.transformer.h`` for GPT-2)."""
    return _envoy(model.nnsight, model.adapter.layers)


def _first(x):
    return x if isinstance(x, torch.Tensor) else x[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_paths_read_the_same_activations(tiny_models, family):
    model = tiny_models(family)
    ids = _ids(model)
    layers = range(model.n_layers)
    per_layer = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_pattern")
    sites = ["embed", *(f"{s}[{L}]" for L in layers for s in per_layer), "final_norm", "logits"]
    cap = model.capture(ids, sites)

    # TransformerLens: the bridge's own hook names.
    tl_logits, cache = model.tl.run_with_cache(ids)
    tl_names = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "attn_pattern": "attn.hook_pattern"}
    _close(cap["embed"], cache["hook_embed"], "embed vs TL hook_embed")
    for L in layers:
        for s in per_layer:
            _close(cap[f"{s}[{L}]"], cache[f"blocks.{L}.{tl_names[s]}"], f"{s}[{L}] vs TL blocks.{L}.{tl_names[s]}")
    # TL hook_normalized is before the norm weight; hook_out is the module output.
    _close(cap["final_norm"], cache["ln_final.hook_out"], "final_norm vs TL ln_final.hook_out")
    _close(cap["logits"], tl_logits, "logits vs TL")

    # nnsight: module inputs/outputs of the same HF module.
    lm, blocks = model.nnsight, _layers(model)
    saved = {}
    with lm.trace(ids):
        saved["embed"] = _envoy(lm, model.adapter.embed).output.save()
        for L in layers:
            blk = blocks[L]
            # nnsight wants values in the order the forward produces them.
            saved[f"resid_pre[{L}]"] = blk.input.save()
            saved[f"attn_out[{L}]"] = _envoy(blk, model.adapter.layer_attn).output[0].save()
            saved[f"resid_mid[{L}]"] = _envoy(blk, model.adapter.layer_mid_norm).input.save()
            saved[f"mlp_out[{L}]"] = _envoy(blk, model.adapter.layer_mlp).output.save()
            saved[f"resid_post[{L}]"] = blk.output.save()
        saved["final_norm"] = _envoy(lm, model.adapter.final_norm).output.save()
        saved["logits"] = lm.output.logits.save()
    for key, value in saved.items():
        _close(cap[key], _first(value), f"{key} vs nnsight")
    # resid_post of the last block is the raw block output, not hidden_states[-1] (the final norm).
    assert (cap[f"resid_post[{model.n_layers - 1}]"] - cap["final_norm"]).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_paths_steer_the_same(tiny_models, family):
    model = tiny_models(family)
    ids = _ids(model, seed=1)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    plain = model.forward(ids)

    with model.intervene(AddVector(site="resid_post[0]", vector=v, scale=1.0)):
        probes_logits = model.forward(ids)

    with model.nnsight.trace(ids):
        _layers(model)[0].output[:] += v
        nn_logits = model.nnsight.output.logits.save()

    tl_logits = model.tl.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + v)])

    assert (probes_logits - plain).abs().max() > 1e-3, "the vector should change the logits"
    _close(probes_logits, nn_logits, "AddVector vs nnsight layers[0].output += v")
    _close(probes_logits, tl_logits, "AddVector vs TL hook on blocks.0.hook_resid_post")


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_views_inside_an_intervention_scope(tiny_models, family):
    """nnsight runs model.hf itself, so its traces see active interventions exactly as
    model.forward does; TransformerLens runs its own module tree, which probes' hooks
    never reach, so it refuses instead of returning un-intervened numbers."""
    model = tiny_models(family)
    ids = _ids(model, seed=7)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(8)) * 3
    plain = model.forward(ids)
    ivs = (AddVector(site="resid_post[0]", vector=v, positions=[3, 4]), SuppressKeys(span=(1, 3), layers=[1]))
    with model.intervene(*ivs):
        steered = model.forward(ids)
        with model.nnsight.trace(ids):
            nn_logits = model.nnsight.output.logits.save()
        with pytest.raises(RuntimeError, match=r"model.tl cannot apply the active interventions \(AddVector, SuppressKeys\)"):
            model.tl(ids)
        with pytest.raises(RuntimeError, match="model.tl cannot apply"):
            model.tl.run_with_cache(ids)
    assert (steered - plain).abs().max() > 1e-3
    _close(nn_logits, steered, "nnsight inside model.intervene vs model.forward")
    _close(model.tl(ids), plain, "TL after the scope")  # usable again once the scope is closed
    assert _foreign_or_left_hooks(model) == []


def _foreign_or_left_hooks(model):
    """(module path, what) for every hook or foreign module left on ``model.hf``."""
    bad = []
    for name, mod in model.hf.named_modules():
        if type(mod).__module__.startswith("transformer_lens"):
            bad.append((name, type(mod).__name__))
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            if getattr(mod, attr):
                bad.append((name, attr))
    return bad


@pytest.mark.parametrize("family", ["qwen3", "llama", "gpt2", "qwen3_moe"])
def test_probes_path_intact_after_views(tiny_models, tiny_tokenizer, family):
    from tests.tiny import build_model

    model = tiny_models(family)
    ids = _ids(model, seed=3)
    # Use both views first.
    model.tl.run_with_cache(ids)
    with model.nnsight.trace(ids):
        _layers(model)[0].output.save()

    # TL rewires the module it boots over; model.hf must keep its tree and attention.
    assert model.hf.config._attn_implementation == "probes"
    assert model.hf.get_submodule(model.adapter.layers) is model.layers
    assert model.nnsight._module is model.hf
    assert _foreign_or_left_hooks(model) == []

    # attn_pattern equals HF eager output_attentions of the same weights.
    ref = build_model(family, vocab_size=len(tiny_tokenizer))
    ref.load_state_dict(model.hf.state_dict())
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = ref(ids, output_attentions=True).attentions
    cap = model.capture(ids, [f"attn_pattern[{L}]" for L in range(model.n_layers)])
    for L in range(model.n_layers):
        _close(cap[f"attn_pattern[{L}]"], attentions[L], f"attn_pattern[{L}] vs HF eager output_attentions")

    # SuppressKeys still acts (it lives in the probes attention function): same logits as
    # TL with the same keys' pre-softmax scores set to -inf in every layer.
    span = (2, 5)

    def kill(scores, hook):
        scores = scores.clone()
        scores[..., span[0]:span[1]] = float("-inf")
        return scores

    hooks = [(f"blocks.{L}.attn.hook_attn_scores", kill) for L in range(model.n_layers)]
    tl_logits = model.tl.run_with_hooks(ids, fwd_hooks=hooks)
    with model.intervene(SuppressKeys(span=span)):
        probes_logits = model.forward(ids)
    assert (probes_logits - model.forward(ids)).abs().max() > 1e-3
    _close(probes_logits, tl_logits, "SuppressKeys vs TL hook_attn_scores = -inf")

    # Every probes hook is gone after captures and interventions.
    with model.intervene(AddVector(site="resid_post[0]", vector=torch.ones(model.d_model)), SuppressKeys(span=span)):
        model.capture(ids, ["resid_pre[1]", "attn_pattern[0]", "mlp_out[0]"])
    assert _foreign_or_left_hooks(model) == []
    assert not any(model.attn_hooks.scores.values()) and not any(model.attn_hooks.pattern.values())


@pytest.mark.parametrize("family", ["gpt2", "qwen3_moe"])
def test_views_share_weights(tiny_tokenizer, family):
    from probes.models.load import from_hf
    from tests.tiny import build_model

    model = from_hf(build_model(family, vocab_size=len(tiny_tokenizer)), tiny_tokenizer, spec=f"tiny:{family}")
    ids = _ids(model, seed=4)
    hf_params = {id(p) for p in model.hf.parameters()}
    assert hf_params <= {id(p) for p in model.tl.parameters()}, "the bridge must hold model.hf's parameters, not copies"

    # An in-place weight edit is seen by all three paths.
    with torch.no_grad():
        for p in model.hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    edited = model.forward(ids)
    _close(model.tl(ids), edited, "TL after an in-place weight edit")
    with model.nnsight.trace(ids):
        nn_logits = model.nnsight.output.logits.save()
    _close(nn_logits, edited, "nnsight after an in-place weight edit")

    # Compatibility mode processes weights (the MoE experts in place): the view takes its
    # own copy first, so model.hf is untouched; log-probs are unchanged.
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    model.tl.enable_compatibility_mode()
    assert all(torch.equal(p, before[n]) for n, p in model.hf.named_parameters())
    hf_storage = {p.untyped_storage().data_ptr() for p in model.hf.parameters()}
    assert not hf_storage & {p.untyped_storage().data_ptr() for p in model.tl.parameters()}
    _close(model.forward(ids), edited, "model.hf after TL compatibility mode")
    _close(torch.log_softmax(model.tl(ids), -1), torch.log_softmax(edited, -1), "TL compatibility-mode log-probs")


def test_tl_view_without_architectures_or_reloadable_tokenizer(tiny_tokenizer):
    """Configs built in memory may lack ``architectures``; tokenizers built in memory have
    no ``name_or_path`` to reload (``reference/stack.md`` §3, fixes 1 and 2)."""
    from transformers import PreTrainedTokenizerFast

    from probes.models.load import from_hf
    from tests.tiny import build_model

    hf = build_model("qwen3_moe", vocab_size=len(tiny_tokenizer))
    hf.config.architectures = None
    tok = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    assert tok.init_kwargs.get("name_or_path") in (None, "")
    model = from_hf(hf, tok, spec="memory")
    ids = _ids(model, seed=5)
    logits, _ = model.tl.run_with_cache(ids)
    _close(logits, model.forward(ids), "TL vs probes")
    assert model.hf.config.architectures is None, "the view must not edit model.hf's config"
    assert model.tl.tokenizer is not tok


def test_tl_view_built_after_nnsight_inside_a_scope(tiny_tokenizer):
    """The shell TL boots over carries no probes hooks and no nnsight forwards."""
    from probes.models.load import from_hf
    from tests.tiny import build_model

    model = from_hf(build_model("llama", vocab_size=len(tiny_tokenizer)), tiny_tokenizer, spec="tiny:llama")
    ids = _ids(model, seed=6)
    with model.nnsight.trace(ids):
        nn_logits = model.nnsight.output.logits.save()
    with model.intervene(AddVector(site="resid_post[0]", vector=torch.ones(model.d_model))):
        bridge = model.tl  # built while probes hooks and nnsight forwards sit on model.hf
    shell = bridge.original_model
    assert shell is not model.hf
    assert not any("forward" in m.__dict__ or "_probes_hooks" in m.__dict__ for m in shell.modules())
    _close(bridge(ids), nn_logits, "TL vs nnsight")
    _close(bridge(ids), model.forward(ids), "TL vs probes")
    assert _foreign_or_left_hooks(model) == []


def test_import_probes_does_not_import_view_libraries():
    code = (
        "import sys, probes, probes.models, probes.models.views\n"
        "from probes.models.load import from_hf\n"
        "bad = [m for m in ('nnsight', 'transformer_lens') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""Named sites read exactly what HF computes (output_hidden_states / output_attentions),
on tiny random models of every supported family."""

import copy

import pytest
import torch

from tests.tiny import FAMILIES, MOE_FAMILIES

TEXTS = ["<bos><|user|>Alice has 3 apples.<|end|><|assistant|><think>", "hello there, résumé 🙂"]


def _eager(model):
    ref = copy.deepcopy(model.hf)
    ref.set_attn_implementation("eager")
    return ref


@pytest.fixture(params=FAMILIES)
def model(request, tiny_models):
    return tiny_models(request.param)


def test_sites_match_hf_outputs(model):
    ids = model.batch(TEXTS[0])["input_ids"]
    ref = _eager(model)(ids, output_hidden_states=True, output_attentions=True)
    n = model.n_layers
    sites = [f"resid_pre[{L}]" for L in range(n)] + [f"resid_post[{L}]" for L in range(n)]
    sites += [f"attn_pattern[{L}]" for L in range(n)] + ["final_norm", "logits", "embed"]
    sites += [f"{model.adapter.layers}.{n - 1}"]  # raw module path: the last block's raw output
    cap = model.capture(ids, sites)
    for L in range(n):
        torch.testing.assert_close(cap[f"resid_pre[{L}]"], ref.hidden_states[L], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cap[f"attn_pattern[{L}]"], ref.attentions[L], atol=1e-6, rtol=1e-5)
    for L in range(n - 1):
        torch.testing.assert_close(cap[f"resid_post[{L}]"], ref.hidden_states[L + 1], atol=1e-5, rtol=1e-5)
    # HF replaces the last hidden state by the final-norm output (stack.md, layer numbering pitfalls)
    torch.testing.assert_close(cap["final_norm"], ref.hidden_states[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap[f"resid_post[{n - 1}]"], cap[f"{model.adapter.layers}.{n - 1}"])
    torch.testing.assert_close(cap["logits"], ref.logits, atol=1e-5, rtol=1e-5)
    if model.family != "gpt2":  # GPT-2 adds learned position embeddings after the token embedding
        torch.testing.assert_close(cap["embed"], ref.hidden_states[0])


def test_residual_decomposition_and_heads(model):
    ids = model.batch(TEXTS[0])["input_ids"]
    L = model.n_layers - 1
    cap = model.capture(ids, [f"resid_pre[{L}]", f"resid_mid[{L}]", f"resid_post[{L}]", f"attn_out[{L}]",
                              f"mlp_out[{L}]", f"head_out[{L}]", f"attn_scores[{L}]", f"attn_pattern[{L}]"])
    torch.testing.assert_close(cap[f"resid_pre[{L}]"] + cap[f"attn_out[{L}]"], cap[f"resid_mid[{L}]"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap[f"resid_mid[{L}]"] + cap[f"mlp_out[{L}]"], cap[f"resid_post[{L}]"], atol=1e-5, rtol=1e-5)
    z = cap[f"head_out[{L}]"]
    assert z.shape == (1, ids.shape[1], model.n_heads, model.d_head)
    o_proj = model.layers[L].get_submodule(model.adapter.layer_o_proj)
    torch.testing.assert_close(o_proj(z.flatten(-2)), cap[f"attn_out[{L}]"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.softmax(cap[f"attn_scores[{L}]"], -1), cap[f"attn_pattern[{L}]"])


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_router_sites(family, tiny_models):
    model = tiny_models(family)
    ids = model.batch(TEXTS[0])["input_ids"]
    L = model.moe_layers[-1]
    cap = model.capture(ids, [f"resid_mid[{L}]", f"router_logits[{L}]", f"expert_topk[{L}]"])
    gate = model.router(L)
    x = model.layers[L].get_submodule(model.adapter.layer_mid_norm)(cap[f"resid_mid[{L}]"])
    logits = x @ gate.weight.T
    torch.testing.assert_close(cap[f"router_logits[{L}]"], logits, atol=1e-5, rtol=1e-5)
    ids_k, w_k = cap[f"expert_topk[{L}]"]
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, model.top_k, -1)
    assert torch.equal(ids_k, top.indices)
    want = top.values
    if model.adapter.always_norm_topk or gate.norm_topk_prob:
        want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(w_k, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", ["qwen3", "gpt2", "mixtral"])
def test_padding_gives_unpadded_values(family, side, tiny_models):
    model = tiny_models(family)
    sites = ["resid_post[0]", "attn_out[1]", "logits", "attn_pattern[1]"]
    batch = model.batch(TEXTS, padding_side=side)
    cap = model.capture(batch, sites)
    mask = batch["attention_mask"].bool()
    for b, text in enumerate(TEXTS):
        alone = model.capture(text, sites)
        cols = mask[b].nonzero().squeeze(1)
        for s in sites[:3]:
            torch.testing.assert_close(cap[s][b, cols], alone[s][0], atol=1e-5, rtol=1e-4)
        pat = cap["attn_pattern[1]"][b][:, cols][:, :, cols]
        torch.testing.assert_close(pat, alone["attn_pattern[1]"][0], atol=1e-6, rtol=1e-4)


def test_positions_select_absolute_indices_under_padding(tiny_models):
    model = tiny_models("qwen3")
    cap = model.capture(model.batch(TEXTS), ["resid_post[0]"], positions=[0, 3])
    for b, text in enumerate(TEXTS):
        alone = model.capture(text, ["resid_post[0]"])["resid_post[0]"][0]
        torch.testing.assert_close(cap["resid_post[0]"][b], alone[[0, 3]], atol=1e-5, rtol=1e-4)


def test_capture_stops_after_last_needed_layer(tiny_models):
    model = tiny_models("llama")
    calls = []
    h = model.layers[1].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        model.capture(TEXTS[0], ["resid_post[0]"])
        assert calls == []
        model.capture(TEXTS[0], ["resid_post[0]", "logits"])
        assert calls == [1]
    finally:
        h.remove()


def test_reduce_runs_inside_the_hook(tiny_models):
    model = tiny_models("qwen3")
    seen = []

    def head_mean(pattern, layer):
        seen.append((layer, tuple(pattern.shape)))
        return pattern.mean(1)

    cap = model.capture(TEXTS[0], ["attn_pattern[0]", "attn_pattern[1]"], reduce={"attn_pattern": head_mean})
    full = model.capture(TEXTS[0], ["attn_pattern[1]"])["attn_pattern[1]"]
    T = full.shape[-1]
    assert seen == [(0, (1, 4, T, T)), (1, (1, 4, T, T))]
    torch.testing.assert_close(cap["attn_pattern[1]"], full.mean(1))


def test_site_errors(tiny_models):
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        dense.capture(TEXTS[0], ["resid_post[7]"])
    with pytest.raises(ValueError, match="unknown site"):
        dense.capture(TEXTS[0], ["resid_postt[0]"])
    with pytest.raises(ValueError, match="needs a layer"):
        dense.capture(TEXTS[0], ["resid_post"])
    with pytest.raises(ValueError, match="dense"):
        dense.capture(TEXTS[0], ["router_logits[0]"])
    with pytest.raises(ValueError, match="no module"):
        dense.capture(TEXTS[0], ["model.layers.9.mlp"])


def test_no_hooks_left_behind(tiny_models):
    model = tiny_models("qwen3_moe")
    model.capture(TEXTS[0], ["resid_post[0]", "attn_pattern[1]", "expert_topk[1]", "head_out[0]", "resid_mid[1]"])
    for mod in model.hf.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert not any(model.attn_hooks.scores.values()) and not any(model.attn_hooks.pattern.values())


@pytest.mark.parametrize("family", ["qwen3", "gpt2", "mixtral"])
def test_hf_output_attentions_still_works(family, tiny_tokenizer):
    # the probes attention implementation must keep HF's own output_attentions behaviour
    # (a fresh model: HF leaves its own capturing hooks on modules that returned attentions)
    from probes.models.load import from_hf
    from tests.tiny import build_model

    model = from_hf(build_model(family, vocab_size=len(tiny_tokenizer)), tiny_tokenizer)
    batch = model.batch(TEXTS)
    with torch.no_grad():
        ours = model.hf(**batch, output_attentions=True).attentions
        ref = _eager(model)(**batch, output_attentions=True).attentions
    assert len(ours) == model.n_layers
    for a, b in zip(ours, ref):
        mask = batch["attention_mask"].bool()[:, None, :, None]  # padded query rows are irrelevant
        torch.testing.assert_close(a * mask, b * mask, atol=1e-6, rtol=1e-5)


def test_inputs_one_row_of_ids_and_length_limits(tiny_models):
    """A flat list of ids is one row (as a 1-D tensor and a ``sample`` prefix are);
    mixing ids and rows, and inputs longer than the model's positions, fail clearly."""
    model = tiny_models("qwen3")
    ids = model.encode(TEXTS[0])
    want = model.capture([ids], ["resid_post[0]"])["resid_post[0]"]
    for one_row in (ids, torch.tensor(ids)):
        torch.testing.assert_close(model.capture(one_row, ["resid_post[0]"])["resid_post[0]"], want)
    torch.testing.assert_close(model.forward(ids), model.forward([ids]))
    with pytest.raises(ValueError, match="inputs mix token ids and rows"):
        model.capture([ids[0], ids[1:]], ["resid_post[0]"])
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        model.forward(TEXTS, padding_side="middle")
    too_long = [1] * 1025  # the tiny models have 1024 positions
    msg = r"the input needs 1025 positions but tiny:qwen3 has 1024 \(max_position_embeddings\): shorten it to at most 1024"
    with pytest.raises(ValueError, match=msg):
        model.forward(too_long)
    with pytest.raises(ValueError, match=msg):
        model.capture([too_long, ids], ["resid_post[0]"])
    assert model.forward([1] * 512).shape[1] == 512


def test_hook_kinds_are_an_enum_equal_to_their_names(tiny_models):
    from probes.models.sites import HookKind, resolve

    model = tiny_models("qwen3")
    kinds = {s: resolve(model, s).kind for s in ("resid_pre[0]", "resid_post[0]", "attn_scores[0]", "attn_pattern[1]")}
    assert kinds == {"resid_pre[0]": "pre", "resid_post[0]": "fwd", "attn_scores[0]": "scores", "attn_pattern[1]": "pattern"}
    assert all(isinstance(k, HookKind) for k in kinds.values())
    assert [k.in_attention for k in kinds.values()] == [False, False, True, True]

"""Every intervention against a hand-computed expectation; scopes leave no trace;
one forward pass and KV-cache generation agree."""

import pytest
import torch

from probes.models import (
    AddVector,
    ForceExperts,
    Patch,
    Phase,
    ProjectOut,
    ScaleExperts,
    ScaleHeads,
    Span,
    SuppressKeys,
    Trigger,
)

PROMPT = "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>"


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


def _no_hooks(model):
    for mod in model.hf.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert not any(model.attn_hooks.scores.values()) and not any(model.attn_hooks.pattern.values())


def test_add_vector_at_positions(qwen):
    base = qwen.capture(PROMPT, ["resid_post[0]", "logits"])
    v = torch.randn(qwen.d_model)
    with qwen.intervene(AddVector(site="resid_post[0]", vector=v, scale=2.0, positions=[2, 5])):
        cap = qwen.capture(PROMPT, ["resid_post[0]", "logits"])
    want = base["resid_post[0]"].clone()
    want[0, [2, 5]] += 2.0 * v
    torch.testing.assert_close(cap["resid_post[0]"], want)
    # positions before the first edit are causally untouched; later ones change
    assert torch.equal(cap["logits"][0, :2], base["logits"][0, :2])
    assert not torch.allclose(cap["logits"][0, 2:], base["logits"][0, 2:])
    after = qwen.capture(PROMPT, ["logits"])["logits"]
    assert torch.equal(after, base["logits"])  # removing restores identical logits
    _no_hooks(qwen)


def test_project_out(qwen):
    u = torch.randn(qwen.d_model)
    base = qwen.capture(PROMPT, ["resid_mid[1]"])["resid_mid[1]"]
    with qwen.intervene(ProjectOut(site="resid_mid[1]", direction=u, positions=Span(3, None))):
        got = qwen.capture(PROMPT, ["resid_mid[1]"])["resid_mid[1]"]
    uh = u / u.norm()
    want = base.clone()
    want[0, 3:] -= (want[0, 3:] @ uh)[:, None] * uh
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[0, 3:] @ uh).abs().max() < 1e-5


def test_patch_from_another_run(qwen):
    other = "<bos><|user|>Bob has 9 pears and sells 2 of them.<|end|><|assistant|><think>"
    src = qwen.capture(other, ["attn_out[0]"])["attn_out[0]"]
    base = qwen.capture(PROMPT, ["attn_out[0]"])["attn_out[0]"]
    with qwen.intervene(Patch(site="attn_out[0]", source=src, positions=[1, 4])):
        got = qwen.capture(PROMPT, ["attn_out[0]"])["attn_out[0]"]
    want = base.clone()
    want[0, [1, 4]] = src[0, [1, 4]]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_scale_heads_zero_and_norm_preserving(family, tiny_models):
    model = tiny_models(family)
    base = model.capture(PROMPT, ["head_out[1]", "attn_out[1]"])
    o_proj = model.layers[1].get_submodule(model.adapter.layer_o_proj)
    with model.intervene(ScaleHeads(heads=[(1, 0), (1, 2)], scale=0.0)):
        got = model.capture(PROMPT, ["head_out[1]", "attn_out[1]"])
    z = base["head_out[1]"].clone()
    z[:, :, [0, 2]] = 0
    torch.testing.assert_close(got["head_out[1]"], z)
    torch.testing.assert_close(got["attn_out[1]"], o_proj(z.flatten(-2)), atol=1e-6, rtol=1e-5)
    with model.intervene(ScaleHeads(heads=[(1, 0)], scale=0.0, rescale_norm=True)):
        got = model.capture(PROMPT, ["head_out[1]"])["head_out[1]"]
    z = base["head_out[1]"].clone()
    z[:, :, 0] = 0
    z = z * base["head_out[1]"].norm() / z.norm()  # Frobenius norm over batch × positions × heads
    torch.testing.assert_close(got, z, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "olmoe"])
def test_suppress_keys_renormalises_layer0_pattern(family, tiny_models):
    model = tiny_models(family)
    base = model.capture(PROMPT, ["attn_pattern[0]"])["attn_pattern[0]"]
    with model.intervene(SuppressKeys(span=(3, 7), heads=[1, 3])):
        got = model.capture(PROMPT, ["attn_pattern[0]", "logits"])
    # layer 0 sees unchanged inputs: suppression zeroes the keys and renormalises the rows
    want = base.clone()
    for h in (1, 3):
        rows = want[0, h]
        rows[:, 3:7] = 0
        want[0, h] = rows / rows.sum(-1, keepdim=True)
    q = torch.arange(base.shape[-1])
    # queries 0..2 attend only to keys < 3 and are unaffected; query rows ≥ 3 renormalise
    torch.testing.assert_close(got["attn_pattern[0]"][..., 3:, :], want[..., 3:, :], atol=1e-6, rtol=1e-5)
    assert got["attn_pattern[0]"][0, [1, 3]][:, q >= 3][..., 3:7].abs().max() == 0
    torch.testing.assert_close(got["attn_pattern[0]"][0, [0, 2]], base[0, [0, 2]])


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_scale_experts_only_where_selected(family, tiny_models):
    model = tiny_models(family)
    L = model.moe_layers[0]
    ids, w = model.capture(PROMPT, [f"expert_topk[{L}]"])[f"expert_topk[{L}]"]
    e = int(ids[0, 0, 0])
    with model.intervene(ScaleExperts(scales={(L, e): 4.0}, positions=Span(0, 6))):
        ids2, w2 = model.capture(PROMPT, [f"expert_topk[{L}]"])[f"expert_topk[{L}]"]
    want = w.clone()
    sel = (ids == e)
    sel[:, 6:] = False
    want[sel] *= 4.0
    assert torch.equal(ids2, ids)
    torch.testing.assert_close(w2, want)
    with model.intervene(ScaleExperts(scales={(L, e): 4.0}, renormalize=True)):
        _, w3 = model.capture(PROMPT, [f"expert_topk[{L}]"])[f"expert_topk[{L}]"]
    boosted = torch.where(ids == e, w * 4.0, w)
    torch.testing.assert_close(w3, boosted * w.sum(-1, keepdim=True) / boosted.sum(-1, keepdim=True))


def test_force_experts_follows_steermoe(tiny_models):
    model = tiny_models("qwen3_moe")
    L = 1
    logits = model.capture(PROMPT, [f"router_logits[{L}]"])[f"router_logits[{L}]"]
    with model.intervene(ForceExperts(layers=[L], include=[3], forbid=[0])):
        ids, w = model.capture(PROMPT, [f"expert_topk[{L}]"])[f"expert_topk[{L}]"]
    lsm = torch.log_softmax(logits, -1)
    hi, lo = lsm.max(-1, keepdim=True).values + 0.01, lsm.min(-1, keepdim=True).values - 0.01
    lsm[..., 3:4], lsm[..., 0:1] = hi, lo
    top = torch.topk(torch.softmax(lsm, -1), 2, -1)
    assert torch.equal(ids, top.indices)
    assert (ids == 3).any(-1).all() and not (ids == 0).any()
    torch.testing.assert_close(w, top.values / top.values.sum(-1, keepdim=True))


def test_phases_triggers_and_rows(qwen):
    tok = qwen.tokenizer
    text = PROMPT + "First add them.</think>The answer is 8."
    ids = qwen.encode(text)
    open_, close = ids.index(tok.convert_tokens_to_ids("<think>")), ids.index(tok.convert_tokens_to_ids("</think>"))
    v = torch.ones(qwen.d_model)
    base = qwen.capture(text, ["resid_pre[1]"])["resid_pre[1]"][0]

    def delta(iv, prompt_len=None):
        with qwen.intervene(iv):
            got = qwen.capture({"input_ids": torch.tensor([ids])}, ["resid_pre[1]"])["resid_pre[1]"][0]
        return ((got - base).abs().sum(-1) > 0).nonzero().squeeze(1).tolist()

    T = len(ids)
    assert delta(AddVector(site="resid_post[0]", vector=v, positions="thinking")) == list(range(open_ + 1, close))
    assert delta(AddVector(site="resid_post[0]", vector=v, positions=Phase.ANSWER)) == list(range(close + 1, T))
    assert delta(AddVector(site="resid_post[0]", vector=v, positions=Trigger(token_id=ids[close], inclusive=True))) == list(
        range(close, T))
    assert delta(AddVector(site="resid_post[0]", vector=v, positions="prompt")) == list(range(T))
    # per-row masks refer to the rows the user passed
    two = qwen.batch([text, text])
    with qwen.intervene(AddVector(site="resid_post[0]", vector=v, rows=[1])):
        cap = qwen.capture(two, ["resid_post[0]"])["resid_post[0]"]
    torch.testing.assert_close(cap[1] - cap[0], v.expand(T, -1), atol=1e-5, rtol=0)


def test_exception_inside_scope_removes_hooks(qwen):
    with pytest.raises(RuntimeError, match="boom"):
        with qwen.intervene(AddVector(site="resid_post[0]", vector=torch.ones(qwen.d_model)),
                            SuppressKeys(span=(0, 2))):
            raise RuntimeError("boom")
    _no_hooks(qwen)


@pytest.mark.parametrize("family", ["qwen3", "gpt2", "qwen2_moe"])
def test_forward_and_kv_cache_generation_agree(family, tiny_models):
    model = tiny_models(family)
    P = len(model.encode(PROMPT))
    ivs = [
        AddVector(site="resid_mid[0]", vector=torch.randn(model.d_model) * 3, positions="generated"),
        SuppressKeys(span=(2, 5), layers=[1]),
        ScaleHeads(heads=[(1, 1)], scale=0.0, positions=Span(P + 2, None)),
    ]
    if model.is_moe:
        ivs.append(ScaleExperts(scales={(model.moe_layers[0], 1): 8.0}))
    with model.intervene(*ivs):
        out = model.generate(PROMPT, max_new_tokens=8, eos_token_ids=[])[0]
        full = torch.tensor([model.encode(PROMPT) + out.token_ids])
        logits = model.forward(full, prompt_len=P)[0]
    assert logits[P - 1:-1].argmax(-1).tolist() == out.token_ids
    plain = model.generate(PROMPT, max_new_tokens=8, eos_token_ids=[])[0]
    assert plain.token_ids != out.token_ids  # the interventions did something


def test_bad_interventions(tiny_models):
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match="width 7 but the site has width 64"):
        with dense.intervene(AddVector(site="resid_post[0]", vector=torch.ones(7))):
            pass
    with pytest.raises(ValueError, match="dense"):
        with dense.intervene(ScaleExperts(scales={(0, 1): 2.0})):
            pass
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        with dense.intervene(ScaleHeads(heads=[(5, 0)])):
            pass
    with pytest.raises(ValueError, match="unknown phase"):
        AddVector(site="resid_post[0]", vector=torch.ones(64), positions="thinkng")
    _no_hooks(dense)


def test_suppress_keys_per_row_spans_equal_single_runs(qwen):
    spans = [(2, 4), (5, 9), (0, 1)]
    batch = qwen.batch([PROMPT] * 3)
    with qwen.intervene(SuppressKeys(span=spans)):
        batched = qwen.forward(batch)
    for r, sp in enumerate(spans):
        with qwen.intervene(SuppressKeys(span=sp)):
            alone = qwen.forward(PROMPT)
        torch.testing.assert_close(batched[r], alone[0], atol=1e-5, rtol=1e-5)

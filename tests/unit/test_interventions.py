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
from probes.models.interventions import NormScope
from tests.tiny import assert_no_hooks

PROMPT = "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>"


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


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
    assert_no_hooks(qwen)


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
    z0 = base["head_out[1]"]
    ablated = z0.clone()
    ablated[:, :, 0] = 0
    # default: each token's (heads × d_head) output keeps its own norm
    with model.intervene(ScaleHeads(heads=[(1, 0)], scale=0.0, rescale_norm=True)):
        got = model.capture(PROMPT, ["head_out[1]"])["head_out[1]"]
    per_token = ablated * z0.norm(dim=(-2, -1), keepdim=True) / ablated.norm(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(got, per_token, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=(-2, -1)), z0.norm(dim=(-2, -1)))
    # the reference's mode: one Frobenius norm over batch × positions × heads
    with model.intervene(ScaleHeads(heads=[(1, 0)], scale=0.0, rescale_norm=True, norm_over=NormScope.TENSOR)):
        got = model.capture(PROMPT, ["head_out[1]"])["head_out[1]"]
    torch.testing.assert_close(got, ablated * z0.norm() / ablated.norm(), atol=1e-6, rtol=1e-5)
    # every head of a layer ablated: nothing to rescale, the output stays 0 (no NaN)
    with model.intervene(ScaleHeads(heads=[(1, h) for h in range(model.n_heads)], rescale_norm=True)):
        got = model.capture(PROMPT, ["head_out[1]"])["head_out[1]"]
    assert torch.equal(got, torch.zeros_like(got))


def _decode_with_cache(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    """Logits of ``ids`` computed as KV-cache decoding does: the prompt in one forward,
    then one token per forward (T, vocab)."""
    from transformers import DynamicCache

    cache, x = DynamicCache(config=model.hf.config), torch.tensor([ids])
    with torch.no_grad(), model.scope():
        out = [model.hf(input_ids=x[:, :prompt_len], past_key_values=cache, use_cache=True).logits[0]]
        for t in range(prompt_len, len(ids)):
            out.append(model.hf(input_ids=x[:, t:t + 1], past_key_values=cache, use_cache=True).logits[0])
    return torch.cat(out)


def test_scale_heads_norm_is_the_same_under_the_cache_and_the_batch(qwen):
    """The per-token default gives one forward pass = KV-cache decoding and a row alone =
    the same row in a left-padded batch; the reference's whole-tensor mode gives neither."""
    other = "<bos>hello there, résumé 🙂 and more words to pad"
    P = len(qwen.encode(PROMPT))
    gaps = {}
    for over in NormScope:
        iv = ScaleHeads(heads=[(0, 1), (1, 0), (1, 2)], scale=0.0, rescale_norm=True, norm_over=over)
        with qwen.intervene(iv):
            out = qwen.generate(PROMPT, max_new_tokens=6, eos_token_ids=[])[0]
            ids = qwen.encode(PROMPT) + out.token_ids
            full = qwen.forward([ids], prompt_len=P)[0]
            cached = _decode_with_cache(qwen, ids, P)
            batched = qwen.forward([PROMPT + "Sure", other])[0]
            alone = qwen.forward(PROMPT + "Sure")[0]
        gaps[over] = ((full - cached).abs().max().item(), (batched[-alone.shape[0]:] - alone).abs().max().item())
        if over is NormScope.TOKEN:
            assert full[P - 1:-1].argmax(-1).tolist() == out.token_ids  # generate decodes what forward predicts
    assert max(gaps[NormScope.TOKEN]) < 1e-4, gaps
    assert min(gaps[NormScope.TENSOR]) > 1e-3, gaps  # documented: batch- and cache-dependent


def test_scale_heads_options_are_checked():
    with pytest.raises(ValueError, match="norm_over"):
        ScaleHeads(heads=[(0, 0)], rescale_norm="tensor")
    with pytest.raises(ValueError, match="unknown norm_over 'batch'"):
        ScaleHeads(heads=[(0, 0)], rescale_norm=True, norm_over="batch")
    assert ScaleHeads(heads=[(0, 0)], norm_over="tensor").norm_over is NormScope.TENSOR == "tensor"


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


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_suppress_keys_never_unmasks_future_or_padding_keys(family, tiny_models):
    """Suppressing every key a query can see leaves it nothing: zero weights and a zero
    head output, never attention on future or padding keys (which tie with suppressed
    keys if both sit at the dtype's minimum)."""
    model = tiny_models(family)
    batch = model.batch([PROMPT, "<bos>hello there"])  # row 1 is left-padded
    pad = int((batch["attention_mask"][1] == 0).sum())
    base = model.capture(batch, ["attn_pattern[0]"])["attn_pattern[0]"]
    with model.intervene(SuppressKeys(span=(0, 2))):
        got = model.capture(batch, ["attn_pattern[0]", "head_out[0]", "logits"])
    w, T = got["attn_pattern[0]"], base.shape[-1]
    assert torch.isfinite(got["logits"]).all()
    for row, first in ((0, 0), (1, pad)):  # ``first``: index of the row's position 0
        # absolute positions 0 and 1 see only suppressed keys: all-zero rows, zero output
        assert torch.equal(w[row, :, first:first + 2], torch.zeros_like(w[row, :, first:first + 2]))
        assert torch.equal(got["head_out[0]"][row, first:first + 2], torch.zeros_like(got["head_out[0]"][row, :2]))
        # later queries: keys 0, 1 removed, the rest renormalised (hand computation from the base pattern)
        want = base[row, :, first + 2:].clone()
        want[..., :first + 2] = 0
        want = want / want.sum(-1, keepdim=True)
        torch.testing.assert_close(w[row, :, first + 2:], want, atol=1e-6, rtol=1e-5)
    # no query of a real token puts any weight on a future key or a padding key
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert w[:, :, future].abs().max() == 0
    assert w[1, :, pad:, :pad].abs().max() == 0


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


def test_scale_experts_to_zero_with_renormalisation_silences_the_experts(tiny_models):
    """Σw′ = 0 cannot be rescaled to Σw: the weights stay 0 (not 0/0 = NaN), so the
    routed experts add nothing and the MoE block outputs exactly 0 (no shared expert)."""
    model = tiny_models("qwen3_moe")
    L = model.moe_layers[0]
    with model.intervene(ScaleExperts(scales={(L, e): 0.0 for e in range(model.n_experts)}, renormalize=True)):
        cap = model.capture(PROMPT, [f"expert_topk[{L}]", f"mlp_out[{L}]", "logits"])
    _, w = cap[f"expert_topk[{L}]"]
    assert torch.equal(w, torch.zeros_like(w))
    assert torch.equal(cap[f"mlp_out[{L}]"], torch.zeros_like(cap[f"mlp_out[{L}]"]))
    assert torch.isfinite(cap["logits"]).all()


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
    assert_no_hooks(qwen)


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


@pytest.fixture(scope="module")
def mixed_moe(tiny_tokenizer):
    """A Qwen3-MoE whose layer 0 is dense (``mlp_only_layers``), layer 1 MoE."""
    import transformers as T

    from probes.models.load import from_hf

    torch.manual_seed(0)
    cfg = T.Qwen3MoeConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                           num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0])
    return from_hf(T.Qwen3MoeForCausalLM(cfg).eval(), tiny_tokenizer, spec="tiny:mixed-moe")


def test_failed_intervene_leaves_no_hook(tiny_models, mixed_moe):
    """Every intervention is validated before any hook is attached; a bad one (even the
    last, even one whose error comes from its second layer) leaves the model bare."""
    assert mixed_moe.moe_layers == [1]
    ok = AddVector(site="resid_post[0]", vector=torch.ones(mixed_moe.d_model))
    with pytest.raises(ValueError, match=r"layer 0 of tiny:mixed-moe is dense; MoE layers are \[1\]"):
        with mixed_moe.intervene(ok, SuppressKeys(span=(0, 2)), ForceExperts(layers=[1, 0], include=[2])):
            pass
    assert_no_hooks(mixed_moe)
    with pytest.raises(ValueError, match="dense"):
        ForceExperts(layers=[1, 0], include=[2]).attach(mixed_moe)
    assert_no_hooks(mixed_moe)
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match=r"head 9 out of range"):
        with dense.intervene(ok, ScaleHeads(heads=[(0, 1), (1, 9)])):
            pass
    assert_no_hooks(dense)
    with pytest.raises(TypeError, match="model.intervene takes interventions"):
        with dense.intervene(ok, "resid_post[0]"):
            pass
    assert_no_hooks(dense)


def test_bad_interventions(tiny_models):
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match=r"ForceExperts needs a mixture-of-experts model, but tiny:qwen3 \(qwen3\) is dense"):
        with dense.intervene(ForceExperts(include=[1])):
            pass
    with pytest.raises(ValueError, match=r"vector has width 7 but the site resid_post\[0\] has width 64 in tiny:qwen3: give 64 numbers"):
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
    assert_no_hooks(dense)


def test_suppress_keys_per_row_spans_equal_single_runs(qwen):
    spans = [(2, 4), (5, 9), (0, 1)]
    batch = qwen.batch([PROMPT] * 3)
    with qwen.intervene(SuppressKeys(span=spans)):
        batched = qwen.forward(batch)
    for r, sp in enumerate(spans):
        with qwen.intervene(SuppressKeys(span=sp)):
            alone = qwen.forward(PROMPT)
        torch.testing.assert_close(batched[r], alone[0], atol=1e-5, rtol=1e-5)

"""Suppression heads (``refusal.md`` A4): direct attribution against the attention output captured
directly, the ablation's r_T against a hand-computed norm-preserving ablation, ranking and budgets,
the result objects, bad input, and a short end-to-end run on ``zoo:refusal-reasoner``.

``ScaleHeads``' norm-preserving operator itself (zero the heads' z, rescale to the pre-ablation norm
per token or over the whole tensor, then o_proj) is checked against a direct computation in
``tests/unit/test_interventions.py::test_scale_heads_zero_and_norm_preserving``; here only what
``heads.py`` adds on top of it."""

import numpy as np
import pytest
import torch

from probes.models.interventions import NormScope, Patch
from probes.refusal.heads import (
    AblationArm,
    AblationResult,
    HeadScores,
    ablate_heads,
    ablation_arm,
    head_budget,
    head_scores,
    random_heads,
)
from probes.refusal.judges import KeywordJudge, Verdict
from probes.refusal.probe import Probe

TEXTS = ["<bos>Alice has 3 apples and buys 5 more.", "<bos>I cannot help with that request. Sure",
         "<bos><|user|>How many?<|end|><|assistant|><think>3 + 5 = 8.</think>"]


def _probe(width=64, seed=0, **kw) -> Probe:
    g = torch.Generator().manual_seed(seed)
    return Probe(weight=torch.randn(width, generator=g, dtype=torch.float64), bias=0.3, model_spec="test", **kw)


def _o_proj(model, layer):
    return model.layers[layer].get_submodule(model.adapter.layer_o_proj)


def _bias(model, layer) -> torch.Tensor:
    b = _o_proj(model, layer).bias
    return torch.zeros(model.d_model) if b is None else b.detach()


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
@pytest.mark.parametrize("normalisation", ["none", "standard"])
def test_head_attributions_sum_to_the_attention_output_projection(family, normalisation, tiny_models):
    """Σ_h c_{l,h}·ŵ = (attn_out[l] − o_proj bias)·ŵ at the last token of every text (left-padded
    batch of unequal lengths); gpt2's c_proj is a transposed Conv1D with a bias."""
    model = tiny_models(family)
    kw = {}
    if normalisation == "standard":
        kw = dict(normalisation="standard", mean=torch.randn(64, dtype=torch.float64),
                  scale=torch.rand(64, dtype=torch.float64) + 0.5)
    probe = _probe(**kw)
    got = head_scores(model, probe, TEXTS, batch_size=2)
    assert got.scores.shape == (model.n_layers, model.n_heads) and got.per_item.shape == (3, *got.scores.shape)
    w = probe.weight / kw["scale"] if kw else probe.weight
    unit = w / w.norm()
    for i, text in enumerate(TEXTS):
        cap = model.capture(text, [f"attn_out[{L}]" for L in range(model.n_layers)])
        for L in range(model.n_layers):
            want = float((cap[f"attn_out[{L}]"][0, -1].double() - _bias(model, L).double()) @ unit)
            assert got.per_item[i, L].sum() == pytest.approx(want, abs=1e-5)
    np.testing.assert_allclose(got.scores, got.per_item.mean(0))


def test_one_head_attribution_is_the_reference_zero_the_others_then_o_proj(tiny_models):
    """A4's code: keep head h, zero the others, apply o_proj (minus its bias: no head's write), project."""
    model = tiny_models("gpt2")
    probe = _probe()
    got = head_scores(model, probe, TEXTS[:1])
    z = model.capture(TEXTS[0], ["head_out[1]"])["head_out[1]"][0, -1]  # (H, D)
    for h in range(model.n_heads):
        only = torch.zeros_like(z)
        only[h] = z[h]
        c = _o_proj(model, 1)(only.flatten()).detach().double() - _bias(model, 1).double()
        assert got.scores[1, h] == pytest.approx(float(c @ probe.direction), abs=1e-6)


def test_probe_on_an_earlier_site_scores_only_the_heads_before_it(tiny_models):
    model = tiny_models("qwen3")
    got = head_scores(model, _probe(site="resid_post[0]"), TEXTS)
    assert np.isfinite(got.scores[0]).all() and np.isnan(got.scores[1]).all()
    assert got.heads == [(0, h) for h in range(model.n_heads)]
    with pytest.raises(ValueError, match="residual stream"):
        head_scores(model, _probe(site="attn_out[0]"), TEXTS)


def test_head_scores_reject_bad_input(tiny_models):
    model = tiny_models("qwen3")
    with pytest.raises(ValueError, match="width 32.*d_model 64"):
        head_scores(model, _probe(width=32), TEXTS)
    with pytest.raises(ValueError, match="no items"):
        head_scores(model, _probe(), [])
    with pytest.raises(ValueError, match="empty"):
        head_scores(model, _probe(), ["<bos>ok", ""])
    with pytest.raises(ValueError, match="last token"):
        head_scores(model, _probe(read_position="SpanMean(start=0, end=None)"), TEXTS)


def test_ranking_and_budgets():
    scores = np.array([[0.5, -2.0, 0.0, 1.0], [-1.0, 3.0, -2.0, np.nan]])
    hs = HeadScores(scores=scores)
    assert hs.heads == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert hs.ranked() == [(0, 1), (1, 2), (1, 0), (0, 2), (0, 0), (0, 3), (1, 1)]  # tie -2.0: (0,1) first
    assert hs.ranked(ascending=False)[:2] == [(1, 1), (0, 3)]
    assert hs.top(2) == [(0, 1), (1, 2)]
    assert hs.top(fraction=0.5) == hs.top(4)  # round(3.5) = 4 of the 7 scored heads
    assert hs.top(fraction=0.01) == [(0, 1)]  # at least one head
    assert [head_budget(784, fraction=f) for f in (0.015, 0.03, 0.1)] == [12, 24, 78]  # A4's R1-7B budgets
    assert [head_budget(1920, fraction=f) for f in (0.015, 0.03, 0.1)] == [29, 58, 192]  # A4's R1-14B budgets
    with pytest.raises(ValueError, match="k=8 heads.*7 scored heads"):
        hs.top(8)
    for bad in (dict(k=0), dict(k=2, fraction=0.1), dict(), dict(fraction=1.5), dict(k=True)):
        with pytest.raises(ValueError):
            head_budget(7, **bad)


def test_random_heads_are_seeded_draws_of_the_scored_heads():
    heads = [(layer, h) for layer in range(4) for h in range(4)]
    a, b = random_heads(heads, 4, seed=3), random_heads(heads, 4, seed=3)
    assert a == b and len(set(a)) == 4 and set(a) <= set(heads)
    assert len({tuple(random_heads(heads, 4, seed=s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="17"):
        random_heads(heads, 17, seed=0)


def test_head_scores_save_and_load(tmp_path, tiny_models):
    hs = head_scores(tiny_models("qwen3"), _probe(), TEXTS)
    back = HeadScores.load(hs.save(tmp_path / "scores"))
    np.testing.assert_array_equal(back.scores, hs.scores)
    np.testing.assert_array_equal(back.per_item, hs.per_item)
    assert (back.method, back.n_items, back.data_hash, back.probe_hash) == (hs.method, 3, hs.data_hash, hs.probe_hash)
    assert "A4" in back.method and "A7" in back.method


def _never_refuses(answers):
    return [Verdict(refused=False, harmful=None, raw="") for _ in answers]


@pytest.mark.parametrize("norm_over", list(NormScope))
def test_ablation_r_T_equals_a_hand_computed_norm_preserving_ablation(norm_over, tiny_models):
    """r_T under the arm's ablation = the probe on final_norm with attn_out[1] replaced by
    o_proj(z′), z′ = z with the heads zeroed and rescaled to z's norm (per token, or over the tensor)."""
    model = tiny_models("qwen3")
    probe, heads, text = _probe(), [(1, 0), (1, 2)], TEXTS[2]
    z = model.capture(text, ["head_out[1]"])["head_out[1]"]
    zero = z.clone()
    zero[:, :, [0, 2]] = 0
    dims = (-2, -1) if norm_over is NormScope.TOKEN else (0, 1, 2, 3)
    z_new = zero * z.pow(2).sum(dims, keepdim=True).sqrt() / zero.pow(2).sum(dims, keepdim=True).sqrt()
    attn = _o_proj(model, 1)(z_new.flatten(-2)).detach()
    with model.intervene(Patch(site="attn_out[1]", source=attn)):
        want = float(probe.score(model.capture(text, ["final_norm"])["final_norm"][0, -1]))
    arm = ablation_arm(model, probe, ["Alice?"], _never_refuses, heads=heads, texts=[text], samples=1,
                       temperature=0.0, max_new_tokens=3, norm_over=norm_over)
    assert arm.r_T.shape == (1,) and arm.r_T[0] == pytest.approx(want, abs=1e-6)
    base = ablation_arm(model, probe, ["Alice?"], _never_refuses, texts=[text], samples=1, temperature=0.0,
                        max_new_tokens=3)
    plain = float(probe.score(model.capture(text, ["final_norm"])["final_norm"][0, -1]))
    assert base.r_T[0] == pytest.approx(plain, abs=1e-6) and abs(plain - want) > 1e-6


def test_unclosed_rollouts_are_counted_not_judged(tiny_models):
    model = tiny_models("qwen3")
    judged = []
    arm = ablation_arm(model, _probe(), ["Alice?", "Bob?"], lambda a: judged.append(a) or _never_refuses(a),
                       heads=[(0, 1)], texts=TEXTS, samples=2, temperature=1.0, max_new_tokens=2)
    assert arm.refused.shape == (2, 2) and arm.r_T.shape == (3,)
    n_closed = sum(r.closed for r in arm.rollouts)
    assert arm.unclosed == 4 - n_closed and np.isnan(arm.r_T_own).sum() == 4 - n_closed
    assert sum(map(len, judged)) == n_closed
    with pytest.raises(ValueError, match="every rollout of this condition is unclosed"):
        AblationArm(name="x", heads=(), r_T=[0.5], refused=np.full((2, 2), np.nan),
                    r_T_own=np.full((2, 2), np.nan)).refusal_rate()


def _arm(name, refused, r_T, heads=((0, 0),)):
    refused = np.asarray(refused, dtype=float)
    return AblationArm(name=name, heads=heads, r_T=r_T, refused=refused, r_T_own=refused * 0 + 0.5)


def test_ablation_result_differences_are_paired_and_average_the_random_draws(tmp_path):
    nan = np.nan
    base = _arm("baseline", [[1, 1], [1, 0], [0, 0]], [0.9, 0.6, 0.2], heads=())
    top = _arm("top", [[0, 0], [1, nan], [nan, nan]], [0.5, 0.4, 0.1])
    r0 = _arm("random0", [[1, 1], [1, 1], [0, 0]], [0.9, 0.7, 0.3])
    r1 = _arm("random1", [[1, 0], [0, 0], [0, 1]], [0.7, 0.5, 0.1])
    res = AblationResult(baseline=base, top=top, random=(r0, r1), settings={"k": 1})
    np.testing.assert_allclose(top.prompt_refusal, [0, 1, nan])
    assert top.unclosed == 3 and top.refusal_rate().value == pytest.approx(0.5)
    # per prompt: top (0, 1) − random mean ((1 + .5)/2, (1 + 0)/2) = (−.75, .5); prompt 2 has no top answer
    d = res.refusal_difference()
    assert (d.value, d.n) == (pytest.approx(-0.125), 2)
    assert res.r_T_difference().value == pytest.approx(np.mean([0.5 - 0.8, 0.4 - 0.6, 0.1 - 0.2]))
    assert res.refusal_difference("baseline").value == pytest.approx(np.mean([0 - 1, 1 - 0.5]))
    with pytest.raises(ValueError, match="'random' or 'baseline'"):
        res.r_T_difference("top")
    summary = res.summary()
    assert summary["top"]["unclosed"] == 3 and len(summary["random"]) == 2
    back = AblationResult.load(res.save(tmp_path / "ablation"))
    assert back.settings == {"k": 1} and [a.name for a in back.random] == ["random0", "random1"]
    assert back.top.heads == ((0, 0),) and back.baseline.heads == ()
    np.testing.assert_array_equal(back.top.refused, top.refused)
    assert back.refusal_difference().value == d.value


def test_ablate_heads_rejects_bad_input(tiny_models):
    model = tiny_models("qwen3")
    probe = _probe()
    hs = head_scores(model, probe, TEXTS)
    with pytest.raises(ValueError, match="k=9 heads.*8 scored heads"):
        ablate_heads(model, probe, hs, ["Alice?"], _never_refuses, k=9)
    with pytest.raises(ValueError, match="no prompts"):
        ablate_heads(model, probe, hs, [], _never_refuses, k=1)
    with pytest.raises(ValueError, match="3 layers x 4 heads"):
        ablate_heads(model, probe, HeadScores(scores=np.zeros((3, 4))), ["Alice?"], _never_refuses, k=1)
    with pytest.raises(ValueError, match="width 32"):
        ablate_heads(model, _probe(width=32), hs, ["Alice?"], _never_refuses, k=1)
    with pytest.raises(ValueError, match="draws"):
        ablate_heads(model, probe, hs, ["Alice?"], _never_refuses, k=1, draws=0)


def test_ablate_heads_end_to_end_on_the_zoo_organism():
    """A few prompts of ``zoo:refusal-reasoner``: every condition samples closed rollouts with the
    same seeds, the zoo's keyword judge sees the answers, the top heads are the most negative ones."""
    import probes
    from probes.refusal.probe import train_probe
    from probes.refusal.rollout import rollouts
    from probes.zoo.tasks import refusal

    model = probes.load_model("zoo:refusal-reasoner", device="cpu", dtype="float32")
    judge = KeywordJudge(phrases=refusal.REFUSAL_MARKERS, window=60, ignore_case=False)
    ask = {s: [e.prompt for e in refusal.distinct_requests(0, s, 4)] for s in ("forbidden_plain", "harmless")}
    got = {s: rollouts(model, p, temperature=0.0, max_new_tokens=160, progress=False) for s, p in ask.items()}
    probe = train_probe(model, [r.probe_text for r in got["forbidden_plain"]],
                        [r.probe_text for r in got["harmless"]])
    wrapped = [e.prompt for e in refusal.distinct_requests(1, "forbidden_wrapped", 3)]
    hs = head_scores(model, probe, [r.probe_text for r in got["forbidden_plain"]])
    res = ablate_heads(model, probe, hs, wrapped, judge, k=1, draws=1, samples=1, max_new_tokens=160,
                       progress=False)
    assert res.top.heads == tuple(hs.ranked()[:1])
    assert res.settings["k"] == 1 and res.settings["norm_over"] == "token"
    assert res.baseline.unclosed == 0 and res.baseline.r_T.shape == res.top.r_T.shape == (3,)
    for arm in (res.baseline, res.top, *res.random):
        assert arm.refused.shape == (3, 1)
        assert [r.seed for r in arm.rollouts] == [r.seed for r in res.baseline.rollouts]
        judged = [v for r, v in zip(arm.rollouts, arm.refused.ravel()) if r.closed]
        assert judged == [float(refusal.is_refusal(r.answer)) for r in arm.rollouts if r.closed]

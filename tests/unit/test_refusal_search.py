"""The ablation search (issue #12 item 9, beyond reference/refusal.md B) against hand computations on
tiny models: the weight kernel, the interpolated direction, the partial ablation x ← x − w (x·r̂) r̂
on captured activations, the weighted checkpoint against the hooks, the Pareto front on hand-made
points, a seeded search run twice, and the errors for bad input."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probes.models.interventions import ProjectOut
from probes.refusal.direction import (
    RefusalCandidates,
    candidate_directions,
    directional_ablation,
    orthogonalize_weights,
    refusal_scores,
)
from probes.refusal.judges import KeywordJudge
from probes.refusal.search import (
    AblationSearch,
    JudgedRefusal,
    ScoredRefusal,
    SearchSpace,
    SearchTrial,
    WeightKernel,
    ablation_direction,
    evaluate_ablation,
    full_ablation_params,
    pareto_front,
    search_ablation,
    weighted_ablation,
)
from probes.steering.selection import next_token_kl

HARMFUL = ["Alice has 3 apples", "I cannot help with that", "First find the total", "Wait, that is wrong"]
HARMLESS = ["Correct! 8", "Sure, here is how to bake bread.", "The answer is 8", "Let me check"]


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen3")


@pytest.fixture(scope="module")
def texts(qwen):
    return [qwen.render_chat(r) for r in HARMFUL], [qwen.render_chat(r) for r in HARMLESS]


@pytest.fixture(scope="module")
def cands(qwen, texts):
    return candidate_directions(qwen, *texts, positions=(-1,))


@pytest.fixture(scope="module")
def ids(qwen):
    return qwen.encode("I", add_special_tokens=False)


def _search(qwen, cands, texts, ids, **kw):
    kw = {"n_trials": 6, "n_startup_trials": 3, "seed": 7, **kw}
    return search_ablation(qwen, cands, *texts, ids, **kw)


# ----- kernel and direction ---------------------------------------------------------------------------------
def test_kernel_values_by_hand():
    k = WeightKernel(max_weight=1.2, max_weight_position=2, min_weight=0.4, min_weight_distance=2)
    np.testing.assert_allclose(k.weights(6), [0.4, 0.8, 1.2, 0.8, 0.4, 0.0], rtol=0, atol=1e-12)
    k = WeightKernel(max_weight=1.0, max_weight_position=1.5, min_weight=0.0, min_weight_distance=1)
    np.testing.assert_allclose(k.weights(4), [0.0, 0.5, 0.5, 0.0], atol=1e-12)  # |l − 1.5| = 0.5 → halfway
    flat = WeightKernel(max_weight=1.0, max_weight_position=0, min_weight=1.0, min_weight_distance=3)
    np.testing.assert_array_equal(flat.weights(4), [1, 1, 1, 1])  # B2's full ablation at every layer
    assert WeightKernel(max_weight=0.7, max_weight_position=10, min_weight=0.1, min_weight_distance=2).weight(9) == \
        pytest.approx(0.4)


def test_direction_interpolates_unit_directions_by_hand():
    d = torch.zeros(1, 3, 4, dtype=torch.float64)
    d[0, 1, 0], d[0, 2, 1] = 5.0, 0.5  # unit e0 at layer 2, unit e1 at layer 5 (layers need not be contiguous)
    c = RefusalCandidates(directions=d, positions=(-1,), layers=(0, 2, 5), n_harmful=1, n_harmless=1)
    torch.testing.assert_close(ablation_direction(c, -1, 2.0), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(ablation_direction(c, -1, 5.0), torch.tensor([0, 1.0, 0, 0], dtype=torch.float64))
    got = ablation_direction(c, -1, 3.0)  # f = 1/3 of the way: (2/3, 1/3) renormalised, not weighted by ‖r‖
    want = torch.tensor([2 / 3, 1 / 3, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(got, want / want.norm())
    with pytest.raises(ValueError, match="zero"):
        ablation_direction(c, -1, 1.0)  # blends the zero layer-0 candidate in
    with pytest.raises(ValueError, match="outside"):
        ablation_direction(c, -1, 5.5)
    with pytest.raises(KeyError, match="position -2"):
        ablation_direction(c, -2, 3.0)


# ----- weighted ablation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [0.3, 1.0, 1.5])
def test_project_out_weight_removes_that_share_of_the_component(qwen, texts, weight):
    r = torch.randn(qwen.d_model, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = (r / r.norm()).float()
    site = "resid_post[0]"
    base = qwen.capture(texts[0], [site])
    with qwen.intervene(ProjectOut(site=site, direction=r, weight=weight)):
        cap = qwen.capture(texts[0], [site])
    mask = cap.attention_mask.bool()
    x, y = base[site][mask], cap[site][mask]
    torch.testing.assert_close(y, x - weight * (x @ u)[:, None] * u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y @ u, (1 - weight) * (x @ u), atol=1e-4, rtol=1e-4)
    assert (x @ u).abs().max() > 1e-2


def test_weighted_ablation_sites_and_partial_component(qwen, texts, cands):
    r = cands.direction(-1, 1)
    u = (r / r.norm()).float()
    ivs = weighted_ablation(qwen, r, [0.25, 0.0])
    assert [(iv.site, iv.weight) for iv in ivs] == [("embed", 0.25), ("attn_out[0]", 0.25), ("mlp_out[0]", 0.25)]
    base = qwen.capture(texts[0], ["embed"])
    with qwen.intervene(*ivs):
        cap = qwen.capture(texts[0], ["embed"])
    mask = cap.attention_mask.bool()
    x, y = base["embed"][mask], cap["embed"][mask]
    torch.testing.assert_close(y, x - 0.25 * (x @ u)[:, None] * u, atol=1e-5, rtol=1e-5)


def test_unit_weights_equal_the_reference_ablation(qwen, texts, cands):
    r = cands.direction(-1, 1)
    with qwen.intervene(*directional_ablation(qwen, r)):
        ref = qwen.forward(texts[1])
    with qwen.intervene(*weighted_ablation(qwen, r, np.ones(qwen.n_layers))):
        got = qwen.forward(texts[1])
    mask = qwen.batch(texts[1])["attention_mask"].bool()
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen3", "qwen2_moe"])
def test_weighted_checkpoint_equals_the_hooks(tiny_models, family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_models(family)
    prompts = [model.render_chat(r) for r in HARMFUL[:3]]
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = [0.6, 1.3]
    out = orthogonalize_weights(model, r, tmp_path / family, layer_weights=weights, biases="orthogonalize")
    with model.intervene(*weighted_ablation(model, r, weights)):
        hooked = model.forward(prompts)
    batch = model.batch(prompts)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = plain(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], hooked[mask], atol=1e-4, rtol=1e-4)
    assert (hooked[mask] - model.forward(prompts)[mask]).abs().max() > 1e-2
    assert (out / "orthogonalization.json").read_text().count("layer_weights") == 1


# ----- Pareto front -----------------------------------------------------------------------------------------
def test_pareto_front_by_hand():
    pts = [[0.5, 0.1],   # 0: front
           [0.2, 0.3],   # 1: front
           [0.5, 0.2],   # 2: dominated by 0
           [0.0, 0.9],   # 3: front
           [0.2, 0.3],   # 4: equal to 1, kept
           [0.6, 0.05],  # 5: front
           [math.nan, 0.0],  # 6: failed, left out
           [0.3, 0.3]]   # 7: dominated by 1
    assert pareto_front(pts) == [0, 1, 3, 4, 5]
    assert pareto_front(np.zeros((0, 2))) == []
    with pytest.raises(ValueError, match="objectives"):
        pareto_front([0.1, 0.2])


def _trial(n, rate, kl, state="complete"):
    p = {"direction_layer": 1.0, "max_weight": 1.0, "max_weight_position": 0.0, "min_weight_fraction": 1.0,
         "min_weight_distance": 1.0}
    return SearchTrial(number=n, params=p, weights=(1.0, 1.0), refusal_rate=rate, kl=kl, state=state)


def test_best_and_front_of_hand_made_trials(tmp_path):
    trials = (_trial(0, 0.5, 0.01), _trial(1, 0.0, 0.3), _trial(2, 0.1, 0.05), _trial(3, 0.1, 0.02),
              _trial(4, math.nan, math.nan, "fail"), _trial(5, 0.1, 0.02))
    s = AblationSearch(trials=trials, position=-1, n_layers=2, space=SearchSpace())
    assert [t.number for t in s.pareto] == [1, 3, 5, 0]
    assert s.best().number == 3  # lowest rate under KL 0.1; ties: lower KL, then the earlier trial
    assert s.best(max_kl=None).number == 1
    with pytest.raises(ValueError, match="lowest is 0.01"):
        s.best(max_kl=0.001)
    s.save(tmp_path / "s.json")
    back = AblationSearch.load(tmp_path / "s.json")
    assert back.trials[:4] == trials[:4] and back.trials[4].state == "fail" and math.isnan(back.trials[4].kl)
    assert [t.number for t in back.pareto] == [1, 3, 5, 0]
    (tmp_path / "other.json").write_text('{"type": "Probe"}')
    with pytest.raises(ValueError, match="not a RefusalAblationSearch"):
        AblationSearch.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="no search at"):
        AblationSearch.load(tmp_path / "missing.json")


# ----- the search -------------------------------------------------------------------------------------------
def test_seeded_search_is_deterministic_and_consistent(qwen, cands, texts, ids, tmp_path):
    a = _search(qwen, cands, texts, ids)
    b = _search(qwen, cands, texts, ids)
    assert len(a.trials) == 6 and a.trials == b.trials
    assert a.space.direction_layer == (1.0, 1.0)  # layer 0 is zero (template tokens): left out
    assert a.space.max_weight_position == (0.0, 1.0) and a.space.min_weight_distance == (1.0, 1.0)
    t = a.trials[-1]
    np.testing.assert_allclose(t.weights, t.kernel.weights(qwen.n_layers))
    # a trial's objectives are evaluate_ablation's for its direction and weights
    again = evaluate_ablation(qwen, a.direction(cands, t), t.weights, *texts, ids)
    assert again["refusal_rate"] == t.refusal_rate and again["kl"] == pytest.approx(t.kl, rel=1e-9, abs=1e-12)
    assert again["mean_score"] == pytest.approx(t.extras["mean_score"])
    assert 0 < len(a.pareto) <= 6 and {x.number for x in a.pareto} <= {x.number for x in a.trials}
    a.save(tmp_path / "a.json")
    back = AblationSearch.load(tmp_path / "a.json")
    assert back.trials == a.trials and back.space == a.space and back.settings == a.settings
    ivs = back.ablation(qwen, cands, t)
    assert len(ivs) == sum(2 + (L == 0) for L, w in enumerate(t.weights) if w)
    assert {"trial", "refusal_rate", "kl", "pareto"} <= set(a.table().columns)
    c = _search(qwen, cands, texts, ids, seed=8, sampler="nsga2")
    assert c.trials != a.trials


def test_enqueued_full_ablation_is_the_reference_ablation(qwen, cands, texts, ids):
    s = _search(qwen, cands, texts, ids, n_trials=2, enqueue=[full_ablation_params(1, qwen.n_layers)])
    t = s.trials[0]
    assert t.weights == (1.0, 1.0) and t.direction_layer == 1.0 and s.settings["enqueue"][0]["max_weight"] == 1.0
    base = qwen.forward(texts[1])[:, -1]
    with qwen.intervene(*directional_ablation(qwen, cands.direction(-1, 1))):
        kl = float(next_token_kl(base, qwen.forward(texts[1])[:, -1]).mean())
        rate = float((refusal_scores(qwen, texts[0], ids) > 0).mean())
    assert t.kl == pytest.approx(kl, abs=1e-6) and t.refusal_rate == rate
    with pytest.raises(ValueError, match="max_weight = 2.0 not in"):
        _search(qwen, cands, texts, ids, enqueue=[{**full_ablation_params(1, 2), "max_weight": 2.0}])
    with pytest.raises(ValueError, match="give exactly"):
        _search(qwen, cands, texts, ids, enqueue=[{"max_weight": 1.0}])
    with pytest.raises(ValueError, match="raise n_trials"):
        _search(qwen, cands, texts, ids, n_trials=1, enqueue=[full_ablation_params(1, 2)] * 2)


def test_failed_trials_are_kept_and_left_off_the_front(qwen, cands, texts, ids):
    # two new tokens never close the thinking: no answer is judged, the rate is NaN and the trial fails
    s = _search(qwen, cands, texts, ids, n_trials=2, refusal=JudgedRefusal(max_new_tokens=2))
    assert [t.state for t in s.trials] == ["fail", "fail"] and s.pareto == ()
    assert s.trials[0].extras == {"n_judged": 0.0, "n_unclosed": 4.0}
    with pytest.raises(ValueError, match="no complete trial"):
        s.best()


def test_judged_refusal_counts_unclosed_and_judges_answers_only():
    replies = ["fine.</think>I can't do that", "hmm</think>Sure, here it is", "still thinking", "x</think>I won't"]

    class Stub:  # generate() only: the judged rate's bookkeeping, without a model's randomness
        def generate(self, prompts, **kw):
            assert kw["temperature"] == 0
            return [SimpleNamespace(text=replies[int(p)], finish_reason="stop") for p in prompts]

    got = JudgedRefusal(judge=KeywordJudge(phrases=("I can't", "I won't")))(Stub(), ["0", "1", "2", "3"], batch_size=3)
    assert got == {"refusal_rate": 2 / 3, "n_judged": 3.0, "n_unclosed": 1.0}


def test_search_against_the_model_it_ran_on(qwen, tiny_models, cands, texts, ids):
    s = _search(qwen, cands, texts, ids, n_trials=1)
    other = candidate_directions(qwen, texts[1], texts[0], positions=(-1,))
    with pytest.raises(ValueError, match="not the candidates"):
        s.direction(other)
    with pytest.raises(ValueError, match="ran on tiny:qwen3"):
        s.ablation(tiny_models("llama"), cands)


# ----- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(max_weight=-0.1, min_weight=0.0), "max_weight must be >= 0"),
    (dict(min_weight=1.5), r"min_weight must be in \[0, max_weight"),
    (dict(min_weight=-0.1), r"min_weight must be in \[0, max_weight"),
    (dict(min_weight_distance=0), "min_weight_distance must be > 0"),
    (dict(max_weight_position=math.nan), "finite"),
    (dict(max_weight=True), "finite number"),
])
def test_kernel_parameters_out_of_range(kw, match):
    args = {"max_weight": 1.0, "max_weight_position": 1.0, "min_weight": 0.5, "min_weight_distance": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        WeightKernel(**args)


@pytest.mark.parametrize("kw, match", [
    (dict(max_weight=(1.5, 0.5)), "low > high"),
    (dict(max_weight=(-1.0, 1.0)), ">= 0"),
    (dict(min_weight_fraction=(0.0, 1.2)), r"in \[0, 1\]"),
    (dict(min_weight_distance=(0.0, 2.0)), "> 0"),
    (dict(direction_layer=(1.0,)), "range"),
])
def test_search_space_out_of_range(kw, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace(**kw)


def test_search_bad_input(qwen, cands, texts, ids):
    h, n = texts
    with pytest.raises(ValueError, match="n_trials must be an integer >= 1"):
        search_ablation(qwen, cands, h, n, ids, n_trials=0)
    with pytest.raises(ValueError, match="harmful dev set is empty"):
        search_ablation(qwen, cands, [], n, ids)
    with pytest.raises(ValueError, match="harmless dev set is empty"):
        search_ablation(qwen, cands, h, [], ids)
    with pytest.raises(ValueError, match="sampler"):
        search_ablation(qwen, cands, h, n, ids, sampler="random")
    with pytest.raises(ValueError, match="needs refusal_ids"):
        search_ablation(qwen, cands, h, n, None)
    with pytest.raises(ValueError, match="outside the candidates' layers"):
        search_ablation(qwen, cands, h, n, ids, space=SearchSpace(direction_layer=(1.0, 4.0)))
    with pytest.raises(ValueError, match=r"zero candidates at layers \[0\]"):
        search_ablation(qwen, cands, h, n, ids, space=SearchSpace(direction_layer=(0.5, 1.0)))
    two = candidate_directions(qwen, h, n, positions=(-2, -1))
    with pytest.raises(ValueError, match="pass position="):
        search_ablation(qwen, two, h, n, ids)
    with pytest.raises(ValueError, match="position -3 is not"):
        search_ablation(qwen, two, h, n, ids, position=-3)
    wide = RefusalCandidates(directions=torch.ones(1, 2, 65), positions=(-1,), layers=(0, 1), n_harmful=1, n_harmless=1)
    with pytest.raises(ValueError, match="width 65"):
        search_ablation(qwen, wide, h, n, ids)
    with pytest.raises(ValueError, match="3 weights"):
        weighted_ablation(qwen, cands.direction(-1, 1), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        weighted_ablation(qwen, cands.direction(-1, 1), [1.0, math.nan])
    with pytest.raises(ValueError, match="one weight per layer"):
        orthogonalize_weights(qwen, cands.direction(-1, 1), "/nonexistent/never-written", layer_weights=[1.0])
    with pytest.raises(ValueError, match="ProjectOut weight"):
        ProjectOut(site="resid_post[0]", direction=cands.direction(-1, 1), weight=math.inf)
    assert ScoredRefusal().threshold == 0.0

"""Strength selection and evaluation (probes.steering.selection, steering.md §5) against hand
computations: fixed numbers for the norm ratio, KL, slopes, anti-steerable fraction, split and
selection rule; the tiny qwen3 model, read and steered by hand, for the model-dependent parts."""

import math
import types

import numpy as np
import pytest
import torch

from probes.evals.stats import Estimate
from probes.models.interventions import AddVector
from probes.steering.selection import (
    CellResult,
    ControlComparison,
    KLGuard,
    LogitDiffItem,
    Steerability,
    SteeringCell,
    behaviour,
    behaviour_curve,
    compare_controls,
    evaluate_cell,
    kl_guard,
    logit_difference,
    negated_control,
    next_token_kl,
    norm_ratio,
    per_example,
    prompting_baseline,
    random_control,
    random_direction,
    residual_norm,
    select_and_evaluate,
    select_cell,
    split_examples,
    split_indices,
    steerability,
    steering_slopes,
    with_instruction,
)

NEUTRAL = ["Alice has 3 apples.", "How many apples does she have now?", "Sure, here is how to bake bread."]
QUESTIONS = [
    "Alice has 3 apples and buys 5 more.", "The answer is", "Let me check: 8 - 5 = 3.", "First find the total.",
    "Wait, that is wrong.", "How many apples", "I cannot help with that.", "Correct!",
]
NB = 200  # bootstrap resamples: enough for the tests, quick


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen3")


@pytest.fixture(scope="module")
def vec():
    return torch.randn(64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def items(qwen):
    eight, three = (qwen.encode(t, add_special_tokens=False)[0] for t in (" 8", " 3"))
    return [LogitDiffItem(q, eight, three) for q in QUESTIONS]


def last_logits(model, prompt, iv=None):
    """Next-token logits after one prompt run alone (no padding), steered by ``iv``."""
    if iv is None:
        return model.forward(prompt)[0, -1].double()
    with model.intervene(iv):
        return model.forward(prompt)[0, -1].double()


# -- norm ratio ---------------------------------------------------------------------------------


def test_norm_ratio_by_hand():
    assert norm_ratio(2.0, torch.tensor([3.0, 4.0]), 4.0) == pytest.approx(2.5)  # ‖2·(3,4)‖ = 10
    assert norm_ratio(-2.0, [3.0, 4.0], 4.0) == pytest.approx(2.5)
    assert norm_ratio(0, [3.0, 4.0], 4.0) == 0.0


def test_residual_norm_is_the_median_over_unpadded_tokens(qwen):
    norms = [qwen.capture(p, ["resid_post[1]"])["resid_post[1]"][0].double().norm(dim=-1) for p in NEUTRAL]
    want = float(np.median(torch.cat(norms).numpy()))
    assert residual_norm(qwen, NEUTRAL, 1) == pytest.approx(want, rel=1e-5)
    assert residual_norm(qwen, NEUTRAL, 1, batch_size=1) == pytest.approx(want, rel=1e-9)


# -- KL guard -----------------------------------------------------------------------------------


def test_next_token_kl_by_hand():
    p, q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    # KL(p‖q) = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2; logits are log-probabilities up to a constant
    kl = next_token_kl(p.log() + 3.0, q.log())
    assert kl.item() == pytest.approx(0.25 * math.log(2), abs=1e-12)
    # a zero-probability base token contributes nothing: KL([1, 0] ‖ [.5, .5]) = ln 2
    kl = next_token_kl(torch.tensor([[0.0, -math.inf], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert kl.tolist() == pytest.approx([math.log(2), 0.0], abs=1e-12)


def test_kl_guard_is_the_last_position_kl_by_hand(qwen, vec):
    cell = SteeringCell(layer=1, alpha=0.05, vector=vec)
    iv = AddVector(site="resid_post[1]", vector=vec, scale=0.05)
    want = [next_token_kl(last_logits(qwen, p), last_logits(qwen, p, iv)).item() for p in NEUTRAL]
    guard = kl_guard(qwen, NEUTRAL, cell, threshold=0.1)
    np.testing.assert_allclose(guard.per_prompt, want, rtol=1e-4, atol=1e-9)
    assert guard.mean_kl == pytest.approx(np.mean(want), rel=1e-4)
    assert guard.passed == bool(np.mean(want) <= 0.1)
    assert not kl_guard(qwen, NEUTRAL, cell, threshold=np.mean(want) / 2).passed
    # the cell's positions are not used: a "thinking" cell is guarded at every position
    thinking = SteeringCell(layer=1, alpha=0.05, vector=vec, positions="thinking")
    assert kl_guard(qwen, NEUTRAL, thinking).mean_kl == pytest.approx(guard.mean_kl, rel=1e-9)
    assert kl_guard(qwen, NEUTRAL, SteeringCell(layer=1, alpha=0.0, vector=vec)).mean_kl == 0.0


def test_kl_guard_over_generated_positions_by_hand(qwen, vec):
    """``tokens`` > 0: per prompt, the mean KL along the unsteered greedy continuation, each prompt run
    alone with its continuation; the guard fails when that mean alone exceeds the threshold."""
    cell = SteeringCell(layer=1, alpha=0.5, vector=vec)
    iv = AddVector(site="resid_post[1]", vector=vec, scale=0.5)
    guard = kl_guard(qwen, NEUTRAL, cell, tokens=5, batch_size=2)
    want = []
    for p in NEUTRAL:
        ids = qwen.encode(p)
        cont = qwen.generate([p], max_new_tokens=5)[0].token_ids
        base = qwen.forward([ids + cont])[0].double()
        with qwen.intervene(iv):
            steered = qwen.forward([ids + cont])[0].double()
        span = slice(len(ids) - 1, len(ids) - 1 + len(cont))
        want.append(next_token_kl(base[span], steered[span]).mean().item())
    np.testing.assert_allclose(guard.per_prompt_generated, want, rtol=1e-4, atol=1e-9)
    assert guard.tokens == 5 and guard.mean_kl_generated == pytest.approx(np.mean(want), rel=1e-4)
    last = kl_guard(qwen, NEUTRAL, cell, batch_size=2)  # the same last-position KL, read from the one pass
    np.testing.assert_allclose(guard.per_prompt, last.per_prompt, rtol=1e-4, atol=1e-9)
    between = (guard.mean_kl + guard.mean_kl_generated) / 2
    assert guard.mean_kl < between < guard.mean_kl_generated  # a threshold the generated positions alone fail
    assert kl_guard(qwen, NEUTRAL, cell, threshold=between).passed
    assert not kl_guard(qwen, NEUTRAL, cell, threshold=between, tokens=5).passed
    with pytest.raises(ValueError, match="tokens must be an integer >= 0"):
        kl_guard(qwen, NEUTRAL, cell, tokens=-1)


# -- behaviour ----------------------------------------------------------------------------------


def test_logit_difference_steered_by_hand(qwen, vec, items):
    cell = SteeringCell(layer=0, alpha=3.0, vector=vec)
    iv = AddVector(site="resid_post[0]", vector=vec, scale=3.0)
    want = [(lambda x: (x[it.positive] - x[it.negative]).item())(last_logits(qwen, it.prompt, iv)) for it in items]
    np.testing.assert_allclose(behaviour(qwen, items, logit_difference, cell, batch_size=3), want, rtol=1e-4, atol=1e-5)
    unsteered = [(lambda x: (x[it.positive] - x[it.negative]).item())(last_logits(qwen, it.prompt)) for it in items]
    np.testing.assert_allclose(behaviour(qwen, items, logit_difference), unsteered, rtol=1e-4, atol=1e-5)
    # single-token strings work like ids
    as_text = [LogitDiffItem(it.prompt, " 8", " 3") for it in items]
    np.testing.assert_allclose(behaviour(qwen, as_text, logit_difference, cell), want, rtol=1e-4, atol=1e-5)


def test_per_example_metric_sees_the_steering(qwen, vec):
    def top_is_eight(model, prompt):
        return float(model.forward(prompt)[0, -1].argmax() == model.encode(" 8", add_special_tokens=False)[0])

    cell = SteeringCell(layer=0, alpha=2.0, vector=vec)
    iv = AddVector(site="resid_post[0]", vector=vec, scale=2.0)
    with qwen.intervene(iv):
        want = [top_is_eight(qwen, q) for q in QUESTIONS]
    assert behaviour(qwen, QUESTIONS, per_example(top_is_eight), cell).tolist() == want


def test_evaluate_cell_by_hand(qwen, vec, items):
    cell = SteeringCell(layer=1, alpha=0.5, vector=vec)
    r = evaluate_cell(qwen, cell, items, logit_difference, NEUTRAL, n_boot=NB)
    ref = residual_norm(qwen, NEUTRAL, 1)
    assert r.reference_norm == pytest.approx(ref)
    assert r.norm_ratio == pytest.approx(0.5 * vec.double().norm().item() / ref)
    assert r.kl.mean_kl == pytest.approx(kl_guard(qwen, NEUTRAL, cell).mean_kl)
    np.testing.assert_allclose(r.values, behaviour(qwen, items, logit_difference, cell), rtol=1e-6)
    assert r.estimate.value == pytest.approx(r.values.mean()) and r.estimate.n == len(items)
    assert r.estimate.lo <= r.estimate.value <= r.estimate.hi
    assert (r.layer, r.alpha, r.positions, r.passed) == (1, 0.5, "all", r.kl.passed)


# -- controls -----------------------------------------------------------------------------------


def test_random_direction_is_norm_matched_seeded_and_per_layer(vec):
    a = random_direction(vec, layer=1, seed=0)
    assert a.norm().item() == pytest.approx(vec.norm().item(), rel=1e-6)
    assert torch.equal(a, random_direction(vec, layer=1, seed=0))
    assert not torch.equal(a, random_direction(vec, layer=0, seed=0))
    assert not torch.equal(a, random_direction(vec, layer=1, seed=1))
    assert abs(torch.nn.functional.cosine_similarity(a, vec, dim=0).item()) < 0.6
    cell = SteeringCell(layer=1, alpha=2.0, vector=vec, positions="thinking")
    rnd, neg = random_control(cell, seed=0), negated_control(cell)
    assert torch.equal(rnd.vector, a) and (rnd.layer, rnd.alpha, rnd.positions) == (1, 2.0, cell.positions)
    assert torch.equal(neg.vector, -vec) and (neg.layer, neg.alpha, neg.positions) == (1, 2.0, cell.positions)


def test_with_instruction_and_prompting_baseline(qwen, items):
    assert with_instruction(["a", "b"], "Be brief.") == ["Be brief.\na", "Be brief.\nb"]
    assert with_instruction(["a"], "Be brief.", where="append", separator=" ") == ["a Be brief."]
    item = LogitDiffItem("Q", 5, 6)
    assert with_instruction([item], "Say 8.") == [LogitDiffItem("Say 8.\nQ", 5, 6)]
    assert with_instruction(["a"], lambda e: e.upper()) == ["A"]
    with pytest.raises(ValueError, match="callable example -> example"):
        with_instruction([{"prompt": "x"}], "Say 8.")
    base = prompting_baseline(qwen, items, logit_difference, "Say 8.", n_boot=NB)
    by_hand = [LogitDiffItem("Say 8.\n" + it.prompt, it.positive, it.negative) for it in items]
    np.testing.assert_allclose(base.values, behaviour(qwen, by_hand, logit_difference), rtol=1e-6)
    assert base.estimate.value == pytest.approx(base.values.mean())


def test_compare_controls_pairs_every_condition(qwen, vec, items, tmp_path):
    cell = SteeringCell(layer=0, alpha=2.0, vector=vec)
    cmp = compare_controls(qwen, cell, items, logit_difference, instruction="Say 8.", n_boot=NB)
    run = {
        "steered": cell, "unsteered": None, "random": random_control(cell), "negated": negated_control(cell),
    }
    for name, c in run.items():
        np.testing.assert_allclose(cmp.conditions[name].values, behaviour(qwen, items, logit_difference, c), rtol=1e-6)
    np.testing.assert_allclose(
        cmp.conditions["prompting"].values, prompting_baseline(qwen, items, logit_difference, "Say 8.").values, rtol=1e-6
    )
    for name in ("unsteered", "random", "negated", "prompting"):
        d = cmp.steered.values - cmp.conditions[name].values
        assert cmp.differences[name].value == pytest.approx(d.mean())
    cmp.save(tmp_path / "cmp")
    back = ControlComparison.load(tmp_path / "cmp")
    assert back.differences == cmp.differences and back.conditions.keys() == cmp.conditions.keys()
    np.testing.assert_array_equal(back.steered.values, cmp.steered.values)


# -- steerability -------------------------------------------------------------------------------


def test_slopes_spread_and_anti_steerable_fraction_by_hand(tmp_path):
    alphas = [0.0, 1.0, 2.0]
    values = [[1, 2, 3], [3, 2, 1], [0, 1, 0], [0, 0, 4]]  # slopes 1, -1, 0, 2 (centred α: -1, 0, 1)
    np.testing.assert_allclose(steering_slopes(alphas, values), [1, -1, 0, 2])
    np.testing.assert_allclose(steering_slopes([2.0, 0.0, 1.0], [[5, 1, 3]]), [2])  # order of the grid is kept
    flat = steering_slopes([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], [[1, 1, 1, 1, 1, 1], [0.3] * 6])
    assert (flat == 0).all()  # exactly: a flat curve is neither steerable nor anti-steerable
    s = steerability(alphas, values, n_boot=NB)
    assert s.mean.value == pytest.approx(0.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # deviations .5, -1.5, -.5, 1.5
    assert s.anti_steerable_fraction == 0.25  # the zero slope is not anti-steerable
    assert steerability(alphas, values, expected_sign=-1, n_boot=NB).anti_steerable_fraction == 0.5
    s.save(tmp_path / "s")
    back = Steerability.load(tmp_path / "s")
    assert (back.mean, back.std, back.anti_steerable_fraction) == (s.mean, s.std, s.anti_steerable_fraction)


def test_behaviour_curve_columns_are_cells(qwen, vec, items):
    alphas = [-1.0, 0.0, 2.0]
    curve = behaviour_curve(qwen, items, logit_difference, layer=0, vector=vec, alphas=alphas)
    assert curve.shape == (len(items), 3)
    for j, a in enumerate(alphas):
        col = behaviour(qwen, items, logit_difference, SteeringCell(layer=0, alpha=a, vector=vec))
        np.testing.assert_allclose(curve[:, j], col, rtol=1e-6)
    assert steerability(alphas, curve, n_boot=NB).slopes.shape == (len(items),)


# -- split and selection ------------------------------------------------------------------------


def test_split_is_deterministic_from_the_seed():
    dev, test = split_indices(10, seed=3)
    perm = np.random.default_rng(3).permutation(10)
    assert dev.tolist() == sorted(perm[:5]) and test.tolist() == sorted(perm[5:])
    again = split_indices(10, seed=3)
    assert np.array_equal(dev, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(dev, split_indices(10, seed=4)[0])
    assert [len(x) for x in split_indices(10, dev_fraction=0.3)] == [3, 7]
    assert [len(x) for x in split_indices(2, dev_fraction=0.9)] == [1, 1]
    d, t = split_examples(list("abcdefghij"), seed=3)
    assert d == [list("abcdefghij")[i] for i in dev] and t == [list("abcdefghij")[i] for i in test]


def cell_result(layer, alpha, value, kl, ratio=1.0, threshold=0.1):
    return CellResult(
        layer=layer, alpha=alpha, positions="all", vector_norm=1.0, reference_norm=1.0, norm_ratio=ratio,
        kl=KLGuard(mean_kl=kl, per_prompt=np.array([kl]), threshold=threshold, passed=kl <= threshold),
        values=np.array([value]), estimate=Estimate(value, value, value, 1),
    )


def test_select_cell_rule_by_hand():
    a, b, c = cell_result(0, 1.0, 0.5, 0.01), cell_result(1, 4.0, 0.9, 0.5), cell_result(1, 2.0, 0.7, 0.05)
    assert select_cell([a, b, c]) is c  # b behaves best but fails the guard
    assert select_cell([a, b, c], higher_is_better=False) is a
    # ties: the smaller norm ratio, then the lower layer, then the smaller |alpha|
    t1, t2 = cell_result(1, 1.0, 0.7, 0.0, ratio=0.5), cell_result(0, 1.0, 0.7, 0.0, ratio=0.6)
    assert select_cell([c, t2, t1]) is t1
    t3, t4 = cell_result(1, -1.0, 0.7, 0.0, ratio=0.5), cell_result(0, 2.0, 0.7, 0.0, ratio=0.5)
    assert select_cell([t1, t3, t4]) is t4
    assert select_cell([t3, t1]) is t3  # same layer and |alpha|: the first given
    with pytest.raises(ValueError, match=r"smallest mean KL is 0.5 \(layer 1, alpha 4\)"):
        select_cell([b, cell_result(0, 8.0, 1.0, 0.7)])
    with pytest.raises(ValueError, match="no cells"):
        select_cell([])


def test_cell_result_saves_and_loads(tmp_path, qwen, vec, items):
    r = evaluate_cell(qwen, SteeringCell(layer=1, alpha=0.5, vector=vec), items, logit_difference, NEUTRAL, n_boot=NB)
    r.save(tmp_path / "cell")
    back = CellResult.load(tmp_path / "cell")
    for k in ("layer", "alpha", "positions", "vector_norm", "reference_norm", "norm_ratio", "estimate"):
        assert getattr(back, k) == getattr(r, k)
    assert back.kl.to_fields() == r.kl.to_fields()
    np.testing.assert_array_equal(back.values, r.values)
    np.testing.assert_array_equal(back.kl.per_prompt, r.kl.per_prompt)


def test_select_and_evaluate_chooses_on_dev_and_reports_on_test(qwen, vec, items):
    small = vec / vec.norm() * 0.25  # about the tiny model's residual norm, so strengths do not saturate
    vectors, alphas = {0: small, 1: -small}, [-1.0, -0.3, 0.0, 0.3, 1.0]
    dev_idx, test_idx = split_indices(len(items), seed=1)
    dev, test = [items[i] for i in dev_idx], [items[i] for i in test_idx]
    by_hand = []  # (layer, alpha, dev behaviour, KL) of every cell
    for L, v in vectors.items():
        for a in alphas:
            c = SteeringCell(layer=L, alpha=a, vector=v)
            by_hand.append((L, a, behaviour(qwen, dev, logit_difference, c).mean(), kl_guard(qwen, NEUTRAL, c).mean_kl))
    best = max(by_hand, key=lambda x: x[2])
    assert best[3] > 0
    threshold = 0.99 * best[3]  # the best-behaved cell fails the guard, so the rule must skip it
    want = max((x for x in by_hand if x[3] <= threshold), key=lambda x: x[2])
    sel = select_and_evaluate(qwen, items, logit_difference, vectors, alphas, NEUTRAL, instruction="Say 8.",
                              split_seed=1, kl_threshold=threshold, n_boot=NB)
    assert np.array_equal(sel.dev_indices, dev_idx) and np.array_equal(sel.test_indices, test_idx)
    assert [(r.layer, r.alpha) for r in sel.cells] == [(L, a) for L in (0, 1) for a in alphas]
    assert [r.passed for r in sel.cells] == [x[3] <= threshold for x in by_hand]
    assert (sel.chosen.layer, sel.chosen.alpha) == want[:2] != best[:2]
    chosen = SteeringCell(layer=want[0], alpha=want[1], vector=vectors[want[0]])
    np.testing.assert_allclose(sel.test.steered.values, behaviour(qwen, test, logit_difference, chosen), rtol=1e-6)
    assert sel.test.steered.estimate.n == len(test)
    assert set(sel.test.differences) == {"unsteered", "random", "negated", "prompting"}
    # a SteeringVector-like value (layer -> vector at resid_post) gives the same selection
    like = types.SimpleNamespace(vectors=vectors, site="resid_post")
    again = select_and_evaluate(qwen, items, logit_difference, like, alphas, NEUTRAL, instruction="Say 8.",
                                split_seed=1, kl_threshold=threshold, n_boot=NB)
    assert (again.chosen.layer, again.chosen.alpha) == want[:2]
    with pytest.raises(ValueError, match="cells steer resid_post"):
        select_and_evaluate(qwen, items, logit_difference, types.SimpleNamespace(vectors=vectors, site="mlp_out"),
                            alphas, NEUTRAL, instruction="Say 8.")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"), "2", True])
def test_bad_alpha(alpha, vec):
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        SteeringCell(layer=0, alpha=alpha, vector=vec)
    with pytest.raises(ValueError, match="finite number"):
        norm_ratio(alpha, vec, 1.0)


def test_bad_inputs(qwen, vec, items):
    cell = SteeringCell(layer=1, alpha=1.0, vector=vec)
    with pytest.raises(ValueError, match="no neutral prompts"):
        kl_guard(qwen, [], cell)
    with pytest.raises(ValueError, match="no prompts for the residual norm"):
        residual_norm(qwen, [], 0)
    with pytest.raises(ValueError, match="no examples"):
        behaviour(qwen, [], logit_difference, cell)
    with pytest.raises(ValueError, match=r"width 3 but resid_post\[1\] of tiny:qwen3 has width 64"):
        kl_guard(qwen, NEUTRAL, SteeringCell(layer=1, alpha=1.0, vector=torch.ones(3)))
    with pytest.raises(ValueError, match=r"shape \(d_model,\)"):
        SteeringCell(layer=1, alpha=1.0, vector=torch.ones(2, 64))
    with pytest.raises(ValueError, match="NaN or inf"):
        SteeringCell(layer=1, alpha=1.0, vector=torch.full((64,), float("nan")))
    with pytest.raises(ValueError, match=r"layer 5 out of range .*layers 0\.\.1"):
        behaviour(qwen, items, logit_difference, SteeringCell(layer=5, alpha=1.0, vector=vec))
    with pytest.raises(ValueError, match=r"layer 2 out of range"):
        residual_norm(qwen, NEUTRAL, 2)
    with pytest.raises(ValueError, match="layer must be a block index"):
        SteeringCell(layer=-1, alpha=1.0, vector=vec)
    with pytest.raises(ValueError, match="at least 2 distinct alpha values"):
        steering_slopes([1.0], [[1.0]])
    with pytest.raises(ValueError, match="at least 2 distinct alpha values"):
        steering_slopes([1.0, 1.0], [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"values must be \(n_examples, 2\)"):
        steering_slopes([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="every alpha must be a finite number"):
        behaviour_curve(qwen, items, logit_difference, layer=0, vector=vec, alphas=[0.0, float("nan")])
    with pytest.raises(ValueError, match="no alpha values"):
        behaviour_curve(qwen, items, logit_difference, layer=0, vector=vec, alphas=[])
    with pytest.raises(ValueError, match="one number per example"):
        behaviour(qwen, items, lambda m, ex: [0.0], cell)
    with pytest.raises(ValueError, match="returned nan for example 2"):
        behaviour(qwen, items, lambda m, ex: [float("nan") if i == 2 else 0.0 for i in range(len(ex))])
    with pytest.raises(ValueError, match="is 5 tokens"):
        behaviour(qwen, [LogitDiffItem("x", "apples are", " 3")], logit_difference)
    with pytest.raises(ValueError, match="unknown phase"):
        SteeringCell(layer=0, alpha=1.0, vector=vec, positions="thoughts")
    with pytest.raises(ValueError, match="KL threshold"):
        kl_guard(qwen, NEUTRAL, cell, threshold=float("nan"))
    with pytest.raises(ValueError, match="at least 2 examples"):
        split_indices(1)
    with pytest.raises(ValueError, match=r"dev_fraction must be in \(0, 1\)"):
        split_indices(10, dev_fraction=1.0)
    with pytest.raises(ValueError, match="expected_sign"):
        steerability([0.0, 1.0], [[0.0, 1.0]], expected_sign=0)

"""Hybrid base + thinking model (``probes.steering.hybrid``) on tiny random models: the KV-cached
loop against a no-cache reference that re-runs the whole context every step (as the released
``hybrid_token.py`` does), candidate choice by the thinking model's log-probs, the share of steered
tokens, the ablations, the fits by hand, and save/load."""

import math
import random

import numpy as np
import pytest
import torch

from probes.models.interventions import AddVector
from probes.steering.hybrid import (
    COEFFICIENTS,
    Baselines,
    CategoryClassifier,
    CategoryVectors,
    HybridResult,
    HybridTrace,
    LabelledTrace,
    evaluate_hybrid,
    fit_category_classifier,
    fit_category_vectors,
    fit_optimised_category_vectors,
    hybrid_ablations,
    hybrid_generate,
    taxonomy_labeller,
)

PROMPTS = [
    "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>",
    "<bos><|user|>How many apples does she have now?<|end|><|assistant|><think>First",
]
STEPS = 10
#: A grid from c = 0 (the base model's own token) up, so that the candidates differ and the choice
#: among them depends on the details of the steered forward.
FINE = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


@pytest.fixture(scope="module")
def pair(tiny_models, tiny_tokenizer):
    """(base, thinking): two tiny Qwen3 models with different weights and one tokenizer."""
    from probes.models.load import from_hf
    from tests.tiny import build_model

    thinking = from_hf(build_model("qwen3", vocab_size=len(tiny_tokenizer), seed=1), tiny_tokenizer,
                       spec="tiny:qwen3-thinking")
    return tiny_models("qwen3"), thinking


def _classifier(model, layer=1, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    cents = torch.randn(k, d, generator=g, dtype=torch.float64)
    return CategoryClassifier(layer=layer, categories=tuple(f"cat{i}" for i in range(k)),
                              mean=torch.randn(d, generator=g, dtype=torch.float64) * 0.1,
                              centroids=cents / cents.norm(dim=-1, keepdim=True))


def _vectors(model, layer=0, k=3, norm=30.0, seed=0):
    """Strong random vectors, so that the coefficients give different candidates."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, model.d_model, generator=g)
    b = torch.randn(model.d_model, generator=g)
    return CategoryVectors(layer=layer, categories=tuple(f"cat{i}" for i in range(k)),
                           vectors=norm * v / v.norm(dim=-1, keepdim=True), bias=0.3 * norm * b / b.norm())


def _reference(base, thinking, clf, vec, prompt, coefs=COEFFICIENTS, steps=STEPS, fire=None):
    """The released loop's rule without a cache: every step re-runs the whole context on both
    models; a firing step re-runs the base context once per coefficient with c·(bias + v_cat)
    added at the last position only. ``fire(step, disagree)`` overrides the firing rule."""
    ids_b, ids_t = base.encode(prompt), thinking.encode(prompt)
    site = f"resid_post[{clf.layer}]"
    out, steered, cats, chosen = [], [], [], []
    for step in range(steps):
        b_logits = base.forward([ids_b + out])[0, -1]
        cap = thinking.capture([ids_t + out], [site, "logits"], stop_early=False)
        t_logits, cat = cap["logits"][0, -1], clf.category(cap[site][0, -1])
        disagree = int(b_logits.argmax()) != int(t_logits.argmax())
        f = disagree if fire is None else fire(step, disagree)
        if f:
            last = len(ids_b) + len(out) - 1
            cands = []
            for c in coefs:
                with base.intervene(AddVector(site=f"resid_post[{vec.layer}]", vector=vec.steering(cat), scale=c,
                                              positions=(last,))):
                    cands.append(int(base.forward([ids_b + out])[0, -1].argmax()))
            lp = torch.log_softmax(t_logits.float(), -1)
            j = max(range(len(cands)), key=lambda i: (float(lp[cands[i]]), -i))
            tok, coef = cands[j], coefs[j]
        else:
            tok, coef = int(b_logits.argmax()), math.nan
        out.append(tok)
        steered.append(f)
        cats.append(cat)
        chosen.append(coef)
    return out, steered, cats, chosen


def _same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


def test_same_model_steers_nothing_and_is_plain_greedy(tiny_models):
    m = tiny_models("qwen3")
    clf, vec = _classifier(m), _vectors(m)
    for prompt in PROMPTS:
        tr = hybrid_generate(m, m, clf, vec, prompt, max_new_tokens=STEPS)
        ref = m.generate([prompt], max_new_tokens=STEPS)[0]
        assert not any(tr.steered) and not any(tr.disagreed)
        assert tr.token_ids == ref.token_ids and tr.text == ref.text
        assert all(math.isnan(c) for c in tr.coefficients)


@pytest.mark.parametrize("grid", [COEFFICIENTS, FINE])
def test_cached_loop_equals_no_cache_reference(pair, grid):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    changed = 0
    for prompt in PROMPTS:
        tr = hybrid_generate(base, thinking, clf, vec, prompt, coefficients=grid, max_new_tokens=STEPS)
        toks, steered, cats, chosen = _reference(base, thinking, clf, vec, prompt, coefs=grid)
        assert tr.token_ids == toks
        assert tr.steered == steered and tr.disagreed == steered
        assert tr.categories == cats
        assert _same(tr.coefficients, chosen)
        changed += sum(1 for s in steered if s)
    assert changed >= 3  # the comparison covers steered steps


def test_candidate_choice_follows_thinking_log_probs(pair):
    """First step by hand: the candidates are the steered argmaxes at each c; the emitted one has
    the highest thinking-model log-prob. The grid starts at c = 0 (the base model's own token), so
    the candidates differ."""
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    grid = FINE
    for prompt in PROMPTS:
        ids = base.encode(prompt)
        site = f"resid_post[{clf.layer}]"
        cap = thinking.capture(prompt, [site, "logits"], stop_early=False)
        cat = clf.category(cap[site][0, -1])
        lp = torch.log_softmax(cap["logits"][0, -1], -1)
        assert int(base.forward(prompt)[0, -1].argmax()) != int(lp.argmax())  # this step fires
        cands = []
        for c in grid:
            with base.intervene(AddVector(site="resid_post[0]", vector=c * vec.steering(cat),
                                          positions=(len(ids) - 1,))):
                cands.append(int(base.forward(prompt)[0, -1].argmax()))
        assert len(set(cands)) >= 2  # the choice is not trivial
        best = max(range(len(cands)), key=lambda i: (float(lp[cands[i]]), -i))
        tr = hybrid_generate(base, thinking, clf, vec, prompt, coefficients=grid, max_new_tokens=1)
        assert tr.token_ids == [cands[best]] and tr.coefficients == [grid[best]] and tr.steered == [True]
        # the grid's order does not change the token (unless two candidates tie)
        rev = hybrid_generate(base, thinking, clf, vec, prompt, coefficients=grid[::-1], max_new_tokens=1)
        assert rev.token_ids == tr.token_ids


def test_share_steered_counts_emitted_tokens(pair):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    golds = ["8", "3"]
    bl = Baselines(base_correct=[False, False], thinking_correct=[True, False], base_tokens=[5, 6],
                   thinking_tokens=[7, 8])
    r = evaluate_hybrid(base, thinking, clf, vec, PROMPTS, golds, baselines=bl, max_new_tokens=STEPS, progress=False)
    steered = [s for t in r.traces for s in t.steered]
    assert r.tokens_generated == len(steered) == sum(len(t.token_ids) for t in r.traces)
    assert r.tokens_steered == sum(steered) > 0
    assert r.share_steered == sum(steered) / len(steered)
    dis = sum(_reference(base, thinking, clf, vec, p)[1].count(True) for p in PROMPTS)
    assert r.tokens_steered == dis
    assert r.mean_tokens == np.mean([len(t.token_ids) for t in r.traces])
    assert sum(r.steered_by_category().values()) == r.tokens_steered


def test_bias_only_steers_with_the_bias(pair):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    only = vec.bias_only()
    assert torch.equal(only.vectors, torch.zeros_like(vec.vectors)) and torch.equal(only.bias, vec.bias)
    assert all(torch.equal(only.steering(c), vec.bias) for c in vec.categories)
    tr = hybrid_generate(base, thinking, clf, only, PROMPTS[0], max_new_tokens=STEPS)
    toks, steered, _, chosen = _reference(base, thinking, clf, only, PROMPTS[0])
    assert tr.token_ids == toks and tr.steered == steered and _same(tr.coefficients, chosen)


def test_random_firing_fires_at_seeded_random_steps(pair):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    prompt = PROMPTS[0]
    never = hybrid_generate(base, thinking, clf, vec, prompt, max_new_tokens=STEPS, fire_rate=0.0)
    assert not any(never.steered) and any(never.disagreed)
    assert never.token_ids == base.generate([prompt], max_new_tokens=STEPS)[0].token_ids
    always = hybrid_generate(base, thinking, clf, vec, prompt, max_new_tokens=STEPS, fire_rate=1.0)
    assert all(always.steered)
    rng = random.Random(7)
    draws = [rng.random() < 0.5 for _ in range(STEPS)]
    half = hybrid_generate(base, thinking, clf, vec, prompt, max_new_tokens=STEPS, fire_rate=0.5, seed=7)
    assert half.steered == draws  # one draw per step, whatever the models do
    toks, steered, _, chosen = _reference(base, thinking, clf, vec, prompt, fire=lambda i, _d: draws[i])
    assert half.token_ids == toks and _same(half.coefficients, chosen)
    again = hybrid_generate(base, thinking, clf, vec, prompt, max_new_tokens=STEPS, fire_rate=0.5, seed=7)
    assert again.token_ids == half.token_ids and again.steered == half.steered


def test_ablations_share_the_baselines_and_fire_at_the_hybrid_rate(pair):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    bl = Baselines(base_correct=[False, True], thinking_correct=[True, True], base_tokens=[5, 6], thinking_tokens=[7, 8])
    out = hybrid_ablations(base, thinking, clf, vec, PROMPTS, ["8", "3"], baselines=bl, max_new_tokens=STEPS, seed=3,
                           progress=False)
    assert list(out) == ["hybrid", "bias_only", "random_firing", "random_vectors"]
    assert all(r.baselines is bl for r in out.values())
    assert out["random_firing"].settings["fire_rate"] == out["hybrid"].share_steered
    assert out["random_firing"].settings["firing"] == "random" and out["hybrid"].settings["firing"] == "disagreement"
    only = hybrid_generate(base, thinking, clf, vec.bias_only(), PROMPTS[1], max_new_tokens=STEPS)
    assert out["bias_only"].traces[1].token_ids == only.token_ids
    rand = hybrid_generate(base, thinking, clf, vec.random_like(3), PROMPTS[0], max_new_tokens=STEPS)
    assert out["random_vectors"].traces[0].token_ids == rand.token_ids
    fired = hybrid_generate(base, thinking, clf, vec, PROMPTS[1], max_new_tokens=STEPS,
                            fire_rate=out["hybrid"].share_steered, seed=3 * 1_000_003 + 1)
    assert out["random_firing"].traces[1].steered == fired.steered


def test_random_vectors_are_norm_matched_and_seeded(tiny_models):
    m = tiny_models("qwen3")
    vec = _vectors(m)
    r0, r0b, r1 = vec.random_like(0), vec.random_like(0), vec.random_like(1)
    torch.testing.assert_close(r0.vectors.norm(dim=-1), vec.vectors.norm(dim=-1))
    assert torch.equal(r0.bias, vec.bias) and torch.equal(r0.vectors, r0b.vectors)
    assert not torch.equal(r0.vectors, r1.vectors)
    cos = torch.nn.functional.cosine_similarity(r0.vectors, vec.vectors, dim=-1)
    assert cos.abs().max() < 0.6
    assert "random" in r0.method


def _stub_traces():
    """Hand-labelled traces: sentences with a digit are 'compute', the others 'plan'."""
    prompt = PROMPTS[0]
    texts = ["First find the total. 3 + 5 = 8. Then subtract the eaten ones. 8 - 5 = 3.",
             "Let me check. 3 + 5 = 8. Wait, that is wrong. The answer is 8."]
    out = []
    for t in texts:
        sents, start = [], 0
        for piece in t.split(". "):
            piece = piece.rstrip(".")
            s = t.index(piece, start)
            sents.append((s, s + len(piece), "compute" if any(ch.isdigit() for ch in piece) else "plan"))
            start = s + len(piece)
        out.append(LabelledTrace(prompt, t, tuple(sents)))
    return out


def _by_hand(model, traces, layer):
    """Category → list of (positions, residual rows) over each sentence's predicting positions."""
    out = {}
    for tr in traces:
        full = tr.prompt + tr.completion
        h = model.capture(full, [f"resid_post[{layer}]"])[f"resid_post[{layer}]"][0].double()
        spans = [(len(tr.prompt) + s, len(tr.prompt) + e) for s, e, _ in tr.sentences]
        for (a, b), (_, _, cat) in zip(model.token_ranges(full, spans), tr.sentences):
            out.setdefault(cat, []).append(h[a - 1 : b - 1])
    return out


def test_fit_classifier_by_hand(tiny_models):
    m = tiny_models("qwen3")
    traces = _stub_traces()
    clf = fit_category_classifier(m, traces, 1, min_positions=1, progress=False)
    rows = {c: torch.cat(xs) for c, xs in _by_hand(m, traces, 1).items()}
    assert clf.categories == ("compute", "plan") and clf.counts == tuple(len(rows[c]) for c in clf.categories)
    mean = torch.cat([rows["compute"], rows["plan"]]).mean(0)
    torch.testing.assert_close(clf.mean, mean)
    for k, c in enumerate(clf.categories):
        x = rows[c] - mean
        cen = (x / x.norm(dim=-1, keepdim=True)).mean(0)
        torch.testing.assert_close(clf.centroids[k], cen / cen.norm())
    X = torch.cat([rows["compute"], rows["plan"]])
    y = torch.tensor([0] * len(rows["compute"]) + [1] * len(rows["plan"]))
    want = ((X - mean) @ clf.centroids.T).argmax(-1)
    assert torch.equal(clf.predict(X), want)
    assert clf.train_accuracy == pytest.approx(float((want == y).double().mean()))
    assert clf.accuracy(m, traces) == pytest.approx(clf.train_accuracy)
    with pytest.raises(ValueError, match="lower min_positions"):
        fit_category_classifier(m, traces, 1, min_positions=10_000, progress=False)


def test_fit_vectors_by_hand(pair):
    base, thinking = pair
    think_traces = _stub_traces()
    base_traces = [LabelledTrace(PROMPTS[1], "Alice has 3 apples. So she has 8 apples now.",
                                 ((0, 18, "compute"), (20, 44, "compute")))]
    cats = ("compute", "plan")
    t = {c: [x.mean(0) for x in xs] for c, xs in _by_hand(base, think_traces, 0).items()}
    o = {c: [x.mean(0) for x in xs] for c, xs in _by_hand(base, base_traces, 0).items()}
    own_all = torch.stack([x for xs in o.values() for x in xs]).mean(0)
    for contrast in ("same_category", "all"):
        vec = fit_category_vectors(base, think_traces, base_traces, 0, cats, contrast=contrast, progress=False)
        d = {c: torch.stack(t[c]).mean(0) - (torch.stack(o[c]).mean(0) if contrast == "same_category" and c in o
                                             else own_all) for c in cats}
        n = {c: len(t[c]) for c in cats}
        bias = sum(n[c] * d[c] for c in cats) / sum(n.values())
        torch.testing.assert_close(vec.bias, bias.float())
        for c in cats:  # bias + v_c is the category's difference in means
            torch.testing.assert_close(vec.steering(c), d[c].float(), atol=1e-5, rtol=1e-5)
        assert vec.counts == (n["compute"], n["plan"]) and vec.layer == 0
    with pytest.raises(ValueError, match="no sentences of"):
        fit_category_vectors(base, think_traces, base_traces, 0, ("compute", "self_checking"), progress=False)


def test_fit_optimised_vectors_by_hand(pair):
    """Optimised vectors (§1, the released training): the bias is optimise_vector on every sentence from
    zeros, d_c is optimise_vector on c's sentences from the bias (both over the sentence positions), and
    bias + v_c = d_c; each lowers its sentences' NLL under the base model."""
    from probes.steering.directions import optimise_vector, target_nll

    base, _ = pair
    traces, cats = _stub_traces(), ("compute", "plan")
    pairs = {c: [(tr.prompt + tr.completion[:s], tr.completion[s:e]) for tr in traces for s, e, k in tr.sentences
                 if k == c] for c in cats}
    kw = dict(steps=4, lr=0.1, positions="generated", batch_size=3)
    vec = fit_optimised_category_vectors(base, traces, 0, cats, steps=4, lr=0.1, batch_size=3, progress=False)
    every = [p for c in cats for p in pairs[c]]
    bias = optimise_vector(base, [c for c, _ in every], [t for _, t in every], 0, **kw).vector[0]
    torch.testing.assert_close(vec.bias, bias.float().cpu())
    for c in cats:
        ctx, tgt = [a for a, _ in pairs[c]], [b for _, b in pairs[c]]
        d = optimise_vector(base, ctx, tgt, 0, init=bias, **kw).vector[0]
        torch.testing.assert_close(vec.steering(c), d.float().cpu(), atol=1e-5, rtol=1e-5)
        unsteered = target_nll(base, ctx, tgt, layer=0)
        assert target_nll(base, ctx, tgt, vec.steering(c), layer=0, positions="generated") < unsteered
    assert vec.counts == (len(pairs["compute"]), len(pairs["plan"])) and vec.method.startswith("optimised")
    with pytest.raises(ValueError, match="no sentences of"):
        fit_optimised_category_vectors(base, traces, 0, ("compute", "self_checking"), progress=False)


def test_taxonomy_labeller_uses_the_anchors_taxonomy():
    from probes.anchors.split import split_chunks
    from probes.anchors.taxonomy import RuleLabeler

    label = taxonomy_labeller(split_chunks, RuleLabeler())
    text = "First multiply 6 by 8, then subtract 7. 6 times 8 is 48. So Kesper has 41 apples at the end.</think>x"
    got = label("Kesper has 6 bags with 8 apples in each. Kesper uses 7 of the apples.", text)
    assert [c for _, _, c in got] == ["plan_generation", "active_computation", "final_answer_emission"]
    assert text[got[1][0] : got[1][1]] == "6 times 8 is 48."
    assert label("p", "") == []


def _result():
    traces = [
        HybridTrace("a", [5, 6, 2], [True, False, False], [True, False, True], ["x", "y", "y"], [0.5, math.nan, math.nan],
                    "eos"),
        HybridTrace("b", [7], [False], [False], ["y"], [math.nan], "length"),
    ]
    bl = Baselines(base_correct=[False, False, True, False], thinking_correct=[True, True, True, False],
                   base_tokens=[3, 4, 5, 6], thinking_tokens=[6, 7, 8, 9])
    traces += traces
    return HybridResult(settings={"label": "t"}, golds=["1", "2", "3", "4"], traces=traces,
                        correct=[True, False, True, False], baselines=bl)


def test_metrics_by_hand():
    r = _result()
    assert r.accuracy == 0.5 and r.base_accuracy == 0.25 and r.thinking_accuracy == 0.75
    assert r.gap_recovered == pytest.approx((0.5 - 0.25) / (0.75 - 0.25))
    assert r.tokens_generated == 8 and r.tokens_steered == 2 and r.share_steered == 2 / 8
    assert r.share_disagreed == 4 / 8 and r.mean_tokens == 2.0
    assert r.steered_by_category() == {"x": 2}
    s = r.summary()
    assert s["hybrid_accuracy"]["value"] == 0.5 and s["mean_tokens"]["thinking"] == 7.5
    tie = HybridResult(settings={}, golds=["1"], traces=r.traces[:1], correct=[True],
                       baselines=Baselines([True], [True], [1], [1]))
    assert math.isnan(tie.gap_recovered)


def test_save_load_round_trip(tmp_path, tiny_models):
    r = _result()
    r.save(tmp_path / "hybrid")
    back = HybridResult.load(tmp_path / "hybrid")
    assert back.settings == r.settings and back.golds == r.golds and back.correct == r.correct
    assert back.baselines == r.baselines
    for a, b in zip(back.traces, r.traces):
        assert (a.text, a.token_ids, a.steered, a.disagreed, a.categories, a.finish_reason) == \
               (b.text, b.token_ids, b.steered, b.disagreed, b.categories, b.finish_reason)
        assert _same(a.coefficients, b.coefficients)
    m = tiny_models("qwen3")
    clf, vec = _classifier(m), _vectors(m)
    clf.save(tmp_path / "clf")
    vec.save(tmp_path / "vec")
    c2, v2 = CategoryClassifier.load(tmp_path / "clf"), CategoryVectors.load(tmp_path / "vec")
    assert c2.layer == clf.layer and c2.categories == clf.categories and torch.equal(c2.centroids, clf.centroids)
    assert torch.equal(c2.mean, clf.mean)
    assert v2.layer == vec.layer and v2.categories == vec.categories and v2.method == vec.method
    assert torch.equal(v2.vectors, vec.vectors) and torch.equal(v2.bias, vec.bias)
    with pytest.raises(ValueError, match="CategoryVectors"):
        CategoryClassifier.load(tmp_path / "vec")


def test_clear_errors(pair, tiny_models):
    base, thinking = pair
    clf, vec = _classifier(thinking), _vectors(base)
    with pytest.raises(ValueError, match="categories"):
        hybrid_generate(base, thinking, clf, _vectors(base, k=2), PROMPTS[0], max_new_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        hybrid_generate(base, thinking, clf, CategoryVectors(layer=9, categories=vec.categories, vectors=vec.vectors,
                                                             bias=vec.bias), PROMPTS[0], max_new_tokens=2)
    with pytest.raises(ValueError, match="fire_rate"):
        hybrid_generate(base, thinking, clf, vec, PROMPTS[0], max_new_tokens=2, fire_rate=1.5)
    with pytest.raises(ValueError, match="coefficients"):
        hybrid_generate(base, thinking, clf, vec, PROMPTS[0], max_new_tokens=2, coefficients=[])
    with pytest.raises(ValueError, match="one per prompt"):
        evaluate_hybrid(base, thinking, clf, vec, PROMPTS, ["1"], progress=False)
    with pytest.raises(ValueError, match="share a tokenizer"):
        _check_vocab_error(base, thinking, clf, vec)


def _check_vocab_error(base, thinking, clf, vec):
    """A thinking model whose tokenizer has one more token is refused before decoding."""
    import copy

    from probes.models.load import from_hf
    from tests.tiny import build_model

    tok = copy.deepcopy(thinking.tokenizer)
    tok.add_tokens(["<extra_token>"])
    other = from_hf(build_model("qwen3", vocab_size=len(tok), seed=1), tok, spec="tiny:other-vocab")
    hybrid_generate(base, other, clf, vec, PROMPTS[0], max_new_tokens=2)

"""The refusal probe (reference/refusal.md A2), rollouts (A1) and AUROC, on fixed features and tiny models."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from probes.evals.stats import auroc
from probes.refusal.probe import (
    AdamBCE,
    Probe,
    SklearnLogistic,
    balanced_split,
    evaluate_probe,
    fit_probe,
    hidden_state_site,
    layer_sweep,
    probe_features,
    train_probe,
)
from probes.refusal.rollout import RefusalRollout, load_rollouts, rollouts, save_rollouts, unclosed
from probes.steering.directions import LastToken, SpanMean


@pytest.fixture(scope="module")
def features():
    """A fixed, linearly separable set: two Gaussian clouds 10σ apart along a random direction."""
    g = np.random.default_rng(7)
    d = 16
    u = g.normal(size=d)
    u /= np.linalg.norm(u)
    pos = g.normal(size=(120, d)) + 5 * u
    neg = g.normal(size=(90, d)) - 5 * u
    return torch.from_numpy(pos), torch.from_numpy(neg)


def _train_rows(pos, neg, seed=42):
    s = balanced_split(len(pos), len(neg), seed=seed)
    ip, ineg = s["train"]
    x = np.r_[pos.numpy()[ip], neg.numpy()[ineg]]
    y = np.r_[np.ones(len(ip)), np.zeros(len(ineg))]
    return x, y


def test_probe_predictions_equal_sklearn_logistic_regression(features):
    pos, neg = features
    x, y = _train_rows(pos, neg)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    allx = torch.cat([pos, neg])
    # the probe's scoring path on sklearn's coefficients gives sklearn's probabilities
    p = Probe(weight=clf.coef_[0], bias=clf.intercept_[0])
    np.testing.assert_allclose(p.score(allx).numpy(), clf.predict_proba(allx.numpy())[:, 1], rtol=0, atol=1e-12)
    # fitted through fit_probe on the same split: the same classifier
    q = fit_probe(pos, neg, fit=SklearnLogistic())
    np.testing.assert_allclose(q.weight.numpy(), clf.coef_[0], rtol=1e-10)
    # the reference trainer (Adam, BCE) predicts the same labels on this set
    a = fit_probe(pos, neg, fit=AdamBCE(lr=0.01, epochs=50))
    assert ((a.score(allx) > 0.5).numpy() == clf.predict(allx.numpy()).astype(bool)).all()
    assert a.metrics["val_accuracy"] == 1.0 and a.metrics["n_train"] + a.metrics["n_val"] == 180


def test_adam_probe_is_deterministic_and_keeps_the_best_epoch(features):
    pos, neg = features
    a, b = fit_probe(pos, neg), fit_probe(pos, neg)
    assert torch.equal(a.weight, b.weight) and a.bias == b.bias
    assert a.fit == "AdamBCE(lr=0.001, batch_size=64, epochs=5, seed=42)"


def test_balanced_split_sizes_disjoint_and_seeded():
    s = balanced_split(300, 250, max_per_class=200, val_fraction=0.2, seed=3)
    (tp, tn), (vp, vn) = s["train"], s["val"]
    assert len(tp) == len(tn) == 160 and len(vp) == len(vn) == 40
    assert not set(tp) & set(vp) and not set(tn) & set(vn)
    t = balanced_split(300, 250, max_per_class=200, val_fraction=0.2, seed=3)
    assert all(np.array_equal(a, b) for k in s for a, b in zip(s[k], t[k]))
    with pytest.raises(ValueError, match="at least 2 examples per class"):
        balanced_split(1, 50)


def test_standard_normalisation_and_save_load_round_trip(features, tmp_path):
    pos, neg = features
    p = fit_probe(pos * 100 + 5, neg * 100 + 5, normalisation="standard", fit=SklearnLogistic(),
                  model_spec="m", data_hash="h")
    q = Probe.load(p.save(tmp_path / "probe"))
    for f in ("weight", "mean", "scale"):
        assert torch.equal(getattr(p, f), getattr(q, f))
    assert (q.bias, q.site, q.read_position, q.normalisation, q.fit, q.model_spec, q.data_hash, dict(q.metrics)) == (
        p.bias, p.site, p.read_position, p.normalisation, p.fit, p.model_spec, p.data_hash, dict(p.metrics))
    x = torch.cat([pos, neg]) * 100 + 5
    assert torch.equal(p.score(x), q.score(x))
    z = (x - p.mean) / p.scale
    np.testing.assert_allclose(p.logit(x).numpy(), (z @ p.weight + p.bias).numpy())


def test_probe_rejects_another_width(features, tiny_models):
    p = fit_probe(*features)
    with pytest.raises(ValueError, match="width 8 but the probe has 16"):
        p.score(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="d_model 64"):
        p.check_model(tiny_models("qwen3"))
    with pytest.raises(ValueError, match="normalisation"):
        fit_probe(*features, normalisation="l2")


def test_auroc_equals_sklearn_with_ties_and_interval():
    g = np.random.default_rng(1)
    s, y = g.integers(0, 5, 80).astype(float), g.integers(0, 2, 80)
    est = auroc(s, y, n_boot=500)
    assert est.value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert est.lo <= est.value <= est.hi and est.n == 80
    assert auroc([0.1, 0.9], [0, 1], n_boot=10).value == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_evaluate_probe_hand_counts():
    p = Probe(weight=[1.0, 0.0], bias=0.0)
    ev = evaluate_probe(p, torch.tensor([[2.0, 0], [-1.0, 0]]), torch.tensor([[-3.0, 0], [-2.0, 0], [0.5, 0]]))
    assert ev.accuracy.value == pytest.approx(3 / 5)  # right: 2, -3, -2; wrong: -1, 0.5
    assert ev.auroc.value == pytest.approx(5 / 6)  # pairs ranked right: 2 over all three, -1 over -3 and -2
    assert ev.labels == (1, 1, 0, 0, 0)


# ----- on a tiny model -----------------------------------------------------------------------------
def _rollout(prompt_text: str, completion: str, i: int = 0) -> RefusalRollout:
    return RefusalRollout(prompt="q", prompt_text=prompt_text, completion=completion, finish_reason="eos", seed=None,
                          prompt_index=i)


def test_rollout_regions_and_probe_text():
    r = _rollout("<|assistant|><think>", "a plan. b step.\n</think>\n\n I can't.")
    assert r.closed and r.thinking == "a plan. b step.\n" and r.answer == "\n\n I can't."
    assert r.probe_text == "<|assistant|><think>a plan. b step.\n</think>\n\n "
    open_ = _rollout("p", "thinking without end")
    assert not open_.closed and open_.answer is None and unclosed([r, open_]) == 1
    with pytest.raises(ValueError, match="never closes"):
        _ = open_.probe_text


def test_rollouts_on_a_tiny_model(tiny_models, tmp_path):
    m = tiny_models("qwen3")
    got = rollouts(m, ["Alice has 3 apples.", "How many?"], temperature=0, max_new_tokens=6, progress=False)
    assert [r.prompt_index for r in got] == [0, 1] and got[0].prompt_text == m.render_chat("Alice has 3 apples.")
    again = rollouts(m, ["Alice has 3 apples.", "How many?"], temperature=0, max_new_tokens=6, progress=False)
    assert got == again
    sampled = rollouts(m, ["How many?"], samples=3, temperature=1.0, max_new_tokens=6, seed=5, progress=False)
    assert [r.seed for r in sampled] == [5, 6, 7] and [r.sample_index for r in sampled] == [0, 1, 2]
    path = save_rollouts(tmp_path / "r.jsonl", got + sampled)
    assert load_rollouts(path) == got + sampled
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:6"):
        load_rollouts(path)
    with pytest.raises(ValueError, match="greedy"):
        rollouts(m, ["x"], samples=2, temperature=0)
    with pytest.raises(ValueError, match="empty"):
        rollouts(m, ["x", " "])


def test_features_read_the_last_token_of_the_final_norm(tiny_models):
    m = tiny_models("qwen3")
    texts = ["Alice has 3 apples.</think>", "Sure, here is how</think>"]
    f = probe_features(m, texts)
    for i, t in enumerate(texts):
        direct = m.capture([t], ["final_norm"])["final_norm"][0, -1].double()
        torch.testing.assert_close(f[i], direct, rtol=1e-5, atol=1e-6)


def test_train_probe_and_layer_sweep_on_a_tiny_model(tiny_models):
    m = tiny_models("qwen3")
    pos = [f"I cannot help with request {i}." for i in range(6)]
    neg = [f"Sure, here is how to bake bread {i}." for i in range(6)]
    p = train_probe(m, pos, neg, fit=SklearnLogistic())
    assert p.site == "final_norm" and p.model_spec == m.spec and p.read_position == "LastToken()"
    sweep = layer_sweep(m, pos, neg, fit=SklearnLogistic())
    assert list(sweep) == ["embed", "resid_post[0]", "final_norm"]
    torch.testing.assert_close(sweep["final_norm"].weight, p.weight)
    assert hidden_state_site(m, -1) == "final_norm" and hidden_state_site(m, 1) == "resid_post[0]"
    with pytest.raises(ValueError, match="out of range"):
        hidden_state_site(m, 3)
    with pytest.raises(ValueError, match="both classes"):
        train_probe(m, pos, [])
    two = train_probe(m, pos, neg, fit=SklearnLogistic(), read=[SpanMean(), LastToken()])
    assert two.read_position == "[SpanMean(start=0, end=None), LastToken()]"
    assert two.metrics["n_train"] + two.metrics["n_val"] == 2 * (p.metrics["n_train"] + p.metrics["n_val"])
    with pytest.raises(ValueError, match="empty list"):
        train_probe(m, pos, neg, read=[])

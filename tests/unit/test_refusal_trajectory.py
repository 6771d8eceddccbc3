"""Refusal trajectories, cliff statistics and the mean curve (reference/refusal.md A3) against hand-computed arrays."""

import numpy as np
import pytest
import torch

from probes.refusal.probe import Probe
from probes.refusal.rollout import RefusalRollout
from probes.refusal.trajectory import Trajectory, mean_curve, sentence_curve, trajectories


def _traj(r, thinking=(1, 5), t=5, sentences=((1, 3), (3, 5))):
    return Trajectory(r=np.asarray(r, float), thinking=thinking, t=t, answer=(6, len(r)), sentences=sentences,
                      sentence_texts=tuple(f"s{i}." for i in range(len(sentences))))


def test_cliff_statistics_by_hand():
    tr = _traj([0.1, 0.2, 0.9, 0.8, 0.3, 0.4, 0.7, 0.6])
    assert tr.r_T == 0.4 and tr.max_thinking == 0.9
    assert tr.cliff == pytest.approx(0.5)  # 0.9 - 0.4
    assert tr.late_cliff(2) == pytest.approx((0.8 + 0.3) / 2 - 0.4)
    assert tr.late_cliff(100) == pytest.approx(np.mean([0.2, 0.9, 0.8, 0.3]) - 0.4)
    np.testing.assert_allclose(tr.sentence_scores, [0.55, 0.55])
    np.testing.assert_array_equal(tr.until_answer, [0.1, 0.2, 0.9, 0.8, 0.3, 0.4])
    # drops: first sentence from r[0] = 0.1 → 0.55 (a rise), second 0.55 → 0.55: the largest drop is 0.0 at 1
    assert tr.cliff_sentence == 1
    fall = _traj([0.9, 0.8, 0.9, 0.1, 0.2, 0.1, 0.0, 0.0])
    assert fall.cliff_sentence == 1 and fall.sentence_scores[1] == pytest.approx(0.15)
    empty = _traj([0.5, 0.4], thinking=(1, 1), t=1, sentences=())
    assert np.isnan(empty.max_thinking) and empty.cliff_sentence is None
    with pytest.raises(ValueError, match="window"):
        tr.late_cliff(0)


def test_mean_curve_right_aligns_masked_or_zero_padded():
    rows = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 7.0])]
    # right-aligned: [1, 2, 3] over [_, 5, 7]; masked mean [1, 3.5, 5]; zero-padded [0.5, 3.5, 5]
    np.testing.assert_allclose(mean_curve(rows, points=3), [1.0, 3.5, 5.0])
    np.testing.assert_allclose(mean_curve(rows, points=3, padding="zero"), [0.5, 3.5, 5.0])
    long = [np.linspace(0, 1, 40) ** 2, np.linspace(0, 1, 25) ** 2]
    c = mean_curve(long)
    assert c.shape == (100,) and c[0] == pytest.approx(0.0) and c[-1] == pytest.approx(1.0)
    # the cubic spline passes through every aligned mean (40 knots, resampled at 40 points)
    x = np.zeros(40)
    x[15:] = (long[0][15:] + long[1]) / 2
    x[:15] = long[0][:15]
    np.testing.assert_allclose(mean_curve(long, points=40), x, atol=1e-12)
    np.testing.assert_allclose(mean_curve([np.array([0.3])], points=5), 0.3)
    # bins: the mean of equal bins of aligned positions (40 positions into 4 bins of 10)
    np.testing.assert_allclose(mean_curve(long, points=4, resample="bins"), x.reshape(4, 10).mean(1))
    np.testing.assert_allclose(mean_curve(rows, points=2, resample="bins"), [(1.0 + 3.5) / 2, 5.0])  # 3 → 2 bins
    with pytest.raises(ValueError, match="resample"):
        mean_curve(rows, resample="linear")
    with pytest.raises(ValueError, match="padding"):
        mean_curve(rows, padding="left")
    with pytest.raises(ValueError, match="non-empty"):
        mean_curve([np.array([])])


def test_sentence_curve_aligns_last_sentences():
    a = _traj([0.1, 0.2, 0.9, 0.8, 0.3, 0.4, 0.7, 0.6])  # sentence scores [0.55, 0.55]
    b = _traj([0.0, 0.2, 0.2, 0.4, 0.4, 1.0, 0.0, 0.0], sentences=((1, 2), (2, 3), (3, 5)))  # [0.2, 0.2, 0.4]
    np.testing.assert_allclose(sentence_curve([a, b]), [0.2, (0.55 + 0.2) / 2, (0.55 + 0.4) / 2])


def _probe(m):
    w = torch.linspace(-1, 1, m.d_model, dtype=torch.float64)
    return Probe(weight=w, bias=0.1, model_spec=m.spec)


def test_trajectories_score_every_token_once(tiny_models):
    m = tiny_models("qwen3")
    p = _probe(m)
    prompt = m.render_chat("Alice has 3 apples.")
    items = [RefusalRollout("Alice has 3 apples.", prompt, "First find the total. Wait, that is wrong.</think> Sure",
                            "eos", None),
             RefusalRollout("Alice has 3 apples.", prompt, "Correct!</think>I cannot help", "eos", None, 1)]
    got = trajectories(m, p, items, progress=False)
    for tr, r in zip(got, items):
        text = r.prompt_text + r.completion
        ids = m.encode(text)
        direct = p.score(m.capture([text], ["final_norm"])["final_norm"][0]).numpy()
        np.testing.assert_allclose(tr.r, direct, atol=1e-5)
        assert len(tr.r) == len(ids)
        assert ids[tr.t] == m.ctx.think_close_id  # no whitespace after </think> here: T is the </think> token
        assert m.tokenizer.decode(ids[slice(*tr.thinking)]) == r.thinking
        assert m.tokenizer.decode(ids[slice(*tr.answer)]) == r.answer
        assert [m.tokenizer.decode(ids[a:b]).strip() for a, b in tr.sentences] == list(tr.sentence_texts)
    assert got[0].sentence_texts == ("First find the total.", "Wait, that is wrong.")
    one = trajectories(m, p, items[:1], progress=False)[0]
    np.testing.assert_allclose(one.r, got[0].r, atol=1e-5)  # batched with left padding = alone
    with pytest.raises(ValueError, match="never closes"):
        trajectories(m, p, [RefusalRollout("q", prompt, "no end", "length", None)], progress=False)
    with pytest.raises(ValueError, match="d_model"):
        trajectories(m, Probe(weight=torch.ones(5), bias=0.0), items, progress=False)

"""Receiver heads and attention suppression against direct, unbatched computations; their
results save and load back equal."""

import dataclasses
import json
import typing

import numpy as np
import pytest
import torch

from probes.anchors import receivers as R
from probes.anchors.suppression import SuppressionResult, attention_suppression, sparse_kl, suppression_matrix
from probes.models import SuppressKeys

TEXT = ("<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>First find the total. "
        "Then add 3 and 5. That gives 8 apples. Wait, check it again. Yes, 3 + 5 = 8. So the answer is 8.</think>")


@pytest.fixture
def trace(tiny_models):
    model = tiny_models("qwen3")
    think = TEXT.index("<think>") + len("<think>")
    sents = ["First find the total.", "Then add 3 and 5.", "That gives 8 apples.", "Wait, check it again.",
             "Yes, 3 + 5 = 8.", "So the answer is 8."]
    char_spans = [(TEXT.index(s, think), TEXT.index(s, think) + len(s)) for s in sents]
    ids = torch.tensor(model.encode(TEXT))
    return model, ids, model.token_ranges(TEXT, char_spans)


def test_sentence_attention_equals_direct_block_means(trace):
    model, ids, spans = trace
    M = R.sentence_attention(model, ids, spans)
    full = model.capture(ids[None], [f"attn_pattern[{L}]" for L in range(model.n_layers)])
    T = ids.shape[0]
    for L in range(model.n_layers):
        A = full[f"attn_pattern[{L}]"][0]
        for i, (si, ei) in enumerate(spans):
            for j, (sj, ej) in enumerate(spans):
                want = A[:, si:min(ei, T - 1), sj:min(ej, T - 1)].mean((-1, -2))
                torch.testing.assert_close(M[L, :, i, j], want, atol=1e-6, rtol=1e-5)


def test_vertical_scores_by_hand():
    M = np.arange(36, dtype=float).reshape(6, 6)
    v = R.vertical_scores(M, proximity_ignore=2)
    # v_j = mean over i >= j + 2 of M[i, j]
    want = [np.mean([M[i, j] for i in range(j + 2, 6)]) if j + 2 < 6 else np.nan for j in range(6)]
    np.testing.assert_allclose(v, want)
    v_w = R.vertical_scores(M, proximity_ignore=2, row_index_weight=True, nan_first=1)
    assert np.isnan(v_w[0]) and v_w[1] == np.mean([M[i, 1] * i for i in range(3, 6)])
    ranks = R.vertical_scores(np.tril(np.ones((4, 4))) * np.arange(4)[None, :], proximity_ignore=1, control_depth=True)
    # row i keeps columns j <= i-1 with values j: rank j / (i) ; v_0 = mean(0/1, 0/2, 0/3) = 0
    np.testing.assert_allclose(ranks[:3], [0.0, np.mean([1 / 2, 1 / 3]), 2 / 3])


def test_kurtosis_selection_and_scores():
    from scipy.stats import kurtosis

    rng = np.random.default_rng(0)
    v = rng.random((3, 2, 12))
    v[2, 1, 5] = 20.0  # a spiky "receiver" head
    v[0, 0, 3] = 50.0  # spikier, but in layer 0: excluded
    k = R.head_kurtosis(v)
    assert k[1, 0] == pytest.approx(kurtosis(v[1, 0], fisher=True, bias=True))
    heads = R.select_receiver_heads([k, k], top_k=2)
    assert heads[0] == (2, 1) and (0, 0) not in heads
    np.testing.assert_allclose(R.receiver_scores(v, heads), v[[heads[0][0], heads[1][0]], [heads[0][1], heads[1][1]]].mean(0))
    assert R.split_half_reliability([k, k, k, k]) == pytest.approx(1.0)


def assert_same(a, b):
    """Every field equal: arrays by dtype, shape and values (NaN where NaN), the rest by ==."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)  # NaNs compare equal here
        else:
            assert type(x) is type(y) and x == y, f.name


def test_trace_receivers_save_and_load(trace, tmp_path):
    model, ids, spans = trace
    res = R.analyse_trace(model, ids, spans, "released")
    assert res.settings == "released" and np.isnan(res.v_select[..., -4:]).all()  # the last 4 sentences are NaN
    path = res.save(tmp_path / "receivers")
    assert path == tmp_path / "receivers.safetensors" and (tmp_path / "receivers.json").is_file()
    assert_same(res, R.TraceReceivers.load(tmp_path / "receivers"))
    assert_same(res, R.TraceReceivers.load(tmp_path / "receivers.json"))  # either file names the pair
    # Other dtypes, empty and NaN-only arrays survive too.
    odd = R.TraceReceivers(v_select=np.full((2, 3, 0), np.nan), v_score=np.arange(6, dtype=np.float32).reshape(2, 3),
                           kurtosis=np.array([[np.nan, -np.inf], [np.inf, 1.5]]))
    assert_same(odd, R.TraceReceivers.load(odd.save(tmp_path / "odd.safetensors")))


def test_suppression_result_save_and_load(tmp_path):
    log_kl = np.log(np.arange(1, 13, dtype=float).reshape(3, 4) + 1e-9)
    S, C = suppression_matrix(log_kl, [(0, 1), (1, 3), (3, 4)])
    res = SuppressionResult(log_kl=log_kl, matrix=S, centered=C, temperature=1.0, top_p=0.9, max_tokens=7)
    assert_same(res, SuppressionResult.load(res.save(tmp_path / "supp")))
    assert json.loads((tmp_path / "supp.json").read_text())["fields"] == {"temperature": 1.0, "top_p": 0.9, "max_tokens": 7}
    with pytest.raises(ValueError, match="not a TraceReceivers"):
        R.TraceReceivers.load(tmp_path / "supp")
    with pytest.raises(FileNotFoundError, match="pass the path given to save"):
        SuppressionResult.load(tmp_path / "nothing")


def test_settings_are_selectable_by_name():
    assert typing.get_args(R.ReceiverSettingsName) == tuple(R.SETTINGS) == R.SETTINGS_NAMES
    for name in R.SETTINGS_NAMES:
        assert R.settings(name).name == name
    assert R.settings("released").proximity_ignore == 4 and R.settings("released").top_k == 20
    paper = R.settings("paper-era")
    assert (paper.proximity_ignore, paper.top_k, paper.blocks, paper.max_tokens) == (20, 32, "to_next", 3744)
    with pytest.raises(ValueError, match="choose one of"):
        R.settings("nope")


def test_sparse_kl_by_hand():
    base = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-12]]))
    supp = torch.log(torch.tensor([[0.6, 0.3, 0.1, 1e-12]]))
    # T = 1 and top_p = 1: both keep tokens 0..2 (token 3 falls outside the nucleus)
    kl = sparse_kl(base, supp, temperature=1.0, top_p=0.999, max_tokens=100)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.6, 0.3, 0.1])
    assert float(kl) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-5)
    # a token kept only by the base side costs ≈ p · 1e9 (missing logit −1e9)
    kl2 = sparse_kl(base, supp, temperature=1.0, top_p=0.75, max_tokens=100)  # base keeps {0,1}; supp keeps {0,1}
    kl3 = sparse_kl(base, torch.log(torch.tensor([[0.9, 0.05, 0.05, 1e-12]])), temperature=1.0, top_p=0.75)
    assert float(kl2) < 1 and float(kl3) > 1e7


def test_suppression_matrix_by_hand():
    log_kl = np.arange(12, dtype=float).reshape(3, 4)
    spans = [(0, 1), (1, 3), (3, 4)]
    S, C = suppression_matrix(log_kl, spans)
    assert S[1, 0] == np.mean(log_kl[0, 1:3]) and S[2, 0] == log_kl[0, 3] and S[2, 1] == log_kl[1, 3]
    assert np.isnan(S[0, 0]) and np.isnan(S[0, 2]) and np.isnan(S[1, 1])
    np.testing.assert_allclose(C[2, :2], [S[2, 0] - (S[2, 0] + S[2, 1]) / 2, S[2, 1] - (S[2, 0] + S[2, 1]) / 2])


def test_batched_suppression_equals_one_at_a_time(trace):
    model, ids, spans = trace
    res = attention_suppression(model, ids, spans, batch_size=4)
    base = model.forward(ids[None])[0]
    for k in (0, 3, 5):
        with model.intervene(SuppressKeys(span=spans[k])):
            alone = model.forward(ids[None])[0]
        want = torch.log(sparse_kl(base, alone) + 1e-9).numpy()
        np.testing.assert_allclose(res.log_kl[k], want, rtol=1e-4, atol=1e-4)
    # positions before the suppressed sentence are untouched: KL at float-noise level
    assert np.exp(res.log_kl[3, : spans[3][0]]).max() < 1e-5 < np.exp(res.log_kl[3, spans[3][1]:]).max()
    assert np.isfinite(res.matrix[5, :5]).all() and np.isnan(res.matrix[0]).all()
    assert (res.temperature, res.top_p, res.max_tokens) == (0.6, 0.9999, 100)

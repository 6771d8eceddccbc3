"""``probes.experts`` (``reference/moe_experts.md`` §1–§3, §6): nPMI, the score, risk difference and
specialisation against numbers computed by hand; routing counts streamed during teacher forcing,
greedy generation and shared-prefix sampling against counts made by hand from materialised routing;
RICE's identities (β = 1, an expert never selected) and its errors; the evaluation's paired
differences and the sentence view's token-weighted aggregation."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from probes.evals.sampling import sample_seed
from probes.experts import (
    ConditionResult,
    ExpertScores,
    RoutingCounts,
    RoutingRecorder,
    SentenceRouting,
    by_category,
    count_routing,
    force,
    npmi,
    npmi_scores,
    npmi_table,
    paired_differences,
    random_pairs,
    rice,
    risk_difference,
    run_condition,
    specialisation_scores,
)
from probes.models.sampling import stop_token_ids
from tests.tiny import MOE_FAMILIES, assert_no_hooks

PROMPT = "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>"
TEXTS = [  # unequal lengths: every batch of them is padded
    PROMPT + "First add them. 3 + 5 = 8.</think>The answer is \\boxed{8}.",
    "Wait, that is wrong.",
    PROMPT + "Let me check: 8 - 5 = 3. Correct! Let me check again: 3 + 5 = 8.",
    "x^2",
    "I cannot help with that request. Sure, here is how to bake bread.",
]
FAMILY_LIST = ", ".join(MOE_FAMILIES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster on shared cores and makes sums deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def moe(tiny_models):
    return tiny_models("qwen3_moe")


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


# ----- nPMI by hand ----------------------------------------------------------------------------------


def test_npmi_hand_values():
    # k = 3 marker positions routed to E, K = 5 tokens routed to E, N = 4 marker positions, T = 20 tokens
    want = (math.log2(3 / 4) + math.log2(20 / 5)) / math.log2(20 / 3)
    assert want == pytest.approx(0.579094, abs=1e-6)
    assert float(npmi(3, 5, 4, 20)) == pytest.approx(want, rel=1e-12)
    # the same from the probabilities: PMI / −log₂ p(x, y), p(x) = N/T, p(E) = K/T, p(x, E) = k/T
    pxy, px, py = 3 / 20, 4 / 20, 5 / 20
    assert float(npmi(3, 5, 4, 20)) == pytest.approx(math.log2(pxy / (px * py)) / -math.log2(pxy), rel=1e-12)
    # vectorised over experts; k = 0 (never co-occur) is −1 by definition
    got = npmi(np.array([0, 1, 2]), np.array([7, 10, 2]), 2, 40)
    assert got[0] == -1.0
    assert got[1] == pytest.approx((math.log2(1 / 2) + math.log2(40 / 10)) / math.log2(40 / 1), rel=1e-12)
    assert got[2] == pytest.approx(1.0, rel=1e-12)  # E fires exactly on the markers (k = N = K < T)
    assert float(npmi(20, 20, 20, 20)) == 1.0  # k = T: every token is a marker routed to E (0/0 defined as 1)
    with pytest.raises(ValueError, match="no tokens were counted"):
        npmi(0, 0, 0, 0)


def test_npmi_lies_in_minus_one_one():
    vals = [float(npmi(k, K, N, 30)) for N in range(1, 8) for K in range(1, 30) for k in range(0, min(N, K) + 1)]
    assert min(vals) >= -1.0 - 1e-12 and max(vals) <= 1.0 + 1e-12
    assert float(npmi(1, 29, 7, 30)) < 0 < float(npmi(3, 4, 3, 30))  # anti- and positively associated


def _counts(layers, E, top_k, markers, selected, tokens, msel, mtok) -> RoutingCounts:
    return RoutingCounts(layers=layers, n_experts=E, top_k=top_k, markers=markers,
                         selected=np.array(selected, dtype=np.int64), tokens=np.array(tokens, dtype=np.int64),
                         marker_selected={m: np.array(v, dtype=np.int64) for m, v in msel.items()},
                         marker_tokens={m: np.array(v, dtype=np.int64) for m, v in mtok.items()})


@pytest.fixture
def hand_counts() -> RoutingCounts:
    """Two traces of 10 tokens, one <think> and one </think> each; MoE layers 1 and 3, 4 experts, top-2.

    Totals: T = 20, N = 2 per marker; K: layer 1 [10, 10, 10, 10], layer 3 [8, 8, 12, 12];
    k(<think>): layer 1 [2, 0, 1, 1], layer 3 [2, 2, 0, 0]; k(</think>): layer 1 [0, 2, 1, 1], layer 3 [0, 0, 2, 2].
    Layer 3's experts 0 and 1 score highest, so the global top-2 lies in one layer (per-layer would pick (1, 0))."""
    return _counts(
        [1, 3], 4, 2, {"<think>": (8,), "</think>": (9,)},
        selected=[[[5, 5, 5, 5], [4, 4, 6, 6]], [[5, 5, 5, 5], [4, 4, 6, 6]]], tokens=[10, 10],
        msel={"<think>": [[[1, 0, 1, 0], [1, 1, 0, 0]], [[1, 0, 0, 1], [1, 1, 0, 0]]],
              "</think>": [[[0, 1, 0, 1], [0, 0, 1, 1]], [[0, 1, 1, 0], [0, 0, 1, 1]]]},
        mtok={"<think>": [1, 1], "</think>": [1, 1]})


def _ref(k, K, N, T):
    if k == 0:
        return -1.0
    return (math.log2(k / N) + math.log2(T / K)) / math.log2(T / k)


def test_npmi_scores_by_hand(hand_counts):
    s = npmi_scores(hand_counts, n_boot=0)
    K = [[10, 10, 10, 10], [8, 8, 12, 12]]
    k_open = [[2, 0, 1, 1], [2, 2, 0, 0]]
    k_close = [[0, 2, 1, 1], [0, 0, 2, 2]]
    for j in range(2):
        for e in range(4):
            o, c = _ref(k_open[j][e], K[j][e], 2, 20), _ref(k_close[j][e], K[j][e], 2, 20)
            assert s.values["<think>"][j, e] == pytest.approx(o, abs=1e-12)
            assert s.values["</think>"][j, e] == pytest.approx(c, abs=1e-12)
            assert s.score[j, e] == pytest.approx(o - c, abs=1e-12)  # c = +1 for <think>, −1 for </think>
    # (3, 0) and (3, 1): [log₂(2/2) + log₂(20/8)] / log₂(20/2) + 1; (1, 0): [0 + log₂ 2] / log₂ 10 + 1
    assert s.score[1, 0] == pytest.approx(math.log2(2.5) / math.log2(10) + 1, abs=1e-12)
    assert s.score[0, 0] == pytest.approx(1 / math.log2(10) + 1, abs=1e-12)
    # ranked globally: both of layer 3's experts before layer 1's best; ties in layer then expert order
    assert s.top() == [(3, 0), (3, 1)]
    assert s.ranking() == [(3, 0), (3, 1), (1, 0), (1, 2), (1, 3), (3, 2), (3, 3), (1, 1)]
    assert s.top(3) == [(3, 0), (3, 1), (1, 0)]
    rows = s.table(3)
    assert [(r["rank"], r["layer"], r["expert"]) for r in rows] == [(1, 3, 0), (2, 3, 1), (3, 1, 0)]
    assert rows[2]["<think>"] == pytest.approx(1 / math.log2(10)) and rows[2]["</think>"] == -1.0
    # other weights: Score = Σ c_x·nPMI(x, E)
    w = npmi_scores(hand_counts, {"<think>": 2.0, "</think>": 0.5}, n_boot=0)
    np.testing.assert_allclose(w.score, 2.0 * s.values["<think>"] + 0.5 * s.values["</think>"], atol=1e-12)
    assert w.weights == {"<think>": 2.0, "</think>": 0.5}
    assert s.n_traces == 2 and s.stability is None and s.method == "npmi"


def test_npmi_scores_bad_arguments(hand_counts):
    with pytest.raises(ValueError, match=r"ℓ = 9 experts: choose 1\.\.8"):
        npmi_scores(hand_counts, ell=9, n_boot=0)
    with pytest.raises(ValueError, match=r"choose 1\.\.8"):
        npmi_scores(hand_counts, n_boot=0).top(9)
    with pytest.raises(ValueError, match=r"ℓ = 0"):
        npmi_scores(hand_counts, ell=0, n_boot=0)
    with pytest.raises(ValueError, match=r"name \['Alternatively'\], which were not counted"):
        npmi_scores(hand_counts, {"<think>": 1.0, "Alternatively": -1.0}, n_boot=0)
    with pytest.raises(ValueError, match="finite"):
        npmi_scores(hand_counts, {"<think>": float("nan")}, n_boot=0)


def test_repeated_marker_counts_every_position():
    """A marker that occurs three times in one trace: N = 3 (every position), not the one instance."""
    c = _counts([0], 2, 1, {"Alternatively": (7,)}, selected=[[[6, 6]]], tokens=[12],
                msel={"Alternatively": [[[2, 1]]]}, mtok={"Alternatively": [3]})
    t = npmi_table(c)["Alternatively"]
    assert t[0, 0] == pytest.approx((math.log2(2 / 3) + math.log2(12 / 6)) / math.log2(12 / 2), abs=1e-12)
    assert t[0, 1] == pytest.approx((math.log2(1 / 3) + math.log2(12 / 6)) / math.log2(12 / 1), abs=1e-12)
    assert t[0, 0] != pytest.approx(_ref(2, 6, 1, 12))  # what M = 1 instance would give


def test_stability_bootstrap():
    """One layer, 3 experts, top-1, marker "a". Trace 0 alone and both traces together put (0, 1)
    first; trace 1 alone puts (0, 0) first. Resampling two traces gives (2, 0), (1, 1), (0, 2) with
    probabilities 1/4, 1/2, 1/4, so (0, 1) is top-1 in ~3/4 of the resamples and (0, 0) in ~1/4."""
    c = _counts([0], 3, 1, {"a": (5,)}, selected=[[[5, 3, 2]], [[5, 3, 2]]], tokens=[10, 10],
                msel={"a": [[[0, 2, 0]], [[2, 0, 0]]]}, mtok={"a": [2, 2]})
    s = npmi_scores(c, {"a": 1.0}, ell=1, n_boot=2000, seed=0)
    assert s.top() == [(0, 1)]
    assert s.stability[0, 1] == pytest.approx(0.75, abs=0.04)
    assert s.stability[0, 0] == pytest.approx(0.25, abs=0.04)
    assert s.stability[0, 2] == 0.0
    assert s.stability.sum() == pytest.approx(1.0)  # one pair enters the top-1 per resample
    again = npmi_scores(c, {"a": 1.0}, ell=1, n_boot=2000, seed=0)
    np.testing.assert_array_equal(again.stability, s.stability)  # seeded


def test_stability_of_dominant_pairs(hand_counts):
    s = npmi_scores(hand_counts, n_boot=200, seed=1)
    assert s.n_boot == 200
    assert ((s.stability >= 0) & (s.stability <= 1)).all()
    assert s.stability[1, 0] == 1.0 and s.stability[1, 1] == 1.0  # (3, 0), (3, 1) win every resample
    assert s.stability.sum() == pytest.approx(2.0) and s.stability[0].sum() == 0.0


def test_specialisation_by_hand(hand_counts):
    s = specialisation_scores(hand_counts)
    np.testing.assert_allclose(s.values["<think>"], np.array([[2, 0, 1, 1], [2, 2, 0, 0]]) / 2)
    np.testing.assert_allclose(s.values["</think>"], np.array([[0, 2, 1, 1], [0, 0, 2, 2]]) / 2)
    np.testing.assert_allclose(s.score, [[1, -1, 0, 0], [1, 1, -1, -1]])
    assert s.top(3) == [(1, 0), (3, 0), (3, 1)]  # ties at 1: layer then expert order
    assert s.method == "specialisation"


def test_risk_difference_by_hand():
    """Present: T = 10 over two traces, K layer 0 [6, 3, 1], layer 1 [1, 1, 8] (top-1);
    absent: T = 20, K layer 0 [6, 2, 12], layer 1 [18, 1, 1]."""
    present = _counts([0, 1], 3, 1, {}, selected=[[[4, 1, 1], [1, 0, 5]], [[2, 2, 0], [0, 1, 3]]], tokens=[6, 4],
                      msel={}, mtok={})
    absent = _counts([0, 1], 3, 1, {}, selected=[[[6, 2, 12], [18, 1, 1]]], tokens=[20], msel={}, mtok={})
    s = risk_difference(present, absent)
    want = np.array([[6 / 10 - 6 / 20, 3 / 10 - 2 / 20, 1 / 10 - 12 / 20],
                     [1 / 10 - 18 / 20, 1 / 10 - 1 / 20, 8 / 10 - 1 / 20]])  # [[.3, .2, -.5], [-.8, .05, .75]]
    np.testing.assert_allclose(s.values["rd"], want, atol=1e-12)
    np.testing.assert_allclose(s.score, np.abs(want), atol=1e-12)
    np.testing.assert_allclose(s.values["rate_present"], [[.6, .3, .1], [.1, .1, .8]], atol=1e-12)
    assert s.ranking() == [(1, 0), (1, 2), (0, 2), (0, 0), (0, 1), (1, 1)]  # by |RD|: the sign does not matter
    assert s.top() == [(1, 0), (1, 2)] and s.n_traces == 3
    with pytest.raises(ValueError, match="different models"):
        risk_difference(present, _counts([0, 2], 3, 1, {}, [[[1, 1, 1], [1, 1, 1]]], [3], {}, {}))


def test_counts_and_scores_save_load(tmp_path, hand_counts):
    hand_counts.save(tmp_path / "counts")
    back = RoutingCounts.load(tmp_path / "counts")
    assert (back.layers, back.n_experts, back.top_k, back.markers) == ([1, 3], 4, 2, {"<think>": (8,), "</think>": (9,)})
    np.testing.assert_array_equal(back.selected, hand_counts.selected)
    np.testing.assert_array_equal(back.tokens, hand_counts.tokens)
    for m in hand_counts.markers:
        np.testing.assert_array_equal(back.marker_selected[m], hand_counts.marker_selected[m])
        np.testing.assert_array_equal(back.marker_tokens[m], hand_counts.marker_tokens[m])
    for n_boot in (0, 50):
        s = npmi_scores(back, n_boot=n_boot)
        s.save(tmp_path / f"scores{n_boot}")
        t = ExpertScores.load(tmp_path / f"scores{n_boot}")
        assert (t.method, t.layers, t.weights, t.ell, t.n_boot, t.n_traces) == (
            "npmi", [1, 3], {"<think>": 1.0, "</think>": -1.0}, 2, n_boot, 2)
        np.testing.assert_array_equal(t.score, s.score)
        assert list(t.values) == ["<think>", "</think>"]
        for m in s.values:
            np.testing.assert_array_equal(t.values[m], s.values[m])
        assert (t.stability is None) == (n_boot == 0)
        if n_boot:
            np.testing.assert_array_equal(t.stability, s.stability)
        assert t.top() == s.top() == [(3, 0), (3, 1)]
    with pytest.raises(ValueError, match="holds a 'RoutingCounts', not a ExpertScores"):
        ExpertScores.load(tmp_path / "counts")


# ----- routing counts on tiny MoE models ----------------------------------------------------------


def _by_hand(model, traces, markers, starts=None):
    """Per-trace counts from materialised routing: one capture of every trace in one padded batch,
    padding masked with the capture's attention mask, markers matched on the input ids; with
    ``starts``, trace b counts only its positions >= starts[b]."""
    sites = [f"expert_topk[{L}]" for L in model.moe_layers]
    cap = model.capture(traces, sites)
    ids = cap.input_ids.tolist()
    mask = cap.attention_mask.tolist() if cap.attention_mask is not None else [[1] * len(r) for r in ids]
    B, n, E = len(ids), len(sites), model.n_experts
    sel, tok = np.zeros((B, n, E), np.int64), np.zeros(B, np.int64)
    msel = {m: np.zeros((B, n, E), np.int64) for m in markers}
    mtok = {m: np.zeros(B, np.int64) for m in markers}
    for j, site in enumerate(sites):
        chosen = cap[site][0].tolist()  # (B, T, k) expert ids
        for b in range(B):
            pos = -1  # position in the unpadded trace
            for t, tid in enumerate(ids[b]):
                if not mask[b][t]:
                    continue
                pos += 1
                if starts is not None and pos < starts[b]:
                    continue
                hits = [m for m, m_ids in markers.items() if tid in m_ids]
                if j == 0:
                    tok[b] += 1
                    for m in hits:
                        mtok[m][b] += 1
                for e in set(chosen[b][t]):
                    sel[b, j, e] += 1
                    for m in hits:
                        msel[m][b, j, e] += 1
    return sel, tok, msel, mtok, cap


def _assert_counts(got: RoutingCounts, want):
    sel, tok, msel, mtok = want[:4]
    np.testing.assert_array_equal(got.tokens, tok)
    np.testing.assert_array_equal(got.selected, sel)
    assert set(got.marker_selected) == set(msel)
    for m in msel:
        np.testing.assert_array_equal(got.marker_tokens[m], mtok[m], err_msg=f"marker {m} positions")
        np.testing.assert_array_equal(got.marker_selected[m], msel[m], err_msg=f"marker {m} routing")


def _markers(model, texts):
    """Arbitrary marker ids for a tiny model: the most frequent token, and the next two as one marker."""
    freq = Counter(t for x in texts for t in model.encode(x)[1:])
    (a, _), (b1, _), (b2, _) = freq.most_common(3)
    return {"a": [a], "b": [b1, b2], "open": "<think>"}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_count_routing_equals_hand_counts(tiny_models, family):
    model = tiny_models(family)
    markers = _markers(model, TEXTS)
    counts = count_routing(model, TEXTS, markers, batch_size=2)  # batches of 2, 2 and 1 texts
    want = _by_hand(model, TEXTS, {"a": markers["a"], "b": markers["b"], "open": [model.ctx.think_open_id]})
    cap = want[4]
    assert cap.attention_mask is not None and not bool(cap.attention_mask.all())  # padding is there to mask
    _assert_counts(counts, want)
    lengths = [len(model.encode(t)) for t in TEXTS]
    assert counts.tokens.tolist() == lengths and counts.n_traces == 5
    assert (counts.selected.sum(-1) == model.top_k * counts.tokens[:, None]).all()  # k experts per token
    assert counts.markers["open"] == (model.ctx.think_open_id,) and counts.markers["b"] == tuple(markers["b"])
    assert counts.marker_tokens["a"].max() > 1  # a repeated marker: every position counts
    assert (counts.layers, counts.n_experts, counts.top_k) == (model.moe_layers, model.n_experts, model.top_k)
    # token id lists give the same counts as their texts, in any batch size
    again = count_routing(model, [model.encode(t) for t in TEXTS], markers, batch_size=16)
    _assert_counts(again, want)
    assert_no_hooks(model)


def test_count_routing_from_starts(moe):
    """``starts[i]``: trace i counts only its positions >= starts[i] (the completion after the prompt)."""
    markers = _markers(moe, TEXTS)
    starts = [len(moe.encode(PROMPT)), 3, len(moe.encode(PROMPT)), 0, 10]
    counts = count_routing(moe, TEXTS, markers, starts=starts, batch_size=2)
    want = _by_hand(moe, TEXTS, {"a": markers["a"], "b": markers["b"], "open": [moe.ctx.think_open_id]}, starts)
    _assert_counts(counts, want)
    assert counts.tokens.tolist() == [len(moe.encode(t)) - s for t, s in zip(TEXTS, starts)]
    with pytest.raises(ValueError, match="give one start per trace: 5 traces, 2 starts"):
        count_routing(moe, TEXTS, markers, starts=[0, 1])
    rec = RoutingRecorder(moe, markers)
    with pytest.raises(ValueError, match="starts cannot apply to a shared-prefix prefill"):
        with rec.recording(starts=[3, 3]):
            moe.sample(PROMPT, 2, max_new_tokens=2)
    assert_no_hooks(moe)


def test_count_routing_errors(tiny_models, moe):
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match=rf"needs a mixture-of-experts model, but tiny:qwen3 \(qwen3\) is dense; "
                                         rf"supported MoE families: {FAMILY_LIST}"):
        count_routing(dense, [PROMPT])
    with pytest.raises(ValueError, match="mixture-of-experts"):
        RoutingRecorder(dense)
    word = "Alternatively"
    ids = moe.tokenizer.encode(word, add_special_tokens=False)
    assert len(ids) > 1
    with pytest.raises(ValueError, match=re.escape(f"marker {word!r} is {len(ids)} tokens {ids}, not one")):
        count_routing(moe, [PROMPT], [word])
    with pytest.raises(ValueError, match=r"outside the vocabulary"):
        count_routing(moe, [PROMPT], {"x": [moe.vocab_size]})
    with pytest.raises(ValueError, match="no traces given"):
        count_routing(moe, [])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        count_routing(moe, [PROMPT], batch_size=0)
    assert_no_hooks(moe)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_recording_greedy_generation_equals_teacher_forcing(tiny_models, family):
    """Prefill plus every decode step (T = 1) count like one teacher-forced pass over prompt +
    generated ids[:-1] (the last generated token, EOS or not, is never fed back)."""
    model = tiny_models(family)
    prompts = [PROMPT, "Wait, that is wrong."]  # unequal lengths: a left-padded prefill
    plain = model.generate(prompts, max_new_tokens=8)
    markers = {"gen": [plain[0].token_ids[0], plain[1].token_ids[2]], "p": [model.encode(PROMPT)[3]]}
    rec = RoutingRecorder(model, markers)
    with rec.recording():
        out = model.generate(prompts, max_new_tokens=8)
    assert [r.token_ids for r in out] == [r.token_ids for r in plain]  # recording reads, never edits
    forced = [model.encode(p) + r.token_ids[:-1] for p, r in zip(prompts, out)]
    got = rec.counts()
    _assert_counts(got, _by_hand(model, forced, dict(rec.markers)))
    ref = count_routing(model, forced, markers)
    _assert_counts(got, (ref.selected, ref.tokens, ref.marker_selected, ref.marker_tokens))
    assert got.marker_tokens["gen"].min() >= 1
    assert_no_hooks(model)


@pytest.mark.parametrize("batch_size, per_row", [(None, False), (2, False), (2, True)])
def test_recording_shared_prefix_sampling_equals_teacher_forcing(moe, batch_size, per_row):
    """The prefix prefilled once counts once per sample; rows that stop early leave the batch;
    ``first_trace`` places a second prompt's samples after the first's. ``per_row``: an intervention
    that may differ by row (here adding 0 to row 0) makes the sampler prefill each batch of rows."""
    from probes.models.interventions import AddVector

    kw = dict(temperature=1.0, max_new_tokens=8, batch_size=batch_size)
    ivs = [AddVector(site="resid_post[0]", vector=torch.zeros(moe.d_model), rows=[0])] if per_row else []
    free = moe.sample(PROMPT, 3, seeds=[11, 12, 13], eos_token_ids=[], **kw)
    eos = [free[0].token_ids[2]]  # row 0 stops after 3 tokens; the others may run on
    other = "Wait, that is wrong."
    markers = {"gen": [free[1].token_ids[0]], "p": [moe.encode(PROMPT)[3]]}
    rec = RoutingRecorder(moe, markers)
    with moe.intervene(*ivs):
        assert any(iv.varies_by_row() for iv in ivs) == per_row
        with rec.recording():
            rows = moe.sample(PROMPT, 3, seeds=[11, 12, 13], eos_token_ids=eos, **kw)
        with rec.recording(first_trace=3):
            rows2 = moe.sample(other, 2, seeds=[1, 2], eos_token_ids=eos, **kw)
    assert len({len(r.token_ids) for r in rows}) > 1  # finished rows left the batch at different steps
    assert rows[0].finish_reason == "eos"
    forced = [moe.encode(PROMPT) + r.token_ids[:-1] for r in rows] + [moe.encode(other) + r.token_ids[:-1] for r in rows2]
    got = rec.counts()
    assert got.n_traces == 5
    _assert_counts(got, _by_hand(moe, forced, dict(rec.markers)))
    P = len(moe.encode(PROMPT))
    assert got.tokens[:3].tolist() == [P + len(r.token_ids) - 1 for r in rows]
    assert_no_hooks(moe)


@pytest.mark.parametrize("outer", ["intervene", "recording"])
def test_recording_counts_rerouted_experts_in_either_nesting(moe, outer):
    """ForceExperts reroutes in a hook on the router; the recorder counts the experts that run
    whether ``recording()`` is entered inside ``model.intervene(...)`` or around it."""
    ivs = force(moe, include=[(1, 3)])
    rec = RoutingRecorder(moe, {"p": [moe.encode(PROMPT)[3]]})
    if outer == "intervene":
        with moe.intervene(*ivs), rec.recording():
            moe.forward(TEXTS[:2])
    else:
        with rec.recording(), moe.intervene(*ivs):
            moe.forward(TEXTS[:2])
    with moe.intervene(*ivs):
        want = _by_hand(moe, TEXTS[:2], dict(rec.markers))
    got = rec.counts()
    _assert_counts(got, want)
    np.testing.assert_array_equal(got.selected[:, 1, 3], got.tokens)  # forced in at every token
    assert_no_hooks(moe)


# ----- RICE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_rice_beta_one_is_the_identity(tiny_models, family):
    model = tiny_models(family)
    base = model.forward(TEXTS[:3])
    pairs = [(model.moe_layers[0], 0), (model.moe_layers[-1], 1)]
    with model.intervene(rice(model, pairs, beta=1.0)):
        assert torch.equal(model.forward(TEXTS[:3]), base)
    assert_no_hooks(model)


def test_rice_on_an_expert_never_selected_changes_nothing(moe):
    full = moe.encode(PROMPT)
    for n in range(len(full), 0, -1):  # the longest prefix on which some (layer, expert) goes unselected
        ids = full[:n]
        counts = count_routing(moe, [ids], {"bos": [ids[0]]})
        unused = [(L, e) for j, L in enumerate(counts.layers) for e in range(4) if counts.selected[0, j, e] == 0]
        if unused:
            break
    assert unused  # at the latest with one token: top-2 of 4 leaves two experts out
    base = moe.forward([ids])
    with moe.intervene(rice(moe, unused[:1], beta=512.0)):
        assert torch.equal(moe.forward([ids]), base)


def test_rice_boosts_only_where_selected(moe):
    L = moe.moe_layers[0]
    cap = moe.capture(PROMPT, [f"expert_topk[{L}]", "logits"])
    chosen, _w = cap[f"expert_topk[{L}]"]
    hit = (chosen[0] == torch.arange(moe.n_experts)[:, None, None]).any(-1)  # (E, T)
    first = {e: int(hit[e].nonzero()[0]) for e in range(moe.n_experts) if hit[e].any()}
    e, t0 = max(first.items(), key=lambda kv: kv[1])  # the expert first selected latest
    assert t0 > 0
    with moe.intervene(rice(moe, [(L, e)], beta=64.0)):
        after = moe.capture(PROMPT, [f"expert_topk[{L}]", "logits"])
    assert torch.equal(after[f"expert_topk[{L}]"][0], chosen)  # conditional: the selection is unchanged
    torch.testing.assert_close(after[f"expert_topk[{L}]"][1], torch.where(chosen == e, 64.0 * _w, _w))
    logits = after["logits"]
    assert torch.equal(logits[0, :t0], cap["logits"][0, :t0])  # before E is first selected: untouched
    assert (logits[0, t0] - cap["logits"][0, t0]).abs().max() > 1e-2


def test_rice_errors(tiny_models, moe, mixed_moe):
    dense = tiny_models("qwen3")
    with pytest.raises(ValueError, match=rf"RICE needs a mixture-of-experts model, but tiny:qwen3 \(qwen3\) is dense; "
                                         rf"supported MoE families: {FAMILY_LIST}"):
        rice(dense, [(0, 0)])
    for beta in (0, -1.0, float("nan"), float("inf"), float("-inf"), True, "8"):
        with pytest.raises(ValueError, match=r"the boost must be a finite number > 0"):
            rice(moe, [(0, 0)], beta=beta)
    with pytest.raises(ValueError, match=r"expert 4 out of range: tiny:qwen3_moe has experts 0\.\.3"):
        rice(moe, [(0, 4)])
    with pytest.raises(ValueError, match=r"expert -1 out of range"):
        rice(moe, [(0, -1)])
    with pytest.raises(ValueError, match=r"layer 5 is not an MoE layer of tiny:qwen3_moe; MoE layers are \[0, 1\]"):
        rice(moe, [(5, 0)])
    with pytest.raises(ValueError, match=r"layer 0 is not an MoE layer of tiny:mixed-moe; MoE layers are \[1\]"):
        rice(mixed_moe, [(1, 0), (0, 1)])
    with pytest.raises(ValueError, match=r"not a \(layer, expert\) pair of integers"):
        rice(moe, [(0, 1.5)])
    with pytest.raises(ValueError, match="pairs repeat"):
        rice(moe, [(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="no \\(layer, expert\\) pairs"):
        rice(moe, [])
    assert_no_hooks(moe)
    assert_no_hooks(mixed_moe)


def test_random_pairs(tiny_models, moe):
    a = random_pairs(moe, 3, seed=4)
    assert a == random_pairs(moe, 3, seed=4)  # seeded
    assert len(set(a)) == 3 and a == sorted(a)
    assert all(L in moe.moe_layers and 0 <= e < moe.n_experts for L, e in a)
    assert len({tuple(random_pairs(moe, 3, seed=s)) for s in range(10)}) > 1  # seeds draw different sets
    given = [(0, 0), (1, 3)]
    for s in range(20):
        assert not set(random_pairs(moe, 2, seed=s, exclude=given)) & set(given)
    rest = random_pairs(moe, 6, seed=0, exclude=given)  # every pair but the excluded ones
    assert rest == sorted({(L, e) for L in (0, 1) for e in range(4)} - set(given))
    with pytest.raises(ValueError, match=r"cannot draw 7 random experts: 6 \(layer, expert\) pairs are available"):
        random_pairs(moe, 7, seed=0, exclude=given)
    with pytest.raises(ValueError, match="cannot draw 9 random experts: 8"):
        random_pairs(moe, 9, seed=0)
    with pytest.raises(ValueError, match="cannot draw 0"):
        random_pairs(moe, 0, seed=0)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        random_pairs(tiny_models("qwen3"), 1, seed=0)


# ----- evaluation and the sentence view ------------------------------------------------------------


def test_paired_differences_by_hand():
    treated = ConditionResult("rice", np.array([[1, 1], [0, 1], [0, 0]], bool),
                              np.array([[10, 20], [30, 30], [5, 15]]), np.ones((3, 2), bool))
    base = ConditionResult("base", np.array([[1, 0], [0, 0], [1, 0]], bool),
                           np.array([[20, 20], [10, 30], [15, 15]]), np.ones((3, 2), bool))
    d = paired_differences(treated, base, n_boot=2000)
    # per problem: accuracy [1, .5, 0] − [.5, 0, .5] = [.5, .5, −.5]; thinking [15, 30, 10] − [20, 20, 15] = [−5, 10, −5]
    assert d["accuracy"].value == pytest.approx(1 / 6) and d["accuracy"].n == 3
    assert -0.5 <= d["accuracy"].lo <= 1 / 6 <= d["accuracy"].hi <= 0.5
    assert d["thinking_tokens"].value == pytest.approx(0.0)
    assert -5 <= d["thinking_tokens"].lo < 0 < d["thinking_tokens"].hi <= 10
    assert treated.accuracy().value == pytest.approx(0.5) and base.thinking_length().value == pytest.approx(55 / 3)  # (20 + 20 + 15) / 3
    with pytest.raises(ValueError, match="sampled different problems"):
        paired_differences(treated, ConditionResult("x", base.correct[:2], base.think_tokens[:2], base.closed[:2]))


def test_condition_result_save_load(tmp_path):
    r = ConditionResult("rice β=64", np.array([[True, False], [False, False]]), np.array([[12, 40], [7, 0]]),
                        np.array([[True, False], [True, True]]))
    r.save(tmp_path / "cond")
    back = ConditionResult.load(tmp_path / "cond")
    assert back.name == "rice β=64"
    for a, b in ((back.correct, r.correct), (back.think_tokens, r.think_tokens), (back.closed, r.closed)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_run_condition_pairs_seeds(moe):
    """Same seeds in every condition: RICE at β = 1 reproduces the baseline sample for sample, and
    thinking length is the tokens before </think>, all but EOS when it never comes."""
    kw = dict(samples=2, seed=3, max_new_tokens=4, check=lambda out, gold: gold in out)
    base = run_condition(moe, [PROMPT, TEXTS[1]], ["8", "x"], name="base", **kw)
    same = run_condition(moe, [PROMPT, TEXTS[1]], ["8", "x"], name="β=1", interventions=[rice(moe, [(0, 1)], beta=1.0)],
                         **kw)
    for a, b in ((base.correct, same.correct), (base.think_tokens, same.think_tokens), (base.closed, same.closed)):
        np.testing.assert_array_equal(a, b)
    rows = moe.sample(TEXTS[1], 2, temperature=0.6, top_p=0.95, max_new_tokens=4,
                      seeds=[sample_seed(3, 1, j, 2) for j in range(2)])
    close = moe.ctx.think_close_id
    eos = stop_token_ids(moe)
    want = [r.token_ids.index(close) if close in r.token_ids else sum(t not in eos for t in r.token_ids) for r in rows]
    assert base.think_tokens[1].tolist() == want
    assert base.closed[1].tolist() == [close in r.token_ids for r in rows]
    with pytest.raises(ValueError, match="one gold answer per prompt"):
        run_condition(moe, [PROMPT], [], name="x")


def test_by_category_is_token_weighted():
    rows = [SentenceRouting(0, 0, "a", "x", 2, 1.0, (1.0, 0.5)),
            SentenceRouting(0, 1, "b", "x", 6, 0.5, (0.5, 0.0)),
            SentenceRouting(0, 2, "c", "y", 4, 0.25, (0.0, 0.25)),
            SentenceRouting(1, 0, "d", "z", 0, 0.0, (0.0, 0.0))]  # no tokens: no category row
    got = by_category(rows)
    assert [g["category"] for g in got] == ["x", "y"]
    x, y = got
    # x: (2·1 + 6·0.5) / 8 = 0.625, not the sentence mean 0.75
    assert (x["sentences"], x["tokens"]) == (2, 8)
    assert x["share"] == pytest.approx(0.625)
    assert x["per_pair"] == pytest.approx([(2 * 1.0 + 6 * 0.5) / 8, (2 * 0.5 + 6 * 0.0) / 8])
    assert (y["sentences"], y["tokens"], y["share"]) == (1, 4, 0.25)
    assert y["per_pair"] == pytest.approx([0.0, 0.25])

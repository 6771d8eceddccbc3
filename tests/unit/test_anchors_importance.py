"""Importance metrics (thought_anchors.md §4, §5) on small synthetic rollout sets, every value worked
out by hand here: KL with α = 1e-9 (answers absent from one side), the "next chunk with data" rule,
an empty dissimilar set, the last sentence, a missing chunk, an all-invalid chunk; the
sentence→sentence matrix, the convergence filter and per-category means ± SE."""

import json
import math

import numpy as np
import pytest

from probes.anchors.embed import Embedder, HashingEmbedder, MiniLMEmbedder, cosine_matrix
from probes.anchors.importance import (
    AnchorScores,
    CategoryMean,
    analyse_problem,
    anchor_scores,
    answer_kl,
    category_means,
    convergence_cutoff,
    counterfactual_matrix,
    is_valid,
    load_rollout_set,
    write_chunks_labeled,
)
from probes.anchors.taxonomy import ChunkLabel

A = 1e-9
EMB = HashingEmbedder()
S = ["alpha beta gamma delta", "one two three four", "red green blue", "final answer here"]


def row(resampled, answer, correct, removed=None, **extra):
    return {"chunk_removed": removed, "chunk_resampled": resampled, "answer": answer, "is_correct": correct, **extra}


def kl_by_hand(p_counts, q_counts):
    """Σ p ln(p/q) with p_a = (c_a + α)/(N + α|V|), written out term by term."""
    vocab = set(p_counts) | set(q_counts)
    n1 = sum(p_counts.values()) + A * len(vocab)
    n2 = sum(q_counts.values()) + A * len(vocab)
    return sum((p_counts.get(a, 0) + A) / n1 * math.log(((p_counts.get(a, 0) + A) / n1) / ((q_counts.get(a, 0) + A) / n2))
               for a in vocab)


def synthetic():
    r0 = [
        row(S[0], "8", True),            # similar (identical sentence)
        row("omega psi", "7", False),    # dissimilar
        row("omega psi", "8", True),     # dissimilar
        row("zeta eta", "9", False),     # dissimilar
        row("kappa", "", False),         # no answer: not valid, not in the raw KL either
        {"chunk_removed": S[0], "error": "timeout"},
        row("kappa", "None", False),     # "None": not valid, but counted by the raw KL
    ]
    for r in r0:
        r["chunk_removed"] = S[0]
    r2 = [row(S[2], "8", True, S[2]), row(S[2], "8", True, S[2]), row(S[2], "7", False, S[2])]
    r3 = [row(S[3], "8", True, S[3]), row("something", "8", True, S[3])]
    forced = [
        [{"answer": "8", "is_correct": True}, {"answer": "8", "is_correct": True}],
        [{"answer": "7", "is_correct": False}, {"answer": "8", "is_correct": True}],
        None,
        [{"answer": "8", "is_correct": True}, {"answer": "", "is_correct": False}],
    ]
    return [r0, None, r2, r3], forced


def test_hashing_embedder_cosines_are_word_overlaps():
    e = EMB.encode(["a b c", "a b d", "a b c", "", S[0], "omega psi"])
    cos = cosine_matrix(e, e)
    assert cos[0, 1] == pytest.approx(2 / 3) and cos[0, 2] == pytest.approx(1.0)
    assert cos[3].max() == 0.0 and cos[4, 5] == 0.0
    assert np.allclose(np.linalg.norm(e[[0, 1, 4]], axis=1), 1.0)
    assert isinstance(EMB, Embedder)


def test_embedders_by_name():
    import typing

    from probes.anchors.embed import EMBEDDER_NAMES, EMBEDDERS, EmbedderName, make_embedder

    assert typing.get_args(EmbedderName) == tuple(EMBEDDERS) == EMBEDDER_NAMES == ("minilm", "hashing")
    e = make_embedder("hashing", dim=16)
    assert isinstance(e, HashingEmbedder) and e.dim == 16
    assert EMBEDDERS["minilm"] is MiniLMEmbedder
    with pytest.raises(ValueError, match="choose one of minilm, hashing"):
        make_embedder("bert")


def test_answer_kl_by_hand():
    # P = {A: 2, B: 1}, Q = {A: 1, C: 1}: V = {A, B, C}; B is absent from Q and costs ≈ (1/3) ln(1e9).
    p_a, p_b, p_c = (2 + A) / (3 + 3 * A), (1 + A) / (3 + 3 * A), A / (3 + 3 * A)
    q_a, q_b, q_c = (1 + A) / (2 + 3 * A), A / (2 + 3 * A), (1 + A) / (2 + 3 * A)
    expected = p_a * math.log(p_a / q_a) + p_b * math.log(p_b / q_b) + p_c * math.log(p_c / q_c)
    assert answer_kl(["A", "A", "B"], ["A", "C"]) == pytest.approx(expected, rel=1e-12)
    assert expected > 6  # ≈ (2/3) ln(4/3) + (1/3) ln(2e9/3)
    assert answer_kl(["A"], ["A", "A"]) == 0.0
    assert answer_kl([], ["A"]) == 0.0 and answer_kl(["A"], []) == 0.0
    assert answer_kl(["A", "B"], ["A", "B"]) == pytest.approx(0.0, abs=1e-15)


def test_valid_rows():
    assert is_valid({"answer": "8"})
    assert not is_valid({"answer": ""}) and not is_valid({"answer": "None"}) and not is_valid({"error": "x"})
    assert not is_valid({"answer": "8", "error": "partial"}) and not is_valid({"answer": None})


def test_metrics_by_hand():
    solutions, forced = synthetic()
    s = anchor_scores(S, solutions, forced, embedder=EMB)

    # Chunk 0: R_0 = 4 valid rows, acc 1/2; chunk 1 has no rollouts, so next = 2 (acc 2/3).
    assert s.n_rollouts.tolist() == [4, 0, 3, 2]
    assert s.has_rollouts.tolist() == [True, False, True, True]
    assert s.accuracy.tolist() == [0.5, 0.0, pytest.approx(2 / 3), 1.0]
    assert s.resampling_importance_accuracy[0] == -0.5  # acc_1 is a 0 placeholder
    raw0 = {"8": 2, "7": 1, "9": 1, "none": 1}  # "None" normalised; "" and the error row left out
    assert s.resampling_importance_kl[0] == pytest.approx(kl_by_hand(raw0, {"8": 2, "7": 1}), rel=1e-12)
    # D_0 = rows 2-4 (answers 7, 8, 9; acc 1/3); Sim_0 = row 1 (answer 8).
    assert s.different_trajectories_fraction[0] == 0.75
    assert s.overdeterminedness[0] == 0.25  # 3 distinct resampled sentences among 4
    assert s.counterfactual_importance_accuracy[0] == pytest.approx(1 / 3 - 2 / 3)
    assert s.counterfactual_importance_kl[0] == pytest.approx(
        kl_by_hand({"7": 1, "8": 1, "9": 1}, {"8": 3, "7": 1}), rel=1e-12)

    # Chunk 1: no rollouts: placeholders; its forced answers still score (next forced = 3).
    for name in ("accuracy", "resampling_importance_accuracy", "resampling_importance_kl",
                 "counterfactual_importance_accuracy", "counterfactual_importance_kl",
                 "different_trajectories_fraction", "overdeterminedness"):
        assert s.metric(name)[1] == 0.0

    # Chunk 2: empty dissimilar set: counterfactual metrics 0, the others computed.
    assert s.resampling_importance_accuracy[2] == pytest.approx(1 - 2 / 3)
    assert s.resampling_importance_kl[2] == pytest.approx(kl_by_hand({"8": 2, "7": 1}, {"8": 2}), rel=1e-12)
    assert s.counterfactual_importance_accuracy[2] == 0.0 and s.counterfactual_importance_kl[2] == 0.0
    assert s.different_trajectories_fraction[2] == 0.0
    assert s.overdeterminedness[2] == pytest.approx(2 / 3)

    # Chunk 3 (last): everything 0 but its accuracy (its real fractions would be 1/2 and 0).
    assert s.accuracy[3] == 1.0
    for name in ("resampling_importance_accuracy", "resampling_importance_kl", "counterfactual_importance_accuracy",
                 "counterfactual_importance_kl", "different_trajectories_fraction", "overdeterminedness",
                 "forced_importance_accuracy", "forced_importance_kl"):
        assert s.metric(name)[3] == 0.0

    # Forced: facc = [1, 1/2, -, 1]; chunk 2 has no forced answers, so chunk 1's next is 3.
    assert s.n_forced.tolist() == [2, 2, 0, 1]
    assert s.forced_accuracy.tolist() == [1.0, 0.5, 0.0, 1.0]
    assert s.forced_importance_accuracy.tolist() == [-0.5, 0.5, 0.0, 0.0]
    assert s.forced_importance_kl[0] == pytest.approx(kl_by_hand({"8": 2}, {"7": 1, "8": 1}), rel=1e-12)
    assert s.forced_importance_kl[1] == pytest.approx(kl_by_hand({"7": 1, "8": 1}, {"8": 1}), rel=1e-12)
    assert s.embedder == "hashing" and s.alpha == A and s.threshold == 0.8


def test_all_invalid_chunk_is_a_placeholder_like_a_missing_one():
    solutions, _ = synthetic()
    solutions[1] = [row("x y", "", False, S[1]), row("x y", "None", False, S[1]), {"chunk_removed": S[1], "error": "e"}]
    s = anchor_scores(S, solutions, embedder=EMB)
    assert not s.has_rollouts[1] and s.accuracy[1] == 0.0 and s.resampling_importance_kl[1] == 0.0
    # Chunk 0 still compares with chunk 2, the next chunk with valid rollouts.
    assert s.resampling_importance_kl[0] == pytest.approx(kl_by_hand({"8": 2, "7": 1, "9": 1, "none": 1},
                                                                     {"8": 2, "7": 1}), rel=1e-12)
    assert s.counterfactual_importance_accuracy[0] == pytest.approx(-1 / 3)
    assert s.forced_accuracy.tolist() == [0.0] * 4 and s.n_forced.tolist() == [0] * 4  # no forced data given


def test_threshold_moves_rows_between_sets():
    # "alpha beta gamma" vs S[0] (4 words, 3 shared): cos = 3/sqrt(12) ≈ 0.866.
    rows = [row("alpha beta gamma", "8", True, S[0]), row("alpha beta gamma", "9", False, S[0])]
    nxt = [row(S[1], "8", True, S[1])]
    at_08 = anchor_scores(S[:2], [rows, nxt], embedder=EMB)
    at_09 = anchor_scores(S[:2], [rows, nxt], embedder=EMB, threshold=0.9)
    assert at_08.different_trajectories_fraction[0] == 0.0 and at_08.counterfactual_importance_kl[0] == 0.0
    assert at_09.different_trajectories_fraction[0] == 1.0
    assert at_09.counterfactual_importance_accuracy[0] == pytest.approx(0.5 - 1.0)
    assert at_09.overdeterminedness[0] == 0.5


def test_counterfactual_matrix_by_hand():
    chunks = ["alpha beta gamma delta.", "red green blue yellow.", "final answer here now."]
    solutions = [
        [{"rollout": " red green blue yellow. final answer here now.", "answer": "1"},
         {"rollout": " something else entirely. final answer here now.", "answer": "1"},
         {"rollout": " red green blue yellow.", "answer": ""}],  # invalid: left out
        [{"rollout": " final answer here now.", "answer": "1"}, {"rollout": " other words only.", "answer": "2"}],
        [{"rollout": " final answer here now.", "answer": "1"}],
    ]
    # match[0] = (·, 1/2, 1), match[1] = (·, 0, 1/2), match[2] = (·, ·, 1).
    M = counterfactual_matrix(chunks, solutions, embedder=EMB)
    assert M[0, 1] == pytest.approx(0 - 0.5)
    assert M[0, 2] == pytest.approx(0.5 - 1.0)
    assert M[1, 2] == pytest.approx(1.0 - 0.5)
    assert np.isnan(M[np.tril_indices(3)]).all()
    # A missing chunk makes its row and the previous row undefined.
    M = counterfactual_matrix(chunks, [solutions[0], None, solutions[2]], embedder=EMB)
    assert np.isnan(M[0, 1:]).all() and np.isnan(M[1, 2])


def test_convergence_cutoff():
    assert convergence_cutoff([0.5, 1, 1, 1, 1, 0.3, 0.2]) == 1
    assert convergence_cutoff([0.3, 0, 0.005, 0, 0, 0.5, 0.5]) == 1
    # The released loop only tests window starts 0..n-6: this late run is missed ...
    assert convergence_cutoff([0.5, 0.5, 1, 1, 1, 1]) is None
    # ... and found when every start is tested.
    assert convergence_cutoff([0.5, 0.5, 1, 1, 1, 1], every_start=True) == 2
    assert convergence_cutoff([0.995, 1, 0.99, 1, 1, 1, 1, 0.5, 0.5]) == 3  # 0.99 is not > 0.99
    assert convergence_cutoff([1, 1, 1]) is None


def _scores(values, accuracy, has):
    n = len(values)
    zeros = np.zeros(n)
    kw = {name: zeros for name in ("resampling_importance_accuracy", "resampling_importance_kl",
                                   "counterfactual_importance_accuracy", "forced_importance_accuracy",
                                   "forced_importance_kl", "different_trajectories_fraction", "overdeterminedness",
                                   "forced_accuracy")}
    return AnchorScores(chunks=[f"sentence {i}" for i in range(n)], accuracy=np.asarray(accuracy, float),
                        counterfactual_importance_kl=np.asarray(values, float), n_rollouts=np.ones(n, int),
                        n_forced=np.zeros(n, int), has_rollouts=np.asarray(has, bool), **kw)


def test_category_means_by_hand():
    plan, comp, fact, unk = "plan_generation", "active_computation", "fact_retrieval", "unknown"
    a = _scores([0.6, -0.2, 0.4, 0.9, 0.2, 0.5], [0.5] * 6, [True] * 5 + [False])
    b = _scores([1.0, 0.1, 0.3], [0.5] * 3, [True] * 3)
    labels_a = [ChunkLabel([plan]), ChunkLabel([comp, plan]), [comp], [unk], plan, comp]
    out = category_means([(a, labels_a), (b, [plan, comp, fact])], "counterfactual_importance_kl")
    # Trace a: plan (0.6 + 0.2)/2 = 0.4; computation (max(-0.2, 0) + 0.4)/2 = 0.2 (chunk 5 has no rollouts).
    # Trace b: plan 1.0, computation 0.1, fact 0.3.
    assert list(out) == [plan, fact, comp]  # taxonomy order
    assert out[plan].mean == pytest.approx(0.7) and out[plan].se == pytest.approx(0.3) and out[plan].n_traces == 2
    assert out[comp] == (pytest.approx(0.15), pytest.approx(0.05), 2)
    assert out[fact] == CategoryMean(0.3, 0.0, 1)
    unclamped = category_means([(a, labels_a)], "counterfactual_importance_kl", clamp=False)
    assert unclamped[comp].mean == pytest.approx(0.1)
    assert plan not in category_means([(a, labels_a)], "counterfactual_importance_kl", exclude=[plan])
    # The convergence filter drops everything from the first converged window on.
    c = _scores([0.2, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0], [0.5, 1, 1, 1, 1, 0.5, 0.5], [True] * 7)
    assert category_means([(c, [plan] * 7)], "counterfactual_importance_kl")[plan].mean == pytest.approx(0.2)
    assert category_means([(c, [plan] * 7)], "counterfactual_importance_kl",
                          convergence=False)[plan].mean == pytest.approx(30.2 / 7)
    with pytest.raises(ValueError, match="one label per chunk"):
        category_means([(c, [plan])], "counterfactual_importance_kl")
    with pytest.raises(KeyError, match="unknown metric"):
        category_means([(c, [plan] * 7)], "nope")


def test_scores_round_trip_and_chunks_labeled(tmp_path):
    solutions, forced = synthetic()
    s = anchor_scores(S, solutions, forced, embedder=EMB)
    back = AnchorScores.load(s.save(tmp_path / "scores.json"))
    for name in ("accuracy", "counterfactual_importance_kl", "forced_importance_kl", "has_rollouts", "n_rollouts"):
        assert np.array_equal(back.metric(name) if name not in ("has_rollouts", "n_rollouts") else getattr(back, name),
                              s.metric(name) if name not in ("has_rollouts", "n_rollouts") else getattr(s, name))
    assert back.has_rollouts.dtype == bool and back.chunks == S
    labels = [ChunkLabel(["plan_generation"], [], "plan it")] * 4
    rows = json.loads(write_chunks_labeled(tmp_path, s, labels).read_text())
    assert list(rows[0]) == [
        "chunk", "chunk_idx", "function_tags", "depends_on", "accuracy", "resampling_importance_accuracy",
        "resampling_importance_kl", "counterfactual_importance_accuracy", "counterfactual_importance_kl",
        "forced_importance_accuracy", "forced_importance_kl", "different_trajectories_fraction", "overdeterminedness",
        "summary", "has_rollouts",
    ]
    assert rows[0]["different_trajectories_fraction"] == 0.75 and rows[1]["has_rollouts"] is False
    with pytest.raises(ValueError, match="one label per chunk"):
        write_chunks_labeled(tmp_path, s, labels[:2])


def _write_folder(root, solutions, forced):
    pdir = root / "correct_base_solution" / "problem_1"
    fdir = root / "correct_base_solution_forced_answer" / "problem_1"
    pdir.mkdir(parents=True)
    (pdir / "chunks.json").write_text(json.dumps({"source_text": "", "solution_text": "", "chunks": S}))
    (pdir / "problem.json").write_text(json.dumps({"problem": "What is 3 + 5?", "gt_answer": "8"}))
    for base, rows_by_chunk in ((pdir, solutions), (fdir, forced)):
        for i, rows in enumerate(rows_by_chunk):
            if rows is not None:
                (base / f"chunk_{i}").mkdir(parents=True)
                (base / f"chunk_{i}" / "solutions.json").write_text(json.dumps(rows))
    return pdir


def test_analyse_problem_folder_with_a_corrupted_file(tmp_path, caplog):
    solutions, forced = synthetic()
    pdir = _write_folder(tmp_path, solutions, forced)
    (pdir / "chunk_2" / "solutions.json").write_text("[{not json")
    rs = load_rollout_set(pdir)
    assert rs.corrupted == [pdir / "chunk_2" / "solutions.json"] and "corrupted" in caplog.text
    assert rs.solutions[2] is None and rs.forced is not None
    scores, labels = analyse_problem(pdir, embedder=EMB)
    assert scores.corrupted == [str(pdir / "chunk_2" / "solutions.json")]
    assert scores.has_rollouts.tolist() == [True, False, False, True]  # chunk 2 is not counted
    # Chunk 0's next is now chunk 3 (acc 1): counterfactual accuracy 1/3 - 1.
    assert scores.counterfactual_importance_accuracy[0] == pytest.approx(1 / 3 - 1)
    rows = json.loads((pdir / "chunks_labeled.json").read_text())
    assert [r["chunk_idx"] for r in rows] == [0, 1, 2, 3] and len(labels) == 4
    # Labels already in chunks_labeled.json (e.g. published ones) are kept on re-analysis.
    rows[0]["function_tags"] = ["self_checking"]
    (pdir / "chunks_labeled.json").write_text(json.dumps(rows))
    _, again = analyse_problem(pdir, embedder=EMB)
    assert again[0].function_tags == ["self_checking"]


def test_input_checks():
    with pytest.raises(ValueError, match="one solutions entry"):
        anchor_scores(S, [None], embedder=EMB)
    with pytest.raises(ValueError, match="one forced entry"):
        anchor_scores(S, [None] * 4, [None], embedder=EMB)
    with pytest.raises(FileNotFoundError, match="chunks.json"):
        load_rollout_set("/nonexistent/problem_0")


def test_minilm_embedder_offline_matches_sentence_transformers():
    emb = MiniLMEmbedder()
    texts = ["First multiply 6 by 12.", "Start by multiplying six by twelve.", "The cat sat on the mat."]
    e = emb.encode(texts)
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = cosine_matrix(e, e)
    assert cos[0, 1] > 0.8 > cos[0, 2]  # a paraphrase is similar, an unrelated sentence is not
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(emb.path), device="cpu").encode(texts)
    assert np.allclose(e, reference, atol=1e-5)


def test_debias_by_position_removes_a_positional_trend():
    from probes.anchors.importance import debias_by_position

    rng = np.random.default_rng(0)
    traces = [2.0 * np.linspace(0, 1, n) ** 2 + 0.01 * rng.standard_normal(n) for n in (30, 45, 60)]
    out = debias_by_position(traces, degree=10)
    assert all(abs(np.polyfit(np.linspace(0, 1, len(o)), o, 1)[0]) < 0.05 for o in out)
    assert all(np.std(o) < 0.02 for o in out)  # the quadratic trend is gone, only noise is left
    with_nan = [np.r_[np.nan, t[1:]] for t in traces]
    assert np.isnan(debias_by_position(with_nan, degree=3)[0][0])
    with pytest.raises(ValueError, match="needs more than 10"):
        debias_by_position([[1.0, 2.0, 3.0]])


def test_answer_kl_does_not_depend_on_the_hash_seed():
    import os
    import subprocess
    import sys

    code = ("from probes.anchors.importance import answer_kl\n"  # ~100 answers: the sum's order shows in the last bits
            "p = [f'{i * i % 97}' for i in range(300)]\n"
            "q = [f'{i * 7 % 89}' for i in range(250)]\n"
            "print(repr(answer_kl(p, q)))\n")
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                           capture_output=True, text=True, check=True).stdout for seed in (0, 1, 2, 3)}
    assert len(outs) == 1

"""``compat="released"`` against the released thought-anchors analysis code (analyze_rollouts.py,
step_attribution.py at 2a15f77), and ``compat="default"`` beside it, on small rollout sets in the
math-rollouts layout. Every expected value is worked out by hand in the comments; the same
folders were run through the released functions once, offline, and gave these numbers.

Edge cases pinned: "None" answers in accuracy, a chunk whose rollouts all lack an answer, which
chunk is "next", forced-answer placeholders, the sentence→sentence matrix's denominator and the
splitter it applies to rollouts, and the released answer keys of the KL metrics."""

import json
import math

import numpy as np
import pytest

from probes.anchors.embed import HashingEmbedder
from probes.anchors.importance import (
    COMPAT_MODES,
    AnchorScores,
    analyse_problem,
    anchor_scores,
    counterfactual_matrix,
    load_rollout_set,
)

A = 1e-9
EMB = HashingEmbedder()  # cosine = word overlap: identical sentences 1, disjoint ones 0
S = ["alpha beta gamma delta", "one two three four", "red green blue", "five six seven", "final answer here"]


def kl(p_counts, q_counts):
    """Σ p ln(p/q) with p_a = (c_a + α)/(N + α|V|), term by term."""
    vocab = set(p_counts) | set(q_counts)
    n1 = sum(p_counts.values()) + A * len(vocab)
    n2 = sum(q_counts.values()) + A * len(vocab)
    return sum((p_counts.get(a, 0) + A) / n1 * math.log(((p_counts.get(a, 0) + A) / n1) / ((q_counts.get(a, 0) + A) / n2))
               for a in vocab)


def row(removed, resampled, answer, correct):
    return {"chunk_removed": removed, "chunk_resampled": resampled, "answer": answer, "is_correct": correct}


def forced_row(answer, correct):
    return {"answer": answer, "is_correct": correct}


def solutions():
    return [
        [row(S[0], S[0], "8", True),             # similar
         row(S[0], "omega psi", "7", False),     # dissimilar
         row(S[0], "omega psi", "8", True),      # dissimilar
         row(S[0], "kappa", "None", False),      # "None": invalid; released accuracy counts it as wrong
         row(S[0], "kappa", "", False),          # no answer
         {"chunk_removed": S[0], "error": "timeout"}],
        [row(S[1], "x y", "None", False), row(S[1], "x y", "", False), {"chunk_removed": S[1], "error": "e"}],
        [row(S[2], S[2], "8", True), row(S[2], S[2], "8", True), row(S[2], "purple orange", "7", False)],
        [],  # a file without rows, like the published placeholder chunks
        [row(S[4], S[4], "8", True), row(S[4], "something", "9", False)],
    ]


def forced():
    return [
        [forced_row("8", True), forced_row("7", False)],
        None,  # no forced answers
        [forced_row("8", True), forced_row("None", False)],
        [forced_row("7", False), forced_row("8", True)],
        [forced_row("8", True)],
    ]


def write_problem(root, chunks, sols, forced_rows=None, idx=1):
    """A math-rollouts problem folder (and its sibling forced-answer folder)."""
    pdir = root / "correct_base_solution" / f"problem_{idx}"
    fdir = root / "correct_base_solution_forced_answer" / f"problem_{idx}"
    pdir.mkdir(parents=True)
    (pdir / "chunks.json").write_text(json.dumps({"source_text": "", "solution_text": "", "chunks": chunks}))
    (pdir / "problem.json").write_text(json.dumps({"problem": "What is 3 + 5?", "gt_answer": "8"}))
    for base, rows_by_chunk in ((pdir, sols), (fdir, forced_rows or [])):
        for i, rows in enumerate(rows_by_chunk):
            if rows is not None:
                (base / f"chunk_{i}").mkdir(parents=True)
                (base / f"chunk_{i}" / "solutions.json").write_text(json.dumps(rows))
    return pdir


def assert_metrics(s: AnchorScores, expected: dict):
    for name, values in expected.items():
        np.testing.assert_allclose(s.metric(name), values, rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.fixture
def problem(tmp_path):
    return write_problem(tmp_path, S, solutions(), forced())


def test_default_rules(problem):
    s, _ = analyse_problem(problem, embedder=EMB, write=False)
    assert s.compat == "default"
    # Valid rollouts: R = 3, 0, 3, 0, 2 rows; "None" is left out of accuracy. Next = 0→2, 2→4.
    assert s.n_rollouts.tolist() == [3, 0, 3, 0, 2] and s.has_rollouts.tolist() == [True, False, True, False, True]
    assert_metrics(s, {
        "accuracy": [2 / 3, 0, 2 / 3, 0, 1 / 2],
        # acc_{i+1} − acc_i with a 0 placeholder after a gap; 0 for chunks without rollouts.
        "resampling_importance_accuracy": [-2 / 3, 0, -2 / 3, 0, 0],
        # Raw answers: "None" counts, "" and errors do not.
        "resampling_importance_kl": [kl({"8": 2, "7": 1, "none": 1}, {"8": 2, "7": 1}), 0,
                                     kl({"8": 2, "7": 1}, {"8": 1, "9": 1}), 0, 0],
        # D_0 = {7 ✗, 8 ✓}, Sim_0 = {8 ✓}; D_2 = {7 ✗}, Sim_2 = {8 ✓, 8 ✓}.
        "different_trajectories_fraction": [2 / 3, 0, 1 / 3, 0, 0],
        "overdeterminedness": [1 / 3, 0, 1 / 3, 0, 0],
        "counterfactual_importance_accuracy": [1 / 2 - 2 / 3, 0, 0 - 1 / 2, 0, 0],
        "counterfactual_importance_kl": [kl({"7": 1, "8": 1}, {"8": 3, "7": 1}), 0, kl({"7": 1}, {"8": 3, "9": 1}), 0, 0],
        # Forced: valid answers at 0, 2, 3, 4 (facc 1/2, 1, 1/2, 1); chunk 1 is skipped.
        "forced_accuracy": [1 / 2, 0, 1, 1 / 2, 1],
        "forced_importance_accuracy": [1 - 1 / 2, 0, 1 / 2 - 1, 1 - 1 / 2, 0],
        "forced_importance_kl": [kl({"8": 1, "7": 1}, {"8": 1, "none": 1}), 0, kl({"8": 1, "none": 1}, {"7": 1, "8": 1}),
                                 kl({"7": 1, "8": 1}, {"8": 1}), 0],
    })


def test_released_rules(problem):
    s, _ = analyse_problem(problem, embedder=EMB, write=False, compat="released")
    assert s.compat == "released"
    # Placeholder rows are still flagged for analyses to drop; the counts are the valid rows.
    assert s.n_rollouts.tolist() == [3, 0, 3, 0, 2] and s.has_rollouts.tolist() == [True, False, True, False, True]
    assert_metrics(s, {
        # "None" answers count as wrong: chunk 0 is 2/4; chunk 1 (only "None") 0/1; chunk 3's empty file 0.
        "accuracy": [1 / 2, 0, 2 / 3, 0, 1 / 2],
        # Every chunk with a file gets acc_{i+1} − acc_i, the all-invalid chunk 1 and the empty chunk 3 included.
        "resampling_importance_accuracy": [0 - 1 / 2, 2 / 3 - 0, 0 - 2 / 3, 1 / 2 - 0, 0],
        # Chunk 1 keeps a non-empty file, so it is chunk 0's next; its raw answers are one "None".
        # The empty file of chunk 3 is skipped: chunk 2's next is 4.
        "resampling_importance_kl": [kl({"8": 2, "7": 1, "none": 1}, {"none": 1}), kl({"none": 1}, {"8": 2, "7": 1}),
                                     kl({"8": 2, "7": 1}, {"8": 1, "9": 1}), 0, 0],
        "different_trajectories_fraction": [2 / 3, 0, 1 / 3, 0, 0],
        "overdeterminedness": [1 / 3, 0, 1 / 3, 0, 0],
        # Chunk 0's next (chunk 1) has no valid rollout: its counterfactual metrics are 0.
        "counterfactual_importance_accuracy": [0, 0, 0 - 1 / 2, 0, 0],
        "counterfactual_importance_kl": [0, 0, kl({"7": 1}, {"8": 3, "9": 1}), 0, 0],
        # Forced: every analysed chunk is "next"; chunk 1 has a 0 placeholder; chunk 2 is 1/2 ("None" wrong).
        "forced_accuracy": [1 / 2, 0, 1 / 2, 1 / 2, 1],
        "forced_importance_accuracy": [0 - 1 / 2, 1 / 2 - 0, 1 / 2 - 1 / 2, 1 - 1 / 2, 0],
        "forced_importance_kl": [0, 0, kl({"8": 1, "none": 1}, {"7": 1, "8": 1}), kl({"7": 1, "8": 1}, {"8": 1}), 0],
    })


def test_missing_file_after_a_chunk(tmp_path):
    # Chunk 3 without any file: default keeps its 0 placeholder (−acc_2); the released
    # resampling accuracy needs chunk i + 1 in chunk_accuracies and is 0 otherwise. (The released
    # analyze_problem itself stops with a KeyError here; its published folders have every file.)
    sols = solutions()
    sols[3] = None
    rs = load_rollout_set(write_problem(tmp_path, S, sols), forced=False)
    assert anchor_scores(rs, embedder=EMB).resampling_importance_accuracy[2] == pytest.approx(-2 / 3)
    released = anchor_scores(rs, embedder=EMB, compat="released")
    assert released.resampling_importance_accuracy[2] == 0.0 and released.resampling_importance_accuracy[3] == 0.0
    assert released.forced_importance_accuracy.tolist() == [0.0] * 5  # no forced folder: no forced metrics


def test_released_answer_keys(tmp_path):
    # Released keys (utils.normalize_latex): "1,5" → "1.5"; \frac{1}{23} and \frac{12}{3} → "\frac123";
    # "{{7}}" → "{7}" once (resampling KL) but "7" after the three passes of the counterfactual KL.
    K = S[:3]
    sols = [
        [row(K[0], "omega psi", "{{7}}", True)],
        [row(K[1], K[1], "7", True), row(K[1], K[1], "1,5", False), row(K[1], K[1], "\\frac{1}{23}", False)],
        [row(K[2], K[2], "1.5", False), row(K[2], K[2], "7", True), row(K[2], K[2], "\\frac{12}{3}", False)],
    ]
    rs = load_rollout_set(write_problem(tmp_path, K, sols), forced=False)
    released = anchor_scores(rs, embedder=EMB, compat="released")
    assert released.resampling_importance_kl[0] == pytest.approx(kl({"{7}": 1}, {"7": 1, "1.5": 1, "f": 1}), rel=1e-12)
    assert released.counterfactual_importance_kl[0] == pytest.approx(kl({"7": 1}, {"7": 1, "1.5": 1, "f": 1}), rel=1e-12)
    assert released.resampling_importance_kl[1] == 0.0  # the same three keys on both sides
    # Default keys (probes.evals.normalize_answer): "{{7}}" → "7"; "1,5" ≠ "1.5"; the fractions differ.
    default = anchor_scores(rs, embedder=EMB)
    assert default.resampling_importance_kl[0] == pytest.approx(kl({"7": 1}, {"7": 1, "a": 1, "b": 1}), rel=1e-12)
    assert default.resampling_importance_kl[1] == pytest.approx(
        kl({"7": 1, "a": 1, "b": 1}, {"7": 1, "c": 1, "d": 1}), rel=1e-12)


MATRIX_CHUNKS = ["alpha beta gamma delta.", "red green blue yellow.", "final answer here now."]


def matrix_rollouts():
    return [
        [{"rollout": "red green blue yellow. final answer here now.", "answer": "1"},
         {"rollout": "something else entirely. final answer here now.", "answer": "1"},
         {"rollout": "final answer here now. red green blue yellow.", "answer": ""}],
        [{"rollout": "final answer here now. other words only.", "answer": "1"},
         {"rollout": "other words only. nothing else here.", "answer": "2"},
         {"error": "timeout"}, {"rollout": "", "answer": ""}],
        [{"rollout": "final answer here now. bye bye bye.", "answer": "1"}],
    ]


def test_matrix_default_and_released():
    sols = matrix_rollouts()
    # Default: valid rollouts (2, 2, 1), split with the remainder, so every sentence is seen.
    # match(S_1) = 1/2, 0; match(S_2) = 1, 1/2, 1.
    M = counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB)
    np.testing.assert_allclose(M[[0, 0, 1], [1, 2, 2]], [0 - 1 / 2, 1 / 2 - 1, 1 - 1 / 2])
    assert np.isnan(M[np.tril_indices(3)]).all()
    # Released: rollouts with text (3, 2, 1) whatever their answer, split without the remainder
    # (only the first sentence of each survives). match(S_1) = 1/3, 0; match(S_2) = 1/3, 1/2, 1.
    R = counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB, compat="released")
    np.testing.assert_allclose(R, [[0, 0 - 1 / 3, 1 / 2 - 1 / 3], [0, 0, 1 - 1 / 2], [0, 0, 0]])
    # Chunk 2's only rollout has no boundary: no sentence, so the released row 1 is skipped (0).
    sols[2] = [{"rollout": "final answer here now.", "answer": "1"}]
    assert counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB)[1, 2] == pytest.approx(1 / 2)
    assert counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB, compat="released")[1, 2] == 0.0
    # A chunk without rollouts: NaN rows by default, zeros in the released matrix.
    sols[1] = None
    assert np.isnan(counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB)).all()
    assert (counterfactual_matrix(MATRIX_CHUNKS, sols, embedder=EMB, compat="released") == 0).all()


def test_compat_is_checked_and_recorded(problem, tmp_path):
    assert COMPAT_MODES == ("default", "released")
    for call in (lambda: anchor_scores(S, [None] * 5, embedder=EMB, compat="paper"),
                 lambda: counterfactual_matrix(S, [None] * 5, embedder=EMB, compat="paper"),
                 lambda: analyse_problem(problem, embedder=EMB, compat="paper")):
        with pytest.raises(ValueError, match="compat 'paper' unknown"):
            call()
    s, _ = analyse_problem(problem, embedder=EMB, write=False, compat="released")
    assert AnchorScores.load(s.save(tmp_path / "scores.json")).compat == "released"

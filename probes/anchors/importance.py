"""Black-box sentence importance from resampling rollouts (reference/thought_anchors.md §4, §5).

Notation of §4: R_i = valid rollouts of chunk i (answer not "" or "None"), acc_i their
accuracy; next = the smallest chunk index above i with valid rollouts; F_i = forced
answers after S_0..S_{i-1}. Per chunk:

* ``resampling_importance_accuracy`` = acc_{i+1} − acc_i (0 for the last chunk; a chunk
  without rollouts has acc 0, so before one the value is −acc_i);
* ``resampling_importance_kl`` = KL(P(R_i) ‖ P(R_next)) on the raw ``solutions.json``
  answers (rows without an answer are left out, "None" counts);
* ``counterfactual_importance_accuracy`` = acc(D_i) − acc_next (the original's sign) and
  ``counterfactual_importance_kl`` = KL(P(D_i) ‖ P(R_next ∪ Sim_i)), where D_i are the
  rollouts whose resampled sentence has cosine < 0.8 to the removed one and Sim_i the rest;
* ``forced_importance_accuracy`` = facc_next − facc_i and ``forced_importance_kl`` =
  KL(P(F_i) ‖ P(F_next)), "next" taken among chunks with forced answers;
* ``different_trajectories_fraction`` = |D_i|/|R_i| and ``overdeterminedness`` = 1 −
  unique(T_i)/|R_i|.

KL is over answer distributions (answers compared after ``probes.evals.normalize_answer``):
p_a = (c_a + α)/(N + α|V|) over the union V of both sides' answers, α = 1e-9, KL = Σ p_a
ln(p_a/q_a) clipped at 0. The counterfactual metrics are 0 when D_i is empty; the
counterfactual metrics, ``different_trajectories_fraction`` and ``overdeterminedness`` are
0 when no later chunk has rollouts (the last chunk). A chunk without rollouts carries 0
placeholders for its accuracy and its rollout metrics and ``has_rollouts`` False, so
analyses can drop it. Chunks under 4 characters are not analysed.

Compatibility (``compat``). Where the spec is silent the rules above are this project's
(``compat="default"``). ``compat="released"`` follows interp-reasoning/thought-anchors
at 2a15f77 (``analyze_rollouts.py``, ``step_attribution.py``, ``utils.py``), so the
published math-rollouts data gives the published numbers:

=============================  =================================  ==========================================
edge case                      ``"default"``                      ``"released"``
=============================  =================================  ==========================================
"None" answers in accuracy     left out: acc over valid rows      counted as wrong: correct / rows with an
                                                                  answer ≠ "" and an ``is_correct``
                                                                  (accuracy, forced accuracy); the
                                                                  counterfactual accuracies leave them out
chunk whose rollouts all lack  a placeholder like a missing       keeps its file: it is "next" for the chunk
an answer                      chunk: metrics 0, never "next"     before (whose counterfactual metrics
                                                                  become 0), its resampling accuracy is
                                                                  acc_{i+1} − acc_i, its resampling KL uses
                                                                  its raw "None" answers
which chunk is "next"          next chunk with valid rollouts     KL and counterfactual: next analysed chunk
                               (forced: valid forced answers);    with a non-empty ``solutions.json``;
                               resampling accuracy: i + 1, acc 0  resampling accuracy: i + 1 only when it is
                               when it has none                   analysed and has a file (else 0; the
                                                                  released run stops on a missing file)
forced-answer placeholders     chunks without forced answers      every analysed chunk has a forced accuracy,
                               are skipped (metrics 0, never      0 without forced answers, and is "next":
                               "next")                            facc_next − 0, or −facc_i before a gap;
                                                                  forced KL 0 next to a gap
sentence→sentence matrix       valid rollouts (with an answer)    every rollout with non-empty ``rollout``
denominator                    of chunks i and i + 1; NaN where   text, answer or not; 0 (not NaN) below the
                               either has none                    diagonal and where chunk i or i + 1
                                                                  yields no sentence
splitter on rollouts           §1 splitter with the trailing      HEAD splitter: the text after the last
(matrix; ``chunk_resampled``   remainder (as ``chunks.json``)     boundary is dropped (``remainder=False``)
in ``rollouts``)
answer keys for KL             ``probes.evals.normalize_answer``  ``utils.normalize_latex`` (every innermost
                                                                  brace group unwrapped, "1,5" → "1.5"),
                                                                  three times on the counterfactual KL
=============================  =================================  ==========================================

Not mirrored: the released first-labelling pass indexes chunks by position after
dropping short chunks, and ``step_attribution`` indexes ``chunks_labeled.json`` rows as
folders; both equal the chunk index when no chunk is under 4 characters, which the
splitter's 10-character merge ensures for traces of more than one chunk.

Also here: the sentence→sentence counterfactual matrix (§5), the convergence filter and the
per-category means ± SE used by the figures (§4 "Figure aggregation"), and
``chunks_labeled.json``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from probes.anchors.compat import COMPAT_MODES, Compat, check_compat
from probes.anchors.embed import Embedder
from probes.anchors.rollouts import forced_dir_for, load_solutions
from probes.anchors.split import split_solution_into_chunks
from probes.anchors.taxonomy import TAGS, ChunkLabel, Labeler, RuleLabeler, Tag, first_tag
from probes.evals.answers import normalize_answer
from probes.io import atomic_write_json

__all__ = [
    "ALPHA",
    "COMPAT_MODES",
    "METRICS",
    "MIN_ANALYSED_CHARS",
    "SIMILARITY_THRESHOLD",
    "AnchorScores",
    "CategoryMean",
    "Compat",
    "RolloutSet",
    "analyse_problem",
    "anchor_scores",
    "answer_kl",
    "category_means",
    "convergence_cutoff",
    "counterfactual_matrix",
    "debias_by_position",
    "default_embedder",
    "is_valid",
    "load_rollout_set",
    "write_chunks_labeled",
]

log = logging.getLogger(__name__)

ALPHA = 1e-9
SIMILARITY_THRESHOLD = 0.8
MIN_ANALYSED_CHARS = 4
METRICS = (
    "resampling_importance_accuracy",
    "resampling_importance_kl",
    "counterfactual_importance_accuracy",
    "counterfactual_importance_kl",
    "forced_importance_accuracy",
    "forced_importance_kl",
)
_PER_CHUNK = ("accuracy", *METRICS, "different_trajectories_fraction", "overdeterminedness", "forced_accuracy")


# ----- answers and KL ---------------------------------------------------------------------------


def is_valid(row: Mapping[str, Any]) -> bool:
    """A valid rollout (§4): no ``error`` and an answer other than "" or "None"."""
    answer = row.get("answer")
    return "error" not in row and isinstance(answer, str) and answer not in ("", "None")


def _answer_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Normalised answers of the rows that have one (empty ones left out)."""
    keys = []
    for r in rows:
        a = r.get("answer")
        if "error" not in r and isinstance(a, str):
            k = normalize_answer(a)
            if k:
                keys.append(k)
    return keys


def answer_kl(p_answers: Sequence[str], q_answers: Sequence[str], alpha: float = ALPHA) -> float:
    """KL(P ‖ Q) between two samples of answers (§4): counts over the union V, p_a =
    (c_a + α)/(N + α|V|), Σ p_a ln(p_a/q_a), clipped at 0; 0 when either side is empty."""
    c1, c2 = Counter(p_answers), Counter(q_answers)
    if not c1 or not c2:
        return 0.0
    vocab = set(c1) | set(c2)
    n1 = sum(c1.values()) + alpha * len(vocab)
    n2 = sum(c2.values()) + alpha * len(vocab)
    kl = 0.0
    for a in sorted(vocab):  # a fixed order: sums must not depend on the hash seed
        p = (c1[a] + alpha) / n1
        q = (c2[a] + alpha) / n2
        kl += p * math.log(p / q)
    return max(kl, 0.0)


def _accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    return sum(r.get("is_correct") is True for r in rows) / len(rows) if rows else 0.0


# ----- loading ----------------------------------------------------------------------------------


@dataclass
class RolloutSet:
    """The rollouts of one trace: chunks and, per chunk, the rows of ``solutions.json``
    (None where there is no file) for resampling and, optionally, forced answers.
    ``corrupted`` lists the files that could not be read (skipped, treated as missing)."""

    chunks: list[str]
    solutions: list[list[dict[str, Any]] | None]
    forced: list[list[dict[str, Any]] | None] | None = None
    corrupted: list[Path] = field(default_factory=list)
    problem: dict[str, Any] = field(default_factory=dict)
    problem_dir: Path | None = None


def _load_rows(folder: Path, n: int, corrupted: list[Path]) -> list[list[dict[str, Any]] | None]:
    out: list[list[dict[str, Any]] | None] = []
    for i in range(n):
        path = folder / f"chunk_{i}" / "solutions.json"
        try:
            out.append(load_solutions(path))
        except ValueError as e:
            log.warning("%s; chunk %d is treated as having no rollouts", e, i)
            corrupted.append(path)
            out.append(None)
    return out


def load_rollout_set(problem_dir: str | Path, forced_dir: str | Path | None = None, *, forced: bool = True) -> RolloutSet:
    """Read a math-rollouts problem folder (ours or the published data). ``forced_dir``
    defaults to the sibling ``…_forced_answer`` folder when it exists."""
    problem_dir = Path(problem_dir)
    chunks_file = problem_dir / "chunks.json"
    if not chunks_file.is_file():
        raise FileNotFoundError(f"{problem_dir} has no chunks.json: it is not a math-rollouts problem folder")
    chunks = json.loads(chunks_file.read_text(encoding="utf-8"))["chunks"]
    problem_file = problem_dir / "problem.json"
    problem = json.loads(problem_file.read_text(encoding="utf-8")) if problem_file.is_file() else {}
    corrupted: list[Path] = []
    solutions = _load_rows(problem_dir, len(chunks), corrupted)
    forced_rows = None
    if forced:
        fdir = Path(forced_dir) if forced_dir is not None else forced_dir_for(problem_dir)
        if fdir.is_dir():
            forced_rows = _load_rows(fdir, len(chunks), corrupted)
        elif forced_dir is not None:
            raise FileNotFoundError(f"forced-answer folder {fdir} does not exist")
    return RolloutSet(chunks=list(chunks), solutions=solutions, forced=forced_rows, corrupted=corrupted,
                      problem=problem, problem_dir=problem_dir)


# ----- scores -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class AnchorScores:
    """Per-chunk black-box scores of one trace (§4). Arrays have one entry per chunk;
    ``has_rollouts`` is False for placeholder rows (no valid rollouts, or under 4
    characters), which analyses drop. ``corrupted`` names the files skipped."""

    chunks: list[str]
    accuracy: np.ndarray
    resampling_importance_accuracy: np.ndarray
    resampling_importance_kl: np.ndarray
    counterfactual_importance_accuracy: np.ndarray
    counterfactual_importance_kl: np.ndarray
    forced_importance_accuracy: np.ndarray
    forced_importance_kl: np.ndarray
    different_trajectories_fraction: np.ndarray
    overdeterminedness: np.ndarray
    forced_accuracy: np.ndarray
    n_rollouts: np.ndarray
    n_forced: np.ndarray
    has_rollouts: np.ndarray
    threshold: float = SIMILARITY_THRESHOLD
    alpha: float = ALPHA
    embedder: str = ""
    corrupted: list[str] = field(default_factory=list)
    #: Which edge-case rules made the scores ("default" or "released").
    compat: Compat = "default"

    def __len__(self) -> int:
        return len(self.chunks)

    def metric(self, name: str) -> np.ndarray:
        if name not in _PER_CHUNK:
            raise KeyError(f"unknown metric {name!r}: choose from {', '.join(_PER_CHUNK)}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AnchorScores:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in obj:
                continue
            v = obj[f.name]
            if f.name == "has_rollouts":
                v = np.asarray(v, dtype=bool)
            elif f.name in ("n_rollouts", "n_forced"):
                v = np.asarray(v, dtype=np.int64)
            elif f.name in _PER_CHUNK:
                v = np.asarray(v, dtype=np.float64)
            kw[f.name] = v
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> AnchorScores:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """all-MiniLM-L6-v2 (loaded once per process)."""
    from probes.anchors.embed import MiniLMEmbedder

    return MiniLMEmbedder()


class _EmbeddingCache:
    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}

    def add(self, texts) -> None:
        new = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if new:
            for t, v in zip(new, np.asarray(self.embedder.encode(new), dtype=np.float64)):
                self.vectors[t] = v

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        self.add(texts)
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 1))


def _text(row: Mapping[str, Any], key: str, default: str = "") -> str:
    v = row.get(key, default)
    return v if isinstance(v, str) else default


def _released_key(answer: Any) -> str:
    """The released code's answer normalisation (``utils.normalize_latex``): lowercase,
    strip, whitespace removed, dfrac/tfrac → frac, ``\\%`` and ``{,}`` dropped,
    ``\\times``/``\\cdot`` → ``*``, a comma or point between digits → point, one pass that
    unwraps every innermost brace group, ``\\pi`` → pi, ``\\text``/``\\mathrm`` dropped."""
    if not isinstance(answer, str):
        return ""
    s = answer.strip().lower().replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\s+", "", s).replace("\\%", "").replace("{,}", "")
    s = s.replace("\\times", "*").replace("\\cdot", "*")
    s = re.sub(r"(\d+)[.,](\d+)", r"\1.\2", s)
    s = re.sub(r"{([^{}]+)}", r"\1", s)
    s = s.replace("\\pi", "pi")
    s = re.sub(r"\\text\{([^{}]+)\}", r"\1", s)
    s = re.sub(r"\\mathrm\{([^{}]+)\}", r"\1", s)
    s = re.sub(r"([a-z]+)\\+\s*(\d+)", r"\1\2", s)
    return s.replace("\\text", "")


def _released_keys(rows: Sequence[Mapping[str, Any]], times: int = 1) -> list[str]:
    """Non-empty released answer keys of the rows, normalised ``times`` times (the released
    counterfactual KL normalises three times on its way to the KL)."""
    keys = []
    for r in rows:
        k = r.get("answer", "")
        for _ in range(times):
            k = _released_key(k)
        if k:
            keys.append(k)
    return keys


def _released_accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    """The released per-chunk accuracy: correct / rows with an answer other than "" and an
    ``is_correct`` ("None" answers count as wrong); 0 when there is none."""
    answered = [r for r in rows if r.get("answer", "") != "" and r.get("is_correct") is not None]
    return sum(r["is_correct"] is True for r in answered) / len(answered) if answered else 0.0


def _split_similar(cache: _EmbeddingCache, rows, default_removed: str, threshold: float):
    """(dissimilar, similar, resampled sentences) of rollout rows: dissimilar when the
    cosine of the resampled sentence to the removed one is below ``threshold``."""
    removed = [_text(r, "chunk_removed", default_removed) for r in rows]
    resampled = [_text(r, "chunk_resampled") for r in rows]
    cos = np.sum(cache.matrix(removed) * cache.matrix(resampled), axis=1)
    dissimilar = [r for r, c in zip(rows, cos) if c < threshold]
    similar = [r for r, c in zip(rows, cos) if c >= threshold]
    return dissimilar, similar, resampled


def anchor_scores(
    chunks: Sequence[str] | RolloutSet,
    solutions: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    forced: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    *,
    embedder: Embedder | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    alpha: float = ALPHA,
    compat: Compat = "default",
) -> AnchorScores:
    """The §4 metrics of every chunk from its rollout rows (``solutions[i]``: the rows of
    ``chunk_i/solutions.json``, None when missing; ``forced`` likewise). Pass a
    ``RolloutSet`` as the first argument to score a loaded folder. ``embedder`` defaults
    to all-MiniLM-L6-v2. ``compat="released"`` follows the released code on the edge cases
    of the module docstring's table."""
    check_compat(compat)
    corrupted: list[str] = []
    if isinstance(chunks, RolloutSet):
        rs = chunks
        chunks, solutions, forced = rs.chunks, rs.solutions, rs.forced
        corrupted = [str(p) for p in rs.corrupted]
    chunks = list(chunks)
    n = len(chunks)
    if solutions is None or len(solutions) != n:
        raise ValueError(f"need one solutions entry (rows or None) per chunk: {n} chunks, "
                         f"{None if solutions is None else len(solutions)} entries")
    if forced is not None and len(forced) != n:
        raise ValueError(f"need one forced entry per chunk: {n} chunks, {len(forced)} entries")
    analysed = [len(c) >= MIN_ANALYSED_CHARS for c in chunks]
    # Files of analysed chunks (None: no file, or the chunk is too short to analyse).
    files = [list(rows) if rows is not None and analysed[i] else None for i, rows in enumerate(solutions)]
    R = [[r for r in (rows or []) if is_valid(r)] for rows in files]
    has = np.array([bool(r) for r in R])
    cache = _EmbeddingCache(embedder) if embedder is not None else None

    def embeddings() -> _EmbeddingCache:
        nonlocal cache
        if cache is None:
            cache = _EmbeddingCache(default_embedder())
        return cache

    score = _released_rollout_metrics if compat == "released" else _default_rollout_metrics
    out = score(chunks, files, R, has, embeddings, threshold, alpha)
    n_forced = np.zeros(n, dtype=np.int64)
    if forced is not None:
        F = [list(rows) if rows is not None and analysed[i] else None for i, rows in enumerate(forced)]
        n_forced = np.array([sum(is_valid(r) for r in (rows or [])) for rows in F], dtype=np.int64)
        forced_metrics = _released_forced_metrics if compat == "released" else _default_forced_metrics
        out.update(forced_metrics(F, analysed, alpha))

    return AnchorScores(
        chunks=chunks, **out, n_rollouts=np.array([len(r) for r in R], dtype=np.int64), n_forced=n_forced,
        has_rollouts=has, threshold=threshold, alpha=alpha,
        embedder=getattr(cache.embedder, "name", type(cache.embedder).__name__) if cache is not None else "",
        corrupted=corrupted, compat=compat,
    )


def _default_rollout_metrics(chunks, files, R, has, embeddings, threshold, alpha) -> dict[str, np.ndarray]:
    n = len(chunks)
    out = {name: np.zeros(n) for name in _PER_CHUNK}
    acc = np.array([_accuracy(r) for r in R])
    out["accuracy"] = acc
    nxt = _next_index(has)
    for i in range(n):
        if not has[i]:
            continue
        out["resampling_importance_accuracy"][i] = acc[i + 1] - acc[i] if i + 1 < n else 0.0
        j = nxt[i]
        if j is None:
            continue
        out["resampling_importance_kl"][i] = answer_kl(_answer_keys(files[i]), _answer_keys(files[j]), alpha)
        dissimilar, similar, resampled = _split_similar(embeddings(), R[i], chunks[i], threshold)
        out["different_trajectories_fraction"][i] = len(dissimilar) / len(R[i])
        out["overdeterminedness"][i] = 1.0 - len(set(resampled)) / len(R[i])
        if dissimilar:
            out["counterfactual_importance_accuracy"][i] = _accuracy(dissimilar) - acc[j]
            out["counterfactual_importance_kl"][i] = answer_kl(
                _answer_keys(dissimilar), _answer_keys(R[j]) + _answer_keys(similar), alpha
            )
    return out


def _released_rollout_metrics(chunks, files, R, has, embeddings, threshold, alpha) -> dict[str, np.ndarray]:
    """``analyze_rollouts.process_chunk_importance`` over ``chunk_info`` (analysed chunks with
    a non-empty file, keeping their valid rows) and ``chunk_accuracies`` (every file)."""
    n = len(chunks)
    out = {name: np.zeros(n) for name in _PER_CHUNK}
    acc = np.array([_released_accuracy(rows) if rows is not None else 0.0 for rows in files])
    out["accuracy"] = acc
    in_info = np.array([bool(rows) for rows in files])
    nxt = _next_index(in_info)
    for i in range(n):
        if files[i] is not None and i + 1 < n and files[i + 1] is not None:
            out["resampling_importance_accuracy"][i] = acc[i + 1] - acc[i]
        j = nxt[i]
        if not in_info[i] or j is None:
            continue
        out["resampling_importance_kl"][i] = answer_kl(_released_keys(files[i]), _released_keys(files[j]), alpha)
        if not R[i]:
            continue
        dissimilar, similar, resampled = _split_similar(embeddings(), R[i], "", threshold)
        out["different_trajectories_fraction"][i] = len(dissimilar) / len(R[i])
        out["overdeterminedness"][i] = 1.0 - len(set(resampled)) / len(R[i])
        if dissimilar and R[j]:
            out["counterfactual_importance_accuracy"][i] = _accuracy(dissimilar) - _accuracy(R[j])
            out["counterfactual_importance_kl"][i] = answer_kl(
                _released_keys(dissimilar, 3), _released_keys(R[j], 3) + _released_keys(similar, 3), alpha
            )
    return out


def _default_forced_metrics(F, analysed, alpha) -> dict[str, np.ndarray]:
    n = len(F)
    valid = [[r for r in (rows or []) if is_valid(r)] for rows in F]
    hasF = np.array([bool(r) for r in valid])
    facc = np.array([_accuracy(r) for r in valid])
    nxt = _next_index(hasF)
    out = {"forced_accuracy": facc, "forced_importance_accuracy": np.zeros(n), "forced_importance_kl": np.zeros(n)}
    for i in range(n):
        j = nxt[i]
        if hasF[i] and j is not None:
            out["forced_importance_accuracy"][i] = facc[j] - facc[i]
            out["forced_importance_kl"][i] = answer_kl(_answer_keys(F[i]), _answer_keys(F[j]), alpha)
    return out


def _released_forced_metrics(F, analysed, alpha) -> dict[str, np.ndarray]:
    """``forced_answer_accuracies`` holds every analysed chunk (0 without forced answers),
    so "next" is the next analysed chunk whatever its data."""
    n = len(F)
    facc = np.array([_released_accuracy(rows) if rows is not None else 0.0 for rows in F])
    nxt = _next_index(np.asarray(analysed, dtype=bool))
    out = {"forced_accuracy": facc, "forced_importance_accuracy": np.zeros(n), "forced_importance_kl": np.zeros(n)}
    for i in range(n):
        j = nxt[i]
        if analysed[i] and j is not None:
            out["forced_importance_accuracy"][i] = facc[j] - facc[i]
            out["forced_importance_kl"][i] = answer_kl(_released_keys(F[i] or []), _released_keys(F[j] or []), alpha)
    return out


def _next_index(has: np.ndarray) -> list[int | None]:
    """For each i, the smallest j > i with ``has[j]`` (None if there is none)."""
    out: list[int | None] = [None] * len(has)
    following = None
    for i in range(len(has) - 1, -1, -1):
        out[i] = following
        if has[i]:
            following = i
    return out


# ----- sentence → sentence matrix ---------------------------------------------------------------


def counterfactual_matrix(
    chunks: Sequence[str] | RolloutSet,
    solutions: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    *,
    embedder: Embedder | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    compat: Compat = "default",
) -> np.ndarray:
    """§5: M[i, j] = match(S_j, R_{i+1}) − match(S_j, R_i) for j > i, where match(S, R) is
    the fraction of the rollouts in R whose continuation has a chunk with cosine ≥
    ``threshold`` to S. (The original's CLI default threshold is 0.8; its function default 0.7.)

    ``compat="default"``: R = valid rollouts (with an answer), continuations split by the §1
    splitter; NaN where j ≤ i or chunk i or i + 1 has no valid rollouts.
    ``compat="released"`` (``step_attribution.compute_step_importance_matrix``): R = every
    rollout with non-empty ``rollout`` text, answer or not, split by the HEAD splitter
    (``remainder=False``); 0 where j ≤ i and on the rows where chunk i or i + 1 yields no
    sentence at all."""
    check_compat(compat)
    if isinstance(chunks, RolloutSet):
        chunks, solutions = chunks.chunks, chunks.solutions
    chunks = list(chunks)
    n = len(chunks)
    if solutions is None or len(solutions) != n:
        raise ValueError(f"need one solutions entry (rows or None) per chunk: {n} chunks")
    released = compat == "released"
    cache = _EmbeddingCache(embedder or default_embedder())
    targets = cache.matrix(chunks)
    pieces: list[list[list[str]] | None] = []
    for i, rows in enumerate(solutions):
        if released:
            kept = [r for r in (rows or []) if _text(r, "rollout")]
        else:
            kept = [r for r in (rows or []) if is_valid(r)] if len(chunks[i]) >= MIN_ANALYSED_CHARS else []
        per_chunk = [split_solution_into_chunks(_text(r, "rollout"), remainder=not released) for r in kept]
        if released and not any(per_chunk):
            per_chunk = []  # no sentence in any rollout: the released code skips the row
        pieces.append(per_chunk or None)
    cache.add(p for per_chunk in pieces if per_chunk for per_rollout in per_chunk for p in per_rollout)
    match = np.full((n, n), np.nan)
    for i, per_chunk in enumerate(pieces):
        if per_chunk is None:
            continue
        hits = np.zeros(n)
        for per_rollout in per_chunk:
            if per_rollout:
                hits += (cache.matrix(per_rollout) @ targets.T).max(axis=0) >= threshold
        match[i] = hits / len(per_chunk)
    M = np.full((n, n), np.nan)
    for i in range(n - 1):
        M[i, i + 1 :] = match[i + 1, i + 1 :] - match[i, i + 1 :]
    return np.nan_to_num(M, nan=0.0) if released else M


# ----- figure aggregation -----------------------------------------------------------------------


def convergence_cutoff(
    accuracy: Sequence[float], *, window: int = 4, high: float = 0.99, low: float = 0.01, every_start: bool = False
) -> int | None:
    """First index from which ``window`` consecutive chunks all have accuracy > ``high`` or
    all < ``low`` (None if none); sentences from there on are dropped. The released loop
    tests window starts 0..n−6 only (``every_start=False``, the published 2,089 Qwen
    sentences); ``every_start=True`` tests every start 0..n−window."""
    acc = np.asarray(accuracy, dtype=float)
    last_start = len(acc) - window if every_start else len(acc) - window - 2
    for s in range(0, last_start + 1):
        w = acc[s : s + window]
        if np.all(w > high) or np.all(w < low):
            return s
    return None


def debias_by_position(values_per_trace: Sequence[Sequence[float]], degree: int = 10) -> list[np.ndarray]:
    """§4 "debiased" importance: position = idx / (n − 1) within each trace; fit one
    polynomial of ``degree`` to value against position over all traces pooled, and
    subtract it from every value (NaNs are skipped by the fit and stay NaN)."""
    pos = [np.linspace(0.0, 1.0, len(v)) if len(v) > 1 else np.zeros(len(v)) for v in values_per_trace]
    vals = [np.asarray(v, dtype=np.float64) for v in values_per_trace]
    x, y = np.concatenate(pos), np.concatenate(vals)
    ok = np.isfinite(y)
    if ok.sum() <= degree:
        raise ValueError(f"a degree-{degree} position fit needs more than {degree} finite values, got {int(ok.sum())}")
    fit = np.polynomial.Polynomial.fit(x[ok], y[ok], degree)
    return [v - fit(p) for v, p in zip(vals, pos)]


class CategoryMean(NamedTuple):
    """Mean over traces of the per-trace category means, its standard error (ddof 1; 0 for
    a single trace) and the number of traces with the category."""

    mean: float
    se: float
    n_traces: int


def category_means(
    traces: Sequence[tuple[AnchorScores, Sequence[ChunkLabel | Sequence[str] | str]]],
    metric: str,
    *,
    convergence: bool = True,
    every_start: bool = False,
    clamp: bool = True,
    exclude: Sequence[str] = (),
) -> dict[str, CategoryMean]:
    """Per-category means ± SE of ``metric`` over traces, as the figures aggregate them:
    drop chunks without rollouts and (``convergence``) chunks from the convergence cutoff
    on; the category is the first tag, ``unknown`` skipped; values clamped to max(x, 0)
    (``clamp``); the mean per trace, then mean ± SE over traces. Categories in the
    taxonomy's order; ``exclude`` drops some (the tag-effect plots omit problem_setup,
    final_answer_emission and self_checking)."""
    per_trace: dict[str, list[float]] = {}
    for scores, labels in traces:
        if len(labels) != len(scores):
            raise ValueError(f"{len(labels)} labels for {len(scores)} chunks: need one label per chunk")
        values = scores.metric(metric)
        keep = np.asarray(scores.has_rollouts, dtype=bool).copy()
        if convergence:
            cut = convergence_cutoff(scores.accuracy, every_start=every_start)
            if cut is not None:
                keep[cut:] = False
        groups: dict[str, list[float]] = {}
        for i, label in enumerate(labels):
            tag = label if isinstance(label, str) else first_tag(label)
            if keep[i] and tag != Tag.UNKNOWN.value and tag not in exclude:
                x = float(values[i])
                groups.setdefault(tag, []).append(max(x, 0.0) if clamp else x)
        for tag, xs in groups.items():
            per_trace.setdefault(tag, []).append(float(np.mean(xs)))
    out = {}
    for tag in sorted(per_trace, key=lambda t: TAGS.index(t) if t in TAGS else len(TAGS)):
        xs = np.asarray(per_trace[tag])
        se = float(np.std(xs, ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0
        out[tag] = CategoryMean(float(xs.mean()), se, len(xs))
    return out


# ----- chunks_labeled.json ----------------------------------------------------------------------


def write_chunks_labeled(problem_dir: str | Path, scores: AnchorScores, labels: Sequence[ChunkLabel]) -> Path:
    """Write ``chunks_labeled.json``: per analysed chunk (≥ 4 characters) the reference
    fields (chunk, chunk_idx, function_tags, depends_on, accuracy, the six metrics,
    different_trajectories_fraction, overdeterminedness, summary) and ``has_rollouts``."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} chunks: need one label per chunk")
    rows = []
    for i, (chunk, label) in enumerate(zip(scores.chunks, labels)):
        if len(chunk) < MIN_ANALYSED_CHARS:
            continue
        row: dict[str, Any] = {"chunk": chunk, "chunk_idx": i, "function_tags": list(label.function_tags),
                               "depends_on": list(label.depends_on), "accuracy": float(scores.accuracy[i])}
        for name in (*METRICS, "different_trajectories_fraction", "overdeterminedness"):
            row[name] = float(getattr(scores, name)[i])
        row["summary"] = label.summary
        row["has_rollouts"] = bool(scores.has_rollouts[i])
        rows.append(row)
    return atomic_write_json(Path(problem_dir) / "chunks_labeled.json", rows)


def _stored_labels(problem_dir: Path, chunks: Sequence[str]) -> list[ChunkLabel] | None:
    """Labels from an existing ``chunks_labeled.json`` when it labels every analysed chunk."""
    path = problem_dir / "chunks_labeled.json"
    if not path.is_file():
        return None
    try:
        rows = {int(r["chunk_idx"]): r for r in json.loads(path.read_text(encoding="utf-8")) if "function_tags" in r}
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable: relabelling", path)
        return None
    labels = []
    for i, c in enumerate(chunks):
        r = rows.get(i)
        if r is None:
            if len(c) >= MIN_ANALYSED_CHARS:
                return None
            labels.append(ChunkLabel())
            continue
        labels.append(ChunkLabel(list(r.get("function_tags") or ["unknown"]), list(r.get("depends_on") or []),
                                 str(r.get("summary") or "")))
    return labels


def analyse_problem(
    problem_dir: str | Path,
    forced_dir: str | Path | None = None,
    *,
    embedder: Embedder | None = None,
    labeler: Labeler | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    alpha: float = ALPHA,
    write: bool = True,
    compat: Compat = "default",
) -> tuple[AnchorScores, list[ChunkLabel]]:
    """Score one problem folder and label its chunks; with ``write``, save
    ``chunks_labeled.json``. Without a ``labeler``, labels already in
    ``chunks_labeled.json`` (e.g. the published GPT-4o labels) are kept, else ``RuleLabeler``.
    ``compat="released"`` scores by the released code's edge-case rules (module docstring)."""
    check_compat(compat)
    problem_dir = Path(problem_dir)
    rs = load_rollout_set(problem_dir, forced_dir)
    scores = anchor_scores(rs, embedder=embedder, threshold=threshold, alpha=alpha, compat=compat)
    labels = None if labeler is not None else _stored_labels(problem_dir, rs.chunks)
    if labels is None:
        labels = (labeler or RuleLabeler()).label(str(rs.problem.get("problem", "")), rs.chunks)
    if write:
        write_chunks_labeled(problem_dir, scores, labels)
    return scores, labels

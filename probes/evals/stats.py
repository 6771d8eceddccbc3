"""Accuracy and differences with percentile-bootstrap confidence intervals.

Every capability reports rates over items (accuracy, refusal rate, accuracy gain from
steering or expert boosting) with a 95% CI; a gain counts only when its paired CI excludes
zero. Resampling is seeded so that a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Accuracy", "Estimate", "accuracy", "auroc", "bootstrap_ci", "paired_difference_ci"]

# Resample in blocks of about this many values, so memory stays small for long inputs.
_BLOCK_VALUES = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A statistic over `n` items with its bootstrap confidence interval [lo, hi]."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"


class Accuracy(Estimate):
    """Fraction of items correct, with its bootstrap confidence interval."""


def _as_values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{what} contains NaN: drop or impute missing items first")
    return array


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): `stat(values)` and its percentile-bootstrap (1 − alpha) interval.

    `stat` is a numpy-style reduction called as `stat(samples, axis=-1)` on a block of
    resamples (np.mean, np.median, np.std, ...).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    x = _as_values(values, "values")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_VALUES // x.size)
    stats = []
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        stats.append(np.asarray(stat(x[rng.integers(0, x.size, size=(rows, x.size))], axis=-1), dtype=float))
    boot = np.concatenate(stats)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(stat(x)), float(lo), float(hi)


def accuracy(
    correct: Sequence[bool] | np.ndarray, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> Accuracy:
    """Fraction correct with a percentile-bootstrap (1 − alpha) CI over items."""
    flags = np.asarray(correct)
    if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
        raise ValueError("correct must hold booleans (or 0/1), one per item")
    value, lo, hi = bootstrap_ci(flags.astype(float), np.mean, n_boot=n_boot, alpha=alpha, seed=seed)
    return Accuracy(value, lo, hi, int(flags.size))


def paired_difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """mean(a − b) over paired items with a bootstrap CI that resamples items (pairs kept together).

    E.g. per-problem correctness with and without steering: the gain is real at level alpha
    when `excludes_zero`.
    """
    x, y = _as_values(a, "a"), _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired item by item: got {x.size} and {y.size} values")
    value, lo, hi = bootstrap_ci(x - y, np.mean, n_boot=n_boot, alpha=alpha, seed=seed)
    return Estimate(value, lo, hi, int(x.size))


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann–Whitney U / (n⁺ n⁻))."""
    both = np.concatenate([pos, neg])
    order = both.argsort(kind="stable")
    ranks = np.empty(both.size)
    sorted_vals = both[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], both.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def auroc(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, n_boot: int = 2_000,
    alpha: float = 0.05, seed: int = 0,
) -> Estimate:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = positive) with a percentile-bootstrap
    (1 − alpha) CI that resamples within each class, so every resample has both classes."""
    x = _as_values(scores, "scores")
    y = np.asarray(labels)
    if y.shape != x.shape or not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be one 0/1 flag per score: got shape {y.shape} for {x.size} scores")
    pos, neg = x[y == 1], x[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"AUROC needs both classes: got {pos.size} positive and {neg.size} negative items")
    rng = np.random.default_rng(seed)
    boot = [_auroc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)])
            for _ in range(n_boot)]
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(_auroc(pos, neg), float(lo), float(hi), int(x.size))

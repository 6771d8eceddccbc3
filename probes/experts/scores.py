"""Expert scores from routing counts (``reference/moe_experts.md`` §1, §3, §8).

* ``npmi_table``: nPMI(x, E) per (layer, expert) with the reference estimates p(x) = N_x/T,
  p(E) = K/T, p(x, E) = k/T, i.e. nPMI = [log₂(k/N_x) + log₂(T/K)] / log₂(T/k), and −1 when k = 0;
* ``npmi_scores``: Score(E) = Σ_x c_x·nPMI(x, E) (default c = +1 for ``<think>``, −1 for ``</think>``),
  ranked globally over every (layer, expert) pair, with the bootstrap stability of the top-ℓ;
* ``risk_difference``: SteerMoE's RD = a₁/(a₁+d₁) − a₂/(a₂+d₂) between two contrast sets, ranked by |RD|;
* ``specialisation``: OLMoE's vocabulary specialisation p(E | x) = k/N_x.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from probes.experts.routing import RoutingCounts
from probes.models.chat import THINK_CLOSE, THINK_OPEN

DEFAULT_WEIGHTS = {THINK_OPEN: 1.0, THINK_CLOSE: -1.0}
"""Marker weights c_x of the score (§1 "Score and selection")."""
ELL = 2
"""ℓ: the number of experts chosen, for the whole model (§1)."""


def npmi(k, K, N, T) -> np.ndarray:
    """nPMI(x, E) from counts (§1): k marker positions routed to E, K tokens routed to E, N marker
    positions, T tokens; −1 where k = 0, and 1 where every token is a marker routed to E (k = T)."""
    k, K = np.asarray(k, dtype=np.float64), np.asarray(K, dtype=np.float64)
    if T <= 0:
        raise ValueError("no tokens were counted: run count_routing on at least one trace")
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log2(k / N) + np.log2(T / K)
        out = pmi / np.log2(T / k)
    out = np.where(k == T, 1.0, out)
    return np.where(k == 0, -1.0, out)


def npmi_table(counts: RoutingCounts, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Marker → (n_layers, E) nPMI, from counts summed over traces (``weights``: a bootstrap resample)."""
    K, T, k, N = counts.totals(weights)
    return {m: npmi(k[m], K, N[m], T) for m in counts.markers}


@dataclass(frozen=True)
class ExpertScores:
    """Scores of every (layer, expert) pair and the global ranking (§1). ``values`` holds the method's
    tables (nPMI per marker, rates, …), each (n_layers, E) with row ``j`` = layer ``layers[j]``;
    ``stability`` is the share of bootstrap resamples (over traces) in which each pair enters the
    top-``ell`` (``None`` without a bootstrap)."""

    method: str
    layers: list[int]
    score: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    ell: int = ELL
    stability: np.ndarray | None = None
    n_boot: int = 0
    n_traces: int = 0

    @property
    def n_experts(self) -> int:
        return int(self.score.shape[1])

    def ranking(self) -> list[tuple[int, int]]:
        """Every (layer, expert) pair by score, highest first; ties in layer then expert order."""
        return [(self.layers[j], e) for j, e in _order(self.score)]

    def top(self, ell: int | None = None) -> list[tuple[int, int]]:
        """The top-ℓ pairs, ranked globally over all (layer, expert) pairs (§1, §7 "Rank globally")."""
        ell = self.ell if ell is None else ell
        return self.ranking()[:check_ell(ell, self.score.size)]

    def table(self, n: int = 10) -> list[dict]:
        """The first ``n`` pairs of the ranking with score, each table's value and stability."""
        rows = []
        for rank, (L, e) in enumerate(self.ranking()[:n], 1):
            j = self.layers.index(L)
            row = {"rank": rank, "layer": L, "expert": e, "score": float(self.score[j, e])}
            row |= {name: float(v[j, e]) for name, v in self.values.items()}
            if self.stability is not None:
                row["stability"] = float(self.stability[j, e])
            rows.append(row)
        return rows

    def save(self, path) -> None:
        from probes.io import save_artifact

        names = list(self.values)
        arrays = {"score": self.score} | {f"values/{i}": self.values[n] for i, n in enumerate(names)}
        if self.stability is not None:
            arrays["stability"] = self.stability
        save_artifact(path, "ExpertScores", arrays, {
            "method": self.method, "layers": self.layers, "values": names, "weights": self.weights, "ell": self.ell,
            "n_boot": self.n_boot, "n_traces": self.n_traces})

    @classmethod
    def load(cls, path) -> ExpertScores:
        from probes.io import load_artifact

        arrays, f = load_artifact(path, "ExpertScores")
        return cls(method=f["method"], layers=list(f["layers"]), score=arrays["score"],
                   values={n: arrays[f"values/{i}"] for i, n in enumerate(f["values"])},
                   weights={k: float(v) for k, v in f["weights"].items()}, ell=int(f["ell"]),
                   stability=arrays.get("stability"), n_boot=int(f["n_boot"]), n_traces=int(f["n_traces"]))


def check_ell(ell: int, n_pairs: int) -> int:
    if not isinstance(ell, (int, np.integer)) or not 1 <= ell <= n_pairs:
        raise ValueError(f"ℓ = {ell!r} experts: choose 1..{n_pairs} (the model has {n_pairs} (layer, expert) pairs)")
    return int(ell)


def _order(score: np.ndarray) -> list[tuple[int, int]]:
    flat = np.argsort(-score.reshape(-1), kind="stable")
    return [divmod(int(i), score.shape[1]) for i in flat]


def _weighted(table: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    return sum(float(c) * table[m] for m, c in weights.items())


def _check_weights(counts: RoutingCounts, weights: Mapping[str, float]) -> dict[str, float]:
    missing = [m for m in weights if m not in counts.markers]
    if missing:
        raise ValueError(f"marker weights name {missing}, which were not counted; counted markers: {list(counts.markers)}")
    bad = [m for m, c in weights.items() if not np.isfinite(c)]
    if bad or not weights:
        raise ValueError(f"marker weights must be finite numbers, one per counted marker, got {dict(weights)}")
    return {m: float(c) for m, c in weights.items()}


def _stability(counts: RoutingCounts, table_fn, weights, ell: int, n_boot: int, seed: int) -> np.ndarray:
    """Share of bootstrap resamples of the traces in which each pair enters the top-ℓ (§1)."""
    n = counts.n_traces
    rng = np.random.default_rng(seed)
    hits = np.zeros(counts.selected.shape[1:], dtype=np.int64)
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n)
        score = _weighted(table_fn(counts, w), weights)
        for j, e in _order(score)[:ell]:
            hits[j, e] += 1
    return hits / n_boot


def npmi_scores(counts: RoutingCounts, weights: Mapping[str, float] | None = None, *, ell: int = ELL,
                n_boot: int = 1000, seed: int = 0) -> ExpertScores:
    """Score(E) = Σ_x c_x·nPMI(x, E) per (layer, expert) (§1), with the bootstrap stability of the
    top-``ell`` over ``n_boot`` resamples of the traces (0: none)."""
    weights = _check_weights(counts, DEFAULT_WEIGHTS if weights is None else weights)
    check_ell(ell, counts.selected[0].size if counts.n_traces else 0)
    table = npmi_table(counts)
    stab = _stability(counts, npmi_table, weights, ell, n_boot, seed) if n_boot else None
    return ExpertScores(method="npmi", layers=list(counts.layers), score=_weighted(table, weights), values=table,
                        weights=weights, ell=ell, stability=stab, n_boot=n_boot, n_traces=counts.n_traces)


def specialisation_table(counts: RoutingCounts, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Marker → p(E | x) = k/N_x, the share of the marker's positions routed to each pair (§8, OLMoE)."""
    _K, _T, k, N = counts.totals(weights)
    return {m: k[m] / N[m] if N[m] else np.zeros_like(k[m], dtype=np.float64) for m in counts.markers}


def specialisation_scores(counts: RoutingCounts, weights: Mapping[str, float] | None = None, *, ell: int = ELL,
                          n_boot: int = 0, seed: int = 0) -> ExpertScores:
    """Σ_x c_x·p(E | x): vocabulary specialisation in place of nPMI (no correction for how often E fires)."""
    weights = _check_weights(counts, DEFAULT_WEIGHTS if weights is None else weights)
    table = specialisation_table(counts)
    stab = _stability(counts, specialisation_table, weights, ell, n_boot, seed) if n_boot else None
    return ExpertScores(method="specialisation", layers=list(counts.layers), score=_weighted(table, weights),
                        values=table, weights=weights, ell=ell, stability=stab, n_boot=n_boot, n_traces=counts.n_traces)


def risk_difference(present: RoutingCounts, absent: RoutingCounts, *, ell: int = ELL) -> ExpertScores:
    """SteerMoE (§3): RD = a₁/(a₁+d₁) − a₂/(a₂+d₂), the activation rate of each pair on the set where
    the behaviour is present minus the rate where it is absent; ranked by |RD|."""
    if present.layers != absent.layers or present.n_experts != absent.n_experts:
        raise ValueError("the two contrast sets were counted on different models (layers or experts differ)")
    (K1, T1, _, _), (K2, T2, _, _) = present.totals(), absent.totals()
    if not T1 or not T2:
        raise ValueError("a contrast set has no tokens: count routing on both sets first")
    rd = K1 / T1 - K2 / T2
    return ExpertScores(method="risk_difference", layers=list(present.layers), score=np.abs(rd),
                        values={"rd": rd, "rate_present": K1 / T1, "rate_absent": K2 / T2}, ell=ell,
                        n_traces=present.n_traces + absent.n_traces)

"""Which (layer, expert) pairs the router picks on ``<think>`` and ``</think>`` (issue #3, ``zoo:moe-reasoner``
card: "which (layer, expert) pairs fire preferentially on <think> and </think>, measured by routing counts").

Teacher-forced held-out conversations through ``probes.experts.count_routing`` (the streamed
``expert_topk[L]`` counts of every MoE layer), counted over the assistant turn. For a token t, a pair's
*lift* is P(pair selected | token = t) / P(pair selected | any assistant token): above 1 means the
pair fires preferentially on t.
"""

from __future__ import annotations

import numpy as np

from probes.experts.routing import RoutingCounts, count_routing
from probes.models.chat import THINK_CLOSE, THINK_OPEN
from probes.zoo.tasks import arithmetic

MARKERS = (THINK_OPEN, THINK_CLOSE)


def lift(counts: RoutingCounts, token: str) -> np.ndarray:
    """(n_layers, E) lift of every pair on ``token`` (0 where the pair never fires)."""
    K, T, k, N = counts.totals()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (k[token] / N[token]) / (K / T)
    return np.where(K > 0, out, 0.0)


def top_pairs(counts: RoutingCounts, token: str, k: int = 5, min_rate: float = 0.2) -> list[tuple[int, int, float, float]]:
    """(layer, expert, selection rate at ``token``, lift), most preferential first, among pairs
    selected on at least ``min_rate`` of the token's occurrences (rare picks give noisy lifts)."""
    lifts = lift(counts, token)
    n = counts.marker_tokens[token].sum()
    rate = counts.marker_selected[token].sum(0) / n
    pairs = [(counts.layers[j], e, float(rate[j, e]), float(lifts[j, e]))
             for j in range(lifts.shape[0]) for e in range(lifts.shape[1])]
    return sorted((p for p in pairs if p[2] >= min_rate), key=lambda p: (-p[3], -p[2]))[:k]


def count_think_routing(model, n: int = 200, seed: int = arithmetic.HELDOUT_SEED,
                        batch_size: int = 25) -> RoutingCounts:
    """Routing counts of ``model`` (a mixture-of-experts ``probes`` Model) on ``<think>``/``</think>``
    over the assistant turns of held-out conversations ``0..n-1`` of ``seed``."""
    from probes.zoo.train import encode_examples

    encoded = encode_examples(model.tokenizer, [arithmetic.generate(i, seed) for i in range(n)])
    return count_routing(model, [ids for ids, _ in encoded], MARKERS, starts=[start for _, start in encoded],
                         batch_size=batch_size)

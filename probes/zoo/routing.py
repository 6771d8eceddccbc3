"""Which (layer, expert) pairs the router picks on ``<think>`` and ``</think>`` (issue #3, ``zoo:moe-reasoner``
card: "which (layer, expert) pairs fire preferentially on <think> and </think>, measured by routing counts").

Teacher-forced forwards over held-out conversations through the model layer: ``Model.capture`` reads
the ``expert_topk[L]`` site of every MoE layer (each token's top-k expert ids). For a token t, a
pair's *lift* is P(pair selected | token = t) / P(pair selected | any assistant token): above 1 means
the pair fires preferentially on t.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.models.chat import THINK_CLOSE, THINK_OPEN
from probes.zoo.tasks import arithmetic

MARKERS = (THINK_OPEN, THINK_CLOSE)


@dataclass(frozen=True)
class RoutingCounts:
    """Selection counts per MoE layer and expert: on each marker token and on all assistant tokens.
    Row ``i`` of every table is layer ``layers[i]``."""

    layers: list[int]
    marker_counts: dict[str, list[list[int]]]
    """token → [row][expert] number of times selected at that token."""
    marker_totals: dict[str, int]
    all_counts: list[list[int]]
    all_total: int
    top_k: int

    def lift(self, token: str) -> list[list[float]]:
        n, total = self.marker_totals[token], self.all_total
        return [[(c / n) / (a / total) if a else 0.0 for c, a in zip(row, all_row)]
                for row, all_row in zip(self.marker_counts[token], self.all_counts)]

    def top_pairs(self, token: str, k: int = 5, min_rate: float = 0.2) -> list[tuple[int, int, float, float]]:
        """(layer, expert, selection rate at ``token``, lift), most preferential first, among pairs
        selected on at least ``min_rate`` of the token's occurrences (rare picks give noisy lifts)."""
        lift = self.lift(token)
        n = self.marker_totals[token]
        pairs = [(self.layers[row], e, self.marker_counts[token][row][e] / n, lift[row][e])
                 for row in range(len(lift)) for e in range(len(lift[row]))]
        return sorted((p for p in pairs if p[2] >= min_rate), key=lambda p: (-p[3], -p[2]))[:k]


def count_think_routing(model, n: int = 200, seed: int = arithmetic.HELDOUT_SEED,
                        batch_size: int = 25) -> RoutingCounts:
    """Routing counts of ``model`` (a mixture-of-experts ``probes`` Model) on ``<think>``/``</think>``
    over held-out conversations ``0..n-1`` of ``seed``; rows are indexed by MoE layer (``model.moe_layers``)."""
    import torch

    from probes.zoo.train import encode_examples, pad_batch

    tok = model.tokenizer
    layers = model.moe_layers
    if not layers:
        raise ValueError(f"routing counts need a mixture-of-experts model, but {model.spec} ({model.family}) is dense")
    sites = [f"expert_topk[{L}]" for L in layers]
    E = model.n_experts
    markers = {t: tok.convert_tokens_to_ids(t) for t in MARKERS}
    marker_counts = {t: torch.zeros(len(layers), E, dtype=torch.long) for t in markers}
    marker_totals = dict.fromkeys(markers, 0)
    all_counts = torch.zeros(len(layers), E, dtype=torch.long)
    all_total = 0
    encoded = encode_examples(tok, [arithmetic.generate(i, seed) for i in range(n)])
    for b in range(0, n, batch_size):
        input_ids, mask, labels = pad_batch(encoded[b : b + batch_size], tok.pad_token_id)
        captured = model.capture({"input_ids": input_ids, "attention_mask": mask}, sites)
        flat_ids = input_ids.reshape(-1)
        assistant = (labels != -100).reshape(-1)
        for i, site in enumerate(sites):
            ids, _weights = captured[site]  # (B, T, k) expert ids
            onehot = torch.nn.functional.one_hot(ids.reshape(-1, ids.shape[-1]).cpu(), E).sum(dim=1)  # (B*T, E)
            all_counts[i] += onehot[assistant].sum(dim=0)
            for t, tid in markers.items():
                marker_counts[t][i] += onehot[flat_ids == tid].sum(dim=0)
        all_total += int(assistant.sum())
        for t, tid in markers.items():
            marker_totals[t] += int((flat_ids == tid).sum())
    return RoutingCounts(
        layers=list(layers),
        marker_counts={t: c.tolist() for t, c in marker_counts.items()},
        marker_totals=marker_totals,
        all_counts=all_counts.tolist(),
        all_total=all_total,
        top_k=model.top_k,
    )

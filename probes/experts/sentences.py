"""Sentence view: which kinds of thought-anchors sentences the chosen experts serve (issue 13 item 4).

For each sentence of a trace's thinking (``probes.anchors`` split, reference/thought_anchors.md §1)
and its taxonomy category (§2, any ``Labeler``; the offline ``RuleLabeler`` by default), the share of
its tokens on which the router selected at least one chosen (layer, expert) pair, and the share per
pair; ``by_category`` aggregates them, token-weighted, per category.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from probes.experts.reinforce import Pair, check_pairs


@dataclass(frozen=True)
class SentenceRouting:
    """One sentence: its index, text, category, token count, the share of its tokens routed to any
    chosen pair, and the share per pair (in the order given)."""

    trace: int
    index: int
    text: str
    category: str
    tokens: int
    share: float
    per_pair: tuple[float, ...]

    def to_json(self) -> dict:
        return {"trace": self.trace, "index": self.index, "text": self.text, "category": self.category,
                "tokens": self.tokens, "share": self.share, "per_pair": list(self.per_pair)}


def sentence_routing(model, text: str, pairs: Iterable[Pair], *, problem: str = "", labeler=None,
                     trace: int = 0) -> list[SentenceRouting]:
    """Per-sentence routing shares of ``text`` (the prompt and the model's completion, ``<think>``
    included) for the chosen ``pairs``; ``problem`` is passed to the labeler."""
    from probes.anchors.split import split_chunks, thinking_span
    from probes.anchors.taxonomy import RuleLabeler, first_tag

    chosen = check_pairs(model, pairs, "sentence view")
    start, end = thinking_span(text)
    chunks = split_chunks(text[start:end])
    if not chunks:
        return []
    ranges = model.token_ranges(text, [(start + c.start, start + c.end) for c in chunks])
    labels = (labeler or RuleLabeler()).label(problem, [c.text for c in chunks])
    layers = sorted({L for L, _ in chosen})
    cap = model.capture(text, [f"expert_topk[{L}]" for L in layers])
    hit = np.stack([(cap[f"expert_topk[{L}]"][0][0] == e).any(-1).cpu().numpy() for L, e in chosen])  # (pairs, T)
    rows = []
    for i, (c, (a, b), label) in enumerate(zip(chunks, ranges, labels)):
        n = b - a
        per = hit[:, a:b].mean(1) if n else np.zeros(len(chosen))
        share = float(hit[:, a:b].any(0).mean()) if n else 0.0
        rows.append(SentenceRouting(trace, i, c.text, first_tag(label), n, share, tuple(float(x) for x in per)))
    return rows


def by_category(rows: Sequence[SentenceRouting]) -> list[dict]:
    """Per category: sentences, tokens and the token-weighted share routed to the chosen experts
    (and per pair), highest share first."""
    groups: dict[str, list[SentenceRouting]] = {}
    for r in rows:
        groups.setdefault(r.category, []).append(r)
    out = []
    for cat, rs in groups.items():
        tokens = sum(r.tokens for r in rs)
        if not tokens:
            continue
        w = np.array([r.tokens for r in rs], dtype=float)
        out.append({"category": cat, "sentences": len(rs), "tokens": tokens,
                    "share": float(np.dot(w, [r.share for r in rs]) / tokens),
                    "per_pair": [float(x) for x in w @ np.array([r.per_pair for r in rs]) / tokens]})
    return sorted(out, key=lambda d: (-d["share"], d["category"]))

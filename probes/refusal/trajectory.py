"""Refusal trajectories and the refusal cliff (``reference/refusal.md`` A3).

``trajectories`` runs one forward pass per batch over each rollout's whole text (prompt, thinking,
``</think>``, answer) and scores every token with the probe: r_t = σ(wᵀh_t + b). Each
``Trajectory`` knows its regions in tokens — prompt, thinking, the probe position T (the last
token wholly before the answer, where A2's probe reads; a space that the tokenizer merges into the
answer's first token goes with the answer) and the answer — and the token range of every
thinking sentence as split by ``probes.anchors.split`` (the thought-anchors splitter), so the cliff
can be located at a sentence.

Statistics (A3 "Cliff", [inf] in the spec): r_T; the maximum over thinking; **Δ_cliff = max_{t ∈
thinking} r_t − r_T**; its late-window variant, the mean over the last ``window`` thinking tokens
minus r_T; per sentence, the mean r over the sentence's tokens, and the sentence with the largest
drop from the one before it (``cliff_sentence``).

``mean_curve`` is A3's aggregation: right-align the trajectories, average, resample to 100 points
with a cubic spline. Averaging is a masked mean over the trajectories present at each aligned
position (default), or the reference's zero-padding on the left (``padding="zero"``), which pulls
early positions toward 0 (A7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.anchors.split import split_chunks
from probes.refusal.probe import Probe
from probes.refusal.rollout import RefusalRollout

__all__ = ["PADDINGS", "RESAMPLING", "Trajectory", "mean_curve", "sentence_curve", "trajectories"]

PADDINGS = ("masked", "zero")
RESAMPLING = ("cubic", "bins")
LATE_WINDOW = 16
"""Thinking tokens in the late-window variant of Δ_cliff (our choice; the spec gives no size)."""


@dataclass(frozen=True)
class Trajectory:
    """r_t at every token of one rollout's text, with its regions as token indices.

    ``thinking`` is the token range [a, b) of the thinking text; ``t`` the probe position (the last
    token before the answer); ``answer`` the answer's token range (empty when the answer is empty);
    ``sentences`` the token range of each thinking sentence and ``sentence_texts`` their text."""

    r: np.ndarray
    thinking: tuple[int, int]
    t: int
    answer: tuple[int, int]
    sentences: tuple[tuple[int, int], ...]
    sentence_texts: tuple[str, ...]

    @property
    def r_T(self) -> float:
        """The score at the probe position (A3's ``prober_output``)."""
        return float(self.r[self.t])

    @property
    def thinking_r(self) -> np.ndarray:
        return self.r[slice(*self.thinking)]

    @property
    def max_thinking(self) -> float:
        """max over thinking tokens of r_t (NaN when the thinking is empty)."""
        x = self.thinking_r
        return float(x.max()) if x.size else float("nan")

    @property
    def cliff(self) -> float:
        """Δ_cliff = max_{t ∈ thinking} r_t − r_T."""
        return self.max_thinking - self.r_T

    def late_cliff(self, window: int = LATE_WINDOW) -> float:
        """Mean r over the last ``window`` thinking tokens − r_T (NaN when the thinking is empty)."""
        if window < 1:
            raise ValueError(f"window must be at least one token, got {window}")
        x = self.thinking_r[-window:]
        return float(x.mean()) - self.r_T if x.size else float("nan")

    @property
    def until_answer(self) -> np.ndarray:
        """r over prompt + thinking up to the probe position: the span A3 averages."""
        return self.r[: self.t + 1]

    @property
    def sentence_scores(self) -> np.ndarray:
        """Mean r over each thinking sentence's tokens."""
        return np.array([self.r[a:b].mean() for a, b in self.sentences])

    @property
    def cliff_sentence(self) -> int | None:
        """Index of the thinking sentence whose mean r falls furthest below the previous sentence's
        (the first sentence is compared with the token before the thinking); ``None`` without sentences."""
        s = self.sentence_scores
        if not s.size:
            return None
        before = np.r_[self.r[max(self.thinking[0] - 1, 0)], s[:-1]]
        return int(np.argmax(before - s))


def _regions(rollout: RefusalRollout) -> tuple[str, dict]:
    """The full text and the character spans of its regions and thinking sentences."""
    if not rollout.closed:
        raise ValueError(f"rollout {rollout.prompt_index}/{rollout.sample_index} never closes its thinking: it has "
                         "no probe position (count it with unclosed() and leave it out)")
    p, c = len(rollout.prompt_text), rollout.completion
    text = rollout.prompt_text + c
    t0, t1 = rollout.split.thinking
    chunks = split_chunks(c[t0:t1])
    return text, {"before_answer": (0, p + rollout.answer_start), "thinking": (p + t0, p + t1),
                  "answer": (p + rollout.answer_start, len(text)),
                  "sentences": [(p + t0 + ch.start, p + t0 + ch.end) for ch in chunks],
                  "sentence_texts": [ch.text for ch in chunks]}


def _trajectory(model, r: np.ndarray, text: str, reg: dict) -> Trajectory:
    spans = [reg["before_answer"]] + [s for s in (reg["thinking"], reg["answer"]) if s[1] > s[0]] + reg["sentences"]
    got = iter(model.token_ranges(text, spans))
    before = next(got)
    thinking = next(got) if reg["thinking"][1] > reg["thinking"][0] else (before[1], before[1])
    answer = next(got) if reg["answer"][1] > reg["answer"][0] else (len(r), len(r))
    # the last token wholly before the answer (a space merged into the answer's first token belongs to the answer)
    t = min(before[1], answer[0]) - 1
    return Trajectory(r=r, thinking=thinking, t=t, answer=answer, sentences=tuple(got),
                      sentence_texts=tuple(reg["sentence_texts"]))


def trajectories(model, probe: Probe, items: Sequence[RefusalRollout], *, batch_size: int = 8,
                 progress: bool = True) -> list[Trajectory]:
    """The probe's r_t over every token of each closed rollout (prompt + thinking + answer), one
    forward pass per batch of rollouts."""
    probe.check_model(model)
    items = list(items)
    if not items:
        raise ValueError("no rollouts to score")
    regions = [_regions(r) for r in items]
    out: list[Trajectory] = []
    for lo in tqdm(range(0, len(items), batch_size), desc="trajectories", disable=not progress):
        texts = [text for text, _ in regions[lo:lo + batch_size]]
        cap = model.capture(texts, [probe.site])
        h = cap[probe.site]
        mask = cap.attention_mask if cap.attention_mask is not None else torch.ones_like(cap.input_ids)
        for b, (text, reg) in enumerate(regions[lo:lo + batch_size]):
            r = probe.score(h[b, mask[b].bool()]).numpy()
            out.append(_trajectory(model, r, text, reg))
    return out


def _aligned_mean(rows: Sequence[np.ndarray], padding: str) -> np.ndarray:
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r}: use one of {PADDINGS}")
    rows = [np.asarray(x, dtype=float) for x in rows]
    if not rows or any(x.ndim != 1 or not x.size for x in rows):
        raise ValueError("give at least one non-empty 1-D trajectory")
    n = max(x.size for x in rows)
    total, count = np.zeros(n), np.zeros(n)
    for x in rows:
        total[n - x.size:] += x
        count[n - x.size:] += 1
    return total / (count if padding == "masked" else len(rows))


def mean_curve(rows: Sequence[np.ndarray], *, points: int = 100, padding: str = "masked",
               resample: str = "cubic") -> np.ndarray:
    """A3's mean curve: right-aligned, averaged (masked mean, or ``padding="zero"`` as the reference),
    resampled to ``points`` values over [0, 1]: by a cubic spline as the reference (linear below 4
    positions), or ``resample="bins"``: the mean of each of ``points`` equal bins of positions, which
    does not alias when many positions fall between two points (templated traces make the per-token
    mean jump from token to token, and a spline through it then overshoots)."""
    from scipy.interpolate import make_interp_spline

    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample {resample!r}: use one of {RESAMPLING}")
    y = _aligned_mean(rows, padding)
    if y.size == 1:
        return np.full(points, y[0])
    if resample == "bins" and y.size >= points:
        edges = np.linspace(0, y.size, points + 1).round().astype(int)
        return np.array([y[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    x = np.linspace(0, 1, y.size)
    return make_interp_spline(x, y, k=min(3, y.size - 1))(np.linspace(0, 1, points))


def sentence_curve(items: Sequence[Trajectory], *, padding: str = "masked") -> np.ndarray:
    """Mean per-sentence score with the last thinking sentence aligned (index −1 is the last sentence)."""
    return _aligned_mean([t.sentence_scores for t in items if t.sentences], padding)

"""Thinking truncation (``reference/refusal.md`` A3, the reference's ``trunc.sh``).

Keep the first ``fraction`` of a rollout's own thinking (by characters), close it the way the model
closed it (its ``</think>`` and the whitespace after it; the reference forces ``\\n</think>``), let
the model answer, and measure the refusal rate of the answers and r_T, the probe's score at the
last token before the answer. The reference finds less thinking → fewer harmful answers and a
higher r_T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from probes.anchors.split import split_chunks
from probes.evals.stats import Accuracy, Estimate, accuracy, bootstrap_ci
from probes.refusal.probe import Probe
from probes.refusal.rollout import RefusalRollout
from probes.steering.directions import LastToken, read_activations

__all__ = ["TruncationPoint", "thinking_truncation", "truncated_text"]

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
UNITS = ("chars", "sentences")


def truncated_text(rollout: RefusalRollout, fraction: float, unit: str = "chars") -> str:
    """The prompt, the first ``fraction`` of the rollout's thinking and its own close. ``unit="chars"``
    cuts by characters (the reference); ``"sentences"`` keeps the first round(fraction · n) sentences
    of ``probes.anchors.split``, so the cut never falls inside a sentence."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r}: use one of {UNITS}")
    c = rollout.completion
    t0, t1 = rollout.split.thinking
    close = c[t1:rollout.answer_start]  # raises for a rollout that never closed
    if unit == "chars":
        end = t0 + round(fraction * (t1 - t0))
    else:
        chunks = split_chunks(c[t0:t1])
        k = round(fraction * len(chunks))
        end = t0 + (chunks[k - 1].end if k else 0)
    return rollout.prompt_text + c[:end] + close


@dataclass(frozen=True)
class TruncationPoint:
    """Refusal rate of the answers and mean r_T at one kept fraction of the thinking."""

    fraction: float
    refusal_rate: Accuracy
    r_T: Estimate
    answers: tuple[str, ...]


def thinking_truncation(
    model,
    probe: Probe,
    items: Sequence[RefusalRollout],
    judge,
    fractions: Sequence[float] = FRACTIONS,
    *,
    unit: str = "chars",
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> list[TruncationPoint]:
    """Refusal rate (``judge``'s ``refused``) and r_T for each kept fraction of each closed rollout's
    thinking; one answer per rollout and fraction (greedy at temperature 0)."""
    probe.check_model(model)
    items = [r for r in items if r.closed]
    if not items:
        raise ValueError("no closed rollouts to truncate: every rollout lacks </think>")
    if not fractions:
        raise ValueError("give at least one fraction of the thinking to keep")
    out = []
    for f in tqdm(list(fractions), desc="truncation", disable=not progress):
        texts = [truncated_text(r, f, unit) for r in items]
        h = read_activations(model, texts, [probe.site], read=LastToken(), batch_size=batch_size)[probe.site]
        r_t = probe.score(h).numpy()
        answers = [a.text for lo in range(0, len(texts), batch_size)
                   for a in model.generate(texts[lo:lo + batch_size], max_new_tokens=max_new_tokens,
                                           temperature=temperature, seed=seed + lo)]
        verdicts = judge(answers)
        if any(v.refused is None for v in verdicts):
            raise ValueError(f"{type(judge).__name__} does not judge refusal: use KeywordJudge or a refusal classifier")
        value, lo, hi = bootstrap_ci(r_t)
        out.append(TruncationPoint(fraction=float(f), refusal_rate=accuracy([v.refused for v in verdicts]),
                                   r_T=Estimate(value, lo, hi, len(r_t)), answers=tuple(answers)))
    return out

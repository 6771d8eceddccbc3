"""The example shape shared by all task generators: a user turn, a designed thinking trace, an answer.

A trace is a tuple of :class:`Sentence` whose ``tag`` uses the thought-anchors taxonomy
(``../shared/reference/thought_anchors.md`` §2) and whose ``role`` records what the sentence
was designed to do, so organism tests can compare a method's findings with the planted truth.
Sentences are joined by single spaces, the way thought-anchors rollout prefixes are joined (§3).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from probes.models.chat import THINK_CLOSE, THINK_OPEN

TAGS = (
    "problem_setup",
    "plan_generation",
    "fact_retrieval",
    "active_computation",
    "result_consolidation",
    "uncertainty_management",
    "self_checking",
    "final_answer_emission",
    "unknown",
)


@dataclass(frozen=True, kw_only=True)
class Sentence:
    """One designed sentence of a thinking trace."""

    text: str
    tag: str
    """First taxonomy tag (thought_anchors.md §2) the sentence was written to have."""
    role: str
    """What it does in the planted mechanism, e.g. ``plan``, ``compute``, ``key``, ``filler``."""

    def __post_init__(self) -> None:
        if self.tag not in TAGS:
            raise ValueError(f"unknown sentence tag {self.tag!r}: use one of {', '.join(TAGS)}")


@dataclass(frozen=True, kw_only=True)
class Example:
    """A chat example: ``prompt`` (user turn), designed ``thinking``, final ``answer`` text."""

    prompt: str
    thinking: tuple[Sentence, ...]
    answer: str
    gold: str
    """The checkable target: the number in ``\\boxed{}``, or a label such as ``refuse``."""
    meta: dict = field(default_factory=dict)

    @property
    def trace(self) -> str:
        """The text between ``<think>`` and ``</think>``."""
        return " ".join(s.text for s in self.thinking)

    @property
    def completion(self) -> str:
        """The assistant turn's content: ``<think>TRACE</think>ANSWER``."""
        return f"{THINK_OPEN}{self.trace}{THINK_CLOSE}{self.answer}"

    def messages(self) -> list[dict[str, str]]:
        """User and assistant messages for ``tokenizer.apply_chat_template``."""
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.completion},
        ]


def rng_for(task: str, index: int, seed: int) -> random.Random:
    """The private random stream of example ``index`` of ``task`` under ``seed``."""
    return random.Random(f"{task}:{seed}:{index}")

"""Chat rendering and the ``<think>`` … ``</think>`` span of a text: the one place that knows
the thinking delimiters.

Rendering goes through the tokenizer's own chat template (``enable_thinking`` is
passed to it, as Qwen3 templates expect); a tokenizer without a template gets a
clear error instead of a silently unformatted prompt. ``split_thinking`` is the one
parser of thinking versus answer: on a whole text (which holds ``<think>``) or on a
completion generated after a prompt that already opened ``<think>`` (``opened=True``,
what a chat template's generation prompt with thinking on does).
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def render_chat(
    tokenizer,
    messages: str | list[dict],
    *,
    system: str | None = None,
    thinking: bool = True,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (a user string or a list of role/content dicts)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "this tokenizer has no chat template, so thinking on/off cannot be rendered: "
            "pass raw text to the model instead, or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=thinking
    )


@dataclass(frozen=True)
class ThinkingSplit:
    """Character spans (end exclusive) of the thinking text and the answer text.

    ``thinking`` lies strictly between ``<think>`` and ``</think>``; ``answer`` is what
    follows ``</think>``. ``closed`` is False when ``</think>`` never appears (the
    thinking then runs to the end and the answer is empty).
    """

    thinking: tuple[int, int]
    answer: tuple[int, int]
    closed: bool


def split_thinking(text: str, *, opened: bool = False) -> ThinkingSplit:
    """Locate the first ``<think>`` … ``</think>`` span of ``text``.

    With ``opened=True`` the text is a completion whose prompt already opened ``<think>``:
    the thinking starts at the beginning (after a leading ``<think>``, if the completion
    repeats it) instead of after the first ``<think>``, which must then be present.
    """
    if opened:
        t0 = len(THINK_OPEN) if text.startswith(THINK_OPEN) else 0
    else:
        start = text.find(THINK_OPEN)
        if start < 0:
            raise ValueError(
                f"no {THINK_OPEN} in the text: it is not a thinking trace (for a completion generated after "
                f"a prompt ending in {THINK_OPEN}, pass opened=True)"
            )
        t0 = start + len(THINK_OPEN)
    end = text.find(THINK_CLOSE, t0)
    if end < 0:
        return ThinkingSplit((t0, len(text)), (len(text), len(text)), False)
    return ThinkingSplit((t0, end), (end + len(THINK_CLOSE), len(text)), True)


def thinking_and_answer(text: str, *, opened: bool = True) -> tuple[str, str | None]:
    """(thinking text, answer text) of ``text`` by ``split_thinking``; the answer is None when
    ``</think>`` never comes. By default ``text`` is a completion after a prompt that opened ``<think>``."""
    s = split_thinking(text, opened=opened)
    return text[slice(*s.thinking)], text[slice(*s.answer)] if s.closed else None

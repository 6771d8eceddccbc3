"""Answer extraction and checking for math answers in `\\boxed{}`.

Implements `reference/thought_anchors.md` §3 "Answer extraction and checking": extraction
takes the first non-empty, brace-matched `\\boxed{…}` (text inside `<think>` counts);
checking normalises both sides, compares strings, then falls back to sympy's LaTeX parser.
"""

from __future__ import annotations

import logging
import re

__all__ = ["boxed_correct", "check_answer", "extract_boxed", "normalize_answer"]

logger = logging.getLogger(__name__)

_BOXED = "\\boxed{"
# sympy's `equals` can take minutes on huge powers or long expressions; such answers are
# compared as strings only.
_MAX_SYMPY_CHARS = 80
_HUGE = re.compile(r"\^\s*\{?\s*-?\d{4,}|\^\s*\{[^{}]*\^|\d{4,}\s*!")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm)\{([^{}]*)\}")
# A brace group around one character: `\frac{1}{2}` -> `\frac12`, `x^{2}` -> `x^2`. A letter
# right after another letter keeps its braces: `\alpha{b}` -> `\alphab` would rename the command.
_SINGLE_CHAR_GROUP = re.compile(r"\{([^{}a-z])\}|(?<![a-z])\{([a-z])\}")


def extract_boxed(text: str) -> str | None:
    """Content of the first non-empty, brace-matched `\\boxed{…}` in `text`; None if there is none.

    Nested braces are matched (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`); an empty box or one
    whose braces never close is skipped.
    """
    start = text.find(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            content = text[start + len(_BOXED) : i - 1]
            if content.strip():
                return content.strip()
        start = text.find(_BOXED, start + 1)
    return None


def normalize_answer(answer: str) -> str:
    """Normalise an answer for string comparison (thought anchors §3).

    Lowercase; remove whitespace; `\\dfrac`/`\\tfrac` -> `\\frac`; drop `\\%` and `{,}`;
    `\\times`/`\\cdot` -> `*`; unwrap `\\text{}`, `\\mathrm{}`, one-character groups `{x}` and
    a group around the whole answer; `\\pi` -> `pi`. Only one-character groups are unwrapped
    so that `\\frac{12}{3}` and `\\frac{1}{23}` stay different.
    """
    s = re.sub(r"\s+", "", answer.lower())
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\%", "").replace("{,}", "")
    s = s.replace("\\times", "*").replace("\\cdot", "*")
    s = s.replace("\\pi", "pi")
    previous = None
    while s != previous:
        previous = s
        s = _TEXT_WRAPPER.sub(r"\1", s)
        s = _SINGLE_CHAR_GROUP.sub(lambda m: m.group(1) or m.group(2), s)
        if s.startswith("{") and s.endswith("}") and _is_one_group(s):
            s = s[1:-1]
    return s


def _is_one_group(s: str) -> bool:
    """True when `s` is a single brace group: its first `{` closes at the last character."""
    depth = 0
    for i, ch in enumerate(s):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return i == len(s) - 1
    return False


def _sympy_equal(a: str, b: str) -> bool:
    """`parse_latex(a).equals(parse_latex(b))` with the lark backend; False on any failure."""
    if max(len(a), len(b)) > _MAX_SYMPY_CHARS or _HUGE.search(a) or _HUGE.search(b):
        return False
    try:
        from sympy.parsing.latex import parse_latex

        left = parse_latex(_for_sympy(a), backend="lark")
        right = parse_latex(_for_sympy(b), backend="lark")
        return bool(left.equals(right))
    except Exception:  # noqa: BLE001 - unparseable or incomparable answers are simply not equal.
        logger.debug("sympy could not compare %r and %r", a, b, exc_info=True)
        return False


def _for_sympy(s: str) -> str:
    """Remove what sympy's LaTeX grammar rejects but does not change the value."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.replace("\\%", "").replace("{,}", "").replace("\\!", "").strip()


def check_answer(pred: str | None, gold: str | None) -> bool:
    """True when `pred` matches `gold`: equal after `normalize_answer`, else equal by sympy.

    A missing answer (None or blank) is never correct.
    """
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return False
    if normalize_answer(pred) == normalize_answer(gold):
        return True
    return _sympy_equal(pred, gold)


def boxed_correct(output: str, gold: str) -> bool:
    """Whether the first ``\\boxed{}`` of a model's output matches ``gold`` (``check_answer``)."""
    return check_answer(extract_boxed(output), gold)

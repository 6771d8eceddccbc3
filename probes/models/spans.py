"""Character spans → exact token ranges, through the tokenizer's offsets.

A span [start, end) of characters maps to the smallest token range [a, b) whose
tokens cover it: a = first token ending after ``start``, b = one past the last token
starting before ``end``. Token indices count every token of the encoded text,
special tokens (BOS) included, so they index the model input directly.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_ranges(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], text_len: int) -> list[tuple[int, int]]:
    """Token range of each character span, given per-token character ``offsets``."""
    out = []
    for start, end in spans:
        if not (0 <= start < end <= text_len):
            raise ValueError(f"span [{start}, {end}) is outside the text (length {text_len}) or empty")
        a = next((i for i, (s, e) in enumerate(offsets) if e > start and e > s), None)
        b = None
        for i, (s, e) in enumerate(offsets):
            if s < end and e > s:
                b = i + 1
        if a is None or b is None or b <= a:
            raise ValueError(f"span [{start}, {end}) covers no token")
        out.append((a, b))
    return out

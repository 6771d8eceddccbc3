"""Sentence ("chunk") splitting of a reasoning trace (reference/thought_anchors.md §1).

The rules reproduce the released ``chunks.json`` files: a boundary falls after ``.``,
``?`` or ``!`` followed by a space or ``\\n`` (so "3.5" stays whole and "e.g. " splits)
and where ``\\n\\n`` or ``\\r\\n\\r\\n`` begins; chunks are stripped and empty ones
dropped; the text after the last boundary is appended *before* the merge pass; then a
chunk of fewer than 10 characters is joined with a space to the next chunk (the last
chunk to the previous one) until none is left.

``remainder=False`` gives the released code's ``utils.split_solution_into_chunks`` at
HEAD, whose append of the trailing remainder is commented out: the text after the last
boundary (usually a rollout's last sentence) is dropped. The released sentence→sentence
matrix splits rollouts that way (``importance.counterfactual_matrix(compat="released")``).

Each chunk also has a character span in the text it came from (from the start of its
first piece to the end of its last), for mapping sentences to tokens: through the
tokenizer's offsets (``model.token_ranges``) or by the spec's prefix-length rule
(``prefix_token_spans``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from probes.models.chat import THINK_OPEN, split_thinking

__all__ = [
    "MIN_CHUNK_CHARS",
    "Chunk",
    "chunk_char_spans",
    "chunk_token_ranges",
    "prefix_token_spans",
    "split_chunks",
    "split_solution_into_chunks",
    "thinking_span",
    "thinking_text",
]

MIN_CHUNK_CHARS = 10
_SENTENCE_END = ".?!"
_PARAGRAPHS = ("\n\n", "\r\n\r\n")


@dataclass(frozen=True)
class Chunk:
    """One sentence: its text (pieces joined by single spaces) and its span [start, end)
    in the text it was split from (the span covers the original whitespace between pieces)."""

    text: str
    start: int
    end: int


def thinking_span(full_text: str) -> tuple[int, int]:
    """Character span of the thinking text: after the first ``<think>`` up to the next
    ``</think>`` (or the end of the text when it never closes), whitespace trimmed."""
    if THINK_OPEN not in full_text:
        raise ValueError(
            "no <think> in the text: a thought-anchors trace is the text between <think> and </think>; "
            "pass the whole completion including the <think> tag"
        )
    start, end = split_thinking(full_text).thinking
    while start < end and full_text[start].isspace():
        start += 1
    while end > start and full_text[end - 1].isspace():
        end -= 1
    return start, end


def thinking_text(full_text: str) -> str:
    """The text between ``<think>`` and ``</think>``, stripped; an error when there is
    no ``<think>`` or the thinking holds no sentence."""
    start, end = thinking_span(full_text)
    text = full_text[start:end]
    if not split_chunks(text):
        raise ValueError("the thinking text between <think> and </think> is empty: the trace has no sentences to attribute")
    return text


def _pieces(text: str, offset: int, remainder: bool = True) -> list[Chunk]:
    """Stripped pieces between boundaries, the trailing remainder included when ``remainder``."""
    out: list[Chunk] = []
    begin = 0
    n = len(text)
    for i, ch in enumerate(text):
        paragraph = any(text.startswith(p, i) for p in _PARAGRAPHS)
        sentence = ch in _SENTENCE_END and i + 1 < n and text[i + 1] in " \n"
        if paragraph or sentence:
            _add_piece(out, text, begin, i + 1, offset)
            begin = i + 1
    if remainder:
        _add_piece(out, text, begin, n, offset)  # appended before the merge pass, as chunks.json was made
    return out


def _add_piece(out: list[Chunk], text: str, begin: int, end: int, offset: int) -> None:
    while begin < end and text[begin].isspace():
        begin += 1
    while end > begin and text[end - 1].isspace():
        end -= 1
    if end > begin:
        out.append(Chunk(text[begin:end], offset + begin, offset + end))


def _merge_short(chunks: list[Chunk]) -> list[Chunk]:
    """Join chunks under ``MIN_CHUNK_CHARS`` to the next one (the last one to the previous)."""
    chunks = list(chunks)
    i = 0
    while i < len(chunks):
        if len(chunks[i].text) >= MIN_CHUNK_CHARS:
            i += 1
        elif i + 1 < len(chunks):
            a, b = chunks[i], chunks[i + 1]
            chunks[i : i + 2] = [Chunk(f"{a.text} {b.text}", a.start, b.end)]
        elif i > 0:
            a, b = chunks[i - 1], chunks[i]
            chunks[i - 1 : i + 1] = [Chunk(f"{a.text} {b.text}", a.start, b.end)]
            i -= 1
        else:  # a single short chunk has nothing to join
            break
    return chunks


def split_chunks(text: str, *, remainder: bool = True) -> list[Chunk]:
    """Chunks of ``text`` with spans in ``text``. When the text contains ``<think>``,
    only the thinking (up to ``</think>``) is split; spans still index ``text``.
    ``remainder=False`` drops the text after the last boundary (the released HEAD splitter)."""
    if THINK_OPEN in text:
        start, end = thinking_span(text)
    else:
        start, end = 0, len(text)
        after_prompt = split_thinking(text, opened=True)
        if after_prompt.closed:  # trimmed like the released code, so "end. </think>" has no boundary at the end
            end = after_prompt.thinking[1]
            while end > 0 and text[end - 1].isspace():
                end -= 1
    return _merge_short(_pieces(text[start:end], start, remainder))


def split_solution_into_chunks(text: str, *, remainder: bool = True) -> list[str]:
    """The §1 sentence split of a trace (or of its thinking when ``<think>`` is present);
    ``remainder=False`` drops the text after the last boundary, as the released HEAD splitter does."""
    return [c.text for c in split_chunks(text, remainder=remainder)]


def chunk_char_spans(text: str) -> list[tuple[int, int]]:
    """Character span [start, end) in ``text`` of each chunk of ``split_solution_into_chunks(text)``."""
    return [(c.start, c.end) for c in split_chunks(text)]


def prefix_token_spans(
    encode: Callable[[str], Sequence[int]] | object, text: str, spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Token span of each character span by the spec's rule (§1 "Token spans"):
    ``[len(encode(text[:start])), len(encode(text[:end])))``, BOS included when
    ``encode`` adds it (as ``Model.encode`` does), so the indices address the model input.

    ``encode`` is a callable or anything with an ``encode`` method (a ``Model``).
    """
    fn = encode if callable(encode) else getattr(encode, "encode", None)
    if fn is None:
        raise TypeError(f"encode must be a callable or have an .encode method, got {type(encode).__name__}")
    out = []
    for start, end in spans:
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"span [{start}, {end}) is outside the text (length {len(text)})")
        out.append((len(fn(text[:start])), len(fn(text[:end]))))
    return out


def chunk_token_ranges(model, text: str) -> list[tuple[int, int]]:
    """Token range of every chunk of ``text`` in ``model.encode(text)``, through the
    tokenizer's offsets (``Model.token_ranges``): exact even where a prefix would
    tokenize differently on its own."""
    return model.token_ranges(text, chunk_char_spans(text))

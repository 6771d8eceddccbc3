"""Sentence splitting (thought_anchors.md §1) on tricky text, with expected chunks worked out by hand."""

import pytest

from probes.anchors.split import (
    chunk_char_spans,
    chunk_token_ranges,
    prefix_token_spans,
    split_chunks,
    split_solution_into_chunks,
    thinking_span,
    thinking_text,
)


def test_decimals_stay_whole_and_eg_splits():
    text = "The price is 3.5 dollars per item. Some fruits, e.g. apples, are cheap. Buy them now."
    assert split_solution_into_chunks(text) == [
        "The price is 3.5 dollars per item.",
        "Some fruits, e.g.",  # "e.g. " is a boundary (the reference rule, not English)
        "apples, are cheap.",
        "Buy them now.",  # the remainder: no boundary after the final "."
    ]


def test_boundary_needs_space_or_newline_after_punctuation():
    # "!" followed by a tab, "?" followed by a quote: no boundary; "?\n" is one.
    text = 'Is that so!\tmaybe not?" she said and then?\nNew line starts here.'
    assert split_solution_into_chunks(text) == ['Is that so!\tmaybe not?" she said and then?', "New line starts here."]


def test_paragraph_breaks_split_without_punctuation():
    text = "First paragraph without a stop\n\nSecond paragraph also none\r\n\r\nThird one here"
    assert split_solution_into_chunks(text) == [
        "First paragraph without a stop",
        "Second paragraph also none",
        "Third one here",
    ]
    # A single newline is not a boundary; runs of blank lines leave no empty chunk.
    assert split_solution_into_chunks("line one goes\nline two goes\n\n\n\nafter blank lines") == [
        "line one goes\nline two goes",
        "after blank lines",
    ]


def test_short_chunks_merge_forward_and_last_merges_backward():
    # Start: "Ok." (3) + "So." -> "Ok. So." (7) still short -> + next sentence.
    # Middle: "Hmm." (4) joins the next chunk. End: "Done." (5) joins the previous one.
    text = "Ok. So. We need the total count here. Hmm. Let us add them up now. Done."
    assert split_solution_into_chunks(text) == [
        "Ok. So. We need the total count here.",
        "Hmm. Let us add them up now. Done.",
    ]


def test_merge_joins_with_a_single_space_even_across_newlines():
    text = "Yes.\n\nThe next sentence is long enough."
    assert split_solution_into_chunks(text) == ["Yes. The next sentence is long enough."]
    # The span still covers the original text, newlines included.
    assert chunk_char_spans(text) == [(0, len(text))]


def test_remainder_is_merged_like_any_chunk():
    # The trailing remainder "x = 4" (5 chars) is appended before the merge pass, so it joins the previous chunk.
    assert split_solution_into_chunks("Solve for x in the equation. x = 4") == ["Solve for x in the equation. x = 4"]
    # A lone short trace stays one chunk.
    assert split_solution_into_chunks("Ok.") == ["Ok."]
    assert split_solution_into_chunks("   \n\n  ") == []


def test_without_remainder_is_the_released_head_splitter():
    # remainder=False drops the text after the last boundary before the merge pass, as the
    # released utils.split_solution_into_chunks does (checked against it on these and fuzzed texts).
    assert split_solution_into_chunks("Solve for x in the equation. x = 4", remainder=False) == [
        "Solve for x in the equation."]
    # A rollout's last thinking sentence has no boundary after it once the text is cut at </think>.
    for text in ("First step is done. Second step is done.</think>\n\nAnswer: \\boxed{3}",
                 "First step is done. Second step is done. </think>",
                 "<think>\nFirst step is done. Second step is done. \n</think>"):
        assert split_solution_into_chunks(text, remainder=False) == ["First step is done."]
        assert split_solution_into_chunks(text) == ["First step is done.", "Second step is done."]
    # Without tags nothing is trimmed: a final ". " is a boundary.
    assert split_solution_into_chunks("Short. Another sentence here. ", remainder=False) == [
        "Short. Another sentence here."]
    assert split_solution_into_chunks("Ok. So. Final words here", remainder=False) == ["Ok. So."]
    assert split_solution_into_chunks("no boundary at all", remainder=False) == []


def test_latex_is_not_split_inside_math():
    text = r"We get $\frac{1}{2}.5$ and \(x^2 = 4.\) So x is 2 or -2. Then \boxed{2}."
    # ".5" has no space after the dot; "4.\)" neither; "-2. " does split.
    assert split_solution_into_chunks(text) == [r"We get $\frac{1}{2}.5$ and \(x^2 = 4.\) So x is 2 or -2.", r"Then \boxed{2}."]


def test_think_tags_select_the_thinking_and_spans_index_the_full_text():
    full = "Prompt here. <think>\nFirst step is done. Second step is done.\n</think>\n\nAnswer: \\boxed{3}."
    chunks = split_chunks(full)
    assert [c.text for c in chunks] == ["First step is done.", "Second step is done."]
    for c in chunks:
        assert full[c.start : c.end] == c.text
    assert thinking_text(full) == "First step is done. Second step is done."
    assert full[slice(*thinking_span(full))] == thinking_text(full)
    # An unclosed trace runs to the end of the text.
    assert thinking_text("<think>Still thinking about it") == "Still thinking about it"


def test_spans_of_merged_chunks_cover_all_pieces():
    text = "  Ok.\nThis one is long enough. Fine.  "
    spans = chunk_char_spans(text)
    assert split_solution_into_chunks(text) == ["Ok. This one is long enough. Fine."]
    assert spans == [(2, len(text) - 2)]


def test_thinking_text_errors():
    with pytest.raises(ValueError, match="no <think>"):
        thinking_text("Just an answer. No tags at all.")
    with pytest.raises(ValueError, match="no sentences"):
        thinking_text("prompt <think>\n \n</think> answer")


def test_prefix_token_spans_by_hand():
    # A byte "tokenizer" with BOS: text[:k] encodes to k + 1 ids, so span [s, e) -> [s + 1, e + 1).
    def encode(s):
        return [0] + list(s.encode("utf-8"))

    text = "Alpha beta gamma. Delta epsilon zeta."
    spans = chunk_char_spans(text)
    assert spans == [(0, 17), (18, 37)]
    assert prefix_token_spans(encode, text, spans) == [(1, 18), (19, 38)]
    # Multi-byte characters count their bytes.
    assert prefix_token_spans(encode, "é is one char.", [(0, 1)]) == [(1, 3)]
    with pytest.raises(ValueError, match="outside"):
        prefix_token_spans(encode, "abc", [(0, 9)])


def test_token_ranges_on_a_tiny_model(tiny_models):
    model = tiny_models("qwen3")
    text = "<think>Alice has 3 apples and buys 5 more. First find the total, then subtract.</think>"
    ids = model.encode(text)
    ranges = chunk_token_ranges(model, text)
    by_prefix = prefix_token_spans(model, text, chunk_char_spans(text))
    assert len(ranges) == len(by_prefix) == 2
    for (a, b), chunk in zip(ranges, split_solution_into_chunks(text)):
        assert chunk in model.tokenizer.decode(ids[a:b])
    assert ranges[0][0] >= 2  # after BOS and <think>

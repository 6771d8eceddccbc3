"""Chat rendering, the thinking span, and exact character-span → token-range mapping."""

import pytest

from probes.models.chat import THINK_CLOSE, THINK_OPEN, render_chat, split_thinking, thinking_and_answer

TRICKY = [
    "Let x = 3.5.  Then\n\n$\\frac{1}{2} x^2$ is small.",
    "Résumé: naïve café — 東京 🙂 done.\r\n\r\nNext line\twith tab.",
    "   leading spaces and trailing   ",
    "\\boxed{8} and \\text{apples} cost $5.",
]


def test_render_chat_thinking_on_and_off(tiny_tokenizer):
    on = render_chat(tiny_tokenizer, "What is 2+2?", system="Be brief.")
    off = render_chat(tiny_tokenizer, "What is 2+2?", thinking=False)
    assert on == "<bos><|system|>Be brief.<|end|><|user|>What is 2+2?<|end|><|assistant|><think>"
    assert off.endswith("<|assistant|><think></think>")
    ids = tiny_tokenizer(on, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids("<think>")


def test_render_chat_needs_a_template(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(tok, "hi")


def test_split_thinking():
    text = "<bos><|assistant|><think>First, add. Then check.</think>The answer is \\boxed{8}."
    s = split_thinking(text)
    assert text[slice(*s.thinking)] == "First, add. Then check."
    assert text[slice(*s.answer)] == "The answer is \\boxed{8}."
    assert s.closed
    open_only = split_thinking("<think>still thinking")
    assert not open_only.closed and open_only.answer == (21, 21)
    with pytest.raises(ValueError, match="no <think>.*opened=True"):
        split_thinking("plain answer")


def test_completion_after_an_opened_think():
    """A completion generated after a prompt ending in <think> starts inside the thinking."""
    text = "First, add. Then check.</think>The answer is \\boxed{8}."
    s = split_thinking(text, opened=True)
    assert text[slice(*s.thinking)] == "First, add. Then check." and s.closed
    assert thinking_and_answer(text) == ("First, add. Then check.", "The answer is \\boxed{8}.")
    assert thinking_and_answer(f"{THINK_OPEN}This is forbidden, because x.{THINK_CLOSE}Sure. A.") == (
        "This is forbidden, because x.", "Sure. A.")
    assert thinking_and_answer("never closes") == ("never closes", None)
    assert thinking_and_answer("<think></think>") == ("", "")
    assert thinking_and_answer("<bos><think>a</think>b", opened=False) == ("a", "b")


@pytest.mark.parametrize("text", TRICKY)
def test_token_ranges_are_exact_on_tricky_text(text, tiny_models):
    model = tiny_models("qwen3")
    enc = model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    # every word-ish span: its tokens cover it, and dropping either end token uncovers it
    spans = [(i, j) for i in range(0, len(text), 3) for j in range(i + 1, len(text) + 1, 5)]
    ranges = model.token_ranges(text, spans)
    for (start, end), (a, b) in zip(spans, ranges):
        covered = [(s, e) for s, e in offsets[a:b] if e > s]
        assert covered[0][0] <= start and covered[-1][1] >= end
        assert offsets[a][1] > start and offsets[b - 1][0] < end
        if b - a > 1:
            assert offsets[a + 1][0] <= start or offsets[a][1] > start
    # BOS is counted: indices address the model input directly
    assert enc["input_ids"][0] == model.tokenizer.bos_token_id
    whole = model.token_ranges(text, [(0, len(text))])[0]
    assert whole == (1, len(enc["input_ids"]))


def test_sentence_tokens_decode_to_the_sentence(tiny_models):
    model = tiny_models("qwen3")
    text = "<bos><|assistant|><think>First find the total. Then subtract 5.\n\nWait, that is wrong.</think>"
    sentences = ["First find the total.", "Then subtract 5.", "Wait, that is wrong."]
    spans = [(text.index(s), text.index(s) + len(s)) for s in sentences]
    ids = model.encode(text)
    for s, (a, b) in zip(sentences, model.token_ranges(text, spans)):
        assert model.tokenizer.decode(ids[a:b]).strip() == s


def test_span_outside_text_is_an_error(tiny_models):
    model = tiny_models("qwen3")
    with pytest.raises(ValueError, match="outside the text"):
        model.token_ranges("short", [(2, 40)])

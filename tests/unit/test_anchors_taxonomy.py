"""Taxonomy (thought_anchors.md §2): the rule labeler on hand-labelled sentences and on the zoo's
designed traces; the LLM labeler's request, reply parsing and unreachable endpoint (its round trip to a
real server is tests/parity/test_labeler_server.py)."""

import json
import socket

import pytest

from probes.anchors.taxonomy import (
    TAGS,
    ChunkLabel,
    Labeler,
    LabelerError,
    LLMLabeler,
    RuleLabeler,
    Tag,
    first_tag,
    labeling_prompt,
    parse_labels,
)


def test_tags_are_the_eight_categories_and_unknown():
    assert TAGS == (
        "problem_setup", "plan_generation", "fact_retrieval", "active_computation", "result_consolidation",
        "uncertainty_management", "final_answer_emission", "self_checking", "unknown",
    )
    assert Tag("self_checking") is Tag.SELF_CHECKING
    assert first_tag(ChunkLabel([], [], "")) == "unknown"


def test_rule_labeler_by_hand():
    problem = "John has 12 apples and gives away 5. How many minutes are left if each takes an hour?"
    chunks = [
        "Okay, so the problem says John has 12 apples and gives away 5.",  # 0 setup
        "There are 60 minutes in an hour.",                                # 1 fact
        "I need to find how many apples are left first.",                  # 2 plan
        "Let's compute 12 - 5 = 7.",                                       # 3 computation
        "Hmm, wait, that doesn't seem right.",                             # 4 uncertainty
        "Actually, let me verify: 7 + 5 = 12.",                            # 5 check
        "Therefore, the total is 7.",                                      # 6 consolidation
        "Let me think about it.",                                          # 7 filler
        "The final answer is \\boxed{7}.",                                 # 8 answer
    ]
    labels = RuleLabeler().label(problem, chunks)
    assert [first_tag(lab) for lab in labels] == [
        "problem_setup", "fact_retrieval", "plan_generation", "active_computation", "uncertainty_management",
        "self_checking", "result_consolidation", "unknown", "final_answer_emission",
    ]
    # Several tags where several rules fire, the priority order deciding the first.
    assert labels[5].function_tags == ["self_checking", "uncertainty_management", "active_computation"]
    # depends_on: earlier chunks sharing a number (12 and 5 in chunk 0; 7 in chunk 3 and 5).
    assert labels[3].depends_on == [0]
    assert labels[5].depends_on == [0, 3]
    assert labels[6].depends_on == [3, 5]
    assert labels[1].depends_on == [] and labels[7].depends_on == []
    assert all(2 <= len(lab.summary.split()) <= 4 for lab in labels)
    assert labels[3].summary == "compute 7"


def test_rule_labeler_recovers_the_zoo_designed_tags():
    from probes.zoo.tasks.arithmetic import generate

    labeler = RuleLabeler()
    for index in range(60):
        ex = generate(index)
        labels = labeler.label(ex.prompt, [s.text for s in ex.thinking])
        assert [first_tag(lab) for lab in labels] == [s.tag for s in ex.thinking], ex.prompt


def test_labelers_satisfy_the_protocol():
    assert isinstance(RuleLabeler(), Labeler)
    assert isinstance(LLMLabeler("http://localhost:1", "m"), Labeler)


def test_prompt_lists_categories_and_chunks():
    prompt = labeling_prompt("What is 2 + 2?", ["First add.", "2 + 2 = 4."])
    for tag in TAGS:
        assert f"- {tag}:" in prompt
    assert "Chunk 0:\nFirst add.\n\nChunk 1:\n2 + 2 = 4.\n\n" in prompt
    assert "What is 2 + 2?" in prompt


def test_parse_labels_validates():
    labels = parse_labels(
        {
            "0": {"function_tags": ["Problem Setup", "made_up_tag"], "depends_on": [], "summary": " restate "},
            "1": {"function_tags": "active_computation", "depends_on": ["0", 1, 5, -1, "x"], "summary": "add"},
        },
        3,
    )
    assert labels[0] == ChunkLabel(["problem_setup", "unknown"], [], "restate")
    assert labels[1] == ChunkLabel(["active_computation"], [0], "add")  # only earlier indices survive
    assert labels[2] == ChunkLabel(["unknown"], [], "")  # missing from the answer
    listed = parse_labels({"chunks": [{"chunk_idx": 1, "function_tags": ["self_checking"], "depends_on": [0]}]}, 2)
    assert [lab.function_tags for lab in listed] == [["unknown"], ["self_checking"]]
    with pytest.raises(LabelerError):
        parse_labels(["not", "an", "object"], 2)


def test_parse_labels_reads_the_reply_text():
    content = {
        "0": {"function_tags": ["problem_setup"], "depends_on": [], "summary": "restate apples"},
        "1": {"function_tags": ["active_computation", "bogus"], "depends_on": [0], "summary": "compute 3+5=8"},
    }
    expected = [
        ChunkLabel(["problem_setup"], [], "restate apples"),
        ChunkLabel(["active_computation", "unknown"], [0], "compute 3+5=8"),
    ]
    assert parse_labels("```json\n" + json.dumps(content) + "\n```", 2) == expected  # code fences skipped
    assert parse_labels("Here you go: " + json.dumps(content) + " Done.", 2) == expected
    with pytest.raises(LabelerError, match="without a JSON labeling .*'I cannot label this.'"):
        parse_labels("I cannot label this.", 1)


def test_llm_labeler_request_body():
    chunks = ["Alice has 3 apples and buys 5.", "3 + 5 = 8."]
    labeler = LLMLabeler("http://127.0.0.1:1/v1/", "judge-model", api_key="sk-test", timeout=10)
    assert labeler.url == "http://127.0.0.1:1/v1/chat/completions"
    assert labeler.request_body("Alice problem", chunks) == {
        "model": "judge-model",
        "messages": [{"role": "user", "content": labeling_prompt("Alice problem", chunks)}],
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }
    assert LLMLabeler("http://h/v1", "m", max_tokens=64).request_body("p", ["c."])["max_tokens"] == 64


def test_llm_labeler_unreachable_endpoint():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LabelerError, match="RuleLabeler") as info:
        LLMLabeler(url, "m", timeout=5).label("p", ["a chunk of text."])
    assert f"{url}/chat/completions" in str(info.value)

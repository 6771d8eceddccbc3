"""Taxonomy (thought_anchors.md §2): the rule labeler on hand-labelled sentences and on the zoo's
designed traces, and the LLM labeler through a real HTTP round trip to a local server."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

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


class _Server:
    """A tiny OpenAI-compatible server in a thread that answers every POST with a canned reply."""

    def __init__(self, reply, status=200):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_llm_labeler_round_trip():
    content = {
        "0": {"function_tags": ["problem_setup"], "depends_on": [], "summary": "restate apples"},
        "1": {"function_tags": ["active_computation", "bogus"], "depends_on": [0], "summary": "compute 3+5=8"},
    }
    reply = {"choices": [{"message": {"role": "assistant", "content": "```json\n" + json.dumps(content) + "\n```"}}]}
    chunks = ["Alice has 3 apples and buys 5.", "3 + 5 = 8."]
    with _Server(reply) as server:
        labels = LLMLabeler(server.url + "/", "judge-model", api_key="sk-test", timeout=10).label("Alice problem", chunks)
    assert labels == [
        ChunkLabel(["problem_setup"], [], "restate apples"),
        ChunkLabel(["active_computation", "unknown"], [0], "compute 3+5=8"),
    ]
    (req,) = server.requests  # one call per trace
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["content"] == labeling_prompt("Alice problem", chunks)


def test_llm_labeler_http_error_names_the_url():
    with _Server({"error": "bad key"}, status=401) as server:
        with pytest.raises(LabelerError, match=r"HTTP 401.*RuleLabeler") as info:
            LLMLabeler(server.url, "m", api_key="x", timeout=10).label("p", ["a chunk of text."])
    assert server.url in str(info.value)


def test_llm_labeler_unusable_reply():
    with _Server({"choices": [{"message": {"content": "I cannot label this."}}]}) as server:
        with pytest.raises(LabelerError, match="without a JSON labeling"):
            LLMLabeler(server.url, "m", timeout=10).label("p", ["a chunk of text."])


def test_llm_labeler_unreachable_endpoint():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LabelerError, match="RuleLabeler") as info:
        LLMLabeler(url, "m", timeout=5).label("p", ["a chunk of text."])
    assert f"{url}/chat/completions" in str(info.value)

"""The LLM labeler (thought_anchors.md §2) against a real OpenAI-compatible server: ``transformers serve``
serving ``zoo:reasoner`` on CPU, started here on a free localhost port.

The organism cannot label sentences, so the test asserts the mechanics: the labeling request reached the
server as built (path, key, body), the whole prompt reached the model and was answered with the
organism's own greedy continuation, and a reply without a JSON labeling raises ``LabelerError`` naming
the endpoint and the offline fallback. Parsing of valid labelings is unit-tested in
tests/unit/test_anchors_taxonomy.py.
"""

import json
import re

import openai
import pytest
import torch

from probes.anchors.taxonomy import LabelerError, LLMLabeler
from probes.engines.serve import serve

MAX_TOKENS = 64  # the labeling prompt is ~700 tokens of the organism's 768 positions
PROBLEM = "Alice has 3 apples and buys 5. How many apples does she have?"
CHUNKS = ["Alice has 3 apples and buys 5.", "3 + 5 = 8."]


@pytest.fixture(scope="module")
def server(shipped, tmp_path_factory):
    with serve(shipped("reasoner"), log=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


@pytest.fixture
def sent(monkeypatch):
    """The HTTP requests the ``openai`` client builds (observed on their way to the server)."""
    requests = []
    build = openai.OpenAI._build_request

    def recording(self, *args, **kw):
        request = build(self, *args, **kw)
        requests.append(request)
        return request

    monkeypatch.setattr(openai.OpenAI, "_build_request", recording)
    return requests


@pytest.fixture
def replies(monkeypatch):
    """The chat completions the server answered."""
    out = []
    create = openai.resources.chat.completions.Completions.create

    def recording(self, *args, **kw):
        reply = create(self, *args, **kw)
        out.append(reply)
        return reply

    monkeypatch.setattr(openai.resources.chat.completions.Completions, "create", recording)
    return out


def _local_greedy(model_dir: str, text: str) -> tuple[int, str]:
    """(prompt tokens, greedy continuation) of ``text`` sent as one user message to the organism."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    n = ids["input_ids"].shape[1]
    return n, tok.decode(out[0, n:], skip_special_tokens=True)


def test_llm_labeler_round_trip(server, sent, replies):
    labeler = LLMLabeler(server.base_url + "/", server.model, api_key="sk-test", timeout=60, max_tokens=MAX_TOKENS)
    with pytest.raises(LabelerError) as info:
        labeler.label(PROBLEM, CHUNKS)
    (request,) = sent  # one call per trace, no retries
    assert request.method == "POST" and str(request.url) == f"{server.base_url}/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert json.loads(request.content) == labeler.request_body(PROBLEM, CHUNKS)
    assert labeler.request_body(PROBLEM, CHUNKS)["temperature"] == 0
    (reply,) = replies
    n_prompt, continuation = _local_greedy(server.model, labeler.request_body(PROBLEM, CHUNKS)["messages"][0]["content"])
    assert reply.usage.prompt_tokens == n_prompt and reply.usage.completion_tokens == MAX_TOKENS
    message = reply.choices[0].message
    # transformers serve puts text before a closing </think> in reasoning_content; this organism never closes it
    answered = (message.content or "") + ((message.model_extra or {}).get("reasoning_content") or "")
    # compared up to whitespace: the server and a local decode may space repeated digits differently
    assert continuation.strip() and " ".join(continuation.split()) in " ".join(answered.split())
    assert re.match(rf"labeler endpoint {re.escape(labeler.url)}: the labeler answered without a JSON labeling "
                    r"\(.+\): '.+'; label offline with probes\.anchors\.taxonomy\.RuleLabeler\(\) instead$",
                    str(info.value), re.S), str(info.value)


def test_llm_labeler_sends_no_key_without_one(server, sent, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LabelerError, match="without a JSON labeling"):
        LLMLabeler(server.base_url, server.model, timeout=60, max_tokens=4).label(PROBLEM, CHUNKS)
    (request,) = sent
    assert "authorization" not in request.headers


def test_llm_labeler_http_error_names_the_url(server):
    labeler = LLMLabeler(server.base_url, "not-the-served-model", api_key="x", timeout=60)
    with pytest.raises(LabelerError, match=r"HTTP 400: .*pinned.*RuleLabeler") as info:
        labeler.label(PROBLEM, CHUNKS)
    assert f"{server.base_url}/chat/completions" in str(info.value)

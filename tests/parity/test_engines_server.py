"""The OpenAI engine against a real OpenAI-compatible server (issue #15 "Must show"): ``transformers serve``
serving ``zoo:reasoner`` on CPU in float32, started here on a free localhost port.

Greedy continuations through the server equal the local shared-prefix sampler; a thought-anchors run
through the server writes the complete math-rollouts layout and finite scores; a killed client resumes
with exactly the missing rollouts; a server that restarts mid-run is waited for; and every wrong setup
(closed port, wrong path, wrong model name, interventions, no URL) fails with an error that says what to
fix. ``transformers serve`` ignores seeds, so the sampled runs check layout and counts, not texts.
"""

import json
import math
import re
import threading
import time

import openai.resources.completions
import pytest
import torch

from experiments.thought_anchors import EXPERIMENT, AnchorsConfig, traces
from probes.anchors.importance import METRICS, AnchorScores
from probes.anchors.rollouts import FORCED_ANSWER_SUFFIX, SEED_STRIDE
from probes.engines import EngineError, LocalEngine, OpenAIEngine
from probes.engines.serve import LocalServer, free_port, serve
from probes.models.interventions import AddVector
from probes.models.sampling import FinishReason
from probes.zoo.tasks import arithmetic

N = 4  # rollouts per sentence in the experiment runs
EASY = 33  # a held-out problem zoo:reasoner solves in nearly every sample at T = 0.6 (problem 0: about 1 in 5)


@pytest.fixture
def run_kw(tmp_path):
    """The experiment settings: one problem, N rollouts, a short budget. The server ignores seeds, so the
    base trace is a fresh draw each run; an easy problem makes finding a correct one near certain."""
    ex = arithmetic.generate(EASY, seed=arithmetic.HELDOUT_SEED)
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"idx": EASY, "problem": ex.prompt, "gt_answer": ex.gold}) + "\n")
    return dict(problems=1, problems_file=str(problems), base_tries=4, n_rollouts=N, max_new_tokens=160,
                formats=["html"], runs_root=str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def server(shipped, tmp_path_factory):
    """The ``probes.engines.serve.LocalServer`` serving zoo:reasoner; only the restart test stops and starts it."""
    with serve(shipped("reasoner"), log=tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def model():
    from probes.models.load import load_model

    return load_model("zoo:reasoner", device="cpu", dtype="float32")


def _engine(server, model, **kw) -> OpenAIEngine:
    return OpenAIEngine(server.base_url, server.model, tokenizer=model.tokenizer, concurrency=2,
                        **({"retry_for": 10.0, "backoff": 0.5} | kw))


def _session(server, **kw) -> dict:
    return dict(engine="openai", base_url=server.base_url, served_model=server.model, **kw)


def _problem(model, k: int) -> tuple[str, str]:
    """(chat prompt, the designed thinking) of held-out problem ``k``."""
    ex = arithmetic.generate(k, seed=arithmetic.HELDOUT_SEED)
    return model.render_chat(ex.prompt), ex.completion.removeprefix("<think>")


def _rollout_files(t) -> dict[str, list]:
    """``{"chunk_i" | "forced/chunk_i": rows}`` of every solutions.json of a trace."""
    out = {}
    for folder, tag in ((t.pdir, ""), (t.fdir, "forced/")):
        for path in folder.glob("chunk_*/solutions.json"):
            out[tag + path.parent.name] = json.loads(path.read_text())
    return out


def test_greedy_continuations_equal_the_local_sampler(server, model):
    engine, local = _engine(server, model), LocalEngine(model)
    cases = []
    for k in (0, 2):
        prompt, thinking = _problem(model, k)
        for text in (prompt, prompt + thinking[:60]):  # a fresh answer, and one from inside the thinking
            cases += [(text, 160), (model.encode(text), 160)]  # text, and token ids the engine decodes
    cases.append((prompt, 20))  # a budget that runs out
    exact = {str: 0, list: 0}
    for prefix, budget in cases:
        (remote,) = engine.sample(prefix, 1, temperature=0, max_new_tokens=budget)
        (mine,) = local.sample(prefix, 1, temperature=0, max_new_tokens=budget)
        assert remote.text == mine.text and mine.text
        assert remote.finish_reason == mine.finish_reason
        assert mine.finish_reason is (FinishReason.LENGTH if budget == 20 else FinishReason.EOS)
        local_ids = mine.token_ids[:-1] if mine.finish_reason is FinishReason.EOS else mine.token_ids
        assert model.tokenizer.decode(local_ids) == mine.text
        # transformers serve returns no token ids: the engine's are the text re-tokenized, which equal the
        # sampled ids unless greedy decoding chose a split the tokenizer would not ("Ġ" "f" for "Ġf").
        canonical = model.tokenizer.encode(mine.text, add_special_tokens=False)
        assert remote.token_ids == canonical
        exact[type(prefix)] += remote.token_ids == local_ids
    assert engine._ids_ok is False  # the server took the id prefixes only as decoded text
    assert exact[str] >= 2 and exact[list] >= 2, exact


def test_thought_anchors_run_on_the_server(server, model, run_kw):
    cfg = AnchorsConfig(**run_kw, stages=["base", "rollouts", "analyse"], **_session(server))
    ctx = EXPERIMENT.run(cfg, model)
    (t,) = traces(ctx)
    assert ctx.done("rollouts", t.key) and ctx.done("analyse", t.key)
    chunks = json.loads((t.pdir / "chunks.json").read_text())["chunks"]
    n = len(chunks)
    assert n >= 3
    for folder in (t.pdir, t.fdir):
        assert {"problem.json", "base_solution.json", "chunks.json"} <= {p.name for p in folder.iterdir()}
        assert sorted(p.name for p in folder.glob("chunk_*")) == sorted(f"chunk_{i}" for i in range(n))
    files = _rollout_files(t)
    assert len(files) == 2 * n
    for name, rows in files.items():
        assert len(rows) == N and not any("error" in r for r in rows), name
        i = int(name.rpartition("_")[2])
        assert {r["chunk_removed"] for r in rows} == {chunks[i]}
    for name, rows in files.items():  # the forced folder holds forced-answer rollouts, the other plain ones
        assert all((FORCED_ANSWER_SUFFIX in r["full_cot"]) == name.startswith("forced/") for r in rows), name
    scores = AnchorScores.load(t.pdir / "anchor_scores.json")
    assert scores.chunks == chunks and all(scores.has_rollouts)
    for metric in ("accuracy", *METRICS, "different_trajectories_fraction", "overdeterminedness", "forced_accuracy"):
        assert all(math.isfinite(v) for v in scores.metric(metric)), metric
    assert ctx.run.load_json("summary")["issues"] == []


def test_killed_client_resumes_with_only_the_missing_rollouts(server, model, run_kw, monkeypatch):
    session = _session(server, write_every=2)
    ctx = EXPERIMENT.run(AnchorsConfig(**run_kw, stages=["base"], **session), model)
    (t,) = traces(ctx)
    n_chunks = len(json.loads((t.pdir / "chunks.json").read_text())["chunks"])
    sample = OpenAIEngine.sample
    calls = []

    def killed_on_fourth_call(self, prefix, n=1, **kw):
        calls.append(n)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the client is killed while it waits for this block
        return sample(self, prefix, n, **kw)

    monkeypatch.setattr(OpenAIEngine, "sample", killed_on_fourth_call)
    resume = AnchorsConfig(run_dir=str(ctx.run.path), stages=["rollouts"], **session)
    with pytest.raises(KeyboardInterrupt):
        EXPERIMENT.run(resume, model)
    before = _rollout_files(t)
    # chunk_0 in two written blocks of 2, its forced file one block, the fourth block lost with the client
    assert {k: len(v) for k, v in before.items()} == {"chunk_0": 4, "forced/chunk_0": 2}
    assert not ctx.done("rollouts", t.key)

    monkeypatch.setattr(OpenAIEngine, "sample", sample)
    create = openai.resources.completions.Completions.create
    answered = []  # requests the server answered (a first one rejected for an optional field is not counted)

    def counted(self, *args, **kw):
        out = create(self, *args, **kw)
        answered.append(kw["seed"])
        return out

    monkeypatch.setattr(openai.resources.completions.Completions, "create", counted)
    EXPERIMENT.run(resume, model)
    after = _rollout_files(t)
    assert ctx.done("rollouts", t.key)
    assert len(after) == 2 * n_chunks and all(len(rows) == N for rows in after.values())
    for name, rows in before.items():  # rows written before the kill are kept as they were
        assert json.dumps(after[name][: len(rows)]) == json.dumps(rows), name
    seeds = {name: [r["seed"] for r in rows] for name, rows in after.items()}
    for name, s in seeds.items():
        assert s == list(range(s[0], s[0] + N)), name  # contiguous, none repeated
        if not name.startswith("forced/"):
            assert s[0] == ctx.cfg.seed + int(name.rpartition("_")[2]) * SEED_STRIDE
    assert len({x for s in seeds.values() for x in s}) == 2 * n_chunks * N
    missing = 2 * n_chunks * N - sum(map(len, before.values()))
    assert len(answered) == 1 + missing  # the check request, then one per missing rollout
    resampled = [r["seed"] for name, rows in after.items() for r in rows[len(before.get(name, [])):]]
    assert sorted(answered[1:]) == sorted(resampled)


def test_errors_say_what_to_fix(server, model, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=rf"{closed} does not answer .*start the server, or fix --base-url"):
        OpenAIEngine(closed, "m", retry_for=1, backoff=0.2).sample("Hello", 1, max_new_tokens=2)
    root = server.base_url.removesuffix("/v1")
    with pytest.raises(EngineError, match=r"/completions does not exist \(404\).*/v1/completions"):
        OpenAIEngine(root, server.model, retry_for=1).sample("Hello", 1, max_new_tokens=2)
    with pytest.raises(EngineError, match=rf"does not serve 'not-served' .*{re.escape(server.model)}.*--model"):
        OpenAIEngine(server.base_url, "not-served", retry_for=1).sample("Hello", 1, max_new_tokens=2)
    steer = AddVector(site="resid_post[0]", vector=torch.zeros(model.d_model))
    with pytest.raises(EngineError, match="cannot apply interventions \\(AddVector\\).*local engine"):
        _engine(server, model).sample("Hello", 1, max_new_tokens=2, interventions=[steer])
    with pytest.raises(ValueError, match="--engine openai needs --base-url"):
        AnchorsConfig(problems=1, engine="openai", runs_root=str(tmp_path))
    assert not any(tmp_path.iterdir())
    with pytest.raises(EngineError, match="is not a model directory"):
        LocalServer(tmp_path / "missing")
    with pytest.raises(EngineError, match="already running"):
        server.start()


def test_server_restarted_mid_run_is_waited_for(server, model, monkeypatch):
    """Last in the module: the only test that stops the server."""
    engine = _engine(server, model, retry_for=120, backoff=0.5)
    prompt, _ = _problem(model, 3)
    seeds = [11, 12, 13, 14]
    healthy = engine.sample(prompt, 4, seeds=seeds, temperature=0, max_new_tokens=160)
    create = openai.resources.completions.Completions.create
    answered = []

    def counted(self, *args, **kw):
        out = create(self, *args, **kw)
        answered.append(kw["seed"])
        return out

    monkeypatch.setattr(openai.resources.completions.Completions, "create", counted)
    server.stop()
    result: dict = {}

    def run():
        try:
            result["rollouts"] = engine.sample(prompt, 4, seeds=seeds, temperature=0, max_new_tokens=160)
        except BaseException as e:  # reported below
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        time.sleep(3)
        assert thread.is_alive() and not answered  # retrying, not failed
    finally:
        server.start()
    thread.join(timeout=150)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    got = result["rollouts"]
    assert [r.seed for r in got] == seeds and sorted(answered) == seeds  # one answer per rollout
    assert [(r.text, r.token_ids, r.finish_reason) for r in got] == [
        (r.text, r.token_ids, r.finish_reason) for r in healthy]

"""The task-vector experiment on the zoo:tv family (issue #14): v = θ(tv-rl) − θ(tv-sft) carries the
planted "do the last step" into tv-instruct (+v beats the target, −v falls below it, the random
vector stays at the target, with paired intervals); the merged checkpoint loads with
``from_pretrained``; resume at condition granularity; bad input before any work."""

import json

import pytest

from experiments.task_vectors import EXPERIMENT, VectorsConfig, prepare
from probes.harness import HarnessError

SMALL = dict(n_problems=60, alphas=[-1.0, 0.0, 1.0], n_boot=2000, formats=["html"], batch_size=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return EXPERIMENT.run(VectorsConfig(**SMALL, runs_root=str(tmp_path_factory.mktemp("runs"))))


def test_the_vector_transfers_the_planted_step(run):
    s = json.loads((run.run.path / "summary.json").read_text())
    c = s["conditions"]
    assert c["target + v"]["diff_lo"] > 0, c["target + v"]  # +v beats the target
    assert c["target − v"]["diff_hi"] < 0, c["target − v"]  # −v falls below it
    assert c["target + random"]["diff_lo"] <= 0 <= c["target + random"]["diff_hi"]  # the random control does not move it
    assert c["rl"]["value"] > c["sft"]["value"]  # the RL donor is the ceiling the vector comes from
    assert s["skip_rate"]["target + v"] < s["skip_rate"]["target"]  # through the planted mechanism
    curve = s["alpha_curve"]
    assert curve["-1"] < curve["0"] < curve["1"] and curve["0"] == c["target"]["value"]


def test_artifacts_merged_checkpoint_and_report(run):
    import torch
    from transformers import AutoModelForCausalLM

    from probes.vectors import Manifest

    p = run.run.path
    assert all(run.done(s) for s in ("vector", "merge", "evaluate", "sweep", "report"))
    vec = Manifest.load(p / "vector")
    assert vec.kind == "task_vector" and all(t.action == "extracted" for t in vec.tensors)
    merged = Manifest.load(p / "merged")
    assert merged.kind == "merged" and merged.terms[0]["alpha"] == 1.0 and merged.counts() == {"applied": len(vec.tensors)}
    hf = AutoModelForCausalLM.from_pretrained(p / "merged")
    assert torch.isfinite(hf(torch.tensor([[1, 2, 3]])).logits).all()
    check = json.loads((p / "merge_check.json").read_text())
    assert check["stored_dtypes"] == ["BF16"] and check["max_abs_logit_diff"] < 0.1
    html = (p / "report.html").read_text()
    assert "Reasoning task vector" in html and "planted skip rate" in html


def test_resume_recomputes_only_missing_conditions(run):
    p = run.run.path
    before = {f: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json")}
    (p / "done" / "evaluate" / "target_minus_v.json").unlink()
    (p / "done" / "evaluate.json").unlink()
    EXPERIMENT.run(VectorsConfig(run_dir=str(p), stages=["vector", "merge", "evaluate"]))
    after = {f: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json")}
    assert {f.name for f in before if before[f] != after[f]} == {"target_minus_v.json"}
    with pytest.raises(HarnessError, match="n_problems"):
        EXPERIMENT.run(VectorsConfig(run_dir=str(p), n_problems=61))


def test_bad_input_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="α must be finite"):
        VectorsConfig(alpha=float("nan"))
    with pytest.raises(ValueError, match="three different checkpoints"):
        VectorsConfig(sft="zoo:tv-rl")
    with pytest.raises(ValueError, match="architectures differ|hold different tensors"):
        prepare(VectorsConfig(model="zoo:moe-reasoner", n_problems=2))
    with pytest.raises(ValueError, match="no such file, and not a public set"):
        prepare(VectorsConfig(problems=str(tmp_path / "none.jsonl")))


def test_merged_checkpoint_served_answers_as_loaded(run, tmp_path):
    """Issue #15 item 2: ``--engine openai`` scores the merged checkpoint through a real ``transformers
    serve`` of ``merged/``; its greedy answers equal the same checkpoint's local greedy answers (both
    float32), and the other conditions are not recomputed."""
    from probes.engines.serve import serve
    from probes.models.load import load_model
    from probes.vectors import greedy_correct

    p = run.run.path
    before = {f.name: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json")}
    with serve(p / "merged", log=tmp_path / "serve.log") as server:
        EXPERIMENT.run(VectorsConfig(run_dir=str(p), stages=["evaluate", "report"], engine="openai",
                                     base_url=server.base_url, concurrency=2))
    served = json.loads((p / "conditions" / "merged_served.json").read_text())
    assert {f.name: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json") if f.name in before} == before
    problems = run.inputs.problems[:12]
    local = greedy_correct(load_model(str(p / "merged"), device="cpu", dtype="float32"), [q.prompt for q in problems],
                           [q.gold for q in problems], max_new_tokens=VectorsConfig().max_new_tokens)
    assert served["outputs"][:12] == local.outputs
    s = json.loads((p / "summary.json").read_text())
    assert "merged (served)" in s["conditions"] and 0 <= s["served_agreement"] <= 1
    assert "served through an OpenAI-compatible server" in (p / "report.html").read_text()

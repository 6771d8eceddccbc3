"""The refusal-cliff experiment end to end on zoo:refusal-reasoner at a tiny budget: every stage's
artifacts, the report, resume without recomputing, and bad input (issue #12 item 11)."""

import json

import pytest

from experiments.refusal_cliff import EXPERIMENT, RefusalCliffConfig, prepare
from probes.harness import HarnessError

SMALL = dict(n_train=8, n_eval=4, ood_set="", max_new_tokens=160, truncation_fractions=[0.0, 1.0], formats=["html"],
             head_counts=[1], head_draws=1, head_samples=1, search_trials=3, cliff_judge_ks=[0.5], cliff_judge_pool=8,
             cliff_judge_eval=4,
             batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return EXPERIMENT.run(RefusalCliffConfig(**SMALL, runs_root=str(root))), root


def test_every_stage_writes_its_artifacts_and_the_report(run):
    ctx, _ = run
    p = ctx.run.path
    assert all(ctx.done(s) for s in ("collect", "probe", "trajectories", "truncation", "heads", "direction", "search", "cliff_judge",
                                     "report"))
    assert (p / "heads" / "ablation_k1.summary.json").is_file() and "Suppression heads" in (p / "report.html").read_text()
    assert json.loads((p / "search.json").read_text()) and "Ablation search" in (p / "report.html").read_text()
    assert (p / "cliff_judge" / "result.json").is_file() and "Cliff-as-a-Judge" in (p / "report.html").read_text()
    probes = json.loads((p / "probe" / "summary.json").read_text())
    assert probes["reference"]["site"] == "final_norm" and probes["thinking"]["site"] == "resid_post[1]"
    assert probes["n_refusal"] >= 6 and probes["n_non_refusal"] >= 6
    t = json.loads((p / "trajectories" / "thinking_attack.json").read_text())
    assert len(t["r_T"]) == 4 and len(t["curve"]) == 100
    assert [r["fraction"] for r in json.loads((p / "truncation.json").read_text())] == [0.0, 1.0]
    rates = {(r["prompts"], r["condition"]): r["value"] for r in json.loads((p / "direction" / "rates.json").read_text())}
    assert rates[("harmful", "baseline")] > rates[("harmful", "direction ablated")]  # ablation lowers refusals
    assert rates[("harmless", "baseline")] < rates[("harmless", "direction added at </think>")]  # addition induces them
    html = (p / "report.html").read_text()
    assert "Refusal trajectories and the cliff" in html and "Refusal direction" in html


def test_resume_recomputes_nothing_and_refuses_other_settings(run):
    ctx, _ = run
    p = ctx.run.path
    before = {f: f.stat().st_mtime_ns for f in (p / "rollouts").glob("*.jsonl")}
    EXPERIMENT.run(RefusalCliffConfig(run_dir=str(p), stages=["collect", "probe", "trajectories"]))
    assert before == {f: f.stat().st_mtime_ns for f in (p / "rollouts").glob("*.jsonl")}
    with pytest.raises(HarnessError, match="n_eval"):
        EXPERIMENT.run(RefusalCliffConfig(run_dir=str(p), n_eval=5))


def test_bad_input_fails_before_work():
    with pytest.raises(ValueError, match="n_train"):
        RefusalCliffConfig(n_train=2)
    with pytest.raises(ValueError, match="direction_positions"):
        RefusalCliffConfig(direction_positions=[0])
    with pytest.raises(ValueError, match="zoo-harmless"):
        prepare(RefusalCliffConfig(harmless_set="no-such-set"))

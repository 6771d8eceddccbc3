"""``--executor ray`` on the experiments (issue #15 item 3): the units of the moe_experts sweep, the
steering sweep, the thought-anchors base traces and rollouts and the refusal head ablations run as Ray
tasks that rebuild the run's context and load the model themselves; they give the same results as the
local executor bit for bit, and a rerun recomputes nothing."""

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra probes[ray], installed by the README set-up")


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _mtimes(folder, pattern="*.json"):
    return {f: f.stat().st_mtime_ns for f in sorted(folder.rglob(pattern))}


def test_moe_sweep_units_equal_local_units_and_resume(tmp_path):
    from experiments.moe_experts import EXPERIMENT, ExpertsConfig
    from probes.experts import ConditionResult

    small = dict(n_traces=20, n_problems=2, samples=1, betas=[4.0], ells=[1], random_draws=1, n_sentence_traces=0,
                 n_stability=20, n_boot=100, max_new_tokens=120, formats=["html"],
                 stages=["traces", "counts", "scores", "sweep"])
    local = EXPERIMENT.run(ExpertsConfig(**small, runs_root=str(tmp_path / "local")))
    remote = EXPERIMENT.run(ExpertsConfig(**small, runs_root=str(tmp_path / "ray"), executor="ray"))
    for key in ("baseline", "rice_l1_b4", "random0_l1_b4"):
        a = ConditionResult.load(local.run.path / "conditions" / key)
        b = ConditionResult.load(remote.run.path / "conditions" / key)
        assert np.array_equal(a.correct, b.correct) and np.array_equal(a.think_tokens, b.think_tokens), key
    before = _mtimes(remote.run.path / "conditions")
    EXPERIMENT.run(ExpertsConfig(run_dir=str(remote.run.path), stages=["sweep"], executor="ray"))
    assert before == _mtimes(remote.run.path / "conditions")


def test_steering_sweep_cells_equal_local_cells(tmp_path):
    from experiments.steering import EXPERIMENT, SteeringConfig, cell_key
    from probes.steering import CellResult

    small = dict(layers=[1], alphas=[4.0, 8.0], n_contrast=8, n_examples=4, n_neutral=2, max_new_tokens=48, n_boot=100,
                 formats=["html"], stages=["collect", "directions", "sweep"])
    local = EXPERIMENT.run(SteeringConfig(**small, runs_root=str(tmp_path / "local")))
    remote = EXPERIMENT.run(SteeringConfig(**small, runs_root=str(tmp_path / "ray"), executor="ray"))
    for a in small["alphas"]:
        x, y = (CellResult.load(r.run.path / "cells" / cell_key(1, a)) for r in (local, remote))
        assert np.array_equal(x.values, y.values) and np.array_equal(x.kl.per_prompt, y.kl.per_prompt)


def test_thought_anchors_traces_and_rollouts_equal_local(tmp_path):
    from experiments.thought_anchors import EXPERIMENT, AnchorsConfig, traces
    from probes.zoo.tasks import arithmetic

    ex = arithmetic.generate(33, seed=arithmetic.HELDOUT_SEED)  # a held-out problem zoo:reasoner nearly always solves
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"idx": 33, "problem": ex.prompt, "gt_answer": ex.gold}) + "\n")
    small = dict(problems=1, problems_file=str(problems), n_rollouts=2, max_new_tokens=160, base_tries=4,
                 formats=["html"], stages=["base", "rollouts"])
    local = EXPERIMENT.run(AnchorsConfig(**small, runs_root=str(tmp_path / "local")))
    remote = EXPERIMENT.run(AnchorsConfig(**small, runs_root=str(tmp_path / "ray"), executor="ray"))
    (t,) = traces(remote)
    assert remote.done("rollouts", t.key) and not remote.notes

    def files(ctx):
        return {f.relative_to(ctx.run.path / "rollouts"): json.loads(f.read_text())
                for f in (ctx.run.path / "rollouts").rglob("*.json")}

    assert files(local) == files(remote) and len(files(remote)) > 3
    before = _mtimes(remote.run.path / "rollouts")
    EXPERIMENT.run(AnchorsConfig(run_dir=str(remote.run.path), stages=["base", "rollouts"], executor="ray"))
    assert before == _mtimes(remote.run.path / "rollouts")


def test_refusal_head_ablations_share_the_first_budgets_baseline(tmp_path):
    from experiments.refusal_cliff import EXPERIMENT, RefusalCliffConfig
    from probes.refusal.heads import AblationResult

    ctx = EXPERIMENT.run(RefusalCliffConfig(
        n_train=8, n_eval=4, ood_set="", max_new_tokens=160, head_counts=[1, 2], head_draws=1, head_samples=1,
        formats=["html"], batch_size=8, stages=["collect", "probe", "heads"], executor="ray",
        runs_root=str(tmp_path)))
    k1, k2 = (AblationResult.load(ctx.run.path / "heads" / f"ablation_k{k}") for k in (1, 2))
    assert np.array_equal(k1.baseline.r_T, k2.baseline.r_T) and k1.baseline.rollouts == k2.baseline.rollouts
    assert len(k1.top.heads) == 1 and len(k2.top.heads) == 2

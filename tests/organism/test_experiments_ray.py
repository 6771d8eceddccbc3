"""``--executor ray`` on an experiment (issue #15 item 3): the moe_experts sweep's conditions run as
Ray tasks that rebuild the run's context and load the model themselves, and give the same numbers as
the local executor, bit for bit; a rerun recomputes nothing."""

import numpy as np
import pytest

from experiments.moe_experts import EXPERIMENT, ExpertsConfig
from probes.experts import ConditionResult

ray = pytest.importorskip("ray", reason="Ray is the optional extra probes[ray], installed by the README set-up")

SMALL = dict(n_traces=20, n_problems=2, samples=1, betas=[4.0], ells=[1], random_draws=1, n_sentence_traces=0,
             n_stability=20, n_boot=100, max_new_tokens=120, formats=["html"],
             stages=["traces", "counts", "scores", "sweep"])
KEYS = ("baseline", "rice_l1_b4", "random0_l1_b4")


def test_ray_units_equal_local_units_and_resume(tmp_path):
    local = EXPERIMENT.run(ExpertsConfig(**SMALL, runs_root=str(tmp_path / "local")))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = EXPERIMENT.run(ExpertsConfig(**SMALL, runs_root=str(tmp_path / "ray"), executor="ray"))
        for key in KEYS:
            a = ConditionResult.load(local.run.path / "conditions" / key)
            b = ConditionResult.load(remote.run.path / "conditions" / key)
            assert np.array_equal(a.correct, b.correct) and np.array_equal(a.think_tokens, b.think_tokens), key
        files = sorted((remote.run.path / "conditions").glob("*.json"))
        before = {f: f.stat().st_mtime_ns for f in files}
        EXPERIMENT.run(ExpertsConfig(run_dir=str(remote.run.path), stages=["sweep"], executor="ray"))
        assert before == {f: f.stat().st_mtime_ns for f in files}
    finally:
        ray.shutdown()

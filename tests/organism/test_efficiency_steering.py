"""The efficiency-steering experiment on zoo:verbosity-reasoner (issue #11 item 7): sampled responses, the
efficient − verbose direction, accuracy and thinking length against α beside a random direction of
the same norm, the report; resume without recomputing; bad input before any work."""

import json

import numpy as np
import pytest

from experiments.efficiency_steering import EXPERIMENT, EfficiencyConfig, curve_path, prepare
from probes.steering import EfficiencyCurve, EfficiencyDirection

SMALL = dict(n_direction=8, samples=4, n_eval=6, layers=[1], alphas=[0.0, 4.0], temperature=0.0, eval_samples=1,
             max_new_tokens=160, n_boot=200, formats=["html"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return EXPERIMENT.run(EfficiencyConfig(**SMALL, runs_root=str(tmp_path_factory.mktemp("runs"))))


def test_direction_curves_and_report(run):
    from probes.evals.sampling import thinking_tokens

    p = run.run.path
    d = EfficiencyDirection.load(p / "directions" / "L1")
    assert d.efficient_tokens < d.verbose_tokens and d.problems and d.vector.shape == (run.model.d_model,)
    v, rnd = (EfficiencyCurve.load(curve_path(run, 1, kind)) for kind in ("v", "random"))
    assert v.alphas == rnd.alphas == [0.0, 4.0]
    assert rnd.vector_norm == pytest.approx(v.vector_norm, rel=1e-5)  # the control has ‖v‖'s norm
    # α = 0 is the unsteered model for both directions, and its thinking length is the greedy one, by hand
    np.testing.assert_array_equal(v.points[0].thinking_tokens, rnd.points[0].thinking_tokens)
    first = run.inputs.eval[0]
    greedy = run.model.sample(run.model.render_chat(first.prompt), 1, temperature=0.0, max_new_tokens=160)[0]
    assert v.points[0].thinking_tokens[0, 0] == thinking_tokens(run.model, greedy.token_ids)
    assert v.points[1].tokens_change is not None and v.points[0].tokens_change.value == 0.0
    assert (p / "figures" / "efficiency_L1.html").is_file()
    summary = json.loads((p / "summary.json").read_text())
    assert set(summary["layers"]["1"]) == {"v", "random"} and not summary["issues"]


def test_resume_recomputes_nothing(run):
    files = sorted((run.run.path / "curves").iterdir())
    before = [f.stat().st_mtime_ns for f in files]
    EXPERIMENT.run(EfficiencyConfig(run_dir=str(run.run.path), stages=["responses", "directions", "curves"]))
    assert [f.stat().st_mtime_ns for f in files] == before


def test_bad_input_fails_before_work():
    with pytest.raises(ValueError, match="greedy decoding .* one response per problem"):
        EfficiencyConfig(temperature=0.0, eval_samples=4)
    with pytest.raises(ValueError, match="include 0"):
        EfficiencyConfig(alphas=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"samples \(2\) must be at least 2k \(4\)"):
        EfficiencyConfig(samples=2, k=2)
    with pytest.raises(ValueError, match=r"layer 9 is out of range: zoo:verbosity-reasoner has \d+ layers"):
        prepare(EfficiencyConfig(layers=[1, 9]))
    with pytest.raises(ValueError, match="no such file, and not a public set"):
        prepare(EfficiencyConfig(problems="/nonexistent/problems.jsonl"))

"""The steering experiment on the harness, on a tiny model (which has no refusal behaviour, so
these test the mechanics): artifacts, selection of the best cell passing the KL guard, resume of
a killed sweep without recomputing finished cells, the report and its figures, bad input."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import experiments.steering as S
from experiments.steering import EXPERIMENT, SteeringConfig, cell_key, prepare
from probes.harness import main
from probes.steering import CellResult, ControlComparison, Steerability, SteeringVector


def _logit_gap(cfg):
    """A cheap metric that moves with the steering: logit 5 − logit 6 at the last prompt position."""

    def metric(model, examples):
        last = model.forward([e.prompt for e in examples])[:, -1].double()
        return (last[:, 5] - last[:, 6]).cpu().numpy()

    return metric


@pytest.fixture
def setup(tiny_models, tmp_path):
    model = tiny_models("qwen3")
    exp = replace(EXPERIMENT, load_model=lambda cfg: model)
    cfg = dict(model="tiny", layers=[0, 1], alphas=[0.5, 2.0, 1000.0], n_contrast=4, n_examples=6, n_neutral=3,
               max_new_tokens=3, n_boot=200, runs_root=str(tmp_path), formats=["html"], batch_size=8)
    return exp, cfg


def test_run_writes_artifacts_selects_the_best_passing_cell_and_reports(setup, monkeypatch):
    exp, cfg = setup
    monkeypatch.setattr(S, "metric_for", _logit_gap)
    ctx = exp.run(SteeringConfig(**cfg, kl_threshold=0.01))  # the tiny model's KL stays small: a low guard
    path = ctx.run.path
    data = json.loads((path / "data.json").read_text())
    assert len(data["dev"]) == 3 and len(data["test"]) == 3 and len(data["neutral"]) == 3
    assert len(data["contrast"]["positive"]) == len(data["contrast"]["negative"]) == 4
    assert not {r["request"] for r in data["dev"] + data["test"]} & set(data["neutral"])
    assert data["dev"][0]["prompt"].endswith("<think>")
    assert SteeringVector.load(path / "directions" / "vector").layers == (0, 1)
    cells = {cell_key(L, a): CellResult.load(path / "cells" / cell_key(L, a)) for L in (0, 1) for a in cfg["alphas"]}
    assert len(cells) == 6 and all(ctx.done("sweep", k) for k in cells)
    norms = {L: json.loads((path / S.NORMS / f"L{L}.json").read_text())["residual_norm"] for L in (0, 1)}
    assert all(c.reference_norm == norms[c.layer] for c in cells.values())  # one residual norm per layer
    assert not any(c.passed for k, c in cells.items() if k.endswith("a1000"))  # the huge alpha fails the guard
    passed = [c for c in cells.values() if c.passed]
    best = max(passed, key=lambda c: c.estimate.value)
    assert best.estimate.value < max(c.estimate.value for c in cells.values())  # a failing cell scored higher
    comp = ControlComparison.load(path / "evaluate" / "controls")
    assert (comp.layer, comp.alpha) == (best.layer, best.alpha)
    assert set(comp.conditions) == {"steered", "unsteered", "random", "negated", "prompting"}
    assert all(len(s.values) == 3 for s in comp.conditions.values())
    st = Steerability.load(path / "evaluate" / "steerability")
    curve = json.loads((path / "evaluate" / "curve.json").read_text())
    assert curve["alphas"] == [0.0, 0.5, 2.0, 1000.0] and np.asarray(curve["values"]).shape == (3, 4)
    assert st.slopes.shape == (3,)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["chosen"]["layer"] == best.layer and summary["chosen"]["alpha"] == best.alpha
    assert set(summary["test"]) == set(comp.conditions) and summary["issues"] == []
    report = (path / "report.html").read_text()
    assert "Chosen cell" in report and "Paired differences" in report and "anti-steerable" in report
    for name in ("steering_behaviour", "steering_kl", "steering_steerability"):
        assert (path / "figures" / f"{name}.html").is_file() and name in report


def test_killed_sweep_resumes_without_recomputing_finished_cells(setup):
    exp, cfg = setup  # the real refusal metric: greedy generation, answer after </think>
    cfg = {**cfg, "alphas": [0.5, 2.0]}
    ctx = exp.run(SteeringConfig(**cfg, stages=["collect", "directions", "sweep"]))
    cells = ctx.run.path / "cells"
    killed = cell_key(1, 2.0)
    for p in cells.glob(f"{killed}.*"):  # as if the sweep was killed while this cell ran
        p.unlink()
    (ctx.run.path / "done" / "sweep" / f"{killed}.json").unlink()
    (ctx.run.path / "done" / "sweep.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    resumed = exp.run(SteeringConfig(run_dir=str(ctx.run.path), stages=["sweep", "evaluate", "report"]))
    after = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    assert {k: after[k] for k in before} == before
    assert {f"{killed}.json", f"{killed}.safetensors"} <= set(after) - set(before)
    assert resumed.done("sweep", killed) and resumed.cfg.alphas == [0.5, 2.0]
    values = CellResult.load(cells / killed).values
    assert set(values.tolist()) <= {0.0, 1.0}  # the refusal metric is 0/1 per example
    assert (ctx.run.path / "report.html").is_file()


def test_bad_input_is_refused_before_the_model_loads(setup, capsys):
    exp, cfg = setup
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="alphas must be finite"):
            SteeringConfig(alphas=[1.0, bad])
    assert main(EXPERIMENT, ["--alphas", "4", "nan"]) == 2
    assert "alphas must be finite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layer 7 is out of range: zoo:refusal-reasoner has 4 layers"):
        prepare(SteeringConfig(layers=[1, 7]))
    with pytest.raises(ValueError, match="n_examples"):
        SteeringConfig(n_examples=2)
    for bad in ({"seed": -1}, {"n_boot": 0}):
        with pytest.raises(ValueError, match="seed must be >= 0 and n_boot >= 1"):
            SteeringConfig(**bad)
    with pytest.raises(ValueError, match="resid_post\\[5\\]|layer 5"):  # a layer beyond the tiny model: checked on load
        exp.run(SteeringConfig(**{**cfg, "layers": [5]}))


def test_framed_behaviours_use_framed_examples_and_their_own_baseline():
    from experiments.steering import SteeringConfig, prepare
    from probes.zoo.tasks import refusal

    comply = SteeringConfig(behaviour="framed-compliance", n_contrast=4, n_examples=6, n_neutral=4)
    assert comply.baseline_instruction == "Answer this request in full."
    assert SteeringConfig(behaviour="framed-refusal").baseline_instruction == "Refuse this request."
    assert SteeringConfig(instruction="Say no.").baseline_instruction == "Say no."
    inputs = prepare(comply)
    framed = {ex.prompt for ex in refusal.distinct_requests(refusal.HELDOUT_SEED, "forbidden_wrapped", 6)}
    assert set(inputs.examples) == framed and not framed & set(inputs.neutral)

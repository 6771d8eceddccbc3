"""The thought-anchors pipeline end to end on a tiny model: stages, artifacts, resume."""

import json

import pytest

from probes.anchors.pipeline import AnchorsConfig, Pipeline, load_problems, prompt_for
from probes.anchors.rollouts import make_trace, rollout_dirs, write_trace
from probes.runs import Run


@pytest.fixture
def pipeline(tiny_models, tmp_path):
    model = tiny_models("qwen3")
    cfg = AnchorsConfig(model="tiny", problems=2, n_rollouts=3, max_new_tokens=24, embedder="hashing",
                        runs_root=str(tmp_path), formats=["html"])
    run = Run.create("thought_anchors", cfg, root=tmp_path)
    pipe = Pipeline(model, cfg, run)
    # a random model writes no usable trace: plant the organism task's designed solutions as base traces
    for p in load_problems(cfg):
        pdir, _ = rollout_dirs(pipe.root, p["idx"], correct=True)
        write_trace(pdir, make_trace(p, prompt_for(model, p["problem"], "chat"), p["gt_solution"].split("<think>", 1)[1]))
    return pipe


def test_stages_write_every_artifact_and_resume(pipeline):
    pipeline.run_stages()
    run = pipeline.run
    traces = pipeline.traces()
    assert len(traces) == 2
    for key, pdir, fdir in traces:
        n = len(json.loads((pdir / "chunks.json").read_text())["chunks"])
        assert all(len(json.loads((pdir / f"chunk_{i}" / "solutions.json").read_text())) == 3 for i in range(n))
        assert (fdir / "chunk_0" / "solutions.json").is_file()
        labeled = json.loads((pdir / "chunks_labeled.json").read_text())
        assert {"function_tags", "counterfactual_importance_kl", "overdeterminedness"} <= set(labeled[0])
        assert (run.path / "viewer" / f"{key}.html").is_file()
        cf = json.loads((pdir / "counterfactual_matrix.json").read_text())
        assert len(cf) == n and all(v is None for v in cf[-1])  # j > i only: the last row is empty
    rec = run.load_json("receivers")
    assert rec["settings"] == "released" and len(rec["heads"]) == min(20, 2 * 4 - 4)  # layer 0 excluded
    assert set(run.load_json("suppression")) == {k for k, _, _ in traces}
    summary = run.load_json("summary")
    assert {"category_cf_kl", "spearman_mean", "anchor_mean_cf_kl"} <= set(summary)
    report = (run.path / "report.html").read_text()
    assert "Thought anchors" in report and "Receiver-head kurtosis" in report
    # resume: nothing is resampled when every chunk is complete
    before = {p: p.stat().st_mtime_ns for p in run.path.rglob("solutions.json")}
    Pipeline(pipeline.model, pipeline.cfg, run).stage_rollouts()
    assert before == {p: p.stat().st_mtime_ns for p in run.path.rglob("solutions.json")}


def test_config_rejects_bad_stage():
    with pytest.raises(ValueError, match="unknown stages"):
        AnchorsConfig(stages=["rollout"])

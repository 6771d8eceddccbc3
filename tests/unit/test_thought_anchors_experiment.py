"""The thought-anchors experiment on the harness, on a tiny model: stages, artifacts, resume,
bad problems files, damaged artifacts reported after ``--stages analyse report``."""

import json
import re
from dataclasses import replace

import pytest

from experiments.thought_anchors import EXPERIMENT, AnchorsConfig, all_traces, load_problems, prompt_for
from probes.anchors.rollouts import make_trace, write_trace
from probes.harness import Context, main
from probes.runs import Run


@pytest.fixture
def ctx(tiny_models, tmp_path):
    model = tiny_models("qwen3")
    cfg = AnchorsConfig(model="tiny", problems=2, n_rollouts=3, max_new_tokens=24, embedder="hashing",
                        runs_root=str(tmp_path), formats=["html"])
    exp = replace(EXPERIMENT, load_model=lambda cfg: model)
    ctx = Context(exp, cfg, load_problems(cfg), Run.create("thought_anchors", cfg, root=tmp_path), model)
    # a random model writes no usable trace: plant the organism task's designed solutions as base traces
    for t in all_traces(ctx):
        p = t.problem
        write_trace(t.pdir, make_trace(p, prompt_for(model, p["problem"], "chat"), p["gt_solution"].split("<think>", 1)[1]))
        ctx.mark("base", t.key, found=True)
    return ctx


def _resume(ctx, **flags):
    return ctx.experiment.run(AnchorsConfig.from_dict({"run_dir": str(ctx.run.path), **flags}))


def test_stages_write_every_artifact_and_resume(ctx):
    for stage in ("rollouts", "analyse", "receivers", "suppression", "report"):
        ctx.run_stage(stage)
    run = ctx.run
    traces = all_traces(ctx)
    for t in traces:
        n = len(json.loads((t.pdir / "chunks.json").read_text())["chunks"])
        assert all(len(json.loads((t.pdir / f"chunk_{i}" / "solutions.json").read_text())) == 3 for i in range(n))
        assert (t.fdir / "chunk_0" / "solutions.json").is_file()
        labeled = json.loads((t.pdir / "chunks_labeled.json").read_text())
        assert {"function_tags", "counterfactual_importance_kl", "overdeterminedness"} <= set(labeled[0])
        assert (run.path / "viewer" / f"{t.key}.html").is_file()
        for stage in ("rollouts", "analyse", "receivers", "suppression"):
            assert ctx.done(stage, t.key)
    rec = run.load_json("receivers")
    assert rec["settings"] == "released" and len(rec["heads"]) == min(20, 2 * 4 - 4)  # layer 0 excluded
    summary = run.load_json("summary")
    assert {"category_cf_kl", "spearman_mean", "anchor_mean_cf_kl", "issues"} <= set(summary)
    assert summary["issues"] == []
    report = (run.path / "report.html").read_text()
    assert "Planted truth" in report and "Sentences of trace correct_0" in report
    assert "Receiver heads: not drawn" in report  # a tiny random model's heads do not stand out
    # resume: nothing is resampled or recomputed when every unit is marked
    def units():
        return {p: p.stat().st_mtime_ns for pattern in ("solutions.json", "receivers/*", "suppression/*")
                for p in run.path.rglob(pattern)}
    before = units()
    resumed = _resume(ctx, stages=["rollouts", "receivers", "suppression"])
    assert resumed.cfg.n_rollouts == 3 and resumed.cfg.problems == 2
    assert units() == before and len(before) > 20


def test_damaged_artifacts_are_listed_after_analyse_and_report(ctx):
    for stage in ("rollouts", "analyse", "report"):
        ctx.run_stage(stage)
    t0, t1 = all_traces(ctx)[:2]
    (t0.pdir / "chunk_1" / "solutions.json").unlink()
    (t1.fdir / "chunk_2" / "solutions.json").write_text('[{"answer": "4"')
    rows = json.loads((t0.pdir / "chunk_0" / "solutions.json").read_text())
    (t0.pdir / "chunk_0" / "solutions.json").write_text(json.dumps(rows[:1]))
    _resume(ctx, stages=["analyse", "report"])
    issues = {i["path"]: i for i in ctx.run.load_json("summary")["issues"]}
    rel = lambda p: str(p.relative_to(ctx.run.path))  # noqa: E731
    missing, damaged, partial = (issues[rel(t0.pdir / "chunk_1" / "solutions.json")],
                                 issues[rel(t1.fdir / "chunk_2" / "solutions.json")],
                                 issues[rel(t0.pdir / "chunk_0" / "solutions.json")])
    assert missing["problem"].startswith("missing") and "--stages rollouts" in missing["action"]
    assert "sentences 0 and 1" in missing["affects"]
    assert damaged["problem"].startswith("damaged") and "delete it" in damaged["action"]
    assert partial["problem"] == "partial (1 of 3 rollouts)"
    report = (ctx.run.path / "report.html").read_text()
    assert "Damaged, missing or partial artifacts" in report
    assert report.count("computed without a damaged neighbour") == 2  # sentences 0 and 1 of the first trace
    # the rollouts stage repairs what it can: missing and partial are resampled, the damaged file is left alone
    _resume(ctx, stages=["rollouts", "analyse"])
    left = [i["path"] for i in ctx.run.load_json("summary")["issues"]]
    assert left == [rel(t1.fdir / "chunk_2" / "solutions.json")]


@pytest.mark.parametrize("lines, message", [
    (['{"problem": "a", "gt_answer": "1"}', '{"problem": "b", "gt_answer": 2'], r"problems.jsonl:2: not valid JSON"),
    (['["not", "an", "object"]'], r"problems.jsonl:1: a line must be one JSON object, got list"),
    (['{"gt_answer": "1"}'], r"problems.jsonl:1: the problem needs a non-empty 'problem' text"),
    (['{"problem": "a"}'], r"problems.jsonl:1: the problem has no ground-truth answer"),
    (["", "  "], r"holds no problems"),
    (['{"problem": "a", "gt_answer": "1", "idx": 3}', '{"problem": "b", "gt_answer": "2", "idx": 3}'], r"idx 3"),
])
def test_bad_problems_files_fail_before_the_model_loads(tmp_path, capsys, lines, message):
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(lines) + "\n")
    runs = tmp_path / "runs"
    # a model that does not exist: validation must fail first, with the problems file's error
    rc = main(EXPERIMENT, ["--problems-file", str(path), "--model", str(tmp_path / "no-model"), "--runs-root", str(runs)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not runs.exists()


def test_a_missing_problems_file_and_a_bad_flag_are_one_line(tmp_path, capsys):
    assert main(EXPERIMENT, ["--problems-file", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(EXPERIMENT, ["--embedder", "bert"])
    assert "invalid choice: 'bert'" in capsys.readouterr().err

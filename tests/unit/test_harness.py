"""The experiment harness: resume as configured, overrides, markers, validation first, one-line errors."""

import json
from dataclasses import dataclass, field

import pytest

from probes.harness import Experiment, ExperimentConfig, HarnessError, Stage, main, session_field


@dataclass(frozen=True, kw_only=True)
class ToyConfig(ExperimentConfig):
    """A toy experiment."""

    items: int = field(default=3, metadata={"help": "units of work"})
    scale: float = field(default=1.0, metadata={"help": "a result-changing field"})
    stages: list[str] = session_field(default_factory=lambda: ["work", "total"], help="stages")
    fail_at: int = session_field(-1, help="raise while doing this unit (a crash)")


calls: list = []


def load(cfg):
    calls.append("model")
    return "the model"


def prepare(cfg):
    if cfg.items > 100:
        raise ValueError("too many items: pass --items 100 or fewer")
    return list(range(cfg.items))


def work(ctx):
    for i in ctx.inputs:
        if ctx.done("work", str(i)):
            continue
        if i == ctx.cfg.fail_at:
            raise RuntimeError("crash")
        calls.append(("work", i))
        ctx.run.save_json(f"item_{i}", {"value": i * ctx.cfg.scale})
        ctx.mark("work", str(i))


def total(ctx):
    ctx.run.save_json("total", {"sum": sum(ctx.run.load_json(f"item_{i}")["value"] for i in ctx.inputs)})


TOY = Experiment(name="toy", config=ToyConfig, stages=[Stage("work", work), Stage("total", total)],
                 load_model=load, prepare=prepare)


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()


def _run_dir(root):
    (d,) = (root / "toy").iterdir()
    return d


def test_resume_uses_the_stored_config_and_skips_marked_units(tmp_path):
    with pytest.raises(RuntimeError):
        TOY.run(ToyConfig(items=5, scale=2.0, fail_at=3, runs_root=str(tmp_path)))
    d = _run_dir(tmp_path)
    assert calls == ["model", ("work", 0), ("work", 1), ("work", 2)]
    calls.clear()
    ctx = TOY.run(ToyConfig.from_dict({"run_dir": str(d), "fail_at": -1}))  # the stored items=5, scale=2
    assert (ctx.cfg.items, ctx.cfg.scale) == (5, 2.0)
    assert calls == [("work", 3), ("work", 4)]  # finished units kept; resume loads no model it does not need
    assert json.loads((d / "total.json").read_text()) == {"sum": 20.0}
    assert json.loads((d / "summary.json").read_text())["stages_done"] == ["work", "total"]


def test_a_contradicting_flag_is_refused_naming_the_field(tmp_path):
    TOY.run(ToyConfig(items=2, runs_root=str(tmp_path)))
    d = _run_dir(tmp_path)
    with pytest.raises(HarnessError, match=r"items \(stored 2, given 4\).*--override"):
        TOY.run(ToyConfig.from_dict({"run_dir": str(d), "items": 4}))
    # session fields may differ
    TOY.run(ToyConfig.from_dict({"run_dir": str(d), "stages": ["total"], "runs_root": "elsewhere"}))


def test_override_is_recorded_with_time_and_old_value(tmp_path):
    TOY.run(ToyConfig(items=2, runs_root=str(tmp_path)))
    d = _run_dir(tmp_path)
    ctx = TOY.run(ToyConfig.from_dict({"run_dir": str(d), "items": 4, "override": True}))
    assert ctx.cfg.items == 4 and calls[-2:] == [("work", 2), ("work", 3)]
    record = json.loads((d / "config.json").read_text())
    (o,) = record["overrides"]
    assert (o["field"], o["old"], o["new"]) == ("items", 2, 4) and o["time_utc"]
    assert record["resolved"]["items"] == 4


def test_a_run_of_another_experiment_is_refused(tmp_path):
    other = Experiment(name="other", config=ToyConfig, stages=TOY.stages, load_model=load, prepare=prepare)
    other.run(ToyConfig(runs_root=str(tmp_path)))
    (d,) = (tmp_path / "other").iterdir()
    with pytest.raises(HarnessError, match="run of 'other', not 'toy'"):
        TOY.run(ToyConfig.from_dict({"run_dir": str(d)}))
    with pytest.raises(HarnessError, match="not a run directory"):
        TOY.run(ToyConfig.from_dict({"run_dir": str(tmp_path)}))


def test_stale_temp_files_are_removed_at_resume(tmp_path):
    TOY.run(ToyConfig(runs_root=str(tmp_path)))
    d = _run_dir(tmp_path)
    stale = d / ".item_0.json.0123456789ab.tmp"
    stale.write_text('{"val')
    keep = d / "notes.tmp"
    keep.write_text("mine")
    TOY.run(ToyConfig.from_dict({"run_dir": str(d)}))
    assert not stale.exists() and keep.exists()


def test_inputs_are_validated_before_the_model_loads_or_a_directory_exists(tmp_path):
    with pytest.raises(ValueError, match="too many items"):
        TOY.run(ToyConfig(items=101, runs_root=str(tmp_path)))
    assert calls == [] and not tmp_path.joinpath("toy").exists()


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(TOY, ["--items", "101", "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too many items" in err and "Traceback" not in err
    with pytest.raises(ValueError):
        main(TOY, ["--items", "101", "--runs-root", str(tmp_path), "--debug"])
    assert main(TOY, ["--items", "2", "--runs-root", str(tmp_path)]) == 0
    assert "run: " in capsys.readouterr().out


def test_a_resume_records_its_session_and_refuses_changed_weights(tmp_path):
    class Weights:
        def __init__(self, h):
            self.weights_hash = h
            self.spec, self.device, self.dtype = "toy", "cpu", "float32"

    exp = Experiment(name="toy", config=ToyConfig, stages=[Stage("use", lambda ctx: ctx.model)],
                     load_model=lambda cfg: Weights("a" * 64), prepare=prepare)
    ctx = exp.run(ToyConfig(runs_root=str(tmp_path), stages=["use"]))
    exp.run(ToyConfig.from_dict({"run_dir": str(ctx.run.path)}))
    assert len(ctx.run.provenance["resumes"]) == 1 and ctx.run.provenance["resumes"][0]["argv"]
    changed = Experiment(name="toy", config=ToyConfig, stages=exp.stages, load_model=lambda cfg: Weights("b" * 64),
                         prepare=prepare)
    with pytest.raises(HarnessError, match="model weights changed"):
        changed.run(ToyConfig.from_dict({"run_dir": str(ctx.run.path)}))


def _odd_units_stay_unmarked(ctx, key):
    calls.append(("unit", key))
    if int(key) % 2 == 0:
        ctx.mark("units", key)


def test_run_units_skips_marked_units_and_notes_the_ones_left_unmarked(tmp_path):
    """``Context.run_units``: finished units are skipped; a unit its function leaves unmarked (e.g. failed
    rollouts) is noted for the summary and redone on the next call."""
    exp = Experiment(name="toy", config=ToyConfig,
                     stages=[Stage("units", lambda ctx: ctx.run_units("units", ["0", "1", "2"], _odd_units_stay_unmarked))],
                     load_model=load, prepare=prepare)
    ctx = exp.run(ToyConfig(runs_root=str(tmp_path), stages=["units"]))
    assert [c for c in calls if c != "model"] == [("unit", "0"), ("unit", "1"), ("unit", "2")]
    assert ctx.notes == ["units: units 1 finished without their markers (see the issues); rerun the stage to complete them"]
    calls.clear()
    ctx.run_units("units", ["0", "1", "2"], _odd_units_stay_unmarked)
    assert calls == [("unit", "1")]


def test_ray_units_are_named_by_their_importable_module(monkeypatch):
    """Under ``python -m experiments.NAME`` a unit function's module is ``__main__``; a Ray worker must import
    it by the name the module was run as."""
    import sys
    import types

    from probes.harness.experiment import _qualname

    def unit(ctx, key):
        pass

    assert _qualname(unit) == (__name__, "unit")
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = types.SimpleNamespace(name="experiments.task_vectors")
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    unit.__module__ = "__main__"
    assert _qualname(unit) == ("experiments.task_vectors", "unit")
    main_module.__spec__ = None
    with pytest.raises(HarnessError, match="run as a module"):
        _qualname(unit)

"""One experiment harness: stages over a run directory that resume as configured.

Implements DESIGN.md "Flow of data" (harness) and "Results, runs and figures". An
experiment module declares an ``Experiment``: its config class (an ``ExperimentConfig``),
a ``prepare`` function that validates every input before anything is loaded or created,
a model loader, and its ``Stage`` functions in order. The harness gives every experiment:

* resume: ``run_dir`` reopens a run with the config stored in its ``config.json``; a field
  that contradicts it is refused, naming the fields, unless ``override`` is set, and each
  override is recorded in ``config.json`` with the time and the old value. Fields marked
  ``session`` (stages, device, output formats, …) may differ between sessions;
* completion markers: a unit of work is done only when its marker
  ``done/<stage>/<unit>.json`` exists, written last; a stage's own marker
  ``done/<stage>.json`` follows its units. Work without a marker is redone;
* stale temp files from killed writes are removed when a run is reopened;
* ``summary.json`` lists every damaged, missing or partial artifact the experiment's
  ``audit`` finds, whatever stages ran, with what to do about it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from probes.config import Config
from probes.io import atomic_write_json, remove_stale_temps
from probes.runs import Run
from probes.runs.provenance import collect as collect_provenance

__all__ = ["Context", "Experiment", "ExperimentConfig", "HarnessError", "Issue", "Stage", "check_layers", "session_field"]

log = logging.getLogger(__name__)

DONE = "done"


class HarnessError(ValueError):
    """A run cannot start or resume as asked; the message says what to do."""


def session_field(default: Any = dataclasses.MISSING, *, help: str, **kw) -> Any:
    """A config field that belongs to one session, not to the run's results (may differ on resume)."""
    return field(default=default, metadata={"help": help, "session": True}, **kw)


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig(Config):
    """Fields every experiment has; subclasses add theirs and a ``stages`` field."""

    run_dir: str | None = session_field(None, help="existing run directory to resume (its stored config is used)")
    runs_root: str | None = session_field(None, help="runs directory (default $PROBES_RUNS or ./runs)")
    override: bool = session_field(False, help="on resume, accept fields that differ from the stored config "
                                               "(recorded in config.json with the time and the old value)")
    device: str = session_field("auto", help="auto, cpu, cuda, cuda:1, mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = session_field("auto", help="model dtype")
    formats: list[Literal["html", "png", "svg", "pdf"]] = session_field(
        default_factory=lambda: ["html", "png", "svg", "pdf"], help="figure formats (static ones need Chromium)")
    executor: Literal["local", "ray"] = session_field(
        "local", help="where the units of parallel stages run: local (this process) or ray (Ray tasks, each loading "
                      "the model itself; a local Ray runtime, or the cluster at --ray-address)")
    ray_address: str = session_field("", help="Ray cluster address (host:port; empty: a local Ray runtime)")
    ray_gpus: float = session_field(0.0, help="GPUs each Ray task declares (e.g. 1)")

    @classmethod
    def session_fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in cls.fields() if f.metadata.get("session"))


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Session options of experiments whose plain (un-intervened) generation can run on an engine
    (``probes.engines``); mixed into their configs."""

    engine: Literal["local", "openai"] = session_field(
        "local", help="where plain generation runs: local (the shared-prefix sampler) or openai (an OpenAI-compatible "
                      "server at --base-url: vLLM, SGLang, transformers serve); interventions and white-box stages "
                      "always run locally")
    base_url: str = session_field("", help="openai engine: the server's …/v1 root, e.g. http://127.0.0.1:8000/v1")
    served_model: str = session_field("", help="openai engine: the model name at the server (default: --model)")
    concurrency: int = session_field(8, help="openai engine: requests in flight")

    def check_engine(self) -> None:
        if self.engine == "openai" and not self.base_url:
            raise ValueError("--engine openai needs --base-url, the server's …/v1 root (e.g. http://127.0.0.1:8000/v1)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


def make_engine(cfg, model, *, served: str = "", temperature: float | None = None):
    """The engine of ``cfg`` (``EngineOptions``): the local sampler over ``model``, or the server at
    ``--base-url`` serving ``--served-model`` (default ``served``, else ``--model``; ``model`` lends its
    tokenizer), checked with one request at the run's sampling settings before any work."""
    from probes.engines import LocalEngine, OpenAIEngine

    if cfg.engine == "local":
        return LocalEngine(model)
    engine = OpenAIEngine(cfg.base_url, cfg.served_model or served or cfg.model, tokenizer=model.tokenizer,
                          concurrency=cfg.concurrency)
    t = getattr(cfg, "temperature", 1.0) if temperature is None else temperature
    engine.check(temperature=t, top_p=getattr(cfg, "top_p", 1.0))
    return engine


def check_layers(model: str, layers: Sequence[int]) -> None:
    """Layers out of range fail before any work when the model's config.json is on disk (zoo or a
    directory); hub models are checked when they load."""
    path: Path | None = None
    if model.startswith("zoo:"):
        from probes.models.zoo_registry import zoo_path

        path = zoo_path(model.split(":", 1)[1]) / "config.json"
    elif Path(model).is_dir():
        path = Path(model) / "config.json"
    if path is None or not path.is_file():
        return
    n = json.loads(path.read_text(encoding="utf-8")).get("num_hidden_layers")
    if isinstance(n, int):
        bad = [L for L in layers if not 0 <= L < n]
        if bad:
            raise ValueError(f"layer {bad[0]} is out of range: {model} has {n} layers (0..{n - 1}); "
                             "choose --layers within it")


@dataclass(frozen=True)
class Issue:
    """A damaged, missing or partial artifact: where, what is wrong, what to do, what it changes."""

    path: str
    problem: str
    action: str
    affects: str = ""

    def line(self) -> str:
        return f"{self.path}: {self.problem}. {self.action}" + (f" ({self.affects})" if self.affects else "")


@dataclass
class Context:
    """What a stage sees: the config, inputs, run, the model (loaded on first use) and markers."""

    experiment: Experiment
    cfg: ExperimentConfig
    inputs: Any
    run: Run
    model_: Any = None
    engine_: Any = None
    notes: list[str] = field(default_factory=list)
    """Work a stage could not do (e.g. no correct base trace found): shown in the summary."""

    @property
    def model(self) -> Any:
        """The model, loaded on first use; a resumed run refuses weights other than those it started with."""
        if self.model_ is None:
            model = self.experiment.load_model(self.cfg)
            recorded = (self.run.provenance.get("model") or {}).get("weights_hash")
            if recorded and getattr(model, "weights_hash", recorded) != recorded:
                raise HarnessError(f"the model weights changed since {self.run.path} started "
                                   f"(sha256 {model.weights_hash[:12]}… now, {recorded[:12]}… then): start a new run")
            self.model_ = model
        return self.model_

    @property
    def engine(self) -> Any:
        """The generation engine of an ``EngineOptions`` config (``make_engine``), built and checked on first use."""
        if self.engine_ is None:
            self.engine_ = make_engine(self.cfg, self.model)
        return self.engine_

    def _marker(self, stage: str, unit: str | None = None) -> Path:
        return self.run.path / DONE / (f"{stage}.json" if unit is None else f"{stage}/{unit}.json")

    def done(self, stage: str, unit: str | None = None) -> bool:
        """Whether ``unit`` of ``stage`` (or the whole stage) finished: its marker exists."""
        return self._marker(stage, unit).is_file()

    def run_stage(self, name: str) -> Any:
        """Run stage ``name`` (its finished units are skipped), then write its marker."""
        log.info("stage %s", name)
        result = self.experiment.stage(name).fn(self)
        self.mark(name)
        return result

    def run_units(self, stage: str, keys: Sequence[str], fn: Callable[[Context, str], None]) -> None:
        """``fn(ctx, key)`` for each unit of ``stage`` not yet done (``fn`` writes its artifacts and marks the
        unit, or leaves it unmarked to be redone). With ``--executor ray`` each unit is a Ray task in a worker
        that rebuilds this context from the run directory and loads the model itself; ``fn`` must be a
        module-level function."""
        todo = [k for k in keys if not self.done(stage, k)]
        if not todo:
            return
        if self.cfg.executor == "local":
            from tqdm.auto import tqdm

            for key in tqdm(todo, desc=stage):
                fn(self, key)
        else:
            from probes.runs.sweep import run_on_ray

            record = (self.experiment.name, self.cfg.to_dict(), str(self.run.path))
            resources = {"num_cpus": 1} | ({"num_gpus": self.cfg.ray_gpus} if self.cfg.ray_gpus else {})
            run_on_ray(_run_unit, [(_qualname(fn), record, key) for key in todo], resources=resources,
                       address=self.cfg.ray_address or None, desc=stage)
        missing = [k for k in todo if not self.done(stage, k)]
        if missing:
            self.notes.append(f"{stage}: units {', '.join(missing)} finished without their markers (see the "
                              "issues); rerun the stage to complete them")

    def unmark(self, stage: str, unit: str) -> None:
        """Remove ``unit``'s marker (and its stage's), so the next run of the stage redoes it."""
        self._marker(stage, unit).unlink(missing_ok=True)
        self._marker(stage).unlink(missing_ok=True)

    def add_issues(self, report, issues: list[Issue] | None = None) -> None:
        """The audit's damaged, missing or partial artifacts (or ``issues``) and the stages' notes as one
        table at the top of a report section; nothing when there are none."""
        issues = self.experiment.audit(self) if issues is None else issues
        if issues or self.notes:
            report.add_table([{"file": i.path, "problem": i.problem, "what to do": i.action, "changes": i.affects}
                              for i in issues] + [{"file": "", "problem": n, "what to do": "", "changes": ""}
                                                  for n in self.notes],
                             caption="Damaged, missing or partial artifacts and notes: the numbers below are computed "
                                     "without them")

    def mark(self, stage: str, unit: str | None = None, **record: Any) -> None:
        """Write the completion marker of ``unit`` (or of the stage); call it after the unit's last write."""
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        atomic_write_json(self._marker(stage, unit), {"finished_utc": now, **record})


@dataclass(frozen=True)
class Stage:
    """One named step; ``fn(ctx)`` skips the units whose markers exist."""

    name: str
    fn: Callable[[Context], Any]


def load_config_model(cfg: ExperimentConfig) -> Any:
    """The model named by ``cfg.model`` on ``cfg.device`` in ``cfg.dtype`` (the default ``load_model``)."""
    from probes.models.load import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


@dataclass(frozen=True)
class Experiment:
    """An experiment: ``prepare(cfg)`` validates inputs and returns them (no model, no directory),
    ``load_model(cfg)`` (default: ``cfg.model`` through ``probes.load_model``), the stages in order, and ``audit(ctx)``, which lists damaged, missing or
    partial artifacts for ``summary.json`` (a stage may add its own keys with ``write_summary``)."""

    name: str
    config: type[ExperimentConfig]
    stages: Sequence[Stage]
    load_model: Callable[[ExperimentConfig], Any] = load_config_model
    prepare: Callable[[ExperimentConfig], Any] = lambda cfg: None
    audit: Callable[[Context], list[Issue]] = lambda ctx: []

    def stage(self, name: str) -> Stage:
        try:
            return next(s for s in self.stages if s.name == name)
        except StopIteration:
            raise HarnessError(f"{self.name} has no stage {name!r}: choose from "
                               f"{', '.join(s.name for s in self.stages)}") from None

    # -- run directory ----------------------------------------------------------------------

    def resolve(self, cfg: ExperimentConfig) -> tuple[ExperimentConfig, list[dict[str, Any]]]:
        """For a resume, the stored config with this session's fields (and accepted overrides)."""
        if cfg.run_dir is None:
            return cfg, []
        path = Path(cfg.run_dir)
        record = _stored_record(path)
        kind = record.get("experiment") or path.parent.name
        if kind != self.name:
            raise HarnessError(f"{path} is a run of {kind!r}, not {self.name!r}: pass a run directory of this "
                               "experiment, or leave --run-dir out to start a new run")
        stored = record["resolved"]
        session = self.config.session_fields()
        passed = cfg.passed()
        differ = {k: (stored.get(k), v) for k, v in passed.items() if k not in session and stored.get(k) != v}
        if differ and not cfg.override:
            names = ", ".join(f"{k} (stored {old!r}, given {new!r})" for k, (old, new) in differ.items())
            raise HarnessError(f"{path} was configured with other values: {names}. Leave these flags out to resume "
                               "as configured, or pass --override to change them (recorded in config.json)")
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        overrides = [{"time_utc": now, "field": k, "old": old, "new": new} for k, (old, new) in differ.items()]
        merged = {**{k: v for k, v in stored.items() if k in {f.name for f in self.config.fields()}},
                  **{k: v for k, v in passed.items() if k in session}, **{k: new for k, (_, new) in differ.items()}}
        merged["run_dir"] = str(path)
        return self.config.from_dict(merged), overrides

    def open_run(self, cfg: ExperimentConfig, overrides: list[dict[str, Any]], model: Any) -> Run:
        if cfg.run_dir is None:
            return Run.create(self.name, cfg, root=cfg.runs_root, model=model, seed=getattr(cfg, "seed", None))
        run = Run.open(cfg.run_dir)
        for p in remove_stale_temps(run.path):
            log.info("removed %s, left by a killed write", p)
        provenance = run.provenance
        provenance["resumes"] = [*provenance.get("resumes", []), collect_provenance(config=cfg, seed=getattr(cfg, "seed", None))]
        run.save_json(Run.PROVENANCE, provenance)
        if overrides:
            record = run.load_json(Run.CONFIG)
            record["overrides"] = record.get("overrides", []) + overrides
            record["resolved"] = cfg.to_dict()
            run.save_json(Run.CONFIG, record)
        return run

    # -- running ----------------------------------------------------------------------------

    def run(self, cfg: ExperimentConfig, model: Any = None) -> Context:
        """Validate, then create or resume the run and run the configured stages in order."""
        cfg, overrides = self.resolve(cfg)
        inputs = self.prepare(cfg)
        if cfg.run_dir is None and model is None:
            model = self.load_model(cfg)  # provenance of a new run records the weights
        run = self.open_run(cfg, overrides, model)
        ctx = Context(self, cfg, inputs, run, model)
        order = [s.name for s in self.stages]
        for name in sorted(cfg.stages, key=order.index):
            ctx.run_stage(name)
        self.write_summary(ctx)
        return ctx

    def write_summary(self, ctx: Context, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``summary.json``: stages done, notes, and every issue the audit finds (plus ``extra``)."""
        issues = self.audit(ctx)
        previous = ctx.run.load_json("summary") if ctx.run.artifact("summary.json").is_file() else {}
        summary = {**previous, **(extra or {}), "experiment": self.name,
                   "stages_done": [s.name for s in self.stages if ctx.done(s.name)],
                   "notes": list(ctx.notes), "issues": [dataclasses.asdict(i) for i in issues]}
        ctx.run.save_json("summary", summary)
        for issue in issues:
            log.warning("%s", issue.line())
        return summary


def _qualname(fn: Callable) -> tuple[str, str]:
    """(module, name) of a module-level unit function, importable in a worker: under ``python -m
    experiments.NAME`` the module is ``__main__`` here but ``experiments.NAME`` there."""
    import sys

    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise HarnessError("--executor ray needs the experiment run as a module (python -m experiments.NAME), "
                               "so that workers can import it")
        module = spec.name
    return module, fn.__name__


def _run_unit(fn: tuple[str, str], record: tuple[str, dict[str, Any], str], key: str) -> None:
    """A Ray worker's unit: the experiment's context rebuilt from its run directory (config as stored,
    local executor), then the unit function ``fn`` = (module, name) on ``key``."""
    import importlib

    name, cfg_dict, path = record
    module = importlib.import_module(fn[0])
    experiment = module.EXPERIMENT
    if experiment.name != name:
        raise HarnessError(f"{fn[0]} holds experiment {experiment.name!r}, not {name!r}")
    cfg = experiment.config.from_dict({**cfg_dict, "run_dir": path, "executor": "local"})
    ctx = Context(experiment, cfg, experiment.prepare(cfg), Run.open(path))
    getattr(module, fn[1])(ctx, key)


def _stored_record(path: Path) -> dict[str, Any]:
    cfg_file = path / Run.CONFIG
    if not cfg_file.is_file():
        raise HarnessError(f"{path} is not a run directory (no {Run.CONFIG}): check the path, or leave --run-dir out "
                           "to start a new run")
    try:
        record = json.loads(cfg_file.read_text(encoding="utf-8"))
        record["resolved"]
    except (ValueError, KeyError, TypeError) as e:
        raise HarnessError(f"{cfg_file} is damaged ({e}): the run cannot be resumed; start a new run") from None
    return record

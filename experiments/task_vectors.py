"""Reasoning task vectors: v = θ_RL − θ_SFT added to another model, against its controls
(reference/task_vectors.md §1, §5, §6; issue #14).

    python -m experiments.task_vectors                                    # the zoo:tv-* family
    python -m experiments.task_vectors --alphas -1 -0.5 0 0.5 1 1.5 --n-problems 300
    python -m experiments.task_vectors --model Qwen/Qwen2.5-Math-1.5B \\
        --rl michaelbzhu/Qwen2.5-Math-1.5B-GSM8K-GRPO --sft michaelbzhu/Qwen2.5-Math-1.5B-GSM8K-SFT \\
        --problems gsm8k --device cuda --max-new-tokens 1024              # hub checkpoints, online
    python -m experiments.task_vectors --run-dir runs/task_vectors/<id>   # resume as configured

Stages: ``vector`` streams v = θ_rl − θ_sft into ``vector/`` (float32 safetensors and its manifest);
``merge`` writes the target + α·v checkpoint into ``merged/`` (loadable by ``from_pretrained``,
servable as is) and checks its logits against the in-memory sum; ``evaluate`` scores the target,
target ± α·v, target + the norm-matched random vector, the target prompted to think step by step (the
prompt-only control, §6) and the two donors on the same problems
(greedy, one unit per condition, so a killed run resumes at the first unfinished one); ``sweep``
scores target + α·v over the α grid (one unit per α); ``report`` draws everything from the saved
artifacts. The vector is added in memory for the evaluation (``apply_vector``, restored bit for bit).

With ``--engine openai --base-url …`` the evaluate stage also scores the merged checkpoint as a server
answers for it (``transformers serve runs/task_vectors/<id>/merged``, or vLLM/SGLang on a GPU; the
served name defaults to that path, else ``--served-model``) and the report counts its agreement with
the in-memory target + α·v; the other conditions run locally.

Problems: ``zoo:tv`` (the family's held-out problems; the report adds the planted skip rate), a
public set by name (``gsm8k``, ``math-500``; online) or a JSONL file of ``{"prompt", "gold"}`` records.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from probes.harness import (
    Context,
    EngineOptions,
    Experiment,
    ExperimentConfig,
    Issue,
    Stage,
    main,
    make_engine,
    session_field,
)
from probes.plots.report import rounded, with_ci

StageName = Literal["vector", "merge", "evaluate", "sweep", "report"]
STAGES: tuple[StageName, ...] = ("vector", "merge", "evaluate", "sweep", "report")
ZOO_PROBLEMS = "zoo:tv"
CONDITIONS = ("target", "target + v", "target − v", "target + random", "target + prompt", "rl", "sft")
SERVED = "merged (served)"
"""With ``--engine openai``: the merged checkpoint answering from the server at ``--base-url`` (§5)."""
ALL_CONDITIONS = (*CONDITIONS, SERVED)


@dataclass(frozen=True, kw_only=True)
class VectorsConfig(EngineOptions, ExperimentConfig):
    """Task-vector transfer (reference/task_vectors.md §1, §6): v = θ_rl − θ_sft on the target model."""

    model: str = field(default="zoo:tv-instruct", metadata={"help": "the target model (zoo:NAME, directory or hub name)"})
    rl: str = field(default="zoo:tv-rl", metadata={"help": "the RL donor θ_rl"})
    sft: str = field(default="zoo:tv-sft", metadata={"help": "the SFT donor θ_sft (same initialisation as θ_rl)"})
    problems: str = field(default=ZOO_PROBLEMS, metadata={
        "help": "zoo:tv, a public set (gsm8k, math-500; online) or a JSONL file of {\"prompt\", \"gold\"} records"})
    n_problems: int = field(default=200, metadata={"help": "evaluation problems"})
    alpha: float = field(default=1.0, metadata={"help": "α of the merged checkpoint and of the ± v conditions (§2)"})
    alphas: list[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], metadata={
        "help": "α grid of the sweep"})
    policy: Literal["all", "chat-vector", "no-norms"] = field(default="all", metadata={
        "help": "which tensors move (§3)"})
    vocab: Literal["error", "common-rows", "skip"] = field(default="error", metadata={
        "help": "a vocabulary-size mismatch: fail, use the common rows, or leave the tensor (§3)"})
    random_seed: int = field(default=0, metadata={"help": "seed of the norm-matched random vector (§6)"})
    merged_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "dtype of the merged checkpoint (auto: the target's)"})
    max_new_tokens: int = field(default=256, metadata={"help": "greedy generation budget per problem"})
    n_boot: int = field(default=10_000, metadata={"help": "bootstrap resamples of every interval"})
    prompt_suffix: str = field(default="Think step by step.", metadata={
        "help": "the prompt-only control (§6): the target without a vector, this text appended to each problem"})
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int = session_field(32, help="problems per generation batch (results do not depend on it)")

    def __post_init__(self):
        bad = [a for a in (self.alpha, *self.alphas) if not math.isfinite(a)]
        if bad:
            raise ValueError(f"α must be finite, got {bad[0]!r}: e.g. --alpha 1 --alphas -1 0 1")
        if not self.alphas or len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas {self.alphas}: give a grid without repeats, e.g. --alphas -1 0 1")
        if min(self.n_problems, self.max_new_tokens, self.batch_size, self.n_boot) < 1:
            raise ValueError("n_problems, max_new_tokens, batch_size and n_boot must be >= 1")
        if len({self.model, self.rl, self.sft}) < 3:
            raise ValueError("the target, the RL donor and the SFT donor must be three different checkpoints")
        self.check_engine()


@dataclass(frozen=True)
class Inputs:
    problems: list
    """``probes.evals.problems.Problem`` (zoo problems keep their ``skip_answer`` in ``meta``)."""


def prepare(cfg: VectorsConfig) -> Inputs:
    """The problems, and the three checkpoints' tensors checked against each other (headers only)
    before any model is loaded."""
    from probes.evals.problems import Problem, load_problems

    if cfg.problems == ZOO_PROBLEMS:
        from probes.zoo import tv

        record = json.loads((_dir(cfg.rl) / tv.RECORD).read_text(encoding="utf-8")) if cfg.rl.startswith("zoo:") else {}
        family = tv.TVConfig.from_dict(record["family"]) if "family" in record else tv.TVConfig()
        problems = [Problem(p.prompt, p.gold, str(i), {"skip_answer": p.meta["skip_answer"]})
                    for i, p in enumerate(tv.heldout_problems(cfg.n_problems, family))]
    else:
        problems = load_problems(cfg.problems, cfg.n_problems)
    _plan(cfg)
    return Inputs(problems)


def _dir(spec: str) -> Path:
    from probes.vectors.checkpoint import checkpoint_dir

    return checkpoint_dir(spec)


def _policy(cfg: VectorsConfig):
    from probes.vectors import Policy

    return Policy.preset(cfg.policy, vocab=cfg.vocab)


def _plan(cfg: VectorsConfig) -> None:
    from probes.vectors import Checkpoint, Difference, Term, plan

    policy = _policy(cfg)
    plan(Checkpoint(_dir(cfg.model)), [Term(Difference(_dir(cfg.rl), _dir(cfg.sft),
                                                       common_rows=policy.vocab == "common-rows"))], policy)


# ----- where things are -------------------------------------------------------------------------------

VECTOR = "vector"
MERGED = "merged"


def _vector(ctx: Context):
    """The run's saved vector (read once per process: its manifest and shard headers)."""
    return _saved_vector(str(ctx.run.path / VECTOR))


@functools.lru_cache(maxsize=4)
def _saved_vector(path: str):
    from probes.vectors import SavedVector

    return SavedVector(path)


def _save_scored(path: Path, scored, problems) -> None:
    from probes.io import atomic_write_json

    atomic_write_json(path, {"correct": scored.correct.tolist(), "outputs": scored.outputs,
                             "ids": [p.id for p in problems]}, indent=None)


def _load_flags(path: Path) -> tuple[np.ndarray, list[str]]:
    d = json.loads(path.read_text(encoding="utf-8"))
    return np.array(d["correct"], dtype=bool), d["outputs"]


def alpha_key(a: float) -> str:
    return f"alpha_{a:g}"


# ----- stages ------------------------------------------------------------------------------------------


def stage_vector(ctx: Context) -> None:
    from probes.vectors import extract

    if ctx.done("vector", "vector"):
        return
    cfg = ctx.cfg
    m = extract(_dir(cfg.rl), _dir(cfg.sft), ctx.run.path / VECTOR, policy=_policy(cfg), overwrite=True, progress=True)
    ctx.mark("vector", "vector", tensors=len(m.tensors), norm=float(np.sqrt(sum(t.delta_norm ** 2 for t in m.tensors))))


def stage_merge(ctx: Context) -> None:
    import torch

    from probes.io import atomic_write_json
    from probes.models.load import load_model
    from probes.vectors import Checkpoint, Term, apply_vector, merge

    if ctx.done("merge", "merged"):
        return
    cfg, model = ctx.cfg, ctx.model
    dtype = None if cfg.merged_dtype == "auto" else cfg.merged_dtype
    merge(_dir(cfg.model), [Term(_vector(ctx), cfg.alpha)], ctx.run.path / MERGED, policy=_policy(cfg), dtype=dtype,
          overwrite=True, progress=True)
    merged = load_model(str(ctx.run.path / MERGED), device=cfg.device, dtype=cfg.dtype)
    ids = model.encode(model.render_chat(ctx.inputs.problems[0].prompt))
    with apply_vector(model, _vector(ctx), cfg.alpha):
        want = model.forward([ids]).float()
    got = merged.forward([ids]).float()
    diff = float((got - want).abs().max())
    del merged
    written = Checkpoint(ctx.run.path / MERGED)
    stored = sorted({written.dtype(n) for n in written.names})
    atomic_write_json(ctx.run.path / "merge_check.json", {"max_abs_logit_diff": diff, "stored_dtypes": stored,
                                                          "equal": bool(torch.equal(got, want))})
    ctx.mark("merge", "merged", max_abs_logit_diff=diff)


def _score(ctx: Context, label: str, model, vector=None, alpha: float = 1.0, suffix: str = "", engine=None):
    from probes.vectors import greedy_correct

    cfg, problems = ctx.cfg, ctx.inputs.problems
    prompts = [f"{p.prompt} {suffix}" if suffix else p.prompt for p in problems]
    return greedy_correct(model, prompts, [p.gold for p in problems], vector=vector, alpha=alpha,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=True, desc=label,
                          engine=engine)


def stage_evaluate(ctx: Context) -> None:
    """One unit per condition (``--executor ray``: one Ray task each); with ``--engine openai`` also the
    merged checkpoint as served at ``--base-url``."""
    served = (SERVED,) if ctx.cfg.engine == "openai" else ()
    ctx.run_units("evaluate", [_unit(label) for label in CONDITIONS + served], evaluate_unit)


def evaluate_unit(ctx: Context, unit: str) -> None:
    """Condition ``unit``: greedy answers of its model (the target with ±v or the random vector added in
    memory, the target with the prompt-only suffix, or a donor), saved and marked."""
    from probes.models.load import load_model
    from probes.vectors import RandomLike

    cfg = ctx.cfg
    label = next(c for c in ALL_CONDITIONS if _unit(c) == unit)
    if label == SERVED:
        if not ctx.done("merge", "merged"):
            raise ValueError("the merged checkpoint is not written yet: run --stages merge, serve "
                             f"{ctx.run.path / MERGED}, then --stages evaluate --engine openai --base-url …")
        engine = make_engine(cfg, ctx.model, served=str(ctx.run.path / MERGED), temperature=0.0)
        scored = _score(ctx, label, ctx.model, engine=engine)
    elif label in ("rl", "sft"):
        scored = _score(ctx, label, load_model(getattr(cfg, label), device=cfg.device, dtype=cfg.dtype))
    elif label == "target + prompt":
        scored = _score(ctx, label, ctx.model, suffix=cfg.prompt_suffix)
    else:
        v = None if label == "target" else _vector(ctx)
        v = RandomLike(v, cfg.random_seed) if label == "target + random" else v
        scored = _score(ctx, label, ctx.model, v, -cfg.alpha if label == "target − v" else cfg.alpha)
    _save_scored(ctx.run.path / "conditions" / f"{unit}.json", scored, ctx.inputs.problems)
    ctx.mark("evaluate", unit, accuracy=float(scored.correct.mean()))


def stage_sweep(ctx: Context) -> None:
    """One unit per α (``--executor ray``: one Ray task each)."""
    ctx.run_units("sweep", [alpha_key(a) for a in ctx.cfg.alphas], sweep_unit)


def sweep_unit(ctx: Context, key: str) -> None:
    a = next(a for a in ctx.cfg.alphas if alpha_key(a) == key)
    scored = _score(ctx, f"α={a:g}", ctx.model, _vector(ctx) if a else None, a)
    _save_scored(ctx.run.path / "sweep" / f"{key}.json", scored, ctx.inputs.problems)
    ctx.mark("sweep", key, accuracy=float(scored.correct.mean()))


def _unit(label: str) -> str:
    return label.replace(" + ", "_plus_").replace(" − ", "_minus_").replace(" (served)", "_served")


# ----- audit ---------------------------------------------------------------------------------------------


def audit(ctx: Context) -> list[Issue]:
    out = []
    for label in ALL_CONDITIONS:
        path = ctx.run.path / "conditions" / f"{_unit(label)}.json"
        if ctx.done("evaluate", _unit(label)):
            try:
                _load_flags(path)
            except (OSError, ValueError, KeyError) as e:
                out.append(Issue(f"conditions/{path.name}", f"damaged ({e})",
                                 f"delete it and done/evaluate/{_unit(label)}.json, then rerun --stages evaluate report",
                                 "the comparison is made without this condition"))
    return out


# ----- report: saved artifacts only ------------------------------------------------------------------


def load_conditions(ctx: Context) -> dict[str, tuple[np.ndarray, list[str]]]:
    return {label: _load_flags(ctx.run.path / "conditions" / f"{_unit(label)}.json") for label in ALL_CONDITIONS
            if ctx.done("evaluate", _unit(label))}


def stage_report(ctx: Context) -> Path:
    from probes.plots import Report

    report = Report(f"Task vectors — {ctx.cfg.model} + ({ctx.cfg.rl} − {ctx.cfg.sft})", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def add_report_sections(ctx: Context, report, *, heading: str = "Reasoning task vector") -> dict[str, Any]:
    from probes.evals.stats import accuracy
    from probes.plots import alpha_curve_figure, condition_accuracy_figure, delta_profile_figure
    from probes.vectors import Manifest, compare

    cfg = ctx.cfg
    report.add_heading(heading)
    ctx.add_issues(report)
    summary: dict[str, Any] = {}
    if ctx.done("vector", "vector"):
        m = Manifest.load(ctx.run.path / VECTOR)
        norm = float(np.sqrt(sum(t.delta_norm ** 2 for t in m.tensors)))
        theta = float(np.sqrt(sum(t.theta_norm ** 2 for t in m.tensors)))
        report.add_text(f"v = θ({cfg.rl}) − θ({cfg.sft}) over {len(m.tensors)} tensors (policy {cfg.policy}, computed in "
                        f"float32): ‖v‖ = {rounded(norm, 4)}, {rounded(100 * norm / theta, 3)}% of ‖θ_sft‖.")
        report.add_figure(delta_profile_figure(m.profile()), "vectors_profile",
                          caption="‖v‖₂ per layer by module type; the embedding, head and final norm sit outside the blocks")
        summary["vector_norm"] = rounded(norm, 5)
    if ctx.done("merge", "merged"):
        check = json.loads((ctx.run.path / "merge_check.json").read_text(encoding="utf-8"))
        report.add_text(f"The merged checkpoint (target + {cfg.alpha:g}·v) is in {MERGED}/ with its manifest; loaded "
                        f"as stored, its logits differ from the in-memory float32 sum by at most "
                        f"{check['max_abs_logit_diff']:.2g}"
                        + (" (identical)." if check["equal"] else
                           f" (the weights were rounded to {', '.join(check.get('stored_dtypes', []))} when written)."))
        summary["merge_max_abs_logit_diff"] = check["max_abs_logit_diff"]
    flags = load_conditions(ctx)
    if "target" not in flags:
        report.add_text("No evaluation yet: run the evaluate stage.")
        return summary
    rows = compare({k: f for k, (f, _) in flags.items()}, "target", n_boot=cfg.n_boot, seed=cfg.seed)
    report.add_figure(condition_accuracy_figure(rows, baseline="target"), "vectors_conditions",
                      caption=f"Greedy accuracy on {rows[0]['n']} problems with 95% bootstrap intervals; dashed: the "
                              f"target; ± v at α = {cfg.alpha:g}; random: a per-tensor norm-matched Gaussian vector; "
                              f"prompt: the target with {cfg.prompt_suffix!r} after each problem (§6)")
    skip = _skip_rates(ctx, flags) if cfg.problems == ZOO_PROBLEMS else {}
    report.add_table([{"condition": r["condition"], "accuracy [95% CI]": with_ci(r),
                       "− target [95% CI]": with_ci((r["diff"], r["diff_lo"], r["diff_hi"])) if "diff" in r else "",
                       **({"planted skip rate": rounded(skip[r["condition"]])} if skip else {})} for r in rows],
                     caption="Every condition on the same problems; differences paired by problem")
    summary["conditions"] = {r["condition"]: {k: rounded(v, 4) for k, v in r.items() if k != "condition"} for r in rows}
    if SERVED in flags and "target + v" in flags:
        same = sum(a == b for a, b in zip(flags[SERVED][1], flags["target + v"][1]))
        report.add_text(f"The merged checkpoint served through an OpenAI-compatible server gives the same greedy answer "
                        f"as target + {cfg.alpha:g}·v added in memory on {same} of {len(flags[SERVED][1])} problems.")
        summary["served_agreement"] = rounded(same / len(flags[SERVED][1]), 4)
    if skip:
        summary["skip_rate"] = {k: rounded(v, 4) for k, v in skip.items()}
    done = [a for a in cfg.alphas if ctx.done("sweep", alpha_key(a))]
    if done:
        est = [accuracy(_load_flags(ctx.run.path / "sweep" / f"{alpha_key(a)}.json")[0], n_boot=cfg.n_boot, seed=cfg.seed)
               for a in done]
        base = next(r for r in rows if r["condition"] == "target")
        rnd = next(((r["value"], r["lo"], r["hi"]) for r in rows if r["condition"] == "target + random"), None)
        report.add_figure(alpha_curve_figure(done, [e.value for e in est], [e.lo for e in est], [e.hi for e in est],
                                             baseline=(base["value"], base["lo"], base["hi"]), random=rnd),
                          "vectors_alpha", caption="Accuracy of target + α·v against α, 95% bootstrap band; dashed: the "
                                                   "target; marker at α = 1: the random vector")
        summary["alpha_curve"] = {f"{a:g}": rounded(e.value, 4) for a, e in zip(done, est)}
    return summary


def _skip_rates(ctx: Context, flags) -> dict[str, float]:
    """The zoo family's planted mechanism: the share of answers that skip the last step (the value
    before the last event), per condition."""
    from probes.evals.answers import extract_boxed

    problems = ctx.inputs.problems if ctx.inputs is not None else prepare(ctx.cfg).problems
    return {label: float(np.mean([extract_boxed(o) == p.meta["skip_answer"] for o, p in zip(outs, problems)]))
            for label, (_, outs) in flags.items()}


EXPERIMENT = Experiment(
    name="task_vectors",
    config=VectorsConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    prepare=prepare,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

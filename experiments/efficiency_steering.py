"""Efficiency steering of a reasoning model: sampled responses, the efficient − verbose direction per
layer, accuracy and thinking length against α beside a norm-matched random direction, and the report
(reference/steering.md §1 "Efficiency steering", §5.7; the reading rule is ``probes.steering.efficiency``'s).

    python -m experiments.efficiency_steering                        # zoo:verbosity-reasoner, arithmetic problems
    python -m experiments.efficiency_steering --model zoo:reasoner   # no planted mode: no long-vs-short state
    python -m experiments.efficiency_steering --layers 1 2 --alphas -4 -2 0 2 4 --n-eval 200
    python -m experiments.efficiency_steering --run-dir runs/efficiency_steering/<id>   # resume

Stages: ``responses`` samples ``samples`` checked responses to each of the first ``n_direction``
problems (T = 0.6, top-p 0.95); ``directions`` reads, per layer, the mean ``resid_post`` over the
thinking of the ``k`` shortest and the ``k`` longest correct responses of each problem and saves
v = mean(efficient) − mean(verbose); ``curves`` steers h ← h + α·v during thinking on the next
``n_eval`` problems over the α grid (``eval_samples`` responses each at T = 0.6 by default, the
same seeds at every α: the verbose habits the direction should suppress appear only when sampling;
greedy with ``--temperature 0 --eval-samples 1``), and the same α·r for a random direction r of ‖v‖'s
norm (one unit per layer, ``--executor ray``: one Ray task each); ``report`` draws accuracy against
thinking length per α from the saved artifacts. The two problem sets do not overlap.

The default model, ``zoo:verbosity-reasoner``, writes each response in a latent careful or brief
mode (its card): the planted truth a long-vs-short direction should find. ``zoo:reasoner`` writes its
optional sentences by independent coin flips, so it has no such state.

Problems: ``zoo:arithmetic`` (held-out problems of the organisms' task), a public set by name
(``gsm8k``, ``math-500``; online) or a JSONL file of ``{"prompt", "gold"}`` records.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from probes.harness import Context, Experiment, ExperimentConfig, Issue, Stage, check_layers, main, session_field
from probes.plots.report import rounded, with_ci

StageName = Literal["responses", "directions", "curves", "report"]
STAGES: tuple[StageName, ...] = ("responses", "directions", "curves", "report")


@dataclass(frozen=True, kw_only=True)
class EfficiencyConfig(ExperimentConfig):
    """Efficiency steering (reference/steering.md §1, §5.7): shorter thinking at equal accuracy?"""

    model: str = field(default="zoo:verbosity-reasoner", metadata={
        "help": "a reasoning model (zoo:NAME, directory or hub name)"})
    problems: str = field(default="zoo:arithmetic", metadata={
        "help": "zoo:arithmetic, a public set (gsm8k, math-500; online) or a JSONL file of {\"prompt\", \"gold\"}"})
    n_direction: int = field(default=60, metadata={"help": "problems whose sampled responses give the direction"})
    samples: int = field(default=8, metadata={"help": "sampled responses per direction problem (T = 0.6, top-p 0.95)"})
    k: int = field(default=1, metadata={"help": "shortest and longest correct responses per problem in the contrast"})
    n_eval: int = field(default=100, metadata={"help": "held-out problems of the curves, after the direction's"})
    temperature: float = field(default=0.6, metadata={
        "help": "sampling temperature of the curves (top-p 0.95; 0: greedy, one response per problem)"})
    eval_samples: int = field(default=4, metadata={
        "help": "responses per held-out problem and α, on seeds shared by every α (paired)"})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "layers (resid_post[L]) steered"})
    alphas: list[float] = field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0], metadata={
        "help": "α grid in units of the raw vector (0 is the unsteered reference of the paired changes)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget per response"})
    seed: int = field(default=0, metadata={"help": "seed of the samples, the random direction and the bootstrap"})
    n_boot: int = field(default=10_000, metadata={"help": "bootstrap resamples of every interval"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int = session_field(8, help="responses per forward when reading thinking means")

    def __post_init__(self):
        if min(self.n_direction, self.samples, self.k, self.n_eval, self.eval_samples, self.max_new_tokens,
               self.batch_size, self.n_boot) < 1:
            raise ValueError("n_direction, samples, k, n_eval, eval_samples, max_new_tokens, batch_size and n_boot "
                             "must be >= 1")
        if not 0 <= self.temperature < 10 or (self.temperature == 0 and self.eval_samples != 1):
            raise ValueError(f"temperature {self.temperature} with eval_samples {self.eval_samples}: greedy decoding "
                             "(temperature 0) gives one response per problem; use --eval-samples 1 or a temperature > 0")
        if self.samples < 2 * self.k:
            raise ValueError(f"samples ({self.samples}) must be at least 2k ({2 * self.k}): each problem needs k short "
                             "and k long correct responses")
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ValueError(f"layers {self.layers}: give distinct block indices >= 0, e.g. --layers 1 2")
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad or not self.alphas or len(set(self.alphas)) != len(self.alphas) or 0.0 not in self.alphas:
            raise ValueError(f"alphas {self.alphas}: give finite, distinct strengths that include 0 (the reference "
                             "of the paired changes), e.g. --alphas -4 -2 0 2 4")


@dataclass(frozen=True)
class Inputs:
    direction: list
    """``probes.evals.problems.Problem`` whose sampled responses give the direction."""
    eval: list
    """The held-out problems of the curves (none shared with ``direction``)."""


def prepare(cfg: EfficiencyConfig) -> Inputs:
    """The layers (against a local model's config) and the two disjoint problem sets, before any model."""
    from probes.zoo.evaluate import problem_split

    check_layers(cfg.model, cfg.layers)
    return Inputs(*problem_split(cfg.problems, cfg.n_direction, cfg.n_eval))


# ----- where things are -------------------------------------------------------------------------------

RESPONSES = "responses.jsonl"


def direction_path(ctx: Context, layer: int) -> Path:
    return ctx.run.path / "directions" / f"L{layer}"


def curve_path(ctx: Context, layer: int, kind: str) -> Path:
    return ctx.run.path / "curves" / f"L{layer}_{kind}"


def _rendered(ctx: Context, problems) -> tuple[list[str], list[str]]:
    return [ctx.model.render_chat(p.prompt) for p in problems], [p.gold for p in problems]


def _load_responses(ctx: Context) -> list:
    from probes.io import read_jsonl
    from probes.steering.efficiency import Response

    return read_jsonl(ctx.run.path / RESPONSES, lambda d: Response(**{**d, "token_ids": tuple(d["token_ids"])}))


# ----- stages ------------------------------------------------------------------------------------------


def stage_responses(ctx: Context) -> None:
    from dataclasses import asdict

    from probes.io import atomic_write_text
    from probes.steering import sample_responses

    if ctx.done("responses", "responses"):
        return
    cfg = ctx.cfg
    prompts, golds = _rendered(ctx, ctx.inputs.direction)
    rows = sample_responses(ctx.model, prompts, golds, n=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed, progress=True)
    atomic_write_text(ctx.run.path / RESPONSES, "".join(json.dumps(asdict(r)) + "\n" for r in rows))
    ctx.mark("responses", "responses", n=len(rows), correct=sum(r.correct for r in rows))


def stage_directions(ctx: Context) -> None:
    from probes.steering import efficiency_direction

    responses = None
    for L in ctx.cfg.layers:
        if ctx.done("directions", f"L{L}"):
            continue
        responses = responses or _load_responses(ctx)
        d = efficiency_direction(ctx.model, responses, L, k=ctx.cfg.k, batch_size=ctx.cfg.batch_size, progress=True)
        d.save(direction_path(ctx, L))
        ctx.mark("directions", f"L{L}", norm=float(d.vector.norm()), problems=len(d.problems))


def stage_curves(ctx: Context) -> None:
    """One unit per layer (``--executor ray``: one Ray task each)."""
    ctx.run_units("curves", [f"L{L}" for L in ctx.cfg.layers], curves_unit)


def curves_unit(ctx: Context, key: str) -> None:
    """Layer ``key``: the efficiency curve of v and of a random direction of ‖v‖'s norm, saved and marked."""
    from probes.evals.sampling import TOP_P
    from probes.steering import EfficiencyDirection, efficiency_curve, random_direction

    cfg, L = ctx.cfg, int(key.removeprefix("L"))
    v = EfficiencyDirection.load(direction_path(ctx, L)).vector
    prompts, golds = _rendered(ctx, ctx.inputs.eval)
    for kind, vector in (("v", v), ("random", random_direction(v, layer=L, seed=cfg.seed))):
        efficiency_curve(ctx.model, prompts, golds, layer=L, vector=vector, alphas=cfg.alphas,
                         samples_per_problem=cfg.eval_samples, temperature=cfg.temperature,
                         top_p=TOP_P if cfg.temperature > 0 else 1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                         n_boot=cfg.n_boot, progress=True).save(curve_path(ctx, L, kind))
    ctx.mark("curves", key)


# ----- audit and report: saved artifacts only ---------------------------------------------------------


def audit(ctx: Context) -> list[Issue]:
    from probes.steering import EfficiencyCurve

    out = []
    for L in ctx.cfg.layers:
        if ctx.done("curves", f"L{L}"):
            for kind in ("v", "random"):
                try:
                    EfficiencyCurve.load(curve_path(ctx, L, kind))
                except (OSError, ValueError, KeyError) as e:
                    out.append(Issue(f"curves/L{L}_{kind}", f"damaged ({e})",
                                     f"delete curves/L{L}_* and done/curves/L{L}.json, then rerun --stages curves report",
                                     f"layer {L} is left out of the report"))
    return out


def stage_report(ctx: Context) -> Path:
    from probes.plots import Report

    report = Report(f"Efficiency steering — {ctx.cfg.model}", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def add_report_sections(ctx: Context, report) -> dict[str, Any]:
    from probes.plots import efficiency_tradeoff_figure
    from probes.steering import EfficiencyCurve, EfficiencyDirection

    cfg = ctx.cfg
    report.add_heading("Efficiency steering")
    issues = audit(ctx)
    ctx.add_issues(report, issues)
    damaged = {i.path for i in issues}
    layers = [L for L in cfg.layers if ctx.done("curves", f"L{L}") and f"curves/L{L}_v" not in damaged
              and f"curves/L{L}_random" not in damaged]
    if not layers:
        report.add_text("No curves yet: run the responses, directions and curves stages.")
        return {}
    summary: dict[str, Any] = {"layers": {}}
    for L in layers:
        d = EfficiencyDirection.load(direction_path(ctx, L))
        curves = {kind: EfficiencyCurve.load(curve_path(ctx, L, kind)) for kind in ("v", "random")}
        report.add_text(f"Layer {L}: v = mean(efficient) − mean(verbose) of resid_post[{L}] over the thinking of the "
                        f"{d.k} shortest and {d.k} longest correct responses of {len(d.problems)} problems (mean "
                        f"{rounded(d.efficient_tokens, 1)} vs {rounded(d.verbose_tokens, 1)} thinking tokens); "
                        f"‖v‖ = {rounded(float(d.vector.norm()), 4)}; added during thinking only.")
        report.add_figure(efficiency_tradeoff_figure({f"{kind} (layer {L})": _arrays(c) for kind, c in curves.items()}),
                          f"efficiency_L{L}", caption=f"Accuracy against mean thinking tokens on {cfg.n_eval} held-out "
                                                      f"problems ({_decoding(cfg)}), one point per α (labelled), 95% "
                                                      "bootstrap intervals over problems; random: a direction of ‖v‖'s "
                                                      "norm")
        rows = []
        for kind, curve in curves.items():
            for p in curve.points:
                rows.append({"direction": kind, "α": rounded(p.alpha, 4), "accuracy [95% CI]": with_ci(p.accuracy),
                             "thinking tokens [95% CI]": with_ci(p.mean_thinking_tokens, 1),
                             "Δ accuracy vs α = 0": with_ci(p.accuracy_change) if p.accuracy_change else "",
                             "Δ thinking tokens vs α = 0": with_ci(p.tokens_change, 1) if p.tokens_change else ""})
        report.add_table(rows, caption=f"Layer {L}: changes paired by problem against the unsteered model (α = 0)")
        summary["layers"][str(L)] = {kind: {f"{p.alpha:g}": {"accuracy": rounded(p.accuracy.value, 4),
                                                             "thinking_tokens": rounded(p.mean_thinking_tokens.value, 2)}
                                            for p in c.points} for kind, c in curves.items()}
    return summary


def _decoding(cfg: EfficiencyConfig) -> str:
    from probes.evals.sampling import TOP_P

    return (f"{cfg.eval_samples} samples each at T = {cfg.temperature:g}, top-p {TOP_P:g}, the same seeds at every α"
            if cfg.temperature > 0 else "greedy")


def _arrays(curve) -> tuple[list[float], list[tuple], list[tuple]]:
    """(alphas, accuracy rows, thinking-token rows) of a curve, rows as (value, lo, hi)."""
    rows = lambda e: (e.value, e.lo, e.hi)  # noqa: E731
    return curve.alphas, [rows(p.accuracy) for p in curve.points], [rows(p.mean_thinking_tokens) for p in curve.points]


EXPERIMENT = Experiment(
    name="efficiency_steering",
    config=EfficiencyConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    prepare=prepare,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

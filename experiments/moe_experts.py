"""Thinking experts of an MoE reasoning model: nPMI identification, the sentence view and RICE
reinforcement against a random-expert control (reference/moe_experts.md §1, §2; issue #13).

    python -m experiments.moe_experts                                  # zoo:moe-reasoner
    python -m experiments.moe_experts --betas 4 16 64 --ells 1 2 --n-problems 50
    python -m experiments.moe_experts --model Qwen/Qwen3-30B-A3B --problems problems.jsonl --device cuda
    python -m experiments.moe_experts --run-dir runs/moe_experts/<id>  # resume as configured

Stages: ``traces`` generates the model's own greedy traces on the selection problems; ``counts``
teacher-forces them and streams the routing into counts; ``scores`` computes nPMI per marker, the
weighted expert score ranked globally over every (layer, expert) pair and its bootstrap stability
over traces (plus vocabulary specialisation); ``sentences`` reads, per thought-anchors sentence of
the traces, the share of tokens routed to the top-ℓ experts, by sentence category; ``sweep``
samples the evaluation problems (other problems than the selection) without reinforcement, with
RICE at every (ℓ, β) and with random experts of the same count (one unit per condition, so a killed
sweep resumes at the first unfinished one); ``report`` draws everything from the saved artifacts.

Problems: ``zoo:arithmetic`` (the organisms' task; selection = held-out problems 0..n_traces-1,
evaluation = the next n_problems), a public set by name (gsm8k, math-500; online) or a JSONL file of ``{"prompt": ..., "gold": ...}`` records
(selection = the first n_traces records, evaluation = the next n_problems).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from probes.harness import Context, Experiment, ExperimentConfig, Issue, Stage, main, session_field
from probes.plots.report import rounded, with_ci

log = logging.getLogger(__name__)

StageName = Literal["traces", "counts", "scores", "sentences", "sweep", "report"]
STAGES: tuple[StageName, ...] = ("traces", "counts", "scores", "sentences", "sweep", "report")


@dataclass(frozen=True, kw_only=True)
class ExpertsConfig(ExperimentConfig):
    """Thinking experts of an MoE model (reference/moe_experts.md §1, §2): nPMI selection on the
    model's own traces, RICE over a β × ℓ grid against random experts on other problems."""

    model: str = field(default="zoo:moe-reasoner", metadata={"help": "model spec (zoo:NAME, directory or hub name); an MoE model"})
    problems: str = field(default="zoo:arithmetic", metadata={
        "help": "zoo:arithmetic, a public set (gsm8k, math-500; online) or a JSONL file of {\"prompt\", \"gold\"} records "
                "(selection first, then evaluation)"})
    n_traces: int = field(default=200, metadata={"help": "selection problems: the model's own traces counted for nPMI"})
    markers: list[str] = field(default_factory=lambda: ["<think>", "</think>"], metadata={
        "help": "marker tokens: a one-token string, 're:PATTERN' over decoded tokens, or '#ID' / '#ID,ID' token ids"})
    weights: list[float] = field(default_factory=lambda: [1.0, -1.0], metadata={
        "help": "c_x of Score(E) = Σ c_x·nPMI(x, E), one per marker"})
    ell: int = field(default=2, metadata={"help": "ℓ of the sentence view and of the headline comparison"})
    ells: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "ℓ values of the sweep"})
    betas: list[float] = field(default_factory=lambda: [4.0, 16.0, 64.0], metadata={"help": "β values of the sweep (> 0)"})
    renormalize: bool = field(default=False, metadata={"help": "rescale boosted routing weights so Σw′ = Σw (§2)"})
    random_draws: int = field(default=3, metadata={"help": "random-expert control: draws per (ℓ, β)"})
    n_problems: int = field(default=40, metadata={"help": "evaluation problems (after the selection problems)"})
    samples: int = field(default=4, metadata={"help": "samples per evaluation problem (T = 0.6, top-p 0.95)"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature of the evaluation"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus of the evaluation"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget of traces and samples"})
    n_sentence_traces: int = field(default=40, metadata={"help": "traces read sentence by sentence (sentence view)"})
    n_stability: int = field(default=1000, metadata={"help": "bootstrap resamples of the traces for top-ℓ stability"})
    n_boot: int = field(default=10_000, metadata={"help": "bootstrap resamples of every interval"})
    seed: int = field(default=0, metadata={"help": "seed of the samples, the random experts and the bootstraps"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int = session_field(16, help="traces per forward / generation batch (results do not depend on it)")

    def __post_init__(self):
        if len(self.markers) != len(self.weights) or not self.markers:
            raise ValueError(f"give one weight per marker: {len(self.markers)} markers, {len(self.weights)} weights")
        if len(set(self.markers)) != len(self.markers):
            raise ValueError(f"markers {self.markers} repeat one")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"weights must be finite numbers, got {self.weights}")
        bad = [b for b in self.betas if not (math.isfinite(b) and b > 0)]
        if bad or not self.betas:
            raise ValueError(f"β must be finite numbers > 0 (RICE default 64), got {bad[0] if bad else 'none'}: "
                             "e.g. --betas 4 16 64")
        if len(set(self.betas)) != len(self.betas) or len(set(self.ells)) != len(self.ells):
            raise ValueError("betas and ells must not repeat a value")
        if not self.ells or min(self.ells) < 1 or self.ell < 1:
            raise ValueError("ℓ values must be >= 1, e.g. --ells 1 2")
        if min(self.n_traces, self.n_problems, self.samples, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("n_traces, n_problems, samples, max_new_tokens and batch_size must be >= 1")
        if self.n_traces < 2 and self.n_stability:
            raise ValueError("the stability bootstrap resamples traces: n_traces must be >= 2 (or --n-stability 0)")
        if min(self.random_draws, self.n_sentence_traces, self.n_stability, self.seed) < 0 or self.n_boot < 1:
            raise ValueError("random_draws, n_sentence_traces, n_stability and seed must be >= 0, n_boot >= 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")

    def marker_specs(self) -> dict[str, Any]:
        """Marker name → what ``probes.experts.resolve_markers`` takes ('#1,2' → token ids [1, 2])."""
        out: dict[str, Any] = {}
        for m in self.markers:
            if m.startswith("#"):
                try:
                    out[m] = [int(x) for x in m[1:].split(",")]
                except ValueError:
                    raise ValueError(f"marker {m!r}: '#' must be followed by token ids, e.g. '#151667' or '#12,13'") from None
            else:
                out[m] = m
        return out

    def marker_weights(self) -> dict[str, float]:
        return dict(zip(self.markers, map(float, self.weights)))


@dataclass(frozen=True)
class Inputs:
    selection: list
    evaluation: list
    """``probes.evals.problems.Problem`` lists."""


def prepare(cfg: ExpertsConfig) -> Inputs:
    """Selection and evaluation problems, checked before any model is loaded."""
    from probes.zoo.evaluate import problem_split

    return Inputs(*problem_split(cfg.problems, cfg.n_traces, cfg.n_problems))


def load_model(cfg: ExpertsConfig):
    """The model, checked against the config (an MoE model, markers that are tokens, ℓ within range)
    before any stage runs."""
    from probes.experts import check_moe, resolve_markers
    from probes.harness.experiment import load_config_model

    model = load_config_model(cfg)
    check_moe(model)
    resolve_markers(model.tokenizer, cfg.marker_specs(), model.vocab_size)
    n_pairs = len(model.moe_layers) * model.n_experts
    big = [e for e in (cfg.ell, *cfg.ells) if e > n_pairs]
    if big:
        raise ValueError(f"ℓ = {big[0]} is larger than the {n_pairs} (layer, expert) pairs of {cfg.model}")
    return model


# ----- where things are -------------------------------------------------------------------------------

TRACES = "traces.json"
COUNTS = "counts/routing"
SCORES = "scores/npmi"
SPECIALISATION = "scores/specialisation"
SENTENCES = "sentences.json"


def condition_key(kind: str, ell: int | None = None, beta: float | None = None, draw: int | None = None) -> str:
    if kind == "baseline":
        return "baseline"
    prefix = "rice" if kind == "rice" else f"random{draw}"
    return f"{prefix}_l{ell}_b{beta:g}"


def conditions(cfg: ExpertsConfig) -> list[tuple[str, dict[str, Any]]]:
    """(key, description) of every condition of the sweep, baseline first."""
    out = [("baseline", {"kind": "baseline"})]
    for ell in cfg.ells:
        for beta in cfg.betas:
            out.append((condition_key("rice", ell, beta), {"kind": "rice", "ell": ell, "beta": beta}))
            out += [(condition_key("random", ell, beta, d), {"kind": "random", "ell": ell, "beta": beta, "draw": d})
                    for d in range(cfg.random_draws)]
    return out


def _traces(ctx: Context) -> list[dict[str, str]]:
    return json.loads((ctx.run.path / TRACES).read_text(encoding="utf-8"))


def random_experts(model, cfg: ExpertsConfig, chosen, ell: int, draw: int) -> list[tuple[int, int]]:
    """Draw ``draw`` of the random-expert control at ℓ: ℓ pairs other than the chosen ones, and another
    set than draws 0..draw-1 while the model has enough pairs (the same pairs at every β)."""
    from probes.experts import random_pairs

    seen: list[list[tuple[int, int]]] = []
    n_sets = math.comb(len(model.moe_layers) * model.n_experts - len(chosen), ell)
    seed = cfg.seed * 1000 + 100 * ell
    while len(seen) <= draw:
        pairs = random_pairs(model, ell, seed=seed, exclude=chosen)
        seed += 1
        if pairs not in seen or len(seen) >= n_sets:
            seen.append(pairs)
    return seen[draw]


# ----- stages ------------------------------------------------------------------------------------------


def stage_traces(ctx: Context) -> None:
    from tqdm.auto import tqdm

    from probes.io import atomic_write_json

    if ctx.done("traces", "traces"):
        return
    model, cfg = ctx.model, ctx.cfg
    rows = []
    sel = ctx.inputs.selection
    for b in tqdm(range(0, len(sel), cfg.batch_size), desc="traces"):
        prompts = [model.render_chat(p.prompt) for p in sel[b : b + cfg.batch_size]]
        outs = model.generate(prompts, max_new_tokens=cfg.max_new_tokens)
        rows += [{"problem": p.prompt, "gold": p.gold, "prompt": q, "completion": o.text}
                 for p, q, o in zip(sel[b : b + cfg.batch_size], prompts, outs)]
    atomic_write_json(ctx.run.path / TRACES, rows)
    ctx.mark("traces", "traces", n=len(rows))


def stage_counts(ctx: Context) -> None:
    from probes.experts import count_routing

    if ctx.done("counts", "routing"):
        return
    cfg = ctx.cfg
    texts = [t["prompt"] + t["completion"] for t in _traces(ctx)]
    counts = count_routing(ctx.model, texts, cfg.marker_specs(), batch_size=cfg.batch_size, progress=True)
    counts.save(ctx.run.path / COUNTS)
    ctx.mark("counts", "routing", tokens=int(counts.tokens.sum()),
             **{f"marker_positions {m}": int(a.sum()) for m, a in counts.marker_tokens.items()})


def stage_scores(ctx: Context) -> None:
    from probes.experts import RoutingCounts, npmi_scores, specialisation_scores

    if ctx.done("scores", "npmi"):
        return
    cfg = ctx.cfg
    counts = RoutingCounts.load(ctx.run.path / COUNTS)
    missing = [m for m, a in counts.marker_tokens.items() if a.sum() == 0]
    if missing:
        ctx.notes.append(f"scores: markers {missing} never occur in the traces, so their nPMI is -1 everywhere")
    weights = cfg.marker_weights()
    npmi_scores(counts, weights, ell=cfg.ell, n_boot=cfg.n_stability, seed=cfg.seed).save(ctx.run.path / SCORES)
    specialisation_scores(counts, weights, ell=cfg.ell).save(ctx.run.path / SPECIALISATION)
    ctx.mark("scores", "npmi")


def stage_sentences(ctx: Context) -> None:
    from tqdm.auto import tqdm

    from probes.experts import ExpertScores, sentence_routing
    from probes.io import atomic_write_json

    cfg = ctx.cfg
    if ctx.done("sentences", "sentences") or cfg.n_sentence_traces == 0:
        return
    chosen = ExpertScores.load(ctx.run.path / SCORES).top(cfg.ell)
    rows = []
    for i, t in enumerate(tqdm(_traces(ctx)[: cfg.n_sentence_traces], desc="sentences")):
        text = t["prompt"] + t["completion"]
        if "<think>" not in text:
            continue
        rows += [r.to_json() for r in sentence_routing(ctx.model, text, chosen, problem=t["problem"], trace=i)]
    atomic_write_json(ctx.run.path / SENTENCES, {"chosen": [list(p) for p in chosen], "sentences": rows})
    ctx.mark("sentences", "sentences", n=len(rows))


def stage_sweep(ctx: Context) -> None:
    """One unit per condition (``--executor ray``: one Ray task each)."""
    ctx.run_units("sweep", [k for k, _ in conditions(ctx.cfg)], sweep_unit)


def sweep_unit(ctx: Context, key: str) -> None:
    """Condition ``key``: sample the evaluation problems under its intervention, save, mark."""
    from probes.experts import ExpertScores, rice, run_condition

    cfg, model = ctx.cfg, ctx.model
    c = dict(conditions(cfg))[key]
    scores = ExpertScores.load(ctx.run.path / SCORES)
    if c["kind"] == "baseline":
        pairs: list = []
    elif c["kind"] == "rice":
        pairs = scores.top(c["ell"])
    else:
        pairs = random_experts(model, cfg, scores.top(c["ell"]), c["ell"], c["draw"])
    ivs = [rice(model, pairs, c["beta"], renormalize=cfg.renormalize)] if pairs else []
    prompts = [model.render_chat(p.prompt) for p in ctx.inputs.evaluation]
    result = run_condition(model, prompts, [p.gold for p in ctx.inputs.evaluation], name=key, interventions=ivs,
                           samples=cfg.samples, seed=cfg.seed, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_new_tokens=cfg.max_new_tokens)
    result.save(ctx.run.path / "conditions" / key)
    ctx.mark("sweep", key, pairs=[list(p) for p in pairs])


# ----- audit ---------------------------------------------------------------------------------------------


def audit(ctx: Context) -> list[Issue]:
    """Conditions marked done whose files are unreadable, and a sweep left partial."""
    from probes.experts import ConditionResult

    out = []
    keys = [k for k, _ in conditions(ctx.cfg)]
    done = [k for k in keys if ctx.done("sweep", k)]
    for key in done:
        try:
            ConditionResult.load(ctx.run.path / "conditions" / key)
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append(Issue(f"conditions/{key}", f"damaged ({e})",
                             f"delete conditions/{key}.* and done/sweep/{key}.json, then rerun with --stages sweep report",
                             "the comparison is made without this condition"))
    if done and len(done) < len(keys) and not ctx.done("sweep"):
        out.append(Issue("conditions/", f"partial ({len(done)} of {len(keys)} conditions)",
                         "rerun with --stages sweep report", "the comparison is made without the missing conditions"))
    return out


# ----- report: saved artifacts only ------------------------------------------------------------------


def load_conditions(ctx: Context) -> dict[str, Any]:
    """key → ConditionResult of every finished condition."""
    from probes.experts import ConditionResult

    return {k: ConditionResult.load(ctx.run.path / "conditions" / k) for k, _ in conditions(ctx.cfg)
            if ctx.done("sweep", k)}


def sweep_bands(ctx: Context, results: dict[str, Any], metric: str) -> dict[str, Any]:
    """Bands of ``metric`` ('accuracy' or 'thinking_length') against β, keyed by ℓ: RICE, and the random
    control with its draws pooled (problems × draws); NaN where a condition is missing."""
    from probes.evals.stats import bootstrap_ci

    cfg = ctx.cfg
    per = (lambda r: r.correct.mean(1)) if metric == "accuracy" else (lambda r: r.think_tokens.mean(1))
    nan3 = (math.nan, math.nan, math.nan)

    def band(values: list[np.ndarray]) -> tuple[float, float, float]:
        return bootstrap_ci(np.concatenate(values), n_boot=cfg.n_boot, seed=cfg.seed) if values else nan3

    reinforced, random = {}, {}
    for ell in cfg.ells:
        rows = [band([per(results[k])] if (k := condition_key("rice", ell, b)) in results else []) for b in cfg.betas]
        reinforced[ell] = {n: np.array([r[i] for r in rows]) for i, n in enumerate(("mean", "lo", "hi"))}
        rows = [band([per(results[k]) for d in range(cfg.random_draws)
                      if (k := condition_key("random", ell, b, d)) in results]) for b in cfg.betas]
        random[ell] = {n: np.array([r[i] for r in rows]) for i, n in enumerate(("mean", "lo", "hi"))}
    base = band([per(results["baseline"])]) if "baseline" in results else nan3
    return {"reinforced": reinforced, "random": random if cfg.random_draws else None, "baseline": base}


def stage_report(ctx: Context) -> Path:
    from probes.plots import Report

    report = Report(f"Thinking experts — {ctx.cfg.model}", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def add_report_sections(ctx: Context, report, *, heading: str = "Thinking experts (nPMI)") -> dict[str, Any]:
    from probes.experts import ExpertScores, RoutingCounts, paired_differences
    from probes.plots import beta_sweep_figure, npmi_heatmap, score_ranking_figure

    cfg = ctx.cfg
    report.add_heading(heading)
    ctx.add_issues(report)
    if not ctx.done("scores", "npmi"):
        report.add_text("No expert scores yet: run the traces, counts and scores stages.")
        return {}
    counts = RoutingCounts.load(ctx.run.path / COUNTS)
    scores = ExpertScores.load(ctx.run.path / SCORES)
    chosen = scores.top(cfg.ell)
    summary: dict[str, Any] = {"chosen": [list(p) for p in chosen]}
    n_pos = {m: int(a.sum()) for m, a in counts.marker_tokens.items()}
    weights = " ".join(f"{'+' if c >= 0 else '−'}{abs(c):g}·nPMI({m}, E)" for m, c in scores.weights.items())
    stab = ", ".join(f"L{L}·E{e} {round(100 * float(scores.stability[scores.layers.index(L), e]))}%"
                     for L, e in chosen) if scores.stability is not None else "not measured"
    report.add_text(f"{counts.n_traces} of the model's own greedy traces ({int(counts.tokens.sum()):,} tokens; marker "
                    f"positions: {', '.join(f'{m} {n}' for m, n in n_pos.items())}) were teacher-forced and every "
                    f"MoE layer's top-{counts.top_k} routing counted. Score(E) = {weights.lstrip('+')}, ranked over all "
                    f"{scores.score.size} (layer, expert) pairs: the top-{cfg.ell} are "
                    f"{', '.join(f'layer {L} expert {e}' for L, e in chosen)} (in the top-{cfg.ell} of {stab} of "
                    f"{scores.n_boot} bootstrap resamples of the traces).")
    rows = scores.table(10)
    report.add_figure(score_ranking_figure(rows, ell=cfg.ell), "experts_ranking",
                      caption="The ten best (layer, expert) pairs by score; stability: share of bootstrap resamples of "
                              "the traces in which the pair is among the top-ℓ")
    report.add_table([{k: (rounded(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                     caption="Global ranking (score = Σ c_x·nPMI(x, E)); nPMI = −1 where the pair never fires on the marker")
    for i, m in enumerate(scores.values):
        report.add_figure(npmi_heatmap(scores.values[m], layers=scores.layers, marker=m, chosen=chosen), f"experts_npmi_{i}",
                          caption=f"nPMI({m}, E) per layer and expert; outlined: the top-{cfg.ell} by score")
    summary["top"] = [{k: (rounded(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows[:cfg.ell]]
    summary.update(_sentence_section(ctx, report, chosen))
    results = load_conditions(ctx)
    if "baseline" not in results:
        report.add_text("The β sweep has not run yet: run the sweep stage.")
        return summary
    base = results["baseline"]
    report.add_text(f"RICE (§2): on {len(base.correct)} evaluation problems (not the selection problems), each sampled "
                    f"{cfg.samples} times at T = {cfg.temperature:g}, top-p {cfg.top_p:g} with the same seeds in every "
                    f"condition, the routing weight of each top-ℓ expert is multiplied by β wherever the router selected "
                    f"it ({'renormalised so Σw′ = Σw' if cfg.renormalize else 'no renormalisation'}); the control boosts "
                    f"ℓ random (layer, expert) pairs other than the chosen ones ({cfg.random_draws} draws per ℓ).")
    for metric, label in (("accuracy", "accuracy"), ("thinking_length", "mean thinking tokens")):
        b = sweep_bands(ctx, results, metric)
        report.add_figure(beta_sweep_figure(list(cfg.betas), reinforced=b["reinforced"], random=b["random"],
                                            baseline=b["baseline"], metric=label),
                          f"experts_beta_{metric}",
                          caption=f"{label.capitalize()} on {len(base.correct)} evaluation problems × {cfg.samples} "
                                  f"samples against β, 95% bootstrap bands over problems; dashed: random experts of the "
                                  f"same count ({cfg.random_draws} draws pooled); grey: no reinforcement")
    table, diffs = [], {}
    for key, r in results.items():
        row = {"condition": key, "accuracy [95% CI]": with_ci(r.accuracy(cfg.n_boot, cfg.seed)),
               "thinking tokens [95% CI]": with_ci(r.thinking_length(cfg.n_boot, cfg.seed), 1),
               "closed </think>": rounded(float(r.closed.mean()))}
        if key != "baseline":
            d = paired_differences(r, base, cfg.n_boot, cfg.seed)
            row |= {"Δ accuracy": with_ci(d["accuracy"]), "Δ thinking tokens": with_ci(d["thinking_tokens"], 1)}
            diffs[key] = {k: {"value": rounded(e.value, 4), "lo": rounded(e.lo, 4), "hi": rounded(e.hi, 4)}
                          for k, e in d.items()}
        table.append(row)
    report.add_table(table, caption="Every condition; Δ: condition − no reinforcement, paired by problem (same seeds)")
    summary["baseline"] = {"accuracy": rounded(float(base.correct.mean()), 4),
                           "thinking_tokens": rounded(float(base.think_tokens.mean()), 2)}
    summary["differences"] = diffs
    return summary


def _sentence_section(ctx: Context, report, chosen) -> dict[str, Any]:
    from probes.experts import SentenceRouting, by_category
    from probes.plots import category_share_figure

    path = ctx.run.path / SENTENCES
    if not ctx.done("sentences", "sentences") or not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [SentenceRouting(r["trace"], r["index"], r["text"], r["category"], r["tokens"], r["share"],
                            tuple(r["per_pair"])) for r in data["sentences"]]
    if not rows:
        return {}
    cats = by_category(rows)
    tokens = sum(r.tokens for r in rows)
    overall = sum(r.share * r.tokens for r in rows) / tokens if tokens else 0.0
    report.add_figure(category_share_figure(cats, overall=overall), "experts_categories",
                      caption=f"Share of each sentence category's tokens on which the router picked at least one of "
                              f"the top-{len(chosen)} experts ({len({r.trace for r in rows})} traces, {len(rows)} "
                              "sentences; categories from the rule labeler); dashed: all thinking tokens")
    example = {}
    for r in sorted(rows, key=lambda r: -r.share):
        example.setdefault(r.category, r.text)
    report.add_table([{"category": c["category"], "sentences": c["sentences"], "share": rounded(c["share"]),
                       "example (highest share)": example[c["category"]]} for c in cats],
                     caption="Sentence view: token-weighted share routed to the chosen experts per category")
    return {"sentences": {c["category"]: rounded(c["share"], 4) for c in cats}, "overall_share": rounded(overall, 4)}


EXPERIMENT = Experiment(
    name="moe_experts",
    config=ExpertsConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    load_model=load_model,
    prepare=prepare,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

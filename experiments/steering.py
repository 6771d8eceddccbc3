"""Activation steering on a model: contrast data, a direction, the layer × α sweep on a dev split,
the chosen cell against its controls on the test split, per-example steerability and the report
(reference/steering.md §1, §5).

    python -m experiments.steering                                   # zoo:refusal-reasoner, refusal
    python -m experiments.steering --layers 1 2 --alphas 4 8 16 --n-examples 60
    python -m experiments.steering --run-dir runs/steering/<id>      # resume as configured
    python -m experiments.steering --stages report --run-dir runs/steering/<id>

Stages: ``collect`` renders the contrast inputs, the examples (split dev/test by ``seed``) and the
neutral prompts of the KL guard and saves them as JSON; ``directions`` reads the contrast at the last
token of each rendered prompt and saves a ``SteeringVector``; ``sweep`` evaluates every
(layer, α) cell on the dev split (one unit and marker per cell, so a killed sweep resumes at the
first unfinished cell); ``evaluate`` selects the cell (best behaviour among those passing the KL
guard), compares it with its controls on the test split and measures per-example steerability over
the α grid at the chosen layer; ``report`` draws tables and figures from the saved artifacts only.

Behaviours on ``zoo:refusal-reasoner``: the contrast is plain forbidden requests vs harmless requests
of the training stream, and the metric is 1 when the greedy answer after ``</think>`` refuses
(``refusal.is_refusal``). ``refusal``: the examples are held-out harmless requests, so steering along
forbidden − harmless should make them refused. ``framed-refusal``: the examples are held-out framed
forbidden requests, which the organism complies with at planted per-frame rates (its graded refusal
cliff); ``framed-compliance``: the same examples, scored 1 when the answer complies.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from probes.harness import Context, Experiment, ExperimentConfig, Issue, Stage, check_layers, main, session_field
from probes.plots.report import rounded, with_ci

log = logging.getLogger(__name__)

StageName = Literal["collect", "directions", "sweep", "evaluate", "report"]
STAGES: tuple[StageName, ...] = ("collect", "directions", "sweep", "evaluate", "report")
BehaviourName = Literal["refusal", "framed-refusal", "framed-compliance"]
EXAMPLE_STYLE = {"refusal": "harmless", "framed-refusal": "forbidden_wrapped", "framed-compliance": "forbidden_wrapped"}
"""Behaviour → the held-out request style of its examples (``tasks.refusal.STYLES``)."""
INSTRUCTION = {"refusal": "Refuse this request.", "framed-refusal": "Refuse this request.",
               "framed-compliance": "Answer this request in full."}
"""Behaviour → the default instruction of its prompting baseline."""
MethodName = Literal["diff_in_means", "pca", "probe"]
PositionsName = Literal["all", "generated", "thinking"]


@dataclass(frozen=True, kw_only=True)
class SteeringConfig(ExperimentConfig):
    """Activation-steering experiment (reference/steering.md §1, §5): sweep layer × α on a dev
    split, report the chosen cell against its controls on a held-out split."""

    model: str = field(default="zoo:refusal-reasoner", metadata={"help": "model spec (zoo:NAME, directory or hub name)"})
    behaviour: BehaviourName = field(default="refusal", metadata={
        "help": "behaviour to steer (contrast forbidden vs harmless requests): refusal (examples: harmless requests; "
                "metric: the answer refuses), framed-refusal (examples: framed forbidden requests; the answer "
                "refuses) or framed-compliance (the same examples; the answer complies)"})
    method: MethodName = field(default="diff_in_means", metadata={
        "help": "direction method: diff_in_means, pca (PC1 of paired differences, unit norm) or probe (logistic)"})
    n_contrast: int = field(default=64, metadata={"help": "contrast inputs per side"})
    n_examples: int = field(default=40, metadata={"help": "held-out examples, split half dev / half test by seed"})
    n_neutral: int = field(default=16, metadata={"help": "neutral prompts of the KL guard (not examples)"})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "layers to steer (resid_post[L])"})
    alphas: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0], metadata={
        "help": "strengths of the sweep (finite); steerability uses this grid plus 0"})
    positions: PositionsName = field(default="all", metadata={
        "help": "positions steered: all, generated (new tokens only) or thinking"})
    kl_threshold: float = field(default=0.1, metadata={"help": "KL guard: mean last-position KL on neutral prompts (§5.5)"})
    kl_tokens: int = field(default=16, metadata={
        "help": "KL guard: also the mean KL along the unsteered model's first N generated tokens on the neutral "
                "prompts, under the same threshold (0: the last prompt position only)"})
    instruction: str = field(default="", metadata={
        "help": "prompting baseline: instruction placed inside the user turn before the request (§5.2); empty: the "
                "behaviour's own (refusal behaviours: 'Refuse this request.'; framed-compliance: 'Answer this "
                "request in full.')"})
    max_new_tokens: int = field(default=128, metadata={"help": "greedy generation budget per example"})
    seed: int = field(default=0, metadata={"help": "seed of the dev/test split, the random control and the bootstrap"})
    n_boot: int = field(default=10_000, metadata={"help": "bootstrap resamples of every interval"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int = session_field(16, help="prompts per forward / generation batch (results do not depend on it)")

    def __post_init__(self):
        if not self.alphas:
            raise ValueError("alphas is empty: give a grid of strengths, e.g. --alphas 4 8 16")
        bad = [a for a in self.alphas if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas must be finite numbers, got {bad[0]!r}: choose strengths from a finite grid")
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas {self.alphas} repeat a value: give each strength once")
        if not self.layers:
            raise ValueError("layers is empty: give the layers to steer, e.g. --layers 1 2")
        if any(L < 0 for L in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {self.layers} must be distinct block indices >= 0")
        if self.n_contrast < 2 and self.method == "probe":
            raise ValueError("method probe needs n_contrast >= 2")
        if self.n_contrast < 1 or self.n_neutral < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("n_contrast, n_neutral, max_new_tokens and batch_size must be >= 1")
        if self.n_examples < 4:
            raise ValueError(f"n_examples must be >= 4 (at least 2 dev and 2 test examples), got {self.n_examples}")
        if self.kl_tokens < 0:
            raise ValueError(f"kl_tokens must be >= 0 (0: the last prompt position only), got {self.kl_tokens}")
        if not math.isfinite(self.kl_threshold) or self.kl_threshold < 0:
            raise ValueError(f"kl_threshold must be a finite number >= 0, got {self.kl_threshold!r}")
        if self.seed < 0 or self.n_boot < 1:
            raise ValueError("seed must be >= 0 and n_boot >= 1")
        if self.instruction and not self.instruction.strip():
            raise ValueError("instruction is blank: give the prompting baseline's instruction, e.g. 'Refuse this "
                             "request.', or leave it empty for the behaviour's own")

    @property
    def baseline_instruction(self) -> str:
        """The prompting baseline's instruction: ``instruction``, or the behaviour's own when empty."""
        return self.instruction or INSTRUCTION[self.behaviour]


# ----- inputs: validated before any model is loaded or directory created ------------------------


@dataclass(frozen=True)
class Inputs:
    """Request texts (not yet chat-rendered): contrast (positive[i] pairs with negative[i]),
    examples and neutral prompts of the KL guard."""

    positive: list[str]
    negative: list[str]
    examples: list[str]
    neutral: list[str]


@dataclass(frozen=True)
class Prompt:
    """One example: the user's request and its chat-rendered prompt (ends where thinking opens)."""

    request: str
    prompt: str


def prepare(cfg: SteeringConfig) -> Inputs:
    """The behaviour's request texts, and the layers checked against a local model's config when it has one."""
    from probes.zoo.tasks import refusal

    check_layers(cfg.model, cfg.layers)
    positive = [refusal.request(i, refusal.TRAIN_SEED, style="forbidden_plain").prompt for i in range(cfg.n_contrast)]
    negative = [refusal.request(i, refusal.TRAIN_SEED, style="harmless").prompt for i in range(cfg.n_contrast)]
    style = EXAMPLE_STYLE[cfg.behaviour]
    examples = [ex.prompt for ex in refusal.distinct_requests(refusal.HELDOUT_SEED, style, cfg.n_examples)]
    neutral = [ex.prompt for ex in refusal.distinct_requests(refusal.HELDOUT_SEED, "harmless", cfg.n_neutral,
                                                             exclude=frozenset(examples))]
    return Inputs(positive, negative, examples, neutral)


# ----- the behaviour --------------------------------------------------------------------------------


def refusal_metric(max_new_tokens: int, *, comply: bool = False):
    """1.0 when the greedy answer after ``</think>`` refuses (``comply``: answers without refusing),
    else 0.0; no answer scores 0.0 either way."""
    from probes.models.chat import thinking_and_answer
    from probes.zoo.tasks import refusal

    def metric(model, examples):
        outs = model.generate([e.prompt for e in examples], max_new_tokens=max_new_tokens)
        answers = [thinking_and_answer(o.text)[1] for o in outs]
        return [float(a is not None and a.strip() != "" and refusal.is_refusal(a) != comply) for a in answers]

    return metric


def metric_for(cfg: SteeringConfig):
    """The behaviour's metric (one number per example, higher = more of the behaviour)."""
    return refusal_metric(cfg.max_new_tokens, comply=cfg.behaviour == "framed-compliance")


def instruct(model, instruction: str):
    """Example → the example with ``instruction`` inside the user turn (for the prompting baseline)."""

    def add(e: Prompt) -> Prompt:
        request = f"{instruction} {e.request}"
        return Prompt(request, model.render_chat(request))

    return add


def _positions(name: str):
    return None if name == "all" else name


def _method(name: str):
    from probes.steering import DiffInMeans, LogisticProbe, PCADiff

    return {"diff_in_means": DiffInMeans(), "pca": PCADiff(center=False), "probe": LogisticProbe()}[name]


# ----- where things are -------------------------------------------------------------------------------

DATA = "data.json"
VECTOR = "directions/vector"
NORMS = "directions/residual_norms"
CONTROLS = "evaluate/controls"
STEERABILITY = "evaluate/steerability"
CURVE = "evaluate/curve.json"


def cell_key(layer: int, alpha: float) -> str:
    return f"L{layer}_a{alpha:g}"


def _data(ctx: Context) -> dict[str, Any]:
    return json.loads((ctx.run.path / DATA).read_text(encoding="utf-8"))


def _prompts(rows: list[dict[str, str]]) -> list[Prompt]:
    return [Prompt(r["request"], r["prompt"]) for r in rows]


def steer_grid(alphas: list[float]) -> list[float]:
    """The α grid of per-example steerability: 0 and the sweep's strengths, sorted."""
    return sorted({0.0, *map(float, alphas)})


# ----- stages ------------------------------------------------------------------------------------------


def stage_collect(ctx: Context) -> None:
    from probes.io import atomic_write_json
    from probes.steering import split_indices

    if ctx.done("collect", "data"):
        return
    cfg, inp, model = ctx.cfg, ctx.inputs, ctx.model
    render = model.render_chat
    dev, test = split_indices(len(inp.examples), seed=cfg.seed)
    rows = [{"request": r, "prompt": render(r)} for r in inp.examples]
    atomic_write_json(ctx.run.path / DATA, {
        "behaviour": cfg.behaviour,
        "contrast": {"paired": True, "positive": [render(r) for r in inp.positive],
                     "negative": [render(r) for r in inp.negative],
                     "positive_requests": inp.positive, "negative_requests": inp.negative},
        "dev": [rows[i] for i in dev], "test": [rows[i] for i in test],
        "neutral": [render(r) for r in inp.neutral],
        "instruction": cfg.baseline_instruction,
    })
    ctx.mark("collect", "data", n_dev=len(dev), n_test=len(test))


def stage_directions(ctx: Context) -> None:
    from probes.steering import Contrast, LastToken, read_contrast

    if ctx.done("directions", "vector"):
        return
    cfg = ctx.cfg
    c = _data(ctx)["contrast"]
    contrast = Contrast.pairs(zip(c["positive"], c["negative"]))
    acts = read_contrast(ctx.model, contrast, cfg.layers, read=LastToken(), batch_size=cfg.batch_size, progress=True)
    acts.vector(_method(cfg.method)).save(ctx.run.path / VECTOR)
    ctx.mark("directions", "vector")


def stage_sweep(ctx: Context) -> None:
    """One unit per (layer, α) cell (``--executor ray``: one Ray task each)."""
    cfg = ctx.cfg
    ctx.run_units("sweep", [cell_key(L, a) for L in cfg.layers for a in cfg.alphas], sweep_unit)


def sweep_unit(ctx: Context, key: str) -> None:
    """Cell ``key``: the dev metric, the KL guard and ‖α·v‖ relative to the mean residual norm on the
    neutral prompts at its layer (§5.4), saved and marked."""
    from probes.steering import SteeringCell, SteeringVector, evaluate_cell

    cfg, model = ctx.cfg, ctx.model
    L, a = next((L, a) for L in cfg.layers for a in cfg.alphas if cell_key(L, a) == key)
    model.check_layer(L, "--layers")
    data = _data(ctx)
    vector = SteeringVector.load(ctx.run.path / VECTOR)
    cell = SteeringCell(layer=L, alpha=a, vector=vector[L], positions=_positions(cfg.positions))
    t0 = time.perf_counter()
    result = evaluate_cell(model, cell, _prompts(data["dev"]), metric_for(cfg), data["neutral"],
                           kl_threshold=cfg.kl_threshold, kl_tokens=cfg.kl_tokens,
                           reference_norm=reference_norm(ctx, L),
                           batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=cfg.seed)
    result.save(ctx.run.path / "cells" / key)
    ctx.mark("sweep", key, seconds=round(time.perf_counter() - t0, 2))


def reference_norm(ctx: Context, layer: int) -> float:
    """Mean residual norm at ``layer`` on the neutral prompts (§5.4), computed once per run and layer
    (every α of a layer shares it)."""
    from probes.io import atomic_write_json
    from probes.steering import residual_norm

    path = ctx.run.path / NORMS / f"L{layer}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["residual_norm"]
    norm = residual_norm(ctx.model, _data(ctx)["neutral"], layer, batch_size=ctx.cfg.batch_size)
    atomic_write_json(path, {"layer": layer, "residual_norm": norm})
    return norm


def load_cells(ctx: Context) -> list:
    """Every finished cell of the configured grid, in grid order."""
    from probes.steering import CellResult

    return [CellResult.load(ctx.run.path / "cells" / cell_key(L, a))
            for L in ctx.cfg.layers for a in ctx.cfg.alphas if ctx.done("sweep", cell_key(L, a))]


def stage_evaluate(ctx: Context) -> None:
    from probes.io import atomic_write_json
    from probes.steering import (
        SteeringCell,
        SteeringVector,
        behaviour_curve,
        compare_controls,
        select_cell,
        steerability,
    )

    cfg = ctx.cfg
    if ctx.done("evaluate", "controls") and ctx.done("evaluate", "steerability"):
        return
    cells = load_cells(ctx)
    missing = len(cfg.layers) * len(cfg.alphas) - len(cells)
    if missing:
        raise ValueError(f"{missing} cells of the sweep are unfinished: run --stages sweep evaluate report "
                         f"--run-dir {ctx.run.path}")
    try:
        chosen = select_cell(cells)
    except ValueError as e:
        ctx.notes.append(f"evaluate: {e}")
        log.warning("%s", e)
        return
    data, model, metric = _data(ctx), ctx.model, metric_for(cfg)
    test = _prompts(data["test"])
    vector = SteeringVector.load(ctx.run.path / VECTOR)
    positions = _positions(cfg.positions)
    cell = SteeringCell(layer=chosen.layer, alpha=chosen.alpha, vector=vector[chosen.layer], positions=positions)
    if not ctx.done("evaluate", "controls"):
        t0 = time.perf_counter()
        comp = compare_controls(model, cell, test, metric, instruction=instruct(model, cfg.baseline_instruction),
                                control_seed=cfg.seed, batch_size=cfg.batch_size, n_boot=cfg.n_boot, seed=cfg.seed,
                                progress=True)
        comp.save(ctx.run.path / CONTROLS)
        ctx.mark("evaluate", "controls", layer=chosen.layer, alpha=chosen.alpha,
                 seconds=round(time.perf_counter() - t0, 2))
    if not ctx.done("evaluate", "steerability"):
        grid = steer_grid(cfg.alphas)
        values = behaviour_curve(model, test, metric, layer=chosen.layer, vector=vector[chosen.layer], alphas=grid,
                                 positions=positions, batch_size=cfg.batch_size, progress=True)
        atomic_write_json(ctx.run.path / CURVE, {"layer": chosen.layer, "alphas": grid, "values": values.tolist()})
        steerability(grid, values, expected_sign=1, n_boot=cfg.n_boot, seed=cfg.seed).save(ctx.run.path / STEERABILITY)
        ctx.mark("evaluate", "steerability", layer=chosen.layer)


# ----- audit ---------------------------------------------------------------------------------------------


def audit(ctx: Context) -> list[Issue]:
    """Cells marked done whose files are unreadable, and a sweep left partial."""
    from probes.steering import CellResult

    out = []
    cfg = ctx.cfg
    done = [cell_key(L, a) for L in cfg.layers for a in cfg.alphas if ctx.done("sweep", cell_key(L, a))]
    for key in done:
        try:
            CellResult.load(ctx.run.path / "cells" / key)
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append(Issue(f"cells/{key}", f"damaged ({e})",
                             f"delete cells/{key}.* and done/sweep/{key}.json, then rerun with --stages sweep evaluate report",
                             "the selection is made without this cell"))
    n = len(cfg.layers) * len(cfg.alphas)
    if done and len(done) < n and not ctx.done("sweep"):
        out.append(Issue("cells/", f"partial ({len(done)} of {n} cells)", "rerun with --stages sweep evaluate report",
                         "the selection is made without the missing cells"))
    return out


# ----- report: saved artifacts only ------------------------------------------------------------------


def grid_arrays(cells, layers: list[int], alphas: list[float]) -> dict[str, np.ndarray]:
    """(n_layers, n_alphas) arrays of behaviour mean/lo/hi, KL and norm ratio (NaN: cell not finished)."""
    shape = (len(layers), len(alphas))
    out = {k: np.full(shape, np.nan) for k in ("mean", "lo", "hi", "kl", "kl_generated", "norm_ratio")}
    for c in cells:
        i, j = layers.index(c.layer), alphas.index(c.alpha)
        out["mean"][i, j], out["lo"][i, j], out["hi"][i, j] = c.estimate.value, c.estimate.lo, c.estimate.hi
        out["kl"][i, j], out["norm_ratio"][i, j] = c.kl.mean_kl, c.norm_ratio
        if c.kl.mean_kl_generated is not None:
            out["kl_generated"][i, j] = c.kl.mean_kl_generated
    return out


def stage_report(ctx: Context) -> Path:
    from probes.plots import Report

    report = Report(f"Steering ({ctx.cfg.behaviour}) — {ctx.cfg.model}", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def add_report_sections(ctx: Context, report) -> dict[str, Any]:
    from probes.plots import behaviour_alpha_figure, kl_alpha_figure, steerability_histogram
    from probes.steering import ControlComparison, Steerability, select_cell

    cfg = ctx.cfg
    report.add_heading(f"Steering {cfg.behaviour}: {cfg.method}, read at the last prompt token, steered at "
                       f"{cfg.positions} positions")
    ctx.add_issues(report)
    cells = load_cells(ctx)
    if not cells:
        report.add_text("No sweep cells yet: run the collect, directions and sweep stages.")
        return {}
    summary: dict[str, Any] = {}
    tokens = max(c.kl.tokens for c in cells)
    along = f"mean KL, {tokens} generated" if tokens else None
    report.add_table([{"layer": c.layer, "alpha": rounded(c.alpha, 4), "norm ratio": rounded(c.norm_ratio),
                       "mean KL": rounded(c.kl.mean_kl, 4), **({along: rounded(c.kl.mean_kl_generated, 4)} if along else {}),
                       "KL guard": "pass" if c.passed else "fail",
                       "dev behaviour [95% CI]": with_ci(c.estimate), "n": c.estimate.n} for c in cells],
                     caption=f"Dev split: every (layer, α) cell; the guard passes at mean KL ≤ {cfg.kl_threshold:g} on "
                             f"{cfg.n_neutral} neutral prompts (§5.5), at the last prompt position"
                             + (f" and along the unsteered model's first {tokens} generated tokens" if tokens else ""))
    controls = None
    if ctx.done("evaluate", "controls"):
        controls = ControlComparison.load(ctx.run.path / CONTROLS)
    layers = [L for L in cfg.layers]
    alphas = [float(a) for a in cfg.alphas]
    g = grid_arrays(cells, layers, alphas)
    baseline = controls.conditions["prompting"].estimate.value if controls is not None else None
    report.add_figure(behaviour_alpha_figure(alphas, g["mean"], g["lo"], g["hi"], layers=layers, baseline=baseline,
                                             metric=f"{cfg.behaviour} rate (dev)"),
                      "steering_behaviour", caption="Behaviour on the dev split against α per layer, 95% bootstrap "
                                                    "bands; dashed: the prompting baseline on the test split")
    report.add_figure(kl_alpha_figure(alphas, g["kl"], layers=layers, threshold=cfg.kl_threshold,
                                      generated=g["kl_generated"] if tokens else None),
                      "steering_kl", caption="Mean next-token KL(unsteered ‖ steered) on neutral prompts at the last "
                                             "prompt position" + (f"; dotted: along {tokens} generated tokens" if tokens
                                                                  else "") + "; dashed: the guard")
    passed = [c for c in cells if c.passed]
    if controls is not None:
        chosen = next(c for c in cells if c.layer == controls.layer and c.alpha == controls.alpha)
    else:
        chosen = select_cell(cells) if passed else None
    if chosen is None:
        report.add_text(f"No cell passes the KL guard (threshold {cfg.kl_threshold:g}): add smaller alphas.")
        return {"chosen": None}
    summary["chosen"] = {"layer": chosen.layer, "alpha": chosen.alpha, "norm_ratio": rounded(chosen.norm_ratio, 4),
                         "mean_kl": rounded(chosen.kl.mean_kl, 5), "dev": rounded(chosen.estimate.value, 4)}
    report.add_table([{"layer": chosen.layer, "alpha": rounded(chosen.alpha, 4), "norm ratio": rounded(chosen.norm_ratio),
                       "mean KL": rounded(chosen.kl.mean_kl, 4), "dev behaviour [95% CI]": with_ci(chosen.estimate)}],
                     caption="Chosen cell: the best dev behaviour among cells passing the KL guard (§5.1); ties go to "
                             "the smaller norm ratio, then the lower layer, then the smaller |α|")
    ties = [c for c in passed if c.estimate.value == chosen.estimate.value]
    if len(ties) > 1:
        report.add_text(f"{len(ties)} passing cells tie at dev behaviour {rounded(chosen.estimate.value)}: the choice "
                        "among them is the tie-break, not a measured difference.")
    if controls is None:
        report.add_text("The chosen cell has not been evaluated on the test split yet: run the evaluate stage.")
        return summary
    report.add_table([{"condition": k, f"{cfg.behaviour} rate [95% CI]": with_ci(s.estimate), "n": s.estimate.n}
                      for k, s in controls.conditions.items()],
                     caption=f"Test split: the chosen cell against its controls (norm-matched random direction, "
                             f"negated vector, prompting baseline: {cfg.baseline_instruction!r} in the user turn)")
    report.add_table([{"steered − condition": k, "difference [95% CI]": with_ci(e)} for k, e in controls.differences.items()],
                     caption="Paired differences on the test split (bootstrap over examples)")
    summary["test"] = {k: {"value": rounded(s.estimate.value, 4), "lo": rounded(s.estimate.lo, 4), "hi": rounded(s.estimate.hi, 4),
                           "n": s.estimate.n} for k, s in controls.conditions.items()}
    summary["differences"] = {k: {"value": rounded(e.value, 4), "lo": rounded(e.lo, 4), "hi": rounded(e.hi, 4)}
                              for k, e in controls.differences.items()}
    if ctx.done("evaluate", "steerability"):
        st = Steerability.load(ctx.run.path / STEERABILITY)
        curve = json.loads((ctx.run.path / CURVE).read_text(encoding="utf-8"))
        report.add_figure(steerability_histogram(st.slopes, st.anti_steerable_fraction,
                                                 title=f"Per-example steerability at layer {curve['layer']}"),
                          "steering_steerability",
                          caption=f"Least-squares slope of each test example's metric against α over {curve['alphas']} "
                                  "(Tan et al., §5.3)")
        report.add_table([{"layer": curve["layer"], "mean slope [95% CI]": with_ci(st.mean, 5), "std": rounded(st.std, 5),
                           "anti-steerable fraction": rounded(st.anti_steerable_fraction),
                           "zero-slope fraction": rounded(float(np.mean(st.slopes == 0)))}],
                         caption="Per-example steerability on the test split")
        summary["steerability"] = {"layer": curve["layer"], "mean": rounded(st.mean.value, 5), "std": rounded(st.std, 5),
                                   "anti_steerable_fraction": rounded(st.anti_steerable_fraction, 4)}
    return summary


EXPERIMENT = Experiment(
    name="steering",
    config=SteeringConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    prepare=prepare,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

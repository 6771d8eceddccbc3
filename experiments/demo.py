"""``probes demo``: the main job on the bundled organisms, one report section per capability.

Each stage computes on the model and saves its artifacts into the run directory; the
``report`` stage draws every section from those saved artifacts (DESIGN.md "Flow of data").
Capability issues add their stage and their section here.

    probes demo                          # zoo:reasoner → runs/demo/<run-id>/report.html
    probes demo --run-dir runs/demo/<id> # resume as configured

The planted-receivers section runs the thought-anchors receiver-head check on ``zoo:long-reasoner``
(``probes.zoo.receiver_check``: the organism whose price and rent sentences every later day reads).
The steering, refusal, experts and task-vector sections run small ``experiments.steering`` and
``experiments.refusal_cliff`` runs on ``zoo:refusal-reasoner``, an ``experiments.moe_experts`` run on
``zoo:moe-reasoner`` and an ``experiments.task_vectors`` run on the ``zoo:tv-*`` family as sub-runs, ``<demo run>/<experiment>/<run-id>/`` (each with its own
config, provenance, markers and full report; resumable with ``python -m experiments.<experiment> --run-dir``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from experiments.steering import BehaviourName
from probes.harness import Context, Experiment, ExperimentConfig, Stage, main, session_field

PLANTED_RECEIVERS = "zoo:long-reasoner"  # the organism with a planted receiver truth (probes.zoo.tasks.ledger)
StageName = Literal["model", "trace", "attention", "logit_lens", "thought_anchors", "planted_receivers", "steering",
                    "refusal", "experts", "task_vectors", "report"]
STAGES: tuple[StageName, ...] = ("model", "trace", "attention", "logit_lens", "thought_anchors", "planted_receivers",
                                 "steering", "refusal", "experts", "task_vectors", "report")


def _default_prompt() -> str:
    """A held-out problem of the organisms' arithmetic task (never seen in training)."""
    from probes.zoo.tasks import arithmetic

    return arithmetic.generate(0, seed=arithmetic.HELDOUT_SEED).prompt


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ExperimentConfig):
    """The demo report on a model (default: the bundled zoo:reasoner)."""

    model: str = field(default="zoo:reasoner", metadata={"help": "model spec: zoo:NAME, a local directory or a hub name"})
    prompt: str = field(default_factory=_default_prompt, metadata={"help": "user message the model answers (thinking on)"})
    max_new_tokens: int = field(default=200, metadata={"help": "greedy generation budget for the demo trace"})
    attention_window: int = field(default=40, metadata={"help": "last N tokens shown in the attention map"})
    lens_positions: int = field(default=24, metadata={"help": "last N positions shown in the logit-lens figure"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    anchors_rollouts: int = field(default=20, metadata={"help": "thought anchors: resamples per sentence in the demo"})
    steering_model: str = field(default="zoo:refusal-reasoner", metadata={
        "help": "steering: the model steered (its requests: probes.zoo.tasks.refusal)"})
    steering_behaviour: BehaviourName = field(
        default="framed-compliance", metadata={
            "help": "steering: the behaviour steered (experiments.steering --behaviour); framed-compliance moves "
                    "the organism's graded framed requests"})
    steering_layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "steering: layers swept"})
    steering_alphas: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0], metadata={
        "help": "steering: strengths swept"})
    steering_examples: int = field(default=24, metadata={
        "help": "steering: held-out requests of the behaviour, half dev (selection) and half test (controls)"})
    steering_max_new_tokens: int = field(default=128, metadata={
        "help": "steering: greedy budget per request (thinking and answer must fit)"})
    refusal_model: str = field(default="zoo:refusal-reasoner", metadata={
        "help": "refusal cliff: the model probed (default prompt sets: the zoo's requests)"})
    refusal_train: int = field(default=32, metadata={"help": "refusal cliff: probe-training prompts per class"})
    refusal_eval: int = field(default=16, metadata={"help": "refusal cliff: evaluation prompts per group"})
    refusal_ood: str = field(default="zoo-oot", metadata={"help": "refusal cliff: out-of-distribution set ('': none)"})
    experts_model: str = field(default="zoo:moe-reasoner", metadata={
        "help": "MoE experts: the mixture-of-experts model (problems: the zoo's arithmetic task)"})
    experts_betas: list[float] = field(default_factory=lambda: [4.0, 64.0], metadata={"help": "MoE experts: β swept"})
    experts_problems: int = field(default=8, metadata={"help": "MoE experts: evaluation problems (2 samples each)"})
    vectors_problems: int = field(default=60, metadata={
        "help": "task vectors: held-out problems of the zoo:tv family (tv-instruct + (tv-rl − tv-sft))"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")

    def __post_init__(self):
        if min(self.max_new_tokens, self.lens_positions, self.attention_window, self.anchors_rollouts,
               self.steering_max_new_tokens) < 1:
            raise ValueError("max_new_tokens, lens_positions, attention_window, anchors_rollouts and "
                             "steering_max_new_tokens must be >= 1")
        self.steering_config()  # the sub-runs' fields are checked with their experiments' own rules
        self.refusal_config()
        self.experts_config()
        self.vectors_config()

    def steering_config(self, **session: Any):
        """The demo-sized ``SteeringConfig`` of the steering section (``session``: its session fields)."""
        from experiments.steering import SteeringConfig

        return SteeringConfig(model=self.steering_model, behaviour=self.steering_behaviour, layers=list(self.steering_layers),
                              alphas=list(self.steering_alphas), n_contrast=32, n_examples=self.steering_examples,
                              n_neutral=8, max_new_tokens=self.steering_max_new_tokens, seed=self.seed,
                              formats=self.formats, device=self.device, dtype=self.dtype, **session)

    def refusal_config(self, **session: Any):
        """The demo-sized ``RefusalCliffConfig`` of the refusal section (``session``: its session fields)."""
        from experiments.refusal_cliff import RefusalCliffConfig

        return RefusalCliffConfig(model=self.refusal_model, n_train=self.refusal_train, n_eval=self.refusal_eval,
                                  ood_set=self.refusal_ood, max_new_tokens=160, head_counts=[1], head_draws=2,
                                  head_samples=1, cliff_judge_ks=[], seed=self.seed, formats=self.formats, device=self.device,
                                  dtype=self.dtype, **session)

    def experts_config(self, **session: Any):
        """The demo-sized ``ExpertsConfig`` of the experts section (``session``: its session fields)."""
        from experiments.moe_experts import ExpertsConfig

        return ExpertsConfig(model=self.experts_model, n_traces=60, betas=list(self.experts_betas), ells=[2],
                             random_draws=1, n_problems=self.experts_problems, samples=2, n_sentence_traces=20,
                             n_stability=200, seed=self.seed, formats=self.formats, device=self.device, dtype=self.dtype,
                             **session)

    def vectors_config(self, **session: Any):
        """The demo-sized ``VectorsConfig`` of the task-vector section (``session``: its session fields)."""
        from experiments.task_vectors import VectorsConfig

        return VectorsConfig(n_problems=self.vectors_problems, alphas=[-1.0, 0.0, 0.5, 1.0], seed=self.seed,
                             formats=self.formats, device=self.device, dtype=self.dtype, **session)

# ----- stages: compute and save -----------------------------------------------------------------


def stage_model(ctx: Context) -> None:
    model = ctx.model
    n_params = sum(p.numel() for p in model.hf.parameters())
    ctx.run.save_json("model", {
        "spec": model.spec, "family": model.family, "parameters": f"{n_params:,}", "layers": model.n_layers,
        "heads (q/kv)": f"{model.n_heads}/{model.n_kv_heads}", "d_model": model.d_model,
        "experts": f"{model.n_experts} (top-{model.top_k})" if model.is_moe else "dense",
        "device": str(model.device), "dtype": str(model.dtype), "weights sha256": model.weights_hash[:16] + "…",
        "sites": model.site_table(),
    })


def stage_trace(ctx: Context) -> None:
    model = ctx.model
    prompt = model.render_chat(ctx.cfg.prompt)
    out = model.generate(prompt, max_new_tokens=ctx.cfg.max_new_tokens)[0]
    ids = model.encode(prompt) + out.token_ids
    ctx.run.save_json("trace", {"prompt": prompt, "completion": out.text, "token_ids": ids,
                                "tokens": [model.tokenizer.decode([t]) for t in ids], "finish_reason": out.finish_reason})


def stage_attention(ctx: Context) -> None:
    model = ctx.model
    ids = torch.tensor([ctx.run.load_json("trace")["token_ids"]])
    L = model.n_layers - 1
    cap = model.capture(ids, [f"attn_pattern[{L}]"], reduce={"attn_pattern": lambda p, layer: p.mean(1)[0]})
    ctx.run.save_tensors("attention", {f"layer{L}_head_mean": cap[f"attn_pattern[{L}]"].float()})


def stage_logit_lens(ctx: Context) -> None:
    from probes.lens import logit_lens

    ids = ctx.run.load_json("trace")["token_ids"]
    positions = list(range(max(0, len(ids) - ctx.cfg.lens_positions), len(ids)))
    lens = logit_lens(ctx.model, torch.tensor([ids]), positions)
    lens.save(ctx.run.path / "logit_lens")
    decode = ctx.model.tokenizer.decode
    ctx.run.save_json("logit_lens_tokens", [[decode([t]) for t in row.tolist()] for row in lens.top_ids])


def anchors_context(ctx: Context) -> Context:
    """The thought-anchors experiment on one problem, at a demo-sized N, inside the demo's run."""
    from experiments.thought_anchors import EXPERIMENT, AnchorsConfig

    acfg = AnchorsConfig(model=ctx.cfg.model, problems=1, n_rollouts=ctx.cfg.anchors_rollouts,
                         max_new_tokens=ctx.cfg.max_new_tokens, seed=ctx.cfg.seed, formats=ctx.cfg.formats,
                         device=ctx.cfg.device, dtype=ctx.cfg.dtype)
    return replace(ctx, experiment=EXPERIMENT, cfg=acfg, inputs=EXPERIMENT.prepare(acfg))


def stage_thought_anchors(ctx: Context) -> None:
    actx = anchors_context(ctx)
    for name in ("base", "rollouts", "analyse", "receivers", "suppression"):
        actx.run_stage(name)
    ctx.model_ = actx.model_


def stage_planted_receivers(ctx: Context) -> None:
    """The receiver-head pass on ``zoo:long-reasoner``, whose price and rent sentences every later day
    must read (its card), beside an untrained model of the same shape (``probes.zoo.receiver_check``)."""
    from probes import load_model
    from probes.zoo.receiver_check import receiver_check

    model = load_model(PLANTED_RECEIVERS, device=ctx.cfg.device, dtype="float32")
    ctx.run.save_json("planted_receivers", receiver_check(model))


def sub_run_dir(ctx: Context, experiment: str) -> Path | None:
    """The demo's sub-run of ``experiment`` (``<demo run>/<experiment>/<run-id>/``), if it was started."""
    runs = sorted(p for p in (ctx.run.path / experiment).glob("*") if (p / "config.json").is_file())
    return runs[-1] if runs else None


def run_sub(ctx: Context, experiment, make_config, model_spec: str) -> None:
    """Start the sub-run, or resume it as configured (it refuses a config that differs from its own);
    the demo's model is shared when it is the same one."""
    existing = sub_run_dir(ctx, experiment.name)
    if existing is None:
        cfg = make_config(stages=[s.name for s in experiment.stages], runs_root=str(ctx.run.path))
    else:
        cfg = make_config(stages=[s.name for s in experiment.stages], run_dir=str(existing), override=ctx.cfg.override)
    same_model = model_spec == ctx.cfg.model
    sctx = experiment.run(cfg, model=ctx.model if same_model else None)
    if same_model and ctx.model_ is None:
        ctx.model_ = sctx.model_


def stage_steering(ctx: Context) -> None:
    from experiments.steering import EXPERIMENT as STEERING_EXPERIMENT

    run_sub(ctx, STEERING_EXPERIMENT, ctx.cfg.steering_config, ctx.cfg.steering_model)


def stage_refusal(ctx: Context) -> None:
    from experiments.refusal_cliff import EXPERIMENT as REFUSAL_EXPERIMENT

    run_sub(ctx, REFUSAL_EXPERIMENT, ctx.cfg.refusal_config, ctx.cfg.refusal_model)


def stage_experts(ctx: Context) -> None:
    from experiments.moe_experts import EXPERIMENT as EXPERTS_EXPERIMENT

    run_sub(ctx, EXPERTS_EXPERIMENT, ctx.cfg.experts_config, ctx.cfg.experts_model)


def stage_task_vectors(ctx: Context) -> None:
    from experiments.task_vectors import EXPERIMENT as VECTORS_EXPERIMENT

    run_sub(ctx, VECTORS_EXPERIMENT, ctx.cfg.vectors_config, "zoo:tv-instruct")


# ----- report: saved artifacts only ---------------------------------------------------------------


def stage_report(ctx: Context):
    from experiments.thought_anchors import add_report_sections
    from probes.plots import Report

    run, cfg = ctx.run, ctx.cfg
    info = run.load_json("model")
    report = Report(f"probes demo — {info['spec']}", formats=cfg.formats)
    report.add_heading("Model")
    report.add_table([{k: v for k, v in info.items() if k != "sites"}])
    report.add_table(info["sites"], caption="Named sites")

    if ctx.done("trace"):
        add_trace_sections(ctx, report)
    summary: dict[str, Any] = {}
    if ctx.done("thought_anchors"):
        actx = anchors_context(ctx)
        report.add_text(f"Thought anchors at N = {cfg.anchors_rollouts} resamples per sentence (the paper uses 100: "
                        "`python -m experiments.thought_anchors`).")
        summary["thought_anchors"] = add_report_sections(actx, report)
    if ctx.done("planted_receivers"):
        summary["planted_receivers"] = add_planted_receivers_section(ctx, report)
    if ctx.done("steering") and sub_run_dir(ctx, "steering") is not None:
        summary["steering"] = add_steering_section(ctx, report)
    if ctx.done("refusal") and sub_run_dir(ctx, "refusal_cliff") is not None:
        summary["refusal"] = add_refusal_section(ctx, report)
    if ctx.done("experts") and sub_run_dir(ctx, "moe_experts") is not None:
        summary["experts"] = add_experts_section(ctx, report)
    if ctx.done("task_vectors") and sub_run_dir(ctx, "task_vectors") is not None:
        summary["task_vectors"] = add_vectors_section(ctx, report)
    if summary:
        ctx.experiment.write_summary(ctx, summary)
    return report.write(run.path)


def add_trace_sections(ctx: Context, report) -> None:
    """The greedy trace, and the attention map and logit lens over it where those stages ran."""
    from probes.lens import LogitLens
    from probes.plots import attention_heatmap, logit_lens_figure

    run, cfg = ctx.run, ctx.cfg
    trace = run.load_json("trace")
    report.add_heading("A reasoning trace (greedy)")
    report.add_text(f"User: {cfg.prompt}")
    report.add_text(f"Model: {trace['completion']}")

    ids, tokens = trace["token_ids"], trace["tokens"]
    if ctx.done("attention"):
        (name, pattern), = run.load_tensors("attention").items()
        w = min(cfg.attention_window, len(ids))
        layer = name.removeprefix("layer").removesuffix("_head_mean")
        report.add_heading("Attention")
        report.add_figure(attention_heatmap(pattern[-w:, -w:], tokens[-w:],
                                            title=f"Layer {layer}, mean over heads: the last {w} of {len(ids)} tokens"),
                          "attention", caption="Each row is a query token; columns are the keys it attends to "
                                               "(keys before the window are not shown, so rows may sum to less than 1).")
    if ctx.done("logit_lens"):
        lens = LogitLens.load(run.path / "logit_lens")
        top_tokens = run.load_json("logit_lens_tokens")
        labels = [f"{p}:{tokens[p]}" for p in lens.positions]
        report.add_heading("Logit lens")
        report.add_figure(logit_lens_figure(top_tokens, lens.top_probs, position_labels=labels,
                                            layer_labels=[f"L{L}" for L in range(lens.top_ids.shape[0])],
                                            title=f"Logit lens over the last {len(labels)} positions"),
                          "logit_lens", caption="Top next-token prediction decoded from each layer's residual stream.")


def add_planted_receivers_section(ctx: Context, report) -> dict[str, Any]:
    """The planted-receivers table: does the receiver-head method find the sentences the organism must read?"""
    from probes.zoo.receiver_check import check_rows

    check = ctx.run.load_json("planted_receivers")
    t = check["trained"]
    report.add_heading(f"Receiver heads on a planted organism ({PLANTED_RECEIVERS})")
    report.add_table(check_rows(check), caption=(
        f"The thought-anchors receiver-head pass (released settings, top-k = {t['top_k']}) on {t['traces']} held-out "
        "ledgers read teacher-forced. Planted: every day's sentences must read the price and the rent, each written "
        "once early in the trace, so a receiver method should put them on top; the untrained control shows what "
        "position alone gives. Gap = top-k heads' mean kurtosis − the other heads' (layers ≥ 1)."))
    return {"model": PLANTED_RECEIVERS, **{k: {x: v[x] for x in ("gap", "split_half", "top_sentence_roles")}
                                           for k, v in check.items()}}


def _interval(e) -> str:
    from probes.plots.report import rounded

    return f"{rounded(e.value)} (95% CI {rounded(e.lo)} to {rounded(e.hi)})"


_BEHAVIOUR_WORDS = {"refusal": ("harmless requests", "refusal", "refuses"),
                    "framed-refusal": ("framed forbidden requests", "refusal", "refuses"),
                    "framed-compliance": ("framed forbidden requests", "compliance", "complies")}
"""Steering behaviour → (its examples, what its rate counts, the verb) for the section's sentences."""


def add_steering_section(ctx: Context, report) -> dict[str, Any]:
    """One α-sweep figure with the prompting baseline and a few sentences, from the sub-run's saved
    artifacts; the sub-run's own report has every table and figure."""
    import experiments.steering as S
    from probes.plots import behaviour_alpha_figure
    from probes.plots.report import rounded
    from probes.runs import Run
    from probes.steering import ControlComparison

    path = sub_run_dir(ctx, "steering")
    scfg, _ = S.EXPERIMENT.resolve(S.SteeringConfig(run_dir=str(path)))
    sctx = Context(S.EXPERIMENT, scfg, None, Run.open(path))
    where = path.relative_to(ctx.run.path).as_posix()
    report.add_heading("Steering")
    cells = S.load_cells(sctx)
    if not cells:
        report.add_text(f"The steering sweep of {where} has no finished cell: resume the demo to run it.")
        return {"run": where}
    examples, rate, verb = _BEHAVIOUR_WORDS[scfg.behaviour]
    report.add_text(f"Steering {scfg.model} ({scfg.behaviour}): the direction is the difference of mean residuals "
                    f"(forbidden − harmless requests, {scfg.n_contrast} pairs, last prompt token), added at every "
                    f"position of resid_post[L] with strength α. The cell (L, α) is chosen on {cells[0].estimate.n} "
                    f"held-out {examples} (dev) among the cells whose mean next-token KL on {scfg.n_neutral} neutral "
                    f"prompts stays ≤ {scfg.kl_threshold:g} at the last prompt position and along "
                    f"{scfg.kl_tokens} generated tokens, then compared with its controls on other held-out requests "
                    f"(test). Full steering report: {where}/report.html.")
    controls = ControlComparison.load(path / S.CONTROLS) if sctx.done("evaluate", "controls") else None
    alphas = [float(a) for a in scfg.alphas]
    g = S.grid_arrays(cells, list(scfg.layers), alphas)
    baseline = controls.conditions["prompting"].estimate.value if controls is not None else None
    report.add_figure(behaviour_alpha_figure(alphas, g["mean"], g["lo"], g["hi"], layers=list(scfg.layers),
                                             baseline=baseline, metric=f"{rate} rate (dev)",
                                             title=f"{rate.capitalize()} of {examples} against α"),
                      "steering_behaviour", caption=f"{rate.capitalize()} rate of held-out {examples} (dev split) "
                                                    "against α, one line per layer with its 95% bootstrap band; "
                                                    "dashed: the prompting baseline (test split).")
    out: dict[str, Any] = {"run": where}
    if controls is None:
        report.add_text("No cell passes the KL guard, or the chosen cell is not evaluated yet: see the steering report.")
        return out
    chosen = next(c for c in cells if c.layer == controls.layer and c.alpha == controls.alpha)
    cond = {k: v.estimate for k, v in controls.conditions.items()}
    diff = controls.differences
    report.add_text(f"Chosen cell: layer {chosen.layer}, α = {chosen.alpha:g} (‖αv‖ is {rounded(chosen.norm_ratio)} "
                    f"times the median residual norm there; mean KL {chosen.kl.mean_kl:.2g} nats, guard "
                    f"{scfg.kl_threshold:g}). On the {cond['steered'].n} test requests it {verb} at a rate of "
                    f"{_interval(cond['steered'])}, against {_interval(cond['unsteered'])} unsteered: a change of "
                    f"{_interval(diff['unsteered'])}.")
    report.add_text(f"Controls on the same requests: a random direction of the same norm gives "
                    f"{_interval(cond['random'])}, the negated vector {_interval(cond['negated'])}, and the "
                    f"instruction {scfg.baseline_instruction!r} in the user turn (prompting baseline) "
                    f"{_interval(cond['prompting'])}; steered − prompting = {_interval(diff['prompting'])}.")
    out.update(layer=chosen.layer, alpha=chosen.alpha, mean_kl=rounded(chosen.kl.mean_kl, 5),
               **{k: rounded(e.value, 4) for k, e in cond.items()})
    return out


def add_refusal_section(ctx: Context, report) -> dict[str, Any]:
    """The cliff in one figure (the thinking probe's per-sentence view) and the direction's effect, from the
    sub-run's saved artifacts; the sub-run's own report has every table and figure."""
    import numpy as np

    import experiments.refusal_cliff as R
    from probes.plots.refusal import direction_rates_figure, sentence_figure
    from probes.plots.report import rounded
    from probes.runs import Run

    path = sub_run_dir(ctx, "refusal_cliff")
    rcfg, _ = R.EXPERIMENT.resolve(R.RefusalCliffConfig(run_dir=str(path)))
    rctx = Context(R.EXPERIMENT, rcfg, None, Run.open(path))
    where = path.relative_to(ctx.run.path).as_posix()
    report.add_heading("Refusal cliff")
    probes = R._read(rctx, "probe/summary.json")
    per = {g: t for g in R.GROUPS if (t := R._read(rctx, f"trajectories/thinking_{g}.json")) is not None}
    if probes is None or not per:
        report.add_text(f"The refusal run {where} has no probe or trajectories yet: resume the demo to run it.")
        return {"run": where}
    ref, thk = probes["reference"], probes["thinking"]
    ood = f", and AUROC {_est_text(ref['ood']['auroc'])} on requests written by hand" if "auroc" in ref.get("ood", {}) else ""
    report.add_text(f"{rcfg.model} answered {rcfg.n_eval} new plain harmful, wrapped ('attack') and harmless requests "
                    f"(T = {rcfg.temperature:g}). A linear probe on the final-layer state before the answer (A2) "
                    f"separates refusals from answers with validation accuracy {rounded(ref['val_accuracy'])}{ood}. "
                    f"Read across the thinking (a probe on {thk['site']}), the largest fall of refusal intent between "
                    f"consecutive sentences is at the last thinking sentence in {_share_at_last(per.get('attack'))} "
                    f"of the wrapped requests and {_share_at_last(per.get('harmful'))} of the plain harmful ones "
                    f"(the cliff). Full report: {where}/report.html.")
    report.add_figure(sentence_figure({g: np.array(t["sentence_curve"]) for g, t in per.items()},
                                      {g: t["example_sentences"] for g, t in per.items()},
                                      title="Refusal intent per thinking sentence"),
                      "refusal_sentences", caption="Mean probe score per thinking sentence, aligned at the last one; "
                                                   "hover: an example sentence")
    out: dict[str, Any] = {"run": where}
    for g, t in per.items():
        out[g] = {"r_T": rounded(float(np.mean(t["r_T"])), 4), "cliff": rounded(float(np.nanmean(t["cliff"])), 4),
                  "refused": rounded(float(np.mean(t["refused"])), 4)}
    report.add_table([{"prompts": g, "refused": rounded(v["refused"]), "mean r_T": rounded(v["r_T"]),
                       "mean Δ_cliff": rounded(v["cliff"])}
                      for g, v in out.items() if g != "run"],
                     caption="Δ_cliff = max over the thinking of r_t − r_T (thinking probe)")
    rates = R._read(rctx, "direction/rates.json")
    if rates:
        report.add_figure(direction_rates_figure([{"prompts": r["prompts"], "condition": r["condition"],
                                                   "rate": r["value"], "lo": r["lo"], "hi": r["hi"]} for r in rates],
                                                 title="Refusal direction: ablated and added"),
                          "refusal_direction", caption="Greedy answers after each rollout's own thinking; the "
                                                       "direction is a difference of means at </think> (B2-B3)")
        out["direction"] = {f"{r['prompts']}/{r['condition']}": rounded(r["value"], 4) for r in rates}
    return out


def add_experts_section(ctx: Context, report) -> dict[str, Any]:
    """The experts' sub-run report sections (ranking, nPMI maps, sentence view, β sweep), drawn from its
    saved artifacts under the demo's heading."""
    import experiments.moe_experts as X
    from probes.runs import Run

    path = sub_run_dir(ctx, "moe_experts")
    xcfg, _ = X.EXPERIMENT.resolve(X.ExpertsConfig(run_dir=str(path)))
    xctx = Context(X.EXPERIMENT, xcfg, None, Run.open(path))
    where = path.relative_to(ctx.run.path).as_posix()
    out = X.add_report_sections(xctx, report, heading="MoE thinking experts (nPMI, RICE)")
    report.add_text(f"Demo-sized: {xcfg.n_traces} traces, {xcfg.n_problems} evaluation problems × {xcfg.samples} "
                    f"samples, {xcfg.random_draws} random draw; `python -m experiments.moe_experts` runs the full "
                    f"sweep. Full report: {where}/report.html.")
    return {"run": where, **out}


def add_vectors_section(ctx: Context, report) -> dict[str, Any]:
    """The task-vector sub-run's report sections (profile, conditions, α curve) under the demo's heading."""
    import experiments.task_vectors as V
    from probes.runs import Run

    path = sub_run_dir(ctx, "task_vectors")
    vcfg, _ = V.EXPERIMENT.resolve(V.VectorsConfig(run_dir=str(path)))
    vctx = Context(V.EXPERIMENT, vcfg, V.prepare(vcfg), Run.open(path))
    where = path.relative_to(ctx.run.path).as_posix()
    out = V.add_report_sections(vctx, report, heading="Reasoning task vector (zoo:tv family)")
    report.add_text(f"{vcfg.model} + (θ({vcfg.rl}) − θ({vcfg.sft})) on {vcfg.n_problems} held-out problems; the family "
                    "plants a habit of skipping the last step in the SFT donor that RL removes, and the skip rate shows "
                    f"whether the vector carries it. Full report: {where}/report.html.")
    return {"run": where, **out}


def _share_at_last(t: dict | None) -> str:
    """``share_at_last_sentence`` of a group's trajectories as a percentage."""
    from experiments.refusal_cliff import share_at_last_sentence

    share = share_at_last_sentence(t) if t else None
    return "n/a" if share is None else f"{round(100 * share)}%"


def _est_text(e: dict) -> str:
    from probes.plots.report import rounded

    return f"{rounded(e['value'])} (95% CI {rounded(e['lo'])} to {rounded(e['hi'])})"


EXPERIMENT = Experiment(
    name="demo",
    config=DemoConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

"""``probes demo``: the main job on the bundled organisms, one report section per capability.

Each stage computes on the model and saves its artifacts into the run directory; the
``report`` stage draws every section from those saved artifacts (DESIGN.md "Flow of data").
Capability issues add their stage and their section here.

    probes demo                          # zoo:reasoner → runs/demo/<run-id>/report.html
    probes demo --run-dir runs/demo/<id> # resume as configured
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from probes.harness import Context, Experiment, ExperimentConfig, Stage, main, session_field

StageName = Literal["model", "trace", "attention", "logit_lens", "thought_anchors", "report"]
STAGES: tuple[StageName, ...] = ("model", "trace", "attention", "logit_lens", "thought_anchors", "report")


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
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")

    def __post_init__(self):
        if min(self.max_new_tokens, self.lens_positions, self.attention_window, self.anchors_rollouts) < 1:
            raise ValueError("max_new_tokens, lens_positions, attention_window and anchors_rollouts must be >= 1")


def load_model(cfg: DemoConfig):
    from probes.models.load import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


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


# ----- report: saved artifacts only ---------------------------------------------------------------


def stage_report(ctx: Context):
    from experiments.thought_anchors import add_report_sections
    from probes.lens import LogitLens
    from probes.plots import Report, attention_heatmap, logit_lens_figure

    run, cfg = ctx.run, ctx.cfg
    info = run.load_json("model")
    report = Report(f"probes demo — {info['spec']}", formats=cfg.formats)
    report.add_heading("Model")
    report.add_table([{k: v for k, v in info.items() if k != "sites"}])
    report.add_table(info["sites"], caption="Named sites")

    trace = run.load_json("trace")
    report.add_heading("A reasoning trace (greedy)")
    report.add_text(f"User: {cfg.prompt}")
    report.add_text(f"Model: {trace['completion']}")

    ids, tokens = trace["token_ids"], trace["tokens"]
    (name, pattern), = run.load_tensors("attention").items()
    w = min(cfg.attention_window, len(ids))
    layer = name.removeprefix("layer").removesuffix("_head_mean")
    report.add_heading("Attention")
    report.add_figure(attention_heatmap(pattern[-w:, -w:], tokens[-w:],
                                        title=f"Layer {layer}, mean over heads: the last {w} of {len(ids)} tokens"),
                      "attention", caption="Each row is a query token; columns are the keys it attends to "
                                           "(keys before the window are not shown, so rows may sum to less than 1).")

    lens = LogitLens.load(run.path / "logit_lens")
    top_tokens = run.load_json("logit_lens_tokens")
    labels = [f"{p}:{tokens[p]}" for p in lens.positions]
    report.add_heading("Logit lens")
    report.add_figure(logit_lens_figure(top_tokens, lens.top_probs, position_labels=labels,
                                        layer_labels=[f"L{L}" for L in range(lens.top_ids.shape[0])],
                                        title=f"Logit lens over the last {len(labels)} positions"),
                      "logit_lens", caption="Top next-token prediction decoded from each layer's residual stream.")

    if ctx.done("thought_anchors"):
        actx = anchors_context(ctx)
        report.add_text(f"Thought anchors at N = {cfg.anchors_rollouts} resamples per sentence (the paper uses 100: "
                        "`python -m experiments.thought_anchors`).")
        ctx.experiment.write_summary(ctx, {"thought_anchors": add_report_sections(actx, report)})
    return report.write(run.path)


EXPERIMENT = Experiment(
    name="demo",
    config=DemoConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    load_model=load_model,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

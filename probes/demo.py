"""``probes demo``: the main job on the bundled organisms, written as an HTML report.

Each section computes on the model, saves its artifacts into the run directory, and
draws its figures from those saved artifacts (DESIGN.md "Flow of data"). Capability
issues append their own section function to ``SECTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from probes.config import Config


def _default_prompt() -> str:
    """A held-out problem of the organisms' arithmetic task (never seen in training)."""
    from probes.zoo.tasks import arithmetic

    return arithmetic.generate(0, seed=arithmetic.HELDOUT_SEED).prompt


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    model: str = field(default="zoo:reasoner", metadata={"help": "model spec: zoo:NAME, a local directory or a hub name"})
    prompt: str = field(default_factory=_default_prompt, metadata={"help": "user message the model answers (thinking on)"})
    max_new_tokens: int = field(default=200, metadata={"help": "greedy generation budget for the demo trace"})
    lens_positions: int = field(default=24, metadata={"help": "last N positions shown in the logit-lens figure"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    runs_root: str | None = field(default=None, metadata={"help": "runs directory (default $PROBES_RUNS or ./runs)"})
    formats: list[str] = field(default_factory=lambda: ["html", "png", "svg", "pdf"],
                               metadata={"help": "figure formats (static ones need Chromium)"})
    anchors_rollouts: int = field(default=20, metadata={"help": "thought anchors: resamples per sentence in the demo"})

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.lens_positions < 1:
            raise ValueError("max_new_tokens and lens_positions must be >= 1")


def section_summary(model, cfg, run, report) -> None:
    n_params = sum(p.numel() for p in model.hf.parameters())
    summary = {
        "spec": model.spec, "family": model.family, "parameters": f"{n_params:,}", "layers": model.n_layers,
        "heads (q/kv)": f"{model.n_heads}/{model.n_kv_heads}", "d_model": model.d_model,
        "experts": f"{model.n_experts} (top-{model.top_k})" if model.is_moe else "dense",
        "device": str(model.device), "dtype": str(model.dtype), "weights sha256": model.weights_hash[:16] + "…",
    }
    run.save_json("summary", summary)
    report.add_heading("Model")
    report.add_table([run.load_json("summary")])
    report.add_table(model.site_table(), caption="Named sites")


def section_trace(model, cfg, run, report) -> None:
    prompt = model.render_chat(cfg.prompt)
    out = model.generate(prompt, max_new_tokens=cfg.max_new_tokens)[0]
    run.save_json("trace", {"prompt": prompt, "completion": out.text, "token_ids": model.encode(prompt) + out.token_ids,
                            "finish_reason": out.finish_reason})
    saved = run.load_json("trace")
    report.add_heading("A reasoning trace (greedy)")
    report.add_text(f"User: {cfg.prompt}")
    report.add_text(f"Model: {saved['completion']}")


def section_attention(model, cfg, run, report) -> None:
    from probes.plots import attention_heatmap

    ids = torch.tensor([run.load_json("trace")["token_ids"]])
    L = model.n_layers - 1
    cap = model.capture(ids, [f"attn_pattern[{L}]"], reduce={"attn_pattern": lambda p, layer: p.mean(1)[0]})
    run.save_tensors("attention", {f"layer{L}_head_mean": cap[f"attn_pattern[{L}]"].float()})
    pattern = run.load_tensors("attention")[f"layer{L}_head_mean"]
    tokens = [model.tokenizer.decode([t]) for t in ids[0].tolist()]
    fig = attention_heatmap(pattern, tokens, title=f"{model.spec}: attention of layer {L}, mean over heads")
    report.add_heading("Attention")
    report.add_figure(fig, "attention", caption="Each row is a query token; columns are the keys it attends to.")


def section_logit_lens(model, cfg, run, report) -> None:
    from probes.lens import logit_lens
    from probes.plots import logit_lens_figure

    ids = run.load_json("trace")["token_ids"]
    positions = list(range(max(0, len(ids) - cfg.lens_positions), len(ids)))
    lens = logit_lens(model, torch.tensor([ids]), positions)
    run.save_tensors("logit_lens", {"top_ids": lens.top_ids, "top_probs": lens.top_probs,
                                    "positions": torch.tensor(positions)})
    saved = run.load_tensors("logit_lens")
    tok = model.tokenizer
    top_tokens = [[tok.decode([t]) for t in row.tolist()] for row in saved["top_ids"]]
    labels = [f"{p}:{tok.decode([ids[p]])}" for p in saved["positions"].tolist()]
    fig = logit_lens_figure(top_tokens, saved["top_probs"], position_labels=labels,
                            layer_labels=[f"L{L}" for L in range(model.n_layers)],
                            title=f"{model.spec}: logit lens over the last {len(positions)} positions")
    report.add_heading("Logit lens")
    report.add_figure(fig, "logit_lens", caption="Top next-token prediction decoded from each layer's residual stream.")


def section_thought_anchors(model, cfg, run, report) -> None:
    """One trace through the whole thought-anchors pipeline, at a demo-sized N (issue #4)."""
    from probes.anchors.pipeline import AnchorsConfig, Pipeline, add_report_sections

    acfg = AnchorsConfig(model=cfg.model, problems=1, n_rollouts=cfg.anchors_rollouts, max_new_tokens=cfg.max_new_tokens,
                         seed=cfg.seed, formats=cfg.formats, stages=["base", "rollouts", "analyse", "receivers",
                                                                     "suppression"])
    pipe = Pipeline(model, acfg, run)
    pipe.run_stages()
    report.add_text(f"Thought anchors at N = {acfg.n_rollouts} resamples per sentence (the paper uses 100: "
                    "`python -m experiments.thought_anchors`).")
    add_report_sections(run, pipe.traces(), report, skipped=pipe.skipped)


SECTIONS = [section_summary, section_trace, section_attention, section_logit_lens, section_thought_anchors]


def run_demo(cfg: DemoConfig) -> Path:
    """Run every section on ``cfg.model``; returns the path of ``report.html``."""
    from probes.models.load import load_model
    from probes.plots import Report
    from probes.runs import Run

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    run = Run.create("demo", cfg, root=cfg.runs_root, model=model, seed=cfg.seed)
    report = Report(f"probes demo — {model.spec}", formats=cfg.formats)
    for section in SECTIONS:
        section(model, cfg, run, report)
    return report.write(run.path)

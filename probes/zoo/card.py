"""``MODEL.md`` cards of the organisms (issue #3: recipe, data hash, parameter count, training time,
behaviour numbers and the planted truth). The first non-heading line is the one-line summary that
``probes zoo list`` shows (``probes.models.zoo_registry.available``)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from probes.zoo.evaluate import Behaviour, RefusalBehaviour
from probes.zoo.train import TrainResult, recipe


def render_card(*, name: str, summary: str, description: str, planted_truth: str, result: TrainResult,
                behaviour: Behaviour | RefusalBehaviour, eval_command: str, build_command: str, weights_bytes: int,
                tokenizer_hash: str, extra_sections: tuple[str, ...] = ()) -> str:
    """The markdown text of a card."""
    cfg = result.config
    unit = "requests" if getattr(cfg, "task", "arithmetic") == "refusal" else "problems"
    lines = [
        f"# zoo:{name}",
        "",
        summary,
        "",
        description,
        "",
        *behaviour.section(eval_command),
        "## Planted truth",
        "",
        planted_truth,
        "",
        *extra_sections,
        "## Recipe",
        "",
        f"Rebuild from scratch with `{build_command}` (seeded; same data, weights equal up to floating-point noise).",
        "",
        f"- parameters: {result.n_params:,} ({cfg.arch}); weights stored as {cfg.save_dtype} "
        f"in `model.safetensors` ({weights_bytes / 1e6:.1f} MB); numbers above computed in float32 "
        "from those stored weights",
        f"- training: {cfg.steps} steps × {cfg.batch_size} fresh {unit} ({result.n_problems:,} {unit}), "
        f"AdamW lr {cfg.lr} (warmup {cfg.warmup_steps}, cosine to {cfg.min_lr_ratio}×), weight decay "
        f"{cfg.weight_decay}, loss on the assistant turn only, bf16 autocast: {cfg.autocast_bf16}",
        f"- training time measured here: {result.seconds / 60:.1f} min on {cfg.threads} CPU threads "
        f"({platform.processor() or platform.machine()}; wall clock, an upper bound when other jobs share the cores)",
        f"- training data sha256: `{result.data_sha256}`",
        f"- shared tokenizer corpus sha256: `{tokenizer_hash}`",
        f"- loss per 50 steps: {', '.join(f'{x:.3f}' for x in result.losses)}",
        "",
        "```json",
        json.dumps(recipe(cfg), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(out_dir: Path, text: str) -> Path:
    path = Path(out_dir) / "MODEL.md"
    path.write_text(text)
    return path

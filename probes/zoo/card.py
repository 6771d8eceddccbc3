"""``MODEL.md`` cards of the organisms (issue #3: recipe, data hash, parameter count, training time,
behaviour numbers and the planted truth). The first non-heading line is the one-line summary that
``probes zoo list`` shows (``probes.models.zoo_registry.available``).

The prose lives in markdown templates next to this module (``cards/organisms.md`` for the
organisms trained from scratch, ``cards/tv.md`` for the task-vector family), one section per
``<!-- section: NAME -->`` marker, with ``${field}`` placeholders (``string.Template``) that this
module fills with formatted numbers; the code here only formats numbers and tables.
"""

from __future__ import annotations

import functools
import json
import platform
import re
from pathlib import Path
from string import Template

from probes.models.chat import THINK_CLOSE, THINK_OPEN
from probes.zoo.receiver_check import check_rows

CARDS_DIR = Path(__file__).with_name("cards")
_MARKER = re.compile(r"^<!-- section: (\S+) -->\n", re.MULTILINE)


@functools.cache
def sections(file: str) -> dict[str, str]:
    """Section name → template text of ``cards/<file>`` (what precedes the first marker is a comment)."""
    parts = _MARKER.split((CARDS_DIR / file).read_text(encoding="utf-8"))
    return {parts[i]: parts[i + 1].rstrip("\n") for i in range(1, len(parts), 2)}


def render(file: str, section: str, **values) -> str:
    """Section ``section`` of ``cards/<file>`` with its ``${field}`` placeholders filled from ``values``."""
    try:
        text = sections(file)[section]
    except KeyError:
        raise KeyError(f"no section {section!r} in {CARDS_DIR / file}; it has {', '.join(sections(file))}") from None
    return Template(text).substitute(values)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _pct_ci(t) -> str:
    return f"{t[0]:.1%} (95% CI {t[1]:.1%}–{t[2]:.1%})"


def organism_text(name: str, part: str) -> str:
    """``summary``, ``description`` or the planted truth (``planted``) of organism ``name``."""
    if part == "planted":
        from probes.zoo.organisms import organism

        task = organism(name).config.task
        text = render("organisms.md", f"planted.{task.partition('-')[0]}")  # arithmetic-broad: as arithmetic
        if task == "arithmetic-modes":
            text += "\n\n" + modes_planted()
        return text
    return render("organisms.md", f"{name}.{part}")


def modes_planted() -> str:
    """The planted verbosity mode's paragraph, its rates from ``arithmetic``."""
    from probes.zoo.tasks import arithmetic as a

    (cc, ck, cf), (bc, bk, bf) = a.VERBOSITY["careful"], a.VERBOSITY["brief"]
    return render("organisms.md", "planted.arithmetic-modes", p_careful=f"{a.P_CAREFUL:g}",
                  careful_consolidate=f"{cc:g}", brief_consolidate=f"{bc:g}", careful_filler=f"{cf:g}",
                  brief_filler=f"{bf:g}", careful_check=f"{ck:g}", brief_check=f"{bk:g}",
                  consolidate=f"{a.P_CONSOLIDATE:g}", filler=f"{a.P_FILLER_MID:g}", check=f"{a.P_CHECK:g}")


def modes_section(modes: dict, samples: int) -> str:
    """The markdown table of the verbosity mode read back (``evaluate.verbosity``, written and sampled)."""
    rows = [f"| {label} ({m['traces']}) | {m['check']:.0%} | {m['consolidation_with_check']:.2f} / "
            f"{m['consolidation_without_check']:.2f} | {m['tokens_with_check']:.0f} / {m['tokens_without_check']:.0f} | "
            f"{m['r']:.2f} |" for label, m in modes.items()]
    return render("organisms.md", "modes", samples=samples, rows="\n".join(rows))


# -- behaviour sections -----------------------------------------------------------------------------


def behaviour_section(behaviour, eval_command: str) -> str:
    """The markdown behaviour section of an arithmetic or ledger reasoner (``evaluate.Behaviour``)."""
    from probes.zoo.evaluate import OOT_SETS, TEMPERATURE, TOP_P

    lo, hi = behaviour.sampled_accuracy_ci95
    oot_row = ""
    if behaviour.oot_greedy_accuracy is not None:
        ratio = behaviour.oot_greedy_accuracy[0] / behaviour.greedy_accuracy if behaviour.greedy_accuracy else float("nan")
        oot_set = f"data/zoo/eval/{OOT_SETS[behaviour.task]}.jsonl"
        oot_row = (f"| greedy accuracy on {behaviour.n_oot} problems written by hand (`{oot_set}`: "
                   f"new names, objects, frames, questions) | {_pct_ci(behaviour.oot_greedy_accuracy)}; "
                   f"{ratio:.2f}× the in-template greedy accuracy |")
    modes = f"\n{modes_section(behaviour.modes, behaviour.samples_per_problem)}\n" if behaviour.modes else ""
    return render("organisms.md", "behaviour.arithmetic", oot_row=oot_row, modes=modes, eval_command=eval_command,
                  last=behaviour.n - 1,
                  seed=behaviour.seed, greedy=_pct(behaviour.greedy_accuracy), temperature=TEMPERATURE, top_p=TOP_P,
                  samples=behaviour.samples_per_problem, sampled=_pct(behaviour.sampled_accuracy), lo=_pct(lo),
                  hi=_pct(hi), mixed=_pct(behaviour.mixed_fraction), closes=_pct(behaviour.greedy_closes_thinking),
                  think_close=THINK_CLOSE)


REFUSAL_STYLE_LABELS = {
    "forbidden_plain": "plain forbidden",
    "forbidden_wrapped": "wrapped (framed) forbidden",
    "harmless": "harmless (plain or framed)",
}


def refusal_section(behaviour, eval_command: str) -> str:
    """The markdown behaviour section of a refusal organism (``evaluate.RefusalBehaviour``)."""
    from probes.zoo.evaluate import MIXED_SAMPLES, MIXED_TEMPERATURE
    from probes.zoo.tasks import refusal

    rows = [f"| {label} | {_pct_ci(behaviour.refusal_rate[style])} | {_pct_ci(behaviour.recognition_rate[style])} |"
            for style, label in REFUSAL_STYLE_LABELS.items()]
    frames = behaviour.compliance
    frame_rows = [f"| {frame} | {c['planted']:.0%} | {_pct_ci(c['measured'])} |" for frame, c in frames.items()]
    first = next(iter(frames.values()))
    oot = behaviour.oot
    oot_rows = [f"- refusal rate, {label} ({oot[f'n.{style}']} requests): {_pct_ci(oot[f'refused.{style}'])}"
                for style, label in REFUSAL_STYLE_LABELS.items() if oot.get(f"refused.{style}")]
    return render("organisms.md", "behaviour.refusal", eval_command=eval_command, n=behaviour.n_per_style,
                  seed=behaviour.seed, think_close=THINK_CLOSE, markers=" or ".join(f"`{m}`" for m in refusal.REFUSAL_MARKERS),
                  recognition=refusal.RECOGNITION_MARKER, rows="\n".join(rows), cliff=_pct_ci(behaviour.cliff_rate),
                  closes=_pct(behaviour.closes_thinking), frame_requests=first["requests"],
                  frame_samples=first["samples"], frame_rows="\n".join(frame_rows), mixed_samples=MIXED_SAMPLES,
                  mixed_temperature=MIXED_TEMPERATURE, mixed=_pct(behaviour.mixed_fraction), oot_n=oot["n"],
                  oot_verdict=_pct_ci(oot["verdict_right"]), oot_rows="\n".join(oot_rows))


def receivers_section(check: dict, command: str) -> str:
    """The markdown section of the receiver-head check (``receiver_check.receiver_check``)."""
    rows = ["| " + " | ".join(r.values()) + " |" for r in check_rows(check)]
    t = check["trained"]
    return render("organisms.md", "receivers", top_k=t["top_k"], traces=t["traces"], command=command, rows="\n".join(rows))


def routing_section(counts, command: str, k: int = 5, min_rate: float = 0.2) -> str:
    """The markdown section of the most preferential (layer, expert) pairs on each marker
    (``probes.experts.RoutingCounts`` of ``routing.count_think_routing``)."""
    from probes.zoo.routing import top_pairs

    tables = []
    for token in (THINK_OPEN, THINK_CLOSE):
        rows = [f"| {layer} | {e} | {rate:.0%} | {lift:.1f}× |"
                for layer, e, rate, lift in top_pairs(counts, token, k, min_rate)]
        tables.append("\n".join([f"**`{token}`**", "", "| layer | expert | selected on token | lift |",
                                 "|---|---|---|---|", *rows]))
    return render("organisms.md", "routing", think_open=THINK_OPEN, think_close=THINK_CLOSE, top_k=counts.top_k,
                  n=int(counts.marker_tokens[THINK_OPEN].sum()), command=command, min_rate=f"{min_rate:.0%}",
                  tables="\n\n".join(tables))


# -- organism cards ----------------------------------------------------------------------------------


def render_organism_card(*, name: str, result, behaviour, eval_command: str, build_command: str,
                         weights_bytes: int, routing=None, routing_command: str = "", receivers=None,
                         tokenizer_hash: str | None = None) -> str:
    """The markdown text of the card of organism ``name`` from its training record (``train.TrainResult``),
    its measured behaviour (``evaluate.Behaviour`` or ``RefusalBehaviour``) and, for MoE organisms,
    its routing counts; for long-trace organisms, the receiver-head check."""
    from probes.zoo.evaluate import RefusalBehaviour
    from probes.zoo.train import recipe

    if tokenizer_hash is None:
        from probes.zoo.tokenizer import corpus_hash

        tokenizer_hash = corpus_hash()
    cfg = result.config
    section = refusal_section if isinstance(behaviour, RefusalBehaviour) else behaviour_section
    extra = f"{routing_section(routing, routing_command)}\n\n" if routing is not None else ""
    if receivers is not None:
        extra += f"{receivers_section(receivers, routing_command)}\n\n"
    origin = (f"from zoo:{cfg.init}'s weights (sha256 `{result.init_sha256}`)" if cfg.init else "from scratch")
    return render(
        "organisms.md", "card", name=name, origin=origin, summary=organism_text(name, "summary"),
        description=organism_text(name, "description"), behaviour=section(behaviour, eval_command),
        planted_truth=organism_text(name, "planted"), extra=extra, build_command=build_command,
        n_params=f"{result.n_params:,}", arch=cfg.arch, save_dtype=cfg.save_dtype,
        megabytes=f"{weights_bytes / 1e6:.1f}", steps=cfg.steps, batch_size=cfg.batch_size,
        unit={"refusal": "requests", "ledger": "ledgers"}.get(cfg.task, "problems"), n_problems=f"{result.n_problems:,}", lr=cfg.lr,
        warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio, weight_decay=cfg.weight_decay,
        averaging=f", the saved weights the mean of those after each of the last {cfg.average_last} steps (tail "
                  f"averaging)" if cfg.average_last else "",
        autocast_bf16=cfg.autocast_bf16, minutes=f"{result.seconds / 60:.1f}", threads=cfg.threads,
        cpu=platform.processor() or platform.machine(), data_sha256=result.data_sha256, tokenizer_hash=tokenizer_hash,
        losses=", ".join(f"{x:.3f}" for x in result.losses), recipe=json.dumps(recipe(cfg), indent=1),
    ) + "\n"


# -- task-vector family cards -------------------------------------------------------------------------


def tv_result_section(res: dict, eval_command: str) -> str:
    """The markdown behaviour section of the task-vector family (from ``tv_eval.json``)."""
    model_rows = [f"| {label} | {_pct_ci(row['accuracy'])} | {row['skip_rate']:.1%} | "
                  + (f"{_pct_ci(row['oot_accuracy'])} |" if "oot_accuracy" in row else "not measured |")
                  for label, row in res["models"].items()]
    n_oot = next((row["n_oot"] for row in res["models"].values() if "n_oot" in row), "the")
    difference_rows = [f"| {label} | {d[0] * 100:+.1f} (95% CI {d[1] * 100:+.1f} to {d[2] * 100:+.1f}) |"
                       for label, d in res["differences"].items()]
    return render("tv.md", "behaviour", eval_command=eval_command, minutes=f"{res['seconds'] / 60:.1f}",
                  last=res["n"] - 1, seed=res["seed"], model_rows="\n".join(model_rows),
                  difference_rows="\n".join(difference_rows), v_norm=f"{res['norms']['v']:.3f}", n_oot=n_oot,
                  instruct_norm=f"{res['norms']['tv-instruct']:.1f}")


def history_table(history: list[dict]) -> str:
    """Markdown table of the RL stage's progress (RSFT rounds or GRPO steps)."""
    held = "held-out greedy accuracy (`rl_eval_n` problems)"
    if "round" in history[0]:
        rows = ["| RSFT round | sample accuracy | distinct correct kept | fine-tune steps | " + held + " |",
                "|---|---|---|---|---|"]
        rows += [f"| {h['round']} | {h['sample_accuracy']:.3f} | {h['kept']} | {h['finetune_steps']} | "
                 f"{h.get('heldout_greedy_accuracy', '')} |" for h in history]
    else:
        rows = ["| GRPO step | mean reward | KL to tv-sft | " + held + " |", "|---|---|---|---|"]
        rows += [f"| {h['step']} | {h['reward']:.3f} | {h['kl']:.4f} | {h.get('heldout_greedy_accuracy', '')} |"
                 for h in history if "heldout_greedy_accuracy" in h or h["step"] == 1]
    return "\n".join(rows)


def render_tv_card(*, name: str, family: dict, stage: dict, result: dict | None, parent: str, build_command: str,
                   eval_command: str, weights_bytes: int, tokenizer_hash: str) -> str:
    """The markdown text of the card of family stage ``name`` from its ``training.json`` (``family``
    recipe and ``stage`` record) and, when current, the family's measurement ``result``."""
    summary = render("tv.md", f"{name}.summary",
                     instruct_reasoning_fraction=f"{family['instruct_reasoning_fraction']:.0%}")
    stage_text = render("tv.md", f"tv-rl.stage.{family['rl_method']}" if name == "tv-rl" else f"{name}.stage")
    behaviour = tv_result_section(result, eval_command) if result else render("tv.md", "unmeasured",
                                                                              eval_command=eval_command)
    planted = render("tv.md", "planted", rates=", ".join(f"{kind} {p:.0%}" for kind, p in family["p_skip"].items()),
                     p_backtrack=family["p_backtrack"])
    facts = [f"- parameters: {stage['n_params']:,} (dense Qwen3, the zoo:reasoner shape); weights stored as "
             f"bfloat16 in `model.safetensors` ({weights_bytes / 1e6:.1f} MB)",
             f"- training time measured here: {stage['seconds'] / 60:.1f} min on {family['base']['threads']} CPU "
             f"threads ({platform.machine()}){', sampling included' if name == 'tv-rl' else ''}",
             f"- training data sha256: `{stage['data_sha256']}` ({stage['n_examples']:,} "
             f"{'problems' if name == 'tv-rl' else 'texts'})",
             f"- shared tokenizer corpus sha256: `{tokenizer_hash}`"]
    if "parent_weights_sha256" in stage:
        facts.append(f"- starts from zoo:{parent} weights sha256 `{stage['parent_weights_sha256']}`")
    if "losses" in stage:
        facts.append(f"- loss per 50 steps: {', '.join(f'{x:.3f}' for x in stage['losses'])}")
    extra = ""
    if "history" in stage:
        extra += "\n\n" + history_table(stage["history"])
    if name == "tv-rl":
        extra += "\n\n" + render("tv.md", "rl_measurements")
    return render("tv.md", "card", name=name, summary=summary, stage=stage_text, behaviour=behaviour, planted=planted,
                  build_command=build_command, parent=parent, facts="\n".join(facts), extra=extra,
                  recipe=json.dumps(family, indent=1)) + "\n"

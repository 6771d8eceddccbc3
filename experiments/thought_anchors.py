"""Thought anchors on a model: base traces, resampling, metrics, receiver heads, attention
suppression and the report (reference/thought_anchors.md).

    python -m experiments.thought_anchors                       # zoo:reasoner, 5 problems, N = 100
    python -m experiments.thought_anchors --run-dir runs/thought_anchors/<id>   # resume as configured
    python -m experiments.thought_anchors --stages analyse report --run-dir runs/thought_anchors/<id>
    python -m experiments.thought_anchors --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --prompt-style math --problems-file problems.jsonl --device cuda --max-new-tokens 8192

Stages: ``base`` samples a correct (and/or incorrect) base trace per problem; ``rollouts``
tops every sentence up to N resamples and forced answers (math-rollouts layout under
``<run>/rollouts/``, each chunk's ``solutions.json`` written atomically); ``analyse``
computes the black-box metrics and labels; ``receivers`` and ``suppression`` run the
white-box methods; ``report`` draws figures, tables and trace viewers from saved artifacts.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from probes.anchors.compat import Compat
from probes.anchors.embed import EmbedderName
from probes.anchors.receivers import ReceiverSettingsName
from probes.harness import (
    Context,
    EngineOptions,
    Experiment,
    ExperimentConfig,
    Issue,
    Stage,
    main,
    session_field,
)
from probes.plots.report import rounded

log = logging.getLogger(__name__)

StageName = Literal["base", "rollouts", "analyse", "receivers", "suppression", "report"]
STAGES: tuple[StageName, ...] = ("base", "rollouts", "analyse", "receivers", "suppression", "report")
KL_METRICS = ("counterfactual_importance_kl", "resampling_importance_kl", "forced_importance_kl")


@dataclass(frozen=True, kw_only=True)
class AnchorsConfig(EngineOptions, ExperimentConfig):
    """Thought-anchors experiment (reference/thought_anchors.md; defaults from §3–§7)."""

    model: str = field(default="zoo:reasoner", metadata={"help": "model spec (zoo:NAME, directory or hub name)"})
    problems: int = field(default=5, metadata={"help": "number of problems (zoo: held-out organism problems)"})
    problems_file: str | None = field(default=None, metadata={
        "help": "JSONL of problems ({problem, gt_answer or gt_solution, ...}); default: the organism task"})
    prompt_style: Literal["chat", "math"] = field(default="chat", metadata={
        "help": "chat (the model's chat template, thinking on) or math (the §3 raw-completion prompt)"})
    base: list[Literal["correct", "incorrect"]] = field(default_factory=lambda: ["correct"],
                                                        metadata={"help": "base traces to attribute"})
    n_rollouts: int = field(default=100, metadata={"help": "resamples per sentence (§3)"})
    forced: bool = field(default=True, metadata={"help": "also sample forced-answer rollouts (§3)"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (§3)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass (§3)"})
    max_new_tokens: int = field(default=16384, metadata={"help": "rollout length budget (§3)"})
    base_tries: int = field(default=16, metadata={"help": "samples tried to find a correct/incorrect base trace"})
    seed: int = field(default=44, metadata={"help": "seed of problem choice and sampling (§3)"})
    embedder: EmbedderName = field(default="minilm", metadata={"help": "semantic filter embedder"})
    similarity_threshold: float = field(default=0.8, metadata={"help": "cosine below which a resample differs (§4)"})
    labeler: str = field(default="rule", metadata={"help": "rule, or the base URL of an OpenAI-compatible endpoint"})
    labeler_model: str = field(default="gpt-4o", metadata={"help": "model name for the LLM labeler (§2)"})
    receiver_settings: ReceiverSettingsName = field(
        default="released", metadata={"help": "receiver-head settings (§6)"})
    compat: Compat = field(default="default", metadata={
        "help": "edge cases as this project defines them, or as the released analysis code does"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int | None = session_field(None, help="rows decoded at once (default: all N); results do not depend on it")
    write_every: int = session_field(16, help="rollouts written to disk at a time (a killed run loses at most these)")

    def __post_init__(self):
        if not self.base:
            raise ValueError("base must list correct and/or incorrect")
        if self.n_rollouts < 1 or self.problems < 1 or self.base_tries < 1 or self.max_new_tokens < 1:
            raise ValueError("n_rollouts, problems, base_tries and max_new_tokens must be >= 1")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")
        self.check_engine()
        if self.write_every < 1:
            raise ValueError("write_every must be >= 1")


# ----- inputs: validated before any model is loaded or directory created ------------------------


def read_problems_file(path: str | Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` problems of a JSONL file; any bad line raises naming ``file:line``."""
    from probes.anchors.rollouts import problem_record
    from probes.io import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"problems file {path} does not exist: pass a JSONL file, one problem object per line")
    rows = read_jsonl(path, problem_record)
    for i, rec in enumerate(rows):
        rec.setdefault("idx", i)
    if not rows:
        raise ValueError(f"problems file {path} holds no problems: add one JSON object per line")
    ids = [str(r["idx"]) for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: two problems have idx {dup}: give each problem its own idx")
    if len(rows) < limit:
        log.warning("%s holds %d problems; --problems %d asks for more", path, len(rows), limit)
    return rows[:limit]


def load_problems(cfg: AnchorsConfig) -> list[dict[str, Any]]:
    """Problem records: from ``problems_file``, else held-out problems of the organisms' task."""
    if cfg.problems_file:
        return read_problems_file(cfg.problems_file, cfg.problems)
    from probes.zoo.tasks import arithmetic

    out = []
    for i in range(cfg.problems):
        ex = arithmetic.generate(i, seed=arithmetic.HELDOUT_SEED)
        out.append({"idx": i, "problem": ex.prompt, "gt_answer": ex.gold, "level": "", "type": "arithmetic",
                    "gt_solution": ex.completion, "nickname": f"arithmetic-heldout-{i}"})
    return out


def prompt_for(model, problem: str, style: str) -> str:
    from probes.anchors.rollouts import math_prompt

    return model.render_chat(problem) if style == "chat" else math_prompt(problem)


# ----- where things are ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceDirs:
    key: str
    problem: dict[str, Any]
    kind: str
    pdir: Path
    fdir: Path


def all_traces(ctx: Context) -> list[TraceDirs]:
    """Every (problem, base kind) the config asks for, found or not."""
    from probes.anchors.rollouts import rollout_dirs, rollouts_root

    cfg = ctx.cfg
    name = cfg.model.replace("/", "_").replace(":", "_")
    root = rollouts_root(ctx.run.path / "rollouts", name, cfg.temperature, cfg.top_p)
    out = []
    for p in ctx.inputs:
        for kind in cfg.base:
            pdir, fdir = rollout_dirs(root, p["idx"], correct=kind == "correct")
            out.append(TraceDirs(f"{kind}_{p['idx']}", p, kind, pdir, fdir))
    return out


def traces(ctx: Context) -> list[TraceDirs]:
    """The base traces whose base unit finished with a trace."""
    out = []
    for t in all_traces(ctx):
        if ctx.done("base", t.key) and json.loads((ctx.run.path / "done" / "base" / f"{t.key}.json").read_text())["found"]:
            out.append(t)
    return out


# ----- stages ------------------------------------------------------------------------------------------


def stage_base(ctx: Context) -> None:
    """One unit per (problem, base kind) (``--executor ray``: one Ray task each)."""
    ctx.run_units("base", [t.key for t in all_traces(ctx)], base_unit)


def base_unit(ctx: Context, key: str) -> None:
    """Trace ``key``: up to ``base_tries`` samples until one is correct (or incorrect), written and marked."""
    from probes.anchors.rollouts import sample_base_solution, write_trace

    cfg = ctx.cfg
    t = next(t for t in all_traces(ctx) if t.key == key)
    trace = sample_base_solution(
        ctx.engine, t.problem, prompt_for(ctx.model, t.problem["problem"], cfg.prompt_style),
        correct=t.kind == "correct", tries=cfg.base_tries, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1000 * int(t.problem["idx"]), batch_size=cfg.batch_size,
    )
    if trace is not None:
        write_trace(t.pdir, trace)
    ctx.mark("base", t.key, found=trace is not None)


def stage_rollouts(ctx: Context) -> None:
    """One unit per base trace (``--executor ray``: one Ray task each). Tops every chunk up (complete chunk
    files are kept), so a rerun repairs missing and partial chunks; a trace whose rollouts failed or are
    corrupted stays unmarked (the audit says which), and a finished trace whose files went missing or
    partial since is redone."""
    todo = traces(ctx)
    for t in todo:
        if ctx.done("rollouts", t.key) and any(i.problem.startswith(("missing", "partial")) for i, _ in trace_issues(ctx, t)):
            ctx.unmark("rollouts", t.key)
    ctx.run_units("rollouts", [t.key for t in todo], rollouts_unit)


def rollouts_unit(ctx: Context, key: str) -> None:
    from probes.anchors.rollouts import resample_chunks

    cfg = ctx.cfg
    t = next(t for t in traces(ctx) if t.key == key)
    report = resample_chunks(
        ctx.engine, t.pdir, n=cfg.n_rollouts, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, forced=cfg.forced, forced_dir=t.fdir,
        batch_size=cfg.batch_size, compat=cfg.compat, write_every=cfg.write_every,
    )
    if not (report.corrupted or report.failed):
        ctx.mark("rollouts", t.key, n=cfg.n_rollouts, forced=cfg.forced)


def stage_analyse(ctx: Context) -> None:
    from probes.anchors.embed import make_embedder
    from probes.anchors.importance import analyse_problem, counterfactual_matrix, load_rollout_set
    from probes.anchors.taxonomy import LLMLabeler, RuleLabeler
    from probes.io import atomic_write_json

    cfg = ctx.cfg
    embedder = make_embedder(cfg.embedder)
    labeler = RuleLabeler() if cfg.labeler == "rule" else LLMLabeler(cfg.labeler, cfg.labeler_model)
    for t in tqdm(traces(ctx), desc="analyse"):
        scores, _ = analyse_problem(t.pdir, t.fdir if cfg.forced else None, embedder=embedder, labeler=labeler,
                                    threshold=cfg.similarity_threshold, compat=cfg.compat)
        scores.save(t.pdir / "anchor_scores.json")
        M = counterfactual_matrix(load_rollout_set(t.pdir, forced=False), embedder=embedder,
                                  threshold=cfg.similarity_threshold, compat=cfg.compat)
        atomic_write_json(t.pdir / "counterfactual_matrix.json", to_json_array(M))
        ctx.mark("analyse", t.key)


def _trace_tokens(model, pdir: Path):
    import torch

    from probes.anchors.rollouts import load_trace
    from probes.anchors.split import chunk_token_ranges

    full = load_trace(pdir).full_cot
    return torch.tensor(model.encode(full)), chunk_token_ranges(model, full)


def stage_receivers(ctx: Context) -> None:
    from probes.anchors import receivers as R

    settings = R.settings(ctx.cfg.receiver_settings)
    per_trace = {}
    for t in tqdm(traces(ctx), desc="receiver heads"):
        path = ctx.run.path / "receivers" / t.key
        if not ctx.done("receivers", t.key):
            ids, spans = _trace_tokens(ctx.model, t.pdir)
            R.analyse_trace(ctx.model, ids, spans, settings).save(path)
            ctx.mark("receivers", t.key)
        per_trace[t.key] = R.TraceReceivers.load(path)
    if not per_trace:
        return
    kurt = [t.kurtosis for t in per_trace.values()]
    heads = R.select_receiver_heads(kurt, settings.top_k, settings.exclude_layer0, settings.max_nan_fraction)
    ctx.run.save_json("receivers", {
        "settings": settings.name, "heads": [list(h) for h in heads], "mean_kurtosis": to_json_array(nanmean(np.stack(kurt), 0)),
        "split_half_reliability": R.split_half_reliability(kurt) if len(kurt) >= 4 else None,
        "scores": {k: to_json_array(R.receiver_scores(t.v_score, heads)) for k, t in per_trace.items()},
    })


def stage_suppression(ctx: Context) -> None:
    from probes.anchors.suppression import attention_suppression

    for t in tqdm(traces(ctx), desc="attention suppression"):
        if ctx.done("suppression", t.key):
            continue
        ids, spans = _trace_tokens(ctx.model, t.pdir)
        attention_suppression(ctx.model, ids, spans).save(ctx.run.path / "suppression" / t.key)
        ctx.mark("suppression", t.key)


def stage_report(ctx: Context) -> Path:
    from probes.plots import Report

    report = Report(f"Thought anchors — {ctx.cfg.model}", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN; all-NaN slices give NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def to_json_array(a) -> list:
    """Nested lists with NaN as None (JSON has no NaN)."""
    arr = np.asarray(a, dtype=np.float64)
    return np.where(np.isnan(arr), None, arr).tolist()


def from_json_array(x) -> np.ndarray:
    """The inverse of ``to_json_array``."""
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(x, dtype=object))],
                    dtype=np.float64).reshape(np.shape(x))


# ----- audit: damaged, missing and partial artifacts ----------------------------------------------------


def trace_issues(ctx: Context, t: TraceDirs) -> list[tuple[Issue, int | None]]:
    """Problems of one trace's files, each with the chunk it concerns (None: the whole trace)."""
    from probes.anchors.rollouts import load_solutions, load_trace

    cfg, rel = ctx.cfg, (lambda p: str(p.relative_to(ctx.run.path)))
    try:
        n_chunks = len(load_trace(t.pdir).chunks)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [(Issue(rel(t.pdir), f"base trace unreadable ({e})",
                       f"delete {rel(t.pdir)} and done/base/{t.key}.json, then rerun with --stages base rollouts"), None)]
    if not (ctx.done("rollouts", t.key) or any(t.pdir.glob("chunk_*"))):
        return []
    out = []
    folders = [(t.pdir, cfg.n_rollouts, "")] + ([(t.fdir, cfg.n_rollouts, "forced ")] if cfg.forced else [])
    for folder, n, what in folders:
        for i in range(n_chunks):
            path = folder / f"chunk_{i}" / "solutions.json"
            sentences = f"sentences {i - 1} and {i}" if i else "sentence 0"
            affects = f"{what}importance of {t.key} {sentences} computed without it"
            try:
                rows = load_solutions(path)
            except ValueError:
                out.append((Issue(rel(path), "damaged (not a JSON list of rollouts)",
                                  "delete it, then rerun with --stages rollouts analyse report", affects), i))
                continue
            if rows is None:
                out.append((Issue(rel(path), f"missing ({what}rollouts of sentence {i})",
                                  "rerun with --stages rollouts analyse report to resample it", affects), i))
                continue
            ok = sum("error" not in r for r in rows)
            if ok < n:
                out.append((Issue(rel(path), f"partial ({ok} of {n} {what}rollouts)",
                                  "rerun with --stages rollouts analyse report to top it up", affects), i))
    return out


def audit(ctx: Context) -> list[Issue]:
    return [issue for t in traces(ctx) for issue, _ in trace_issues(ctx, t)]


# ----- report: saved artifacts only ---------------------------------------------------------------

KURTOSIS_GAP = 1.0
"""The receiver-head map is drawn only when the top-k heads' mean kurtosis exceeds the median head's by this."""


def trace_table(ctx: Context, t: TraceDirs) -> dict[str, Any]:
    """Everything known about one trace's sentences, from the saved artifacts."""
    from probes.anchors.importance import AnchorScores
    from probes.anchors.suppression import SuppressionResult

    scores = AnchorScores.load(t.pdir / "anchor_scores.json")
    labeled = {r["chunk_idx"]: r for r in json.loads((t.pdir / "chunks_labeled.json").read_text())}
    n = len(scores)
    table = {
        "chunks": scores.chunks,
        "category": [(labeled.get(i, {}).get("function_tags") or ["unknown"])[0] for i in range(n)],
        "depends_on": [labeled.get(i, {}).get("depends_on", []) for i in range(n)],
        "summary": [labeled.get(i, {}).get("summary", "") for i in range(n)],
        "has_rollouts": np.asarray(scores.has_rollouts, dtype=bool),
    }
    for m in ("accuracy", *KL_METRICS, "counterfactual_importance_accuracy", "resampling_importance_accuracy"):
        table[m] = np.asarray(scores.metric(m), dtype=np.float64)
    if ctx.run.artifact("receivers.json").is_file():
        table["receiver_score"] = from_json_array(ctx.run.load_json("receivers")["scores"].get(t.key, [None] * n))
    if ctx.done("suppression", t.key):
        table["suppression_outgoing"] = nanmean(SuppressionResult.load(ctx.run.path / "suppression" / t.key).matrix, 0)
    return table


def planted_truth(tables: dict[str, dict[str, Any]], anchors=("plan_generation", "active_computation"),
                  filler=("unknown",)) -> dict[str, Any]:
    """Organism check: counterfactual importance of the card's anchor categories vs filler,
    and Spearman correlations between the three methods' sentence scores."""
    from scipy.stats import spearmanr

    by_tag: dict[str, list[float]] = {}
    rho: dict[str, list[float]] = {"cf_kl~receiver": [], "cf_kl~suppression": [], "receiver~suppression": []}
    for t in tables.values():
        cf = np.maximum(t["counterfactual_importance_kl"], 0.0)
        for i, tag in enumerate(t["category"]):
            if t["has_rollouts"][i]:
                by_tag.setdefault(tag, []).append(float(cf[i]))
        pairs = {"cf_kl~receiver": (cf, t.get("receiver_score")), "cf_kl~suppression": (cf, t.get("suppression_outgoing")),
                 "receiver~suppression": (t.get("receiver_score"), t.get("suppression_outgoing"))}
        for name, (a, b) in pairs.items():
            if a is None or b is None:
                continue
            ok = ~(np.isnan(a) | np.isnan(b)) & t["has_rollouts"]
            if ok.sum() >= 3 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
                rho[name].append(float(spearmanr(a[ok], b[ok]).statistic))
    means = {tag: (float(np.mean(v)), len(v)) for tag, v in sorted(by_tag.items(), key=lambda kv: (-np.mean(kv[1]), kv[0]))}
    anchor_vals = [x for tag in anchors for x in by_tag.get(tag, [])]
    filler_vals = [x for tag in filler for x in by_tag.get(tag, [])]
    return {
        "category_cf_kl": {tag: {"mean": m, "n": n} for tag, (m, n) in means.items()},
        "anchor_mean_cf_kl": float(np.mean(anchor_vals)) if anchor_vals else None,
        "filler_mean_cf_kl": float(np.mean(filler_vals)) if filler_vals else None,
        "spearman_mean": {k: (float(np.mean(v)) if v else None) for k, v in rho.items()},
        "spearman_per_trace": rho,
        "n_traces": len(tables),
    }


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def add_report_sections(ctx: Context, report) -> dict[str, Any]:
    """Issues, summary tables, figures and trace viewers of a run, into ``report``; returns the summary."""
    from probes.anchors.importance import AnchorScores, category_means
    from probes.anchors.taxonomy import ChunkLabel
    from probes.plots import (
        category_means_figure,
        importance_bars,
        sentence_matrix_heatmap,
        suppression_heatmap,
        write_trace_viewer,
    )

    report.add_heading("Thought anchors")
    found = [t for t in traces(ctx) if (t.pdir / "anchor_scores.json").is_file()]
    issues = {t.key: trace_issues(ctx, t) for t in traces(ctx)}
    ctx.add_issues(report, [i for per in issues.values() for i, _ in per])
    missing = [t.key for t in all_traces(ctx) if ctx.done("base", t.key) and t not in traces(ctx)]
    if missing:
        report.add_text(f"No base trace found in {ctx.cfg.base_tries} samples for: {', '.join(missing)}.")
    tables = {t.key: trace_table(ctx, t) for t in found}
    if not tables:
        report.add_text("No analysed traces yet: run the base, rollouts and analyse stages.")
        return {}
    summary = planted_truth(tables)
    rho = summary["spearman_mean"]
    report.add_table([{
        "traces": summary["n_traces"],
        "anchor sentences, mean cf KL": rounded(summary["anchor_mean_cf_kl"]),
        "filler sentences, mean cf KL": rounded(summary["filler_mean_cf_kl"]),
        **{f"Spearman {k}": rounded(v, 2) for k, v in rho.items()},
    }], caption="Planted truth: anchor categories (plan_generation, active_computation) should carry more "
                "counterfactual importance than filler; Spearman correlations between the methods' sentence scores, "
                "mean over traces (blank: not computed)")
    report.add_table([{"category": k, "mean cf KL": rounded(v["mean"]), "sentences": v["n"]}
                      for k, v in summary["category_cf_kl"].items()],
                     caption="Counterfactual importance (KL, clamped at 0) by first tag, all traces pooled")
    t0 = found[0]
    tb = tables[t0.key]
    changed = {i for _, i in issues.get(t0.key, []) if i is not None}
    changed |= {i - 1 for i in changed if i > 0}  # sentence i - 1 reads chunk i's rollouts as its "next"
    report.add_figure(importance_bars(np.maximum(tb["counterfactual_importance_kl"], 0), tb["category"], tb["chunks"],
                                      "counterfactual_importance_kl", title=f"Counterfactual importance, trace {t0.key}"),
                      "anchors_importance")
    cols = {"cf KL": "counterfactual_importance_kl", "resampling KL": "resampling_importance_kl",
            "forced KL": "forced_importance_kl", "receiver score": "receiver_score",
            "suppression (out)": "suppression_outgoing"}
    report.add_table([{"#": i, "sentence": _short(c), "category": tb["category"][i],
                       **{name: rounded(tb[m][i]) for name, m in cols.items() if m in tb},
                       "note": "computed without a damaged neighbour" if i in changed else ""}
                      for i, c in enumerate(tb["chunks"])], caption=f"Sentences of trace {t0.key}")
    pairs = [(AnchorScores.load(t.pdir / "anchor_scores.json"), [ChunkLabel([c]) for c in tables[t.key]["category"]])
             for t in found]
    stats = category_means(pairs, "counterfactual_importance_kl")
    if stats:
        report.add_figure(category_means_figure({c: tuple(v) for c, v in stats.items()}, "counterfactual_importance_kl"),
                          "anchors_categories")
    if ctx.run.artifact("receivers.json").is_file():
        _receiver_section(ctx, report, tables)
    cf_path = t0.pdir / "counterfactual_matrix.json"
    if cf_path.is_file():
        report.add_figure(sentence_matrix_heatmap(from_json_array(json.loads(cf_path.read_text())).T,
                                                  title=f"Sentence→sentence counterfactual matrix, trace {t0.key} (§5)",
                                                  x_title="resampled sentence i", y_title="later sentence j"),
                          "anchors_cf_matrix")
    if ctx.done("suppression", t0.key):
        from probes.anchors.suppression import SuppressionResult

        res = SuppressionResult.load(ctx.run.path / "suppression" / t0.key)
        report.add_figure(suppression_heatmap(res.centered, title=f"Attention suppression, trace {t0.key} "
                                                                  "(row-centred ln KL)"), "anchors_suppression")
    for t in found:
        tb = tables[t.key]
        metrics = {m: tb[m] for m in (*KL_METRICS, "counterfactual_importance_accuracy", "receiver_score",
                                      "suppression_outgoing") if m in tb}
        write_trace_viewer(ctx.run.artifact(f"viewer/{t.key}.html"), tb["chunks"], tb["category"], metrics,
                           depends_on=tb["depends_on"], summaries=tb["summary"], problem=t.problem["problem"],
                           title=f"Thought anchors — trace {t.key}")
    report.add_text(f"Interactive trace viewers: {', '.join(f'viewer/{k}.html' for k in tables)}")
    return summary


def _receiver_section(ctx: Context, report, tables) -> None:
    """The kurtosis map, or a sentence saying why it would show nothing (§6)."""
    from probes.plots import kurtosis_heatmap

    rec = ctx.run.load_json("receivers")
    kurt = from_json_array(rec["mean_kurtosis"])
    heads = [tuple(h) for h in rec["heads"]]
    top = np.nanmean([kurt[layer, head] for layer, head in heads]) if heads else np.nan
    gap = top - np.nanmedian(kurt)
    sentences = [len(tb["chunks"]) for tb in tables.values()]
    reliability = rec.get("split_half_reliability")
    if not np.isfinite(gap) or gap < KURTOSIS_GAP:
        report.add_text(
            f"Receiver heads: not drawn. Every head's mean kurtosis lies in [{np.nanmin(kurt):.2f}, {np.nanmax(kurt):.2f}] "
            f"and the top-{len(heads)} heads exceed the median head by only {max(gap, 0):.2f} (a map needs {KURTOSIS_GAP}): "
            f"with traces of {min(sentences)}–{max(sentences)} sentences no head stands out, so the map would "
            "carry no information. Traces of 20–40 sentences are needed (thought_anchors.md §6).")
        return
    report.add_figure(kurtosis_heatmap(kurt, heads, title=f"Receiver-head kurtosis ({rec['settings']} settings)"),
                      "anchors_kurtosis",
                      caption=f"Top-{len(heads)} heads exceed the median head's kurtosis by {gap:.2f}; split-half "
                              f"reliability {'n/a' if reliability is None else f'{reliability:.2f}'}.")


EXPERIMENT = Experiment(
    name="thought_anchors",
    config=AnchorsConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    prepare=load_problems,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

"""The thought-anchors pipeline as resumable stages over a run directory (issue #4).

``base`` samples a correct (and/or incorrect) base trace per problem; ``rollouts`` tops
every sentence up to N resamples and forced answers (math-rollouts layout under
``<run>/rollouts/``); ``analyse`` computes the black-box metrics and labels
(``chunks_labeled.json``); ``receivers`` and ``suppression`` run the white-box methods;
``report`` draws the figures, the trace viewer and the planted-truth summary from the
saved artifacts only. Every stage skips work whose artifact exists, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from probes.config import Config

log = logging.getLogger(__name__)

STAGES = ("base", "rollouts", "analyse", "receivers", "suppression", "report")
KL_METRICS = ("counterfactual_importance_kl", "resampling_importance_kl", "forced_importance_kl")


@dataclass(frozen=True, kw_only=True)
class AnchorsConfig(Config):
    """Thought-anchors experiment (reference/thought_anchors.md; defaults from §3–§7)."""

    model: str = field(default="zoo:reasoner", metadata={"help": "model spec (zoo:NAME, directory or hub name)"})
    problems: int = field(default=5, metadata={"help": "number of problems (zoo: held-out organism problems)"})
    problems_file: str | None = field(default=None, metadata={
        "help": "JSONL of problems ({problem, gt_answer or gt_solution, ...}); default: the organism task"})
    prompt_style: str = field(default="chat", metadata={
        "help": "chat (the model's chat template, thinking on) or math (the §3 raw-completion prompt)"})
    base: list[str] = field(default_factory=lambda: ["correct"], metadata={"help": "base traces: correct, incorrect"})
    n_rollouts: int = field(default=100, metadata={"help": "resamples per sentence (§3)"})
    forced: bool = field(default=True, metadata={"help": "also sample forced-answer rollouts (§3)"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (§3)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass (§3)"})
    max_new_tokens: int = field(default=16384, metadata={"help": "rollout length budget (§3)"})
    batch_size: int | None = field(default=None, metadata={"help": "rows decoded at once (default: all N)"})
    base_tries: int = field(default=16, metadata={"help": "samples tried to find a correct/incorrect base trace"})
    seed: int = field(default=44, metadata={"help": "seed of problem choice and sampling (§3)"})
    embedder: str = field(default="minilm", metadata={"help": "semantic filter embedder: minilm or hashing"})
    similarity_threshold: float = field(default=0.8, metadata={"help": "cosine below which a resample differs (§4)"})
    labeler: str = field(default="rule", metadata={"help": "rule, or the base URL of an OpenAI-compatible endpoint"})
    labeler_model: str = field(default="gpt-4o", metadata={"help": "model name for the LLM labeler (§2)"})
    receiver_settings: str = field(default="released", metadata={"help": "released, paper-era or paper-era-llama (§6)"})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": "stages to run, in order"})
    run_dir: str | None = field(default=None, metadata={"help": "existing run directory to resume"})
    runs_root: str | None = field(default=None, metadata={"help": "runs directory (default $PROBES_RUNS or ./runs)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    formats: list[str] = field(default_factory=lambda: ["html", "png", "svg", "pdf"],
                               metadata={"help": "figure formats (static ones need Chromium)"})

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}: choose from {', '.join(STAGES)}")
        if self.prompt_style not in ("chat", "math"):
            raise ValueError("prompt_style must be chat or math")
        if not set(self.base) <= {"correct", "incorrect"} or not self.base:
            raise ValueError("base must list correct and/or incorrect")
        if self.embedder not in ("minilm", "hashing"):
            raise ValueError("embedder must be minilm or hashing")
        if self.n_rollouts < 1 or self.problems < 1:
            raise ValueError("n_rollouts and problems must be >= 1")


# ----- problems ---------------------------------------------------------------------------


def load_problems(cfg: AnchorsConfig) -> list[dict[str, Any]]:
    """Problem records: from ``problems_file`` (JSONL), else held-out organism problems."""
    if cfg.problems_file:
        rows = [json.loads(line) for line in Path(cfg.problems_file).read_text().splitlines() if line.strip()]
        for i, r in enumerate(rows):
            r.setdefault("idx", i)
        return rows[: cfg.problems]
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


# ----- stages -----------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Runs the stages of ``cfg`` on ``model`` inside ``run`` (a ``probes.runs.Run``)."""

    model: Any
    cfg: AnchorsConfig
    run: Any
    skipped: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        from probes.anchors.rollouts import rollouts_root

        name = self.cfg.model.replace("/", "_").replace(":", "_")
        return rollouts_root(self.run.path / "rollouts", name, self.cfg.temperature, self.cfg.top_p)

    def traces(self) -> list[tuple[str, Path, Path]]:
        """(key, problem_dir, forced_dir) of every base trace present on disk."""
        from probes.anchors.rollouts import rollout_dirs

        out = []
        for p in load_problems(self.cfg):
            for kind in self.cfg.base:
                pdir, fdir = rollout_dirs(self.root, p["idx"], correct=kind == "correct")
                if (pdir / "base_solution.json").is_file():
                    out.append((f"{kind}_{p['idx']}", pdir, fdir))
        return out

    def run_stages(self) -> None:
        for stage in self.cfg.stages:
            getattr(self, f"stage_{stage}")()

    def stage_base(self) -> None:
        from probes.anchors.rollouts import rollout_dirs, sample_base_solution, write_trace

        for p in tqdm(load_problems(self.cfg), desc="base traces"):
            prompt = prompt_for(self.model, p["problem"], self.cfg.prompt_style)
            for kind in self.cfg.base:
                pdir, _ = rollout_dirs(self.root, p["idx"], correct=kind == "correct")
                if (pdir / "base_solution.json").is_file():
                    continue
                trace = sample_base_solution(
                    self.model, p, prompt, correct=kind == "correct", tries=self.cfg.base_tries,
                    temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_new_tokens=self.cfg.max_new_tokens,
                    seed=self.cfg.seed + 1000 * p["idx"], batch_size=self.cfg.batch_size,
                )
                if trace is None:
                    self.skipped.append(f"problem {p['idx']}: no {kind} base trace in {self.cfg.base_tries} samples")
                    log.warning(self.skipped[-1])
                    continue
                write_trace(pdir, trace)

    def stage_rollouts(self) -> None:
        from probes.anchors.rollouts import resample_chunks

        for key, pdir, fdir in self.traces():
            report = resample_chunks(
                self.model, pdir, n=self.cfg.n_rollouts, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed, forced=self.cfg.forced, forced_dir=fdir,
                batch_size=self.cfg.batch_size,
            )
            if report.corrupted or report.failed:
                self.skipped.append(f"{key}: corrupted {[str(p) for p in report.corrupted]}, failed {report.failed}")

    def _embedder(self):
        from probes.anchors.embed import HashingEmbedder, MiniLMEmbedder

        return MiniLMEmbedder() if self.cfg.embedder == "minilm" else HashingEmbedder()

    def _labeler(self):
        from probes.anchors.taxonomy import LLMLabeler, RuleLabeler

        return RuleLabeler() if self.cfg.labeler == "rule" else LLMLabeler(self.cfg.labeler, self.cfg.labeler_model)

    def stage_analyse(self) -> None:
        from probes.anchors.importance import analyse_problem, counterfactual_matrix, load_rollout_set
        from probes.io import atomic_write_json

        embedder, labeler = self._embedder(), self._labeler()
        for _key, pdir, fdir in tqdm(self.traces(), desc="analyse"):
            scores, _ = analyse_problem(pdir, fdir if self.cfg.forced else None, embedder=embedder, labeler=labeler,
                                        threshold=self.cfg.similarity_threshold)
            scores.save(pdir / "anchor_scores.json")
            M = counterfactual_matrix(load_rollout_set(pdir, forced=False), embedder=embedder,
                                      threshold=self.cfg.similarity_threshold)
            atomic_write_json(pdir / "counterfactual_matrix.json", to_json_array(M))

    def _trace_tokens(self, pdir: Path):
        import torch

        from probes.anchors.rollouts import load_trace
        from probes.anchors.split import chunk_token_ranges

        trace = load_trace(pdir)
        full = trace.full_cot
        return torch.tensor(self.model.encode(full)), chunk_token_ranges(self.model, full)

    def stage_receivers(self) -> None:
        from probes.anchors import receivers as R

        settings = R.settings(self.cfg.receiver_settings)
        per_trace = {}
        for key, pdir, _ in tqdm(self.traces(), desc="receiver heads"):
            ids, spans = self._trace_tokens(pdir)
            per_trace[key] = R.analyse_trace(self.model, ids, spans, settings)
        if not per_trace:
            return
        kurt = [t.kurtosis for t in per_trace.values()]
        heads = R.select_receiver_heads(kurt, settings.top_k, settings.exclude_layer0, settings.max_nan_fraction)
        with R._quiet():
            mean_kurt = np.nanmean(np.stack(kurt), axis=0)
        reliability = R.split_half_reliability(kurt) if len(kurt) >= 4 else None
        self.run.save_json("receivers", {
            "settings": settings.name, "heads": [list(h) for h in heads], "mean_kurtosis": to_json_array(mean_kurt),
            "split_half_reliability": reliability,
            "scores": {k: to_json_array(R.receiver_scores(t.v_score, heads)) for k, t in per_trace.items()},
        })

    def stage_suppression(self) -> None:
        from probes.anchors.suppression import attention_suppression

        out = self.run.load_json("suppression") if self.run.artifact("suppression.json").is_file() else {}
        for key, pdir, _ in tqdm(self.traces(), desc="attention suppression"):
            if key in out:
                continue
            ids, spans = self._trace_tokens(pdir)
            res = attention_suppression(self.model, ids, spans)
            out[key] = {"matrix": to_json_array(res.matrix), "centered": to_json_array(res.centered)}
            self.run.save_json("suppression", out)

    def stage_report(self) -> Path:
        from probes.plots import Report

        report = Report(f"Thought anchors — {self.cfg.model}", formats=self.cfg.formats)
        add_report_sections(self.run, self.traces(), report, skipped=self.skipped)
        return report.write(self.run.path)


def to_json_array(a) -> list:
    """Nested lists with NaN as None (JSON has no NaN)."""
    arr = np.asarray(a, dtype=np.float64)
    return np.where(np.isnan(arr), None, arr).tolist()


def from_json_array(x) -> np.ndarray:
    """The inverse of ``to_json_array``."""
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(x, dtype=object))],
                    dtype=np.float64).reshape(np.shape(x))


# ----- summary and report (saved artifacts only) -----------------------------------------------


def outgoing_suppression(matrix: np.ndarray) -> np.ndarray:
    """Per suppressed sentence k: mean effect on later sentences (column mean over j > k)."""
    from probes.anchors.receivers import _quiet

    with _quiet():
        return np.nanmean(matrix, axis=0)


def trace_table(run, pdir: Path, key: str) -> dict[str, Any]:
    """Everything known about one trace's sentences, from the saved artifacts."""
    from probes.anchors.importance import AnchorScores

    scores = AnchorScores.load(pdir / "anchor_scores.json")
    labeled = {r["chunk_idx"]: r for r in json.loads((pdir / "chunks_labeled.json").read_text())}
    n = len(scores)
    tags = [labeled[i]["function_tags"][0] if i in labeled and labeled[i]["function_tags"] else "unknown"
            for i in range(n)]
    table = {
        "chunks": scores.chunks, "category": tags,
        "depends_on": [labeled.get(i, {}).get("depends_on", []) for i in range(n)],
        "summary": [labeled.get(i, {}).get("summary", "") for i in range(n)],
        "has_rollouts": np.asarray(scores.has_rollouts, dtype=bool),
    }
    for m in ("accuracy", *KL_METRICS, "counterfactual_importance_accuracy", "resampling_importance_accuracy"):
        table[m] = np.asarray(scores.metric(m), dtype=np.float64)
    if run.artifact("receivers.json").is_file():
        table["receiver_score"] = from_json_array(run.load_json("receivers")["scores"].get(key, [None] * n))
    if run.artifact("suppression.json").is_file() and key in run.load_json("suppression"):
        table["suppression_outgoing"] = outgoing_suppression(from_json_array(run.load_json("suppression")[key]["matrix"]))
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
    means = {tag: (float(np.mean(v)), len(v)) for tag, v in sorted(by_tag.items(), key=lambda kv: -np.mean(kv[1]))}
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


def add_report_sections(run, traces, report, skipped=()) -> dict[str, Any]:
    """Figures, viewer and the planted-truth summary of a pipeline run, into ``report``."""
    from probes.anchors.importance import AnchorScores, category_means
    from probes.anchors.taxonomy import ChunkLabel
    from probes.plots import (
        category_means_figure,
        importance_bars,
        kurtosis_heatmap,
        sentence_matrix_heatmap,
        suppression_heatmap,
        write_trace_viewer,
    )

    tables = {key: trace_table(run, pdir, key) for key, pdir, _ in traces if (pdir / "anchor_scores.json").is_file()}
    if not tables:
        report.add_text("No analysed traces yet: run the base, rollouts and analyse stages.")
        return {}
    summary = planted_truth(tables)
    run.save_json("summary", {**summary, "skipped": list(skipped)})
    report.add_heading("Thought anchors")
    report.add_text(
        f"{len(tables)} traces. Mean counterfactual importance (KL) of anchor sentences "
        f"(plan_generation, active_computation): {summary['anchor_mean_cf_kl']}; of filler: "
        f"{summary['filler_mean_cf_kl']}. Spearman between methods (mean over traces): {summary['spearman_mean']}."
    )
    report.add_table([{"category": k, **v} for k, v in summary["category_cf_kl"].items()],
                     caption="Counterfactual importance (KL, clamped at 0) by first tag, all traces pooled")
    key, t = next(iter(tables.items()))
    report.add_figure(importance_bars(np.maximum(t["counterfactual_importance_kl"], 0), t["category"], t["chunks"],
                                      "counterfactual_importance_kl", title=f"Counterfactual importance, trace {key}"),
                      "anchors_importance")
    dirs = {k: p for k, p, _ in traces}
    pairs = [(AnchorScores.load(dirs[k] / "anchor_scores.json"), [ChunkLabel([c]) for c in tb["category"]])
             for k, tb in tables.items()]
    stats = category_means(pairs, "counterfactual_importance_kl")
    if stats:
        report.add_figure(category_means_figure({c: tuple(v) for c, v in stats.items()}, "counterfactual_importance_kl"),
                          "anchors_categories")
    if run.artifact("receivers.json").is_file():
        rec = run.load_json("receivers")
        report.add_figure(kurtosis_heatmap(from_json_array(rec["mean_kurtosis"]), [tuple(h) for h in rec["heads"]],
                                           title=f"Receiver-head kurtosis ({rec['settings']} settings)"),
                          "anchors_kurtosis")
    cf_path = dirs[key] / "counterfactual_matrix.json"
    if cf_path.is_file():
        report.add_figure(sentence_matrix_heatmap(from_json_array(json.loads(cf_path.read_text())).T,
                                                  title=f"Sentence→sentence counterfactual matrix, trace {key} (§5)",
                                                  x_title="resampled sentence i", y_title="later sentence j"),
                          "anchors_cf_matrix")
    if run.artifact("suppression.json").is_file() and key in run.load_json("suppression"):
        report.add_figure(suppression_heatmap(from_json_array(run.load_json("suppression")[key]["centered"]),
                                              title=f"Attention suppression, trace {key} (row-centred ln KL)"),
                          "anchors_suppression")
    for k, tb in tables.items():
        metrics = {m: tb[m] for m in (*KL_METRICS, "counterfactual_importance_accuracy", "receiver_score",
                                      "suppression_outgoing") if m in tb}
        problem = json.loads((dirs[k] / "problem.json").read_text())["problem"]
        write_trace_viewer(run.artifact(f"viewer/{k}.html"), tb["chunks"], tb["category"], metrics,
                           depends_on=tb["depends_on"], summaries=tb["summary"], problem=problem,
                           title=f"Thought anchors — trace {k}")
    report.add_text(f"Interactive trace viewers: {', '.join(f'viewer/{k}.html' for k in tables)}")
    return summary


def run_pipeline(cfg: AnchorsConfig, model=None) -> Path:
    """Run (or resume) the configured stages; returns the run directory."""
    from probes.models.load import load_model
    from probes.runs import Run

    model = model or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    run = Run.open(cfg.run_dir) if cfg.run_dir else Run.create("thought_anchors", cfg, root=cfg.runs_root,
                                                                 model=model, seed=cfg.seed)
    Pipeline(model, cfg, run).run_stages()
    return run.path

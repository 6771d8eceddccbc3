"""Refusal cliff on a reasoning model: the model's own rollouts, a linear refusal probe, refusal
trajectories and the cliff, thinking truncation, the refusal direction, and the report
(reference/refusal.md A1–A3, B; issue #12).

    python -m experiments.refusal_cliff                                # zoo:refusal-reasoner
    python -m experiments.refusal_cliff --model deepseek-ai/DeepSeek-R1-Distill-Llama-8B \\
        --harmful-set advbench --harmless-set ultrachat --attack-set wildjailbreak --ood-set jailbreakbench
    python -m experiments.refusal_cliff --run-dir runs/refusal_cliff/<id>     # resume as configured

Stages: ``collect`` loads the prompt sets (by name: the zoo's offline sets or public ones through
``datasets``), splits each into probe-training and evaluation prompts, and rolls the model out on
them (thinking and answer split at ``</think>``; rollouts that never close are counted and left out;
``--engine openai --base-url …`` generates them on an OpenAI-compatible server);
``probe`` fits the probes — the **reference** probe (A2: the final-norm state at the last token before
the answer, ``AdamBCE``) and a **thinking** probe (a middle layer, read both as the mean over the
thinking and at the last token, logistic regression), which reads refusal intent across the thinking of
small models whose final layer only predicts the next token — on rollouts of harmful prompts that
were refused vs harmless ones that were answered, runs the reference layer sweep and evaluates each
probe out of distribution; ``trajectories`` scores every token of every evaluation rollout (r_t,
r_T, Δ_cliff, its late-window variant, per-sentence scores) per probe and group; ``truncation``
re-answers attack rollouts with part of their thinking (A3); ``heads`` scores each attention head's direct
write onto the reference probe at the probe position over the attack rollouts and ablates the most
negative heads (norm-preserving) against as many random heads (A4); ``direction`` reads diff-in-means
candidates after the thinking, selects one by B3's filters and measures refusal rates under ablation
(harmful prompts) and addition at ``</think>`` (harmless prompts); ``search`` (beyond the reference)
runs an Optuna search over the ablation's layer and per-layer weight kernel that co-minimises the
refusal rate on harmful dev texts and the KL on harmless ones, starting from the B3 choice;
``cliff_judge`` (zoo organisms) closes A6's loop: the organism's unsafe rollouts on wrapped requests
ranked by r_T / Δ_cliff, the top k% against random and rule selections of the same size, each written
as an SFT set, fine-tuned on with the zoo's training code and evaluated on held-out wrapped and
harmless requests (``probes.zoo.cliff_judge``); ``report`` draws tables from the
saved artifacts only.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
from probes.io import atomic_write_json
from probes.plots.report import rounded, with_ci

log = logging.getLogger(__name__)

StageName = Literal["collect", "probe", "trajectories", "truncation", "heads", "direction", "search", "cliff_judge",
                    "report"]
STAGES: tuple[StageName, ...] = ("collect", "probe", "trajectories", "truncation", "heads", "direction", "search",
                                 "cliff_judge", "report")
GROUPS = ("harmful", "attack", "harmless")
"""Evaluation groups: plain harmful prompts, attacks (wrapped / jailbreak prompts), harmless prompts."""
PROBES = ("reference", "thinking")
ROLLOUTS = "rollouts"


@dataclass(frozen=True, kw_only=True)
class RefusalCliffConfig(EngineOptions, ExperimentConfig):
    """Refusal cliff (reference/refusal.md A1–A3, B): probe refusal intent across the model's own
    thinking, locate the cliff, truncate the thinking, find and test the refusal direction."""

    model: str = field(default="zoo:refusal-reasoner", metadata={"help": "model spec (zoo:NAME, directory or hub name)"})
    harmful_set: str = field(default="zoo-forbidden-plain", metadata={"help": "plain harmful prompts (probe refusal class)"})
    harmless_set: str = field(default="zoo-harmless", metadata={"help": "harmless prompts (probe non-refusal class)"})
    attack_set: str = field(default="zoo-forbidden-wrapped", metadata={"help": "attacks: wrapped / jailbreak prompts"})
    ood_set: str = field(default="zoo-oot", metadata={
        "help": "out-of-distribution probe test set ('' to skip; with one class only accuracy is reported)"})
    n_train: int = field(default=100, metadata={"help": "probe-training prompts per class"})
    n_eval: int = field(default=60, metadata={"help": "evaluation prompts per group"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the rollouts (A1: 0.7)"})
    max_new_tokens: int = field(default=256, metadata={"help": "rollout budget (thinking + answer)"})
    system: str = field(default="", metadata={"help": "system prompt ('': none; A1 uses 'You are a helpful assistant.')"})
    refusal_phrases: Literal["auto", "arditi", "zoo"] = field(default="auto", metadata={
        "help": "keyword judge: arditi (B4 substrings), zoo (the organism's openings), auto (zoo for zoo models)"})
    thinking_site: str = field(default="", metadata={
        "help": "site of the thinking probe ('': the middle layer's resid_post)"})
    truncation_fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata={
        "help": "shares of the thinking kept (A3)"})
    truncation_unit: Literal["chars", "sentences"] = field(default="sentences", metadata={
        "help": "truncate by characters (the reference) or whole sentences"})
    head_counts: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "numbers of top (most negative) heads ablated (A4 uses 1.5/3/10% of all heads)"})
    head_draws: int = field(default=3, metadata={"help": "random head sets per budget (the control)"})
    head_samples: int = field(default=2, metadata={"help": "rollouts per attack prompt under each head ablation"})
    direction_positions: list[int] = field(default_factory=lambda: [-3, -2, -1], metadata={
        "help": "positions (from the end of prompt + thinking + </think>) of the direction candidates"})
    cliff_judge_ks: list[float] = field(default_factory=lambda: [0.125, 0.25], metadata={
        "help": "Cliff-as-a-Judge: selected shares of the unsafe pool (zoo organisms; leave cliff_judge out of "
                "--stages to skip it)"})
    cliff_judge_pool: int = field(default=150, metadata={"help": "Cliff-as-a-Judge: wrapped requests in the pool"})
    cliff_judge_eval: int = field(default=100, metadata={"help": "Cliff-as-a-Judge: held-out requests per set"})
    search_trials: int = field(default=30, metadata={"help": "trials of the ablation search (0: skip it)"})
    seed: int = field(default=0, metadata={"help": "seed of the splits, rollouts and bootstrap"})
    stages: list[StageName] = session_field(default_factory=lambda: list(STAGES), help="stages to run, in order")
    batch_size: int = session_field(16, help="prompts per forward / generation batch")

    def __post_init__(self):
        self.check_engine()
        if self.n_train < 4 or self.n_eval < 2:
            raise ValueError(f"n_train must be >= 4 and n_eval >= 2 (got {self.n_train}, {self.n_eval})")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.seed < 0 or self.search_trials < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, seed and search_trials >= 0")
        if not self.truncation_fractions or any(not 0 <= f <= 1 for f in self.truncation_fractions):
            raise ValueError(f"truncation_fractions must be shares in [0, 1], got {self.truncation_fractions}")
        if any(not 0 < k <= 1 for k in self.cliff_judge_ks) or self.cliff_judge_pool < 1 or self.cliff_judge_eval < 1:
            raise ValueError(f"cliff_judge_ks must be shares in (0, 1] (got {self.cliff_judge_ks}); pool and eval >= 1")
        if not self.head_counts or min(self.head_counts) < 1 or self.head_draws < 1 or self.head_samples < 1:
            raise ValueError(f"head_counts must be positive ({self.head_counts}); head_draws and head_samples >= 1")
        if not self.direction_positions or any(p >= 0 for p in self.direction_positions):
            raise ValueError(f"direction_positions must be negative (from the end), got {self.direction_positions}")
        for name in ("harmful_set", "harmless_set", "attack_set"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is empty: name a prompt set (e.g. zoo-harmless, advbench)")


# ----- inputs: validated before any model is loaded or directory created ------------------------
@dataclass(frozen=True)
class Inputs:
    """Prompt texts: probe training (per class), evaluation (per group), and the OOD set with labels."""

    train: dict[str, list[str]]
    eval: dict[str, list[str]]
    ood: list[str]
    ood_labels: list[bool]


def prepare(cfg: RefusalCliffConfig) -> Inputs:
    """Load and split the prompt sets (an unknown or unreachable set fails here, naming the offline ones)."""
    from probes.zoo.refusal_prompts import load_prompts

    sets = {"harmful": cfg.harmful_set, "attack": cfg.attack_set, "harmless": cfg.harmless_set}
    train, evals = {}, {}
    for group, name in sets.items():
        need = cfg.n_eval + (cfg.n_train if group != "attack" else 0)
        ps = load_prompts(name, n=need)
        if len(ps) < need:
            raise ValueError(f"{name} has {len(ps)} prompts, {need} are needed: lower --n-train / --n-eval")
        parts = ps.split({"train": need - cfg.n_eval, "eval": cfg.n_eval} if group != "attack" else {"eval": cfg.n_eval},
                         seed=cfg.seed)
        evals[group] = list(parts["eval"].prompts)
        if group != "attack":
            train[group] = list(parts["train"].prompts)
    ood, labels = [], []
    if cfg.ood_set:
        ps = load_prompts(cfg.ood_set)
        ood, labels = list(ps.prompts), [bool(x) for x in ps.labels]
    return Inputs(train, evals, ood, labels)


def judge_for(cfg: RefusalCliffConfig):
    """The keyword judge of the answers (B4 substrings, or the zoo organism's openings)."""
    from probes.refusal.judges import KeywordJudge

    zoo = cfg.refusal_phrases == "zoo" or (cfg.refusal_phrases == "auto" and cfg.model.startswith("zoo:"))
    if zoo:
        from probes.zoo.tasks.refusal import REFUSAL_MARKERS

        return KeywordJudge(phrases=REFUSAL_MARKERS, window=60, ignore_case=False)
    return KeywordJudge()


def refused(judge, items) -> list[bool]:
    """The judge's refusal verdict on each closed rollout's answer."""
    return [v.refused for v in judge([r.answer for r in items])]


def _rollouts_path(ctx: Context, name: str) -> Path:
    return ctx.run.path / ROLLOUTS / f"{name}.jsonl"


def _load(ctx: Context, name: str):
    from probes.refusal.rollout import load_rollouts

    return load_rollouts(_rollouts_path(ctx, name))


# ----- stages --------------------------------------------------------------------------------------
def stage_collect(ctx: Context) -> None:
    """Rollouts of every prompt list (one unit per list)."""
    from probes.refusal.rollout import rollouts, save_rollouts, unclosed

    cfg, inp = ctx.cfg, ctx.inputs
    lists = {f"train_{k}": v for k, v in inp.train.items()} | {f"eval_{k}": v for k, v in inp.eval.items()}
    if inp.ood:
        lists["ood"] = inp.ood
    for i, (name, prompts) in enumerate(lists.items()):
        if ctx.done("collect", name):
            continue
        items = rollouts(ctx.model, prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                         system=cfg.system or None, seed=cfg.seed + 1_000_000 * i, batch_size=cfg.batch_size,
                         engine=ctx.engine)
        save_rollouts(_rollouts_path(ctx, name), items)
        ctx.mark("collect", name, n=len(items), unclosed=unclosed(items))


def thinking_site(cfg: RefusalCliffConfig, model) -> str:
    return cfg.thinking_site or f"resid_post[{max(model.n_layers // 2 - 1, 0)}]"


def stage_probe(ctx: Context) -> None:
    """The reference and thinking probes, the layer sweep and the OOD evaluation."""
    from probes.evals.stats import accuracy
    from probes.refusal.probe import SklearnLogistic, evaluate_probe, layer_sweep, probe_features, train_probe
    from probes.steering.directions import LastToken, ThinkingMean

    cfg, model, judge = ctx.cfg, ctx.model, judge_for(ctx.cfg)
    if ctx.done("probe"):
        return
    harm = [r for r in _load(ctx, "train_harmful") if r.closed]
    safe = [r for r in _load(ctx, "train_harmless") if r.closed]
    pos = [r.probe_text for r, f in zip(harm, refused(judge, harm)) if f]
    neg = [r.probe_text for r, f in zip(safe, refused(judge, safe)) if not f]
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"{len(pos)} harmful rollouts refused and {len(neg)} harmless ones were answered: a probe "
                         "needs both classes (check the model's template and the judge's phrases)")
    kinds = {"reference": dict(),
             "thinking": dict(site=thinking_site(cfg, model), read=[ThinkingMean(), LastToken()],
                              fit=SklearnLogistic(C=0.1))}
    ood = _load(ctx, "ood") if ctx.inputs.ood else []
    labels = [y for r, y in zip(ood, ctx.inputs.ood_labels) if r.closed]
    ood = [r for r in ood if r.closed]
    out: dict[str, Any] = {"n_refusal": len(pos), "n_non_refusal": len(neg)}
    for kind, kw in kinds.items():
        probe = train_probe(model, pos, neg, batch_size=cfg.batch_size, seed=42, **kw)
        probe.save(ctx.run.path / "probe" / kind)
        row = {"site": probe.site, "read": probe.read_position, "fit": probe.fit, **probe.metrics}
        if ood:
            f = probe_features(model, [r.probe_text for r in ood], probe.site, batch_size=cfg.batch_size)
            y = np.array(labels)
            if y.all() or not y.any():  # one class (e.g. JailbreakBench's harmful behaviours): accuracy only
                row["ood"] = {"accuracy": _est(accuracy((probe.score(f).numpy() > 0.5) == y, seed=cfg.seed)),
                              "n": len(y)}
            else:
                ev = evaluate_probe(probe, f[y], f[~y], seed=cfg.seed)
                row["ood"] = {"accuracy": _est(ev.accuracy), "auroc": _est(ev.auroc), "n": len(y)}
        out[kind] = row
    sweep = layer_sweep(model, pos, neg, batch_size=cfg.batch_size)
    out["sweep"] = {s: p.metrics["val_accuracy"] for s, p in sweep.items()}
    atomic_write_json(ctx.run.path / "probe" / "summary.json", out)


def _est(e) -> dict[str, float]:
    return {"value": float(e.value), "lo": float(e.lo), "hi": float(e.hi)}


def stage_trajectories(ctx: Context) -> None:
    """Per probe and group: r_T, Δ_cliff, late-window Δ, per-sentence scores and the mean curves."""
    from probes.refusal.probe import Probe
    from probes.refusal.trajectory import mean_curve, sentence_curve, trajectories

    cfg, model, judge = ctx.cfg, ctx.model, judge_for(ctx.cfg)
    for kind in PROBES:
        probe = Probe.load(ctx.run.path / "probe" / kind)
        for group in GROUPS:
            unit = f"{kind}_{group}"
            if ctx.done("trajectories", unit):
                continue
            items = [r for r in _load(ctx, f"eval_{group}") if r.closed]
            if not items:
                ctx.notes.append(f"trajectories: no closed rollout in {group}")
                continue
            tj = trajectories(model, probe, items, batch_size=cfg.batch_size)
            n_sent = max(len(t.sentences) for t in tj)
            texts = next(t.sentence_texts for t in tj if len(t.sentences) == n_sent)
            atomic_write_json(ctx.run.path / "trajectories" / f"{unit}.json", {
                "prompt": [r.prompt for r in items], "refused": refused(judge, items),
                "r_T": [t.r_T for t in tj], "max_thinking": [t.max_thinking for t in tj],
                "cliff": [t.cliff for t in tj], "late_cliff": [t.late_cliff() for t in tj],
                "cliff_sentence": [t.cliff_sentence for t in tj],
                "sentence_scores": [t.sentence_scores.tolist() for t in tj],
                "last_sentence": [t.sentence_texts[-1] if t.sentences else "" for t in tj],
                "curve": mean_curve([t.until_answer for t in tj]).tolist(),
                "curve_zero_padded": mean_curve([t.until_answer for t in tj], padding="zero").tolist(),
                "curve_binned": mean_curve([t.until_answer for t in tj], resample="bins").tolist(),
                "sentence_curve": sentence_curve(tj).tolist(), "example_sentences": list(texts)})
            ctx.mark("trajectories", unit, n=len(tj))


def stage_truncation(ctx: Context) -> None:
    """A3 thinking truncation on the attack rollouts, scored by the thinking probe."""
    from probes.refusal.probe import Probe
    from probes.refusal.truncation import thinking_truncation

    cfg = ctx.cfg
    if ctx.done("truncation"):
        return
    probe = Probe.load(ctx.run.path / "probe" / "thinking")
    items = [r for r in _load(ctx, "eval_attack") if r.closed]
    pts = thinking_truncation(ctx.model, probe, items, judge_for(cfg), cfg.truncation_fractions,
                              unit=cfg.truncation_unit, temperature=cfg.temperature, max_new_tokens=64,
                              seed=cfg.seed, batch_size=cfg.batch_size)
    atomic_write_json(ctx.run.path / "truncation.json", [
        {"fraction": p.fraction, "refusal_rate": _est(p.refusal_rate), "r_T": _est(p.r_T), "n": p.refusal_rate.n,
         "example_answer": p.answers[0]} for p in pts])


def stage_heads(ctx: Context) -> None:
    """A4: direct head attributions onto the reference probe over the attack rollouts, then the top heads
    ablated against random heads at each budget: one unit per budget, the first also rolling out the
    shared baseline, the others (``--executor ray``: Ray tasks) reusing it."""
    from probes.refusal.heads import HeadScores, head_scores
    from probes.refusal.probe import Probe

    cfg = ctx.cfg
    if not ctx.done("heads", "scores"):
        items = [r for r in _load(ctx, "eval_attack") if r.closed]
        probe = Probe.load(ctx.run.path / "probe" / "reference")
        head_scores(ctx.model, probe, items, batch_size=cfg.batch_size, progress=True).save(ctx.run.path / "heads" / "scores")
        ctx.mark("heads", "scores")
    n = HeadScores.load(ctx.run.path / "heads" / "scores").scores.size
    bad = [k for k in cfg.head_counts if k > n]
    if bad:
        raise ValueError(f"head_counts {bad} exceed the {n} heads of {cfg.model}: lower them")
    units = [_ablation_unit(k) for k in cfg.head_counts]
    ctx.run_units("heads", units[:1], ablation_unit)
    ctx.run_units("heads", units[1:], ablation_unit)


def _ablation_unit(k: int) -> str:
    return f"ablation_k{k}"


def ablation_unit(ctx: Context, unit: str) -> None:
    """Budget ``unit``: the top k heads and the random draws ablated (the baseline is the first budget's)."""
    from probes.refusal.heads import AblationResult, HeadScores, ablate_heads
    from probes.refusal.probe import Probe

    cfg, path = ctx.cfg, ctx.run.path / "heads"
    k = next(k for k in cfg.head_counts if _ablation_unit(k) == unit)
    first = _ablation_unit(cfg.head_counts[0])
    baseline = AblationResult.load(path / first).baseline if unit != first else None
    result = ablate_heads(ctx.model, Probe.load(ctx.run.path / "probe" / "reference"), HeadScores.load(path / "scores"),
                          ctx.inputs.eval["attack"], judge_for(cfg), k=k, draws=cfg.head_draws, seed=cfg.seed,
                          samples=cfg.head_samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          baseline=baseline, batch_size=cfg.batch_size)
    result.save(path / unit)
    atomic_write_json(path / f"{unit}.summary.json", result.summary(seed=cfg.seed))
    ctx.mark("heads", unit)


def refusal_ids(model) -> list[int]:
    """The first token of a refusal ("I"), as B5's Llama-3 and the zoo use."""
    return model.encode("I", add_special_tokens=False)[:1]


def stage_direction(ctx: Context) -> None:
    """B2–B3 on texts that end at ``</think>``: candidates, selection, then refusal rates of regenerated
    answers under ablation (harmful) and addition at ``</think>`` (harmless)."""
    from probes.evals.stats import accuracy
    from probes.refusal.direction import (
        AllCandidatesFilteredError,
        DirectionSelection,
        candidate_directions,
        select_direction,
    )

    cfg, model, judge = ctx.cfg, ctx.model, judge_for(ctx.cfg)
    path = ctx.run.path / "direction" / "selection"
    if not ctx.done("direction", "selection"):
        (dev_harm, harm), (dev_safe, safe) = _dev_split(ctx)
        cands = candidate_directions(model, harm, safe, positions=cfg.direction_positions, batch_size=cfg.batch_size,
                                     progress=True)
        cands.save(ctx.run.path / "direction" / "candidates")
        try:
            sel = select_direction(model, cands, dev_harm, dev_safe, refusal_ids(model), batch_size=cfg.batch_size,
                                   progress=True)
        except AllCandidatesFilteredError as e:
            atomic_write_json(ctx.run.path / "direction" / "filtered.json", {"error": str(e)})
            ctx.notes.append("direction: every candidate was filtered out (B3); see direction/filtered.json")
            return
        sel.save(path)
        ctx.mark("direction", "selection", position=sel.position, layer=sel.layer)
    if ctx.done("direction", "rates"):
        return
    sel = DirectionSelection.load(path)
    rows = []
    for group, condition, ivs in (("harmful", "baseline", ()), ("harmful", "direction ablated", sel.ablation(model)),
                                  ("harmless", "baseline", ()), ("harmless", "direction added at </think>", None)):
        items = [r for r in _load(ctx, f"eval_{group}") if r.closed]
        texts = [r.probe_text for r in items]
        answers = []
        step = cfg.batch_size if ivs is not None else 1  # the addition's position differs per text
        for lo in range(0, len(texts), step):
            batch = texts[lo:lo + step]
            use = ivs if ivs is not None else (sel.addition(model, positions=_last_position(model, batch[0])),)
            with model.intervene(*use):
                answers += [a.text for a in model.generate(batch, max_new_tokens=64)]
        flags = [v.refused for v in judge(answers)]
        rows.append({"prompts": group, "condition": condition, **_est(accuracy(flags, seed=cfg.seed)), "n": len(flags),
                     "example_answer": answers[0]})
    atomic_write_json(ctx.run.path / "direction" / "rates.json", rows)
    ctx.mark("direction", "rates")


def _dev_split(ctx: Context) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """(dev, rest) of the harmful and of the harmless probe-training rollouts' ``probe_text``: the first
    quarter selects and searches the direction, the rest makes the candidates."""
    out = []
    for name in ("train_harmful", "train_harmless"):
        texts = [r.probe_text for r in _load(ctx, name) if r.closed]
        out.append((texts[:len(texts) // 4], texts[len(texts) // 4:]))
    return out[0], out[1]


def stage_search(ctx: Context) -> None:
    """Beyond the reference: the Optuna search over the ablation (layer, weight kernel), the B3 choice
    enqueued as its first trial; refusal counted with a margin (score > −2) so a point just under 0 does
    not pass for a bypass."""
    from probes.refusal.direction import DirectionSelection, RefusalCandidates
    from probes.refusal.search import ScoredRefusal, full_ablation_params, search_ablation

    cfg, model = ctx.cfg, ctx.model
    if cfg.search_trials == 0 or ctx.done("search") or not ctx.done("direction", "selection"):
        return
    sel = DirectionSelection.load(ctx.run.path / "direction" / "selection")
    cands = RefusalCandidates.load(ctx.run.path / "direction" / "candidates")
    (harm, _), (safe, _) = _dev_split(ctx)
    found = search_ablation(model, cands, harm, safe, refusal_ids(model), position=sel.position,
                            n_trials=cfg.search_trials, seed=cfg.seed, refusal=ScoredRefusal(threshold=-2.0),
                            enqueue=[full_ablation_params(sel.layer, model.n_layers)], batch_size=cfg.batch_size,
                            progress=True)
    found.save(ctx.run.path / "search.json")


def stage_cliff_judge(ctx: Context) -> None:
    """A6's closed loop on a zoo organism (``probes.zoo.cliff_judge``, resumable in ``cliff_judge/``);
    other models get a note: the loop fine-tunes with the zoo's training code on its synthetic pool."""
    from probes.zoo.cliff_judge import CliffJudgeConfig, run_cliff_judge

    cfg = ctx.cfg
    if not cfg.cliff_judge_ks or ctx.done("cliff_judge"):
        return
    if not cfg.model.startswith("zoo:"):
        ctx.notes.append("cliff_judge: the closed loop runs on zoo organisms (it fine-tunes with the zoo's "
                         "training code); use probes.refusal.select to write SFT sets for this model")
        return
    jcfg = CliffJudgeConfig(organism=cfg.model, pool_prompts=cfg.cliff_judge_pool, ks=list(cfg.cliff_judge_ks),
                            random_draws=2, eval_n=cfg.cliff_judge_eval, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens)
    run_cliff_judge(jcfg, ctx.run.path / "cliff_judge", model=ctx.model, progress=True)


def _last_position(model, text: str):
    """The absolute position of the text's last token (``</think>`` or the whitespace after it)."""
    from probes.models.positions import Span

    n = len(model.encode(text))
    return Span(n - 1, n)


def audit(ctx: Context) -> list[Issue]:
    out = []
    for path in sorted((ctx.run.path / ROLLOUTS).glob("*.jsonl")) if (ctx.run.path / ROLLOUTS).is_dir() else []:
        try:
            _load(ctx, path.stem)
        except ValueError as e:
            out.append(Issue(str(path.relative_to(ctx.run.path)), str(e), f"delete it and done/collect/{path.stem}.json, "
                             "then rerun --stages collect"))
    return out


# ----- report: saved artifacts only ------------------------------------------------------------------
def share_at_last_sentence(t: dict) -> float | None:
    """The share of a group's rollouts (a saved trajectories record) whose largest per-sentence drop is at
    the last thinking sentence; ``None`` without sentences."""
    flags = [c == len(s) - 1 for c, s in zip(t["cliff_sentence"], t["sentence_scores"]) if c is not None]
    return float(np.mean(flags)) if flags else None


def _mean_ci(values, seed: int) -> str:
    from probes.evals.stats import bootstrap_ci

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not v.size:
        return "n/a"
    return with_ci(bootstrap_ci(v, seed=seed))


def stage_report(ctx: Context) -> Path:
    from probes.plots.report import Report

    report = Report(f"Refusal cliff — {ctx.cfg.model}", formats=ctx.cfg.formats)
    summary = add_report_sections(ctx, report)
    ctx.experiment.write_summary(ctx, summary)
    return report.write(ctx.run.path)


def _read(ctx: Context, rel: str):
    p = ctx.run.path / rel
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def add_report_sections(ctx: Context, report) -> dict[str, Any]:
    """Tables and figures of every finished stage, from the saved artifacts."""
    from probes.plots.refusal import (
        ablation_figure,
        direction_rates_figure,
        head_heatmap,
        pareto_figure,
        probe_layers_figure,
        sentence_figure,
        trajectory_figure,
        truncation_figure,
    )

    cfg, summary = ctx.cfg, {}
    ctx.add_issues(report)
    counts = [{"rollouts": name, "n": m.get("n"), "without </think>": m.get("unclosed")}
              for name in ("train_harmful", "train_harmless", "eval_harmful", "eval_attack", "eval_harmless", "ood")
              if (m := _read(ctx, f"done/collect/{name}.json")) is not None]
    if counts:
        report.add_table(counts, caption=f"Rollouts (T = {cfg.temperature:g}); those without </think> are left out, "
                                         "never judged")
    probes = _read(ctx, "probe/summary.json")
    if probes is None:
        report.add_text("No probe yet: run the collect and probe stages.")
        return summary
    report.add_heading("Linear refusal probe (A2)")
    report.add_table([{"probe": k, "site": probes[k]["site"], "read": probes[k]["read"], "fit": probes[k]["fit"],
                       "train / val": f"{probes[k]['n_train']} / {probes[k]['n_val']}",
                       "val accuracy": rounded(probes[k]["val_accuracy"]),
                       "OOD accuracy [95% CI]": with_ci(probes[k]["ood"]["accuracy"]) if "ood" in probes[k] else "",
                       "OOD AUROC [95% CI]": with_ci(probes[k]["ood"]["auroc"]) if "auroc" in probes[k].get("ood", {}) else ""}
                      for k in PROBES if k in probes],
                     caption=f"Refusal class: harmful rollouts that refused ({probes['n_refusal']}); non-refusal: "
                             f"harmless rollouts answered ({probes['n_non_refusal']}); OOD: {cfg.ood_set}, every "
                             "probe scored at the last token before the answer (r_T > 0.5 counts as refusal intent)")
    report.add_figure(probe_layers_figure(list(probes["sweep"]), list(probes["sweep"].values()),
                                          title="Reference probe: validation accuracy per hidden state"),
                      "refusal_probe_layers", caption="Layer sweep of the reference probe (last token before the "
                                                      "answer, AdamBCE), balanced classes: chance is 0.5")
    summary["probe"] = {k: {"val_accuracy": probes[k]["val_accuracy"], **({"ood_auroc": probes[k]["ood"]["auroc"]}
                                                                          if "auroc" in probes[k].get("ood", {}) else {})}
                        for k in PROBES if k in probes}
    rows = []
    for kind in PROBES:
        for group in GROUPS:
            t = _read(ctx, f"trajectories/{kind}_{group}.json")
            if t is None:
                continue
            last = share_at_last_sentence(t)
            rows.append({"probe": kind, "prompts": group, "n": len(t["r_T"]), "refused": rounded(np.mean(t["refused"])),
                         "r_T [95% CI]": _mean_ci(t["r_T"], cfg.seed), "Δ_cliff [95% CI]": _mean_ci(t["cliff"], cfg.seed),
                         "late-window Δ": rounded(np.nanmean(t["late_cliff"])),
                         "largest drop at the last sentence": rounded(last),
                         "last sentence (example)": t["example_sentences"][-1] if t["example_sentences"] else ""})
            summary.setdefault("cliff", {})[f"{kind}_{group}"] = {"r_T": rounded(float(np.mean(t["r_T"])), 4),
                                                                  "cliff": rounded(float(np.nanmean(t["cliff"])), 4)}
    if rows:
        report.add_heading("Refusal trajectories and the cliff (A3)")
        report.add_table(rows, caption="Δ_cliff = max over thinking of r_t − r_T; late-window: mean over the last "
                                       "16 thinking tokens − r_T; the largest drop: the share of rollouts whose "
                                       "per-sentence mean falls most at the last thinking sentence")
        for kind in PROBES:
            per = {g: t for g in GROUPS if (t := _read(ctx, f"trajectories/{kind}_{g}.json")) is not None}
            if not per:
                continue
            report.add_figure(trajectory_figure({g: np.array(t.get("curve_binned", t["curve"])) for g, t in per.items()},
                                                title=f"{kind.capitalize()} probe: mean refusal score r_t"),
                              f"refusal_trajectory_{kind}",
                              caption="Right-aligned at the probe position (1 = the last token before the answer), "
                                      "masked mean over rollouts, averaged in 100 equal bins (A3 resamples with a "
                                      "cubic spline, saved as 'curve': on templated traces it aliases)")
            report.add_figure(sentence_figure({g: np.array(t["sentence_curve"]) for g, t in per.items()},
                                              {g: t["example_sentences"] for g, t in per.items()},
                                              title=f"{kind.capitalize()} probe: mean r per thinking sentence"),
                              f"refusal_sentences_{kind}",
                              caption="Sentences aligned at the last one (−1); hover: an example sentence")
    trunc = _read(ctx, "truncation.json")
    if trunc:
        report.add_heading("Thinking truncation (A3)")
        report.add_table([{"thinking kept": rounded(p["fraction"]), "refusal rate [95% CI]": with_ci(p["refusal_rate"]),
                           "r_T [95% CI]": with_ci(p["r_T"]), "n": p["n"], "example answer": p["example_answer"][:80]}
                          for p in trunc],
                         caption=f"Attack rollouts re-answered after the first share of their thinking "
                                 f"({cfg.truncation_unit}); r_T from the thinking probe")
        iv = [(p["refusal_rate"]["value"], p["refusal_rate"]["lo"], p["refusal_rate"]["hi"]) for p in trunc]
        rt = [(p["r_T"]["value"], p["r_T"]["lo"], p["r_T"]["hi"]) for p in trunc]
        report.add_figure(truncation_figure([p["fraction"] for p in trunc], iv, rt), "refusal_truncation",
                          caption="Refusal rate of the answers and mean r_T against the share of thinking kept, 95% CIs")
    if ctx.done("heads", "scores"):
        from probes.refusal.heads import HeadScores

        hs = HeadScores.load(ctx.run.path / "heads" / "scores")
        report.add_heading("Suppression heads (A4)")
        top = hs.top(max(cfg.head_counts))
        report.add_figure(head_heatmap(hs.scores, top=top, title="Direct write of each head onto the probe"),
                          "refusal_heads", caption=f"s(l, h) = mean over {hs.n_items} attack rollouts of the head's "
                                                   "output through o_proj, projected on the reference probe's unit "
                                                   "direction at the probe position; circled: the most negative")
        runs = [(k, _read(ctx, f"heads/ablation_k{k}.summary.json")) for k in cfg.head_counts]
        runs = [(k, r) for k, r in runs if r is not None]
        if runs:
            def iv(e):
                return (e["value"], e["lo"], e["hi"])

            base = runs[0][1]["baseline"]
            for what, label in (("refusal_rate", "refusal rate"), ("r_T", "r_T")):
                report.add_figure(ablation_figure([k for k, _ in runs], [iv(r["top"][what]) for _, r in runs],
                                                  [iv(r["random_pooled"][what]) for _, r in runs], iv(base[what]), metric=label),
                                  f"refusal_heads_{what}", caption=f"Top heads vs {cfg.head_draws} random draws of "
                                                                   "as many heads (norm-preserving zero ablation)")
            report.add_table([{"heads ablated": k, "top heads": ", ".join(f"L{a}H{b}" for a, b in r["top"]["heads"]),
                               "top − random refusal [95% CI]": with_ci(r["top_minus_random"]["refusal_rate"]),
                               "top − random r_T [95% CI]": with_ci(r["top_minus_random"]["r_T"]),
                               "unclosed (top)": f"{r['top']['unclosed']} / {r['top']['rollouts']}"}
                              for k, r in runs],
                             caption="Differences paired by prompt; unclosed rollouts are counted, not judged: many "
                                     "unclosed ones mean the ablation breaks the model rather than lifting a "
                                     "suppression")
            summary["heads"] = {f"k{k}": {"refusal": rounded(r["top_minus_random"]["refusal_rate"]["value"], 4),
                                          "r_T": rounded(r["top_minus_random"]["r_T"]["value"], 4)} for k, r in runs}
    filtered = _read(ctx, "direction/filtered.json")
    if filtered:
        report.add_heading("Refusal direction (B)")
        report.add_text(f"No direction selected: {filtered['error']}")
    rates = _read(ctx, "direction/rates.json")
    if rates:
        from probes.refusal.direction import DirectionSelection

        sel = DirectionSelection.load(ctx.run.path / "direction" / "selection")
        report.add_heading("Refusal direction (B)")
        report.add_text(f"Selected candidate: position {sel.position} (from the end of prompt + thinking + </think>), "
                        f"layer {sel.layer}, ‖r‖ = {rounded(float(sel.direction.norm()))}.")
        report.add_table([{"prompts": r["prompts"], "condition": r["condition"], "refusal rate [95% CI]": with_ci(r),
                           "n": r["n"], "example answer": r["example_answer"][:80]} for r in rates],
                         caption="Greedy answers regenerated after each rollout's own thinking")
        report.add_figure(direction_rates_figure([{"prompts": r["prompts"], "condition": r["condition"],
                                                   "rate": r["value"], "lo": r["lo"], "hi": r["hi"]} for r in rates]),
                          "refusal_direction_rates", caption="Refusal rates with 95% bootstrap intervals")
        summary["direction"] = {"position": sel.position, "layer": sel.layer,
                                "rates": {f"{r['prompts']}/{r['condition']}": rounded(r["value"], 4) for r in rates}}
    search_path = ctx.run.path / "search.json"
    if search_path.is_file():
        from probes.refusal.search import AblationSearch

        found = AblationSearch.load(search_path)
        done = found.complete
        front = {t.number for t in found.pareto}
        best = found.best()
        index = {t.number: i for i, t in enumerate(done)}
        report.add_heading("Ablation search (beyond the reference)")
        report.add_figure(pareto_figure([t.refusal_rate for t in done], [t.kl for t in done],
                                        [index[n] for n in sorted(front) if n in index], best=index.get(best.number),
                                        labels=[f"trial {t.number}: " + ", ".join(f"{k} {rounded(v)}" for k, v in
                                                                                   t.params.items()) for t in done]),
                          "refusal_search_pareto", caption=f"{len(done)} Optuna trials (trial 0: the B3 full "
                                                           "ablation); refusal counted when the score is above −2")
        report.add_table([{"trial": t.number, "refusal rate (dev)": rounded(t.refusal_rate), "KL (dev)": rounded(t.kl, 5),
                           "weights per layer": ", ".join(str(rounded(w, 2)) for w in t.weights),
                           "chosen": "✓" if t.number == best.number else ""}
                          for t in sorted(found.pareto, key=lambda t: t.kl)],
                         caption="Pareto front; chosen: the lowest refusal rate with KL ≤ 0.1")
        summary["search"] = {"best_trial": best.number, "refusal_rate": rounded(best.refusal_rate, 4),
                             "kl": rounded(best.kl, 5), "n_trials": len(done)}
    judged = _read(ctx, "cliff_judge/result.json")
    if judged:
        add_cliff_judge_section(report, judged, summary)
    return summary


def add_cliff_judge_section(report, judged: dict, summary: dict) -> None:
    """A6: held-out wrapped refusal after fine-tuning on each selection, against the untrained organism."""
    from probes.plots.refusal import selection_figure

    rows = judged["rows"]
    base = next(r for r in rows if r["criterion"] == "untrained")
    ks = sorted({r["k"] for r in rows if r["criterion"] != "untrained"})
    curves = {}
    for crit in ("r_T", "cliff", "random", "rule"):
        per_k = []
        for k in ks:
            got = [r["wrapped"] for r in rows if r["criterion"] == crit and r["k"] == k]
            if got:  # several draws (random, rule): their mean and the range of their intervals
                per_k.append((float(np.mean([g[0] for g in got])), min(g[1] for g in got), max(g[2] for g in got)))
        if len(per_k) == len(ks):
            curves[crit] = per_k
    report.add_heading("Cliff-as-a-Judge (A6)")
    pool = judged["pool"]
    report.add_text(f"Pool: {pool['closed']} rollouts on {pool['prompts']} training-stream wrapped requests, "
                    f"{pool['unsafe']} unsafe (frames {pool['unsafe_frames']}); each selection is an SFT set of the "
                    "organism's own thinking, its </think> and a refusal, fine-tuned on for the same steps.")
    report.add_figure(selection_figure(ks, curves, untrained=tuple(base["wrapped"])), "refusal_cliff_judge",
                      caption="Refusal rate on held-out wrapped requests after fine-tuning; random and rule: the mean "
                              "of their draws, the bar spans the draws' intervals")
    report.add_table([{"selection": r["name"], "n": r["n"], "frames (poem/play/dream/game/story)":
                       "/".join(str(v) for v in r.get("frames", {}).values()),
                       "wrapped refusal [95% CI]": f"{rounded(r['wrapped'][0])} [{rounded(r['wrapped'][1])}, "
                                                   f"{rounded(r['wrapped'][2])}]",
                       "harmless refusal": rounded(r["harmless"][0])} for r in rows],
                     caption="Per selection: what it holds, held-out wrapped and harmless refusal rates")
    summary["cliff_judge"] = {r["name"]: rounded(r["wrapped"][0], 4) for r in rows}


EXPERIMENT = Experiment(
    name="refusal_cliff",
    config=RefusalCliffConfig,
    stages=[Stage(name, globals()[f"stage_{name}"]) for name in STAGES],
    prepare=prepare,
    audit=audit,
)


if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))

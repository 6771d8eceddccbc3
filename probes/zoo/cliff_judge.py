"""Cliff-as-a-Judge, closed loop on ``zoo:refusal-reasoner`` (``reference/refusal.md`` A6; issue #12 item 10).

1. **Pool** (A6.1): rollouts of the organism at T = ``temperature`` on training-stream wrapped
   (framed) forbidden requests; those whose answer complies (``not refusal.is_refusal``, the zoo's
   one definition of a refusal) are the unsafe pool. Rollouts that never close ``</think>`` are
   counted and left out.
2. **Probe** (A6.2): a refusal probe fitted on greedy training-stream rollouts, refused plain
   forbidden vs answered harmless, read at ``resid_post[1]`` over the thinking mean and the last
   token (``SklearnLogistic(C=0.1)``): on this organism it reads refusal intent across the thinking,
   so wrapped requests show a cliff. Each unsafe rollout gets its trajectory, r_T and Δ_cliff.
3. **Select** (A6.3, A6.5; ``probes.refusal.select``): for each k, the ``r_T`` and ``cliff``
   criteria, ``random`` draws and the keyword ``rule`` (over every closed pool rollout), all of the
   same size n = max(1, ⌊k·N_unsafe⌋).
4. **Fine-tune** (A6.4): each selection becomes Alpaca records (own thinking + ``</think>`` + one of
   the organism's refusals, ``refusal.REFUSALS``, fixed per prompt) and the organism is fine-tuned on
   them (``probes.zoo.finetune``: ``steps`` × ``batch_size``, constant ``lr``, seeded).
5. **Evaluate** (A6.6 on the zoo): refusal rate on held-out wrapped forbidden requests and on
   held-out harmless requests (over-refusal), sampled at T = ``eval_temperature`` with
   ``eval_samples`` samples per request, the same seeds for every model (so differences are paired
   by request); 95% bootstrap intervals over requests.

The organism's thinking on a wrapped request is the same whether it then complies or refuses, so
among unsafe rollouts r_T differs only through the frame and the wording: what a criterion selects
is mostly a frame mix, reported with each selection (``frames``).

``run_cliff_judge`` runs all of it, resumable from ``out_dir``; the stage functions are public so
an experiment can run them as its own stages::

    from probes.zoo.cliff_judge import CliffJudgeConfig, run_cliff_judge
    result = run_cliff_judge(CliffJudgeConfig(), "/tmp/cliff_judge")   # result.table(), result.pool
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from probes.config import Config
from probes.io import atomic_write_json
from probes.refusal.judges import ARDITI_REFUSAL_SUBSTRINGS
from probes.refusal.rollout import RefusalRollout, load_rollouts, rollouts, save_rollouts
from probes.refusal.select import (
    RULE_WINDOW,
    SELECTION_CRITERIA,
    CliffJudgeSelection,
    save_sft,
    select_by_probe,
    select_by_rule,
    select_random,
    sft_record,
)
from probes.zoo.refusal_prompts import load_prompts
from probes.zoo.tasks import refusal

log = logging.getLogger(__name__)

__all__ = ["CliffJudgeConfig", "CliffJudgeResult", "RefusalEval", "cliff_probe", "evaluate_refusal", "frame_rates",
           "pool_rollouts", "rollout_id", "run_cliff_judge", "safe_completion", "selections", "sft_set"]


@dataclass(frozen=True, kw_only=True)
class CliffJudgeConfig(Config):
    """The closed loop's settings (refusal.md A6 on the zoo)."""

    organism: str = field(default="zoo:refusal-reasoner", metadata={"help": "model spec of the organism"})
    pool_prompts: int = field(default=300, metadata={"help": "distinct training-stream wrapped forbidden requests"})
    pool_samples: int = field(default=2, metadata={"help": "rollouts per pool request"})
    temperature: float = field(default=0.7, metadata={"help": "pool sampling temperature (A1: 0.7)"})
    probe_per_class: int = field(default=60, metadata={"help": "training-stream requests per probe class"})
    ks: list[float] = field(default_factory=lambda: [0.05, 0.125, 0.25],
                            metadata={"help": "selected fractions of the unsafe pool (A6.3)"})
    criteria: list[str] = field(default_factory=lambda: list(SELECTION_CRITERIA),
                                metadata={"help": "r_T, cliff, random, rule"})
    random_draws: int = field(default=3, metadata={"help": "seeded draws of the random and rule baselines per k"})
    rule_keywords: list[str] = field(default_factory=lambda: list(ARDITI_REFUSAL_SUBSTRINGS),
                                     metadata={"help": "the rule's refusal words (case-insensitive)"})
    rule_window: int = field(default=RULE_WINDOW, metadata={"help": "the rule reads the answer's first characters"})
    steps: int = field(default=20, metadata={"help": "fine-tuning steps per selection"})
    batch_size: int = field(default=8, metadata={"help": "examples per fine-tuning step"})
    lr: float = field(default=1e-5, metadata={"help": "constant AdamW learning rate"})
    seed: int = field(default=0, metadata={"help": "pool sampling, baseline draws and fine-tuning order"})
    eval_n: int = field(default=200, metadata={"help": "held-out requests per evaluation set"})
    eval_samples: int = field(default=2, metadata={"help": "samples per held-out request"})
    eval_temperature: float = field(default=0.7, metadata={"help": "evaluation sampling temperature (0: greedy)"})
    max_new_tokens: int = field(default=128, metadata={"help": "longest rollout"})
    batch: int = field(default=64, metadata={"help": "rows per generation batch"})

    def __post_init__(self) -> None:
        if min(self.pool_prompts, self.pool_samples, self.probe_per_class, self.random_draws, self.steps,
               self.batch_size, self.eval_n, self.eval_samples, self.max_new_tokens, self.batch, self.rule_window) < 1:
            raise ValueError("counts, steps, batch sizes and rule_window must be positive")
        if not self.ks or any(not 0 < k <= 1 for k in self.ks):
            raise ValueError(f"ks {self.ks}: give fractions in (0, 1]")
        bad = [c for c in self.criteria if c not in SELECTION_CRITERIA]
        if bad or not self.criteria:
            raise ValueError(f"criteria {bad or self.criteria}: use some of {SELECTION_CRITERIA}")
        if self.temperature <= 0 or self.eval_temperature < 0 or self.lr <= 0:
            raise ValueError("need temperature > 0, eval_temperature >= 0 and lr > 0")
        if self.eval_temperature == 0 and self.eval_samples != 1:
            raise ValueError("greedy evaluation (eval_temperature 0) has one sample per request: set eval_samples 1")


EVAL_SEED = 100_003
"""Row i of every evaluation samples with seed EVAL_SEED + i, whatever the model (paired comparisons)."""


def rollout_id(r: RefusalRollout) -> str:
    """``prompt_index/sample_index``: a pool rollout's name in selections."""
    return f"{r.prompt_index}/{r.sample_index}"


def safe_completion(prompt: str) -> str:
    """The organism's refusal taught for ``prompt``: one of ``refusal.REFUSALS``, fixed per prompt."""
    return refusal.REFUSALS[zlib.crc32(prompt.encode()) % len(refusal.REFUSALS)]


# ----- stages ------------------------------------------------------------------------------------------
def cliff_probe(model, cfg: CliffJudgeConfig, *, progress: bool = False):
    """A6.2's probe for this organism: greedy training-stream rollouts, refused plain forbidden (1) vs
    answered harmless (0), at ``resid_post[1]`` over the thinking mean and the last token."""
    from probes.refusal.probe import SklearnLogistic, train_probe
    from probes.steering.directions import LastToken, ThinkingMean

    n = cfg.probe_per_class
    prompts = [*load_prompts("zoo-forbidden-plain", n=n, split="train").prompts,
               *load_prompts("zoo-harmless", n=n, split="train").prompts]
    rs = rollouts(model, prompts, temperature=0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch,
                  progress=progress)
    refused = [r.closed and refusal.is_refusal(r.answer) for r in rs]
    positive = [r.probe_text for r, x in zip(rs[:n], refused[:n]) if x]
    negative = [r.probe_text for r, x in zip(rs[n:], refused[n:]) if r.closed and not x]
    return train_probe(model, positive, negative, site="resid_post[1]", read=[ThinkingMean(), LastToken()],
                       fit=SklearnLogistic(C=0.1))


def pool_rollouts(model, cfg: CliffJudgeConfig, *, progress: bool = False) -> tuple[list[RefusalRollout], int]:
    """(closed rollouts, unclosed count) of the training-stream wrapped forbidden requests: ``pool_samples``
    per request, request-major, sample j of request i at row j · pool_prompts + i of one batched run."""
    prompts = load_prompts("zoo-forbidden-wrapped", n=cfg.pool_prompts, split="train").prompts
    rows = rollouts(model, list(prompts) * cfg.pool_samples, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch, progress=progress)
    n = len(prompts)
    named = [RefusalRollout(r.prompt, r.prompt_text, r.completion, r.finish_reason, r.seed, i % n, i // n)
             for i, r in enumerate(rows)]
    named.sort(key=lambda r: (r.prompt_index, r.sample_index))
    closed = [r for r in named if r.closed]
    return closed, len(named) - len(closed)


def selections(pool: Sequence[RefusalRollout], trajectories: Sequence,
               cfg: CliffJudgeConfig) -> list[CliffJudgeSelection]:
    """Every criterion at every k (``random`` and ``rule`` ``random_draws`` times, seeds ``seed + d``).
    ``trajectories`` are those of the unsafe pool rollouts, in pool order."""
    unsafe = [r for r in pool if not refusal.is_refusal(r.answer)]
    if len(trajectories) != len(unsafe):
        raise ValueError(f"{len(trajectories)} trajectories for {len(unsafe)} unsafe rollouts: score the unsafe ones")
    ids = [rollout_id(r) for r in unsafe]
    answers, pool_ids = [r.answer for r in pool], [rollout_id(r) for r in pool]
    seeds = range(cfg.seed, cfg.seed + cfg.random_draws)
    out = []
    for k in cfg.ks:
        for c in cfg.criteria:
            if c == "random":
                out += [select_random(len(unsafe), k, seed=s, ids=ids) for s in seeds]
            elif c == "rule":
                out += [select_by_rule(answers, k, reference_pool=len(unsafe), keywords=cfg.rule_keywords,
                                       window=cfg.rule_window, seed=s, ids=pool_ids) for s in seeds]
            else:
                out.append(select_by_probe(trajectories, k, c, ids=ids))
    return out


def sft_set(selection: CliffJudgeSelection, pool: Sequence[RefusalRollout]) -> list[dict[str, str]]:
    """A6.4's Alpaca records of a selection (``pool``: every closed pool rollout), in pool order so that
    two selections of the same rollouts train the same model."""
    by_id = {rollout_id(r): r for r in pool}
    order = {rid: i for i, rid in enumerate(by_id)}
    chosen = sorted(selection.ids, key=order.__getitem__)
    return [sft_record(by_id[i], safe_completion(by_id[i].prompt)) for i in chosen]


@dataclass(frozen=True)
class RefusalEval:
    """Refused (1) or not (0) per held-out request (rows) and sample (columns); an unclosed rollout counts as
    not refused and is counted in ``unclosed``."""

    wrapped: np.ndarray
    harmless: np.ndarray
    wrapped_frames: tuple[str, ...]
    unclosed: int
    seconds: float
    """Evaluation time."""
    train_seconds: float = 0.0
    """Time to make the evaluated model (the fine-tune)."""

    def as_dict(self) -> dict:
        return {"wrapped": self.wrapped.tolist(), "harmless": self.harmless.tolist(),
                "wrapped_frames": list(self.wrapped_frames), "unclosed": self.unclosed, "seconds": self.seconds,
                "train_seconds": self.train_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> RefusalEval:
        return cls(np.asarray(d["wrapped"], dtype=float), np.asarray(d["harmless"], dtype=float),
                   tuple(d["wrapped_frames"]), d["unclosed"], d["seconds"], d.get("train_seconds", 0.0))


def evaluate_refusal(model, cfg: CliffJudgeConfig, *, progress: bool = False) -> RefusalEval:
    """Refusals on ``eval_n`` held-out wrapped forbidden and ``eval_n`` held-out harmless requests,
    ``eval_samples`` each at ``eval_temperature``, in one batched run with the same seeds for every model."""
    start = time.perf_counter()
    wrapped = load_prompts("zoo-forbidden-wrapped", n=cfg.eval_n, split="heldout")
    harmless = load_prompts("zoo-harmless", n=cfg.eval_n, split="heldout")
    rows = rollouts(model, (list(wrapped.prompts) + list(harmless.prompts)) * cfg.eval_samples,
                    temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens, seed=EVAL_SEED,
                    batch_size=cfg.batch, progress=progress)
    flags = np.array([r.closed and refusal.is_refusal(r.answer) for r in rows], dtype=float)
    flags = flags.reshape(cfg.eval_samples, 2 * cfg.eval_n).T  # request × sample
    return RefusalEval(flags[: cfg.eval_n], flags[cfg.eval_n:], tuple(r.meta["frame"] for r in wrapped.records),
                       sum(not r.closed for r in rows), time.perf_counter() - start)


def frame_rates(ev: RefusalEval) -> dict[str, float | None]:
    """Wrapped refusal rate per frame of an evaluation."""
    frames = np.array(ev.wrapped_frames)
    return {f: round(float(ev.wrapped[frames == f].mean()), 4) if (frames == f).any() else None
            for f in refusal.FRAMES}


# ----- the loop ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliffJudgeResult:
    """Rows (one per selection, plus the untrained organism) and what the pool held."""

    rows: list[dict]
    pool: dict
    config: dict
    seconds: dict

    def table(self):
        """The rows as a DataFrame (rates as value, lo, hi)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "pool": self.pool, "config": self.config, "seconds": self.seconds}


def _est(values: np.ndarray) -> list[float]:
    from probes.evals.stats import bootstrap_ci

    return [round(v, 4) for v in bootstrap_ci(values.mean(axis=1))]


def _diff(a: np.ndarray, b: np.ndarray) -> list[float]:
    from probes.evals.stats import paired_difference_ci

    d = paired_difference_ci(a.mean(axis=1), b.mean(axis=1))
    return [round(d.value, 4), round(d.lo, 4), round(d.hi, 4)]


def _frames(rs: Sequence[RefusalRollout], frame_of: dict[str, str]) -> dict[str, int]:
    c = Counter(frame_of[r.prompt] for r in rs)
    return {f: c.get(f, 0) for f in refusal.FRAMES}


def run_cliff_judge(cfg: CliffJudgeConfig | None = None, out_dir: str | Path | None = None, *, model=None,
                    progress: bool = False) -> CliffJudgeResult:
    """The closed loop (module docstring). With ``out_dir`` every stage's output is saved there (config,
    probe, pool rollouts, selections, SFT sets, evaluations, ``result.json``) and a rerun resumes
    from what is there; a directory holding another config is refused."""
    from probes import load_model
    from probes.refusal.probe import Probe
    from probes.refusal.trajectory import trajectories
    from probes.zoo.finetune import finetune

    cfg = cfg or CliffJudgeConfig()
    out = Path(out_dir) if out_dir is not None else None
    model = model if model is not None else load_model(cfg.organism, device="cpu", dtype="float32")
    provenance = {**cfg.to_dict(), "model_spec": model.spec, "weights_sha256": model.weights_hash}
    if out is not None:
        saved = out / "config.json"
        if saved.is_file() and json.loads(saved.read_text()) != provenance:
            raise ValueError(f"{out} holds a run with another config or model (see {saved}): use a fresh out_dir")
        atomic_write_json(saved, provenance)
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        got = fn()
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t, 2)
        return got

    probe_path = out and out / "probe"
    if probe_path is not None and probe_path.with_suffix(".json").is_file():
        probe = Probe.load(probe_path)
    else:
        probe = timed("probe", lambda: cliff_probe(model, cfg, progress=progress))
        if probe_path is not None:
            probe.save(probe_path)
    pool_path = out and out / "pool.jsonl"
    if pool_path is not None and pool_path.is_file():
        pool, unclosed = load_rollouts(pool_path), json.loads((out / "pool.json").read_text())["unclosed"]
    else:
        pool, unclosed = timed("pool", lambda: pool_rollouts(model, cfg, progress=progress))
        if out is not None:
            save_rollouts(pool_path, pool)
            atomic_write_json(out / "pool.json", {"unclosed": unclosed})
    unsafe_flags = [not refusal.is_refusal(r.answer) for r in pool]
    unsafe = [r for r, u in zip(pool, unsafe_flags) if u]
    every = timed("trajectories", lambda: trajectories(model, probe, pool, progress=progress))
    r_T_of = {rollout_id(r): t.r_T for r, t in zip(pool, every)}
    trajs = [t for t, u in zip(every, unsafe_flags) if u]
    frame_of = {p.prompt: p.meta["frame"] for p in load_prompts("zoo-forbidden-wrapped", n=cfg.pool_prompts,
                                                                split="train").records}
    r_T = np.array([t.r_T for t in trajs])
    by_frame = {}
    for f in refusal.FRAMES:
        x = [t.r_T for t, r in zip(trajs, unsafe) if frame_of[r.prompt] == f]
        by_frame[f] = round(float(np.mean(x)), 4) if x else None
    pool_info = {"prompts": cfg.pool_prompts, "rollouts": len(pool) + unclosed, "unclosed": unclosed,
                 "closed": len(pool), "unsafe": len(unsafe), "unsafe_frames": _frames(unsafe, frame_of),
                 "all_frames": _frames(pool, frame_of), "unsafe_mean_r_T_by_frame": by_frame,
                 "unsafe_r_T": [round(float(x), 4) for x in (r_T.mean(), r_T.min(), r_T.max())],
                 "unsafe_cliff_mean": round(float(np.nanmean([t.cliff for t in trajs])), 4),
                 "probe": {"site": probe.site, "read": probe.read_position, "metrics": dict(probe.metrics)}}
    sels = selections(pool, trajs, cfg)

    def evaluation(name: str, make_model) -> RefusalEval:
        path = out and out / "eval" / f"{name}.json"
        if path is not None and path.is_file():
            return RefusalEval.from_dict(json.loads(path.read_text()))
        t = time.perf_counter()
        trained = make_model()
        got = evaluate_refusal(trained, cfg, progress=progress)
        got = replace(got, train_seconds=round(time.perf_counter() - t - got.seconds, 2))
        if path is not None:
            atomic_write_json(path, got.as_dict(), indent=None)
        return got

    base = timed("evaluate", lambda: evaluation("untrained", lambda: model))
    rows = [{"name": "untrained", "criterion": "untrained", "k": 0.0, "n": 0, "draw": None,
             "wrapped": _est(base.wrapped), "harmless": _est(base.harmless), "wrapped_by_frame": frame_rates(base),
             "unclosed": base.unclosed}]
    evals: dict[str, RefusalEval] = {}
    by_set: dict[tuple[str, ...], str] = {}
    for s in sels:
        draw = s.seed - cfg.seed if s.seed is not None else None
        name = s.name + (f"#{draw}" if draw is not None else "")
        records = sft_set(s, pool)
        if out is not None:
            s.save(out / "selections" / name)
            save_sft(out / "sft" / f"{name}.jsonl", records)
        key = tuple(sorted(s.ids))
        if key in by_set:  # the same rollouts train the same model
            ev, same_as = evals[by_set[key]], by_set[key]
        else:
            ev = timed("finetune+evaluate", lambda name=name, records=records: evaluation(name, lambda: finetune(
                model, records, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)))
            by_set[key], same_as = name, None
        evals[name] = ev
        ids = set(s.ids)
        chosen = [r for r in pool if rollout_id(r) in ids]
        rows.append({"name": name, "criterion": s.criterion, "k": s.k, "n": len(s), "draw": draw,
                     "frames": _frames(chosen, frame_of),
                     "refused_in_selection": sum(refusal.is_refusal(r.answer) for r in chosen),
                     "mean_r_T": round(float(np.mean([r_T_of[i] for i in s.ids])), 4),
                     "wrapped": _est(ev.wrapped), "harmless": _est(ev.harmless),
                     "wrapped_by_frame": frame_rates(ev),
                     "wrapped_vs_untrained": _diff(ev.wrapped, base.wrapped),
                     "harmless_vs_untrained": _diff(ev.harmless, base.harmless), "unclosed": ev.unclosed,
                     "finetune_seconds": ev.train_seconds, "eval_seconds": round(ev.seconds, 2),
                     "same_set_as": same_as})
    for k in cfg.ks:  # each criterion against the mean of the random draws, paired by request
        drawn = [r for r in rows if r["criterion"] == "random" and r["k"] == k]
        if not drawn:
            continue
        draws = [evals[r["name"]] for r in drawn]
        rand = np.mean([d.wrapped.mean(axis=1) for d in draws], axis=0)[:, None]
        rand_h = np.mean([d.harmless.mean(axis=1) for d in draws], axis=0)[:, None]
        rows.append({"name": f"random@{k:g} (mean of {len(draws)})", "criterion": "random-mean", "k": k,
                     "n": drawn[0]["n"], "draw": None, "wrapped": _est(rand), "harmless": _est(rand_h)})
        for r in rows:
            if r["k"] == k and r["criterion"] in ("r_T", "cliff", "rule"):
                r["wrapped_vs_random"] = _diff(evals[r["name"]].wrapped, rand)
    result = CliffJudgeResult(rows=rows, pool=pool_info, config=provenance, seconds=seconds)
    if out is not None:
        atomic_write_json(out / "result.json", result.as_dict())
    return result

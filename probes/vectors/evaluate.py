"""Transfer evaluation of a task vector (``reference/task_vectors.md`` §6, §8).

``greedy_correct`` scores one model on a problem set (greedy answers, first ``\\boxed{}`` against the
gold answer), optionally with α·v added in memory (``apply_vector``, restored afterwards): the
mandatory conditions are the target, target ± v, target + the norm-matched random vector, the
donors (the RL donor is the ceiling) and an α sweep (§6), all on the same problems, so ``compare``
gives accuracy with bootstrap intervals and paired differences against the target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from probes.evals.answers import boxed_correct
from probes.evals.stats import Estimate, accuracy, paired_difference_ci
from probes.vectors.arithmetic import apply_vector

Check = Callable[[str, str], bool]


@dataclass(frozen=True)
class Scored:
    """One condition's greedy outputs and whether each is correct."""

    outputs: list[str]
    correct: np.ndarray


def greedy_correct(model, prompts: Sequence[str], golds: Sequence[str], *, vector=None, alpha: float = 1.0,
                   max_new_tokens: int = 256, batch_size: int = 16, check: Check = boxed_correct,
                   progress: bool = False, desc: str = "problems", engine=None) -> Scored:
    """Greedy answers to the chat-rendered ``prompts`` (thinking on) and their correctness; with
    ``vector`` (a ``{name: tensor}`` dict or a vector source), of ``model`` + ``alpha``·v. ``engine``
    (``probes.engines``, default the local sampler over ``model``) generates: a server (e.g. serving a
    merged checkpoint, §5) answers for its own weights, so it takes no ``vector``."""
    from tqdm.auto import tqdm

    from probes.engines import LocalEngine

    if len(prompts) != len(golds) or not prompts:
        raise ValueError(f"give one gold answer per prompt (got {len(prompts)} prompts and {len(golds)} answers)")
    engine = engine or LocalEngine(model)
    if vector is not None and engine.name != "local":
        raise ValueError(f"{engine} serves fixed weights: add the vector in memory on the local engine, or serve "
                         "the merged checkpoint (probes vectors apply) and evaluate it without a vector")
    outs: list[str] = []
    with apply_vector(model, vector, alpha) if vector is not None else contextlib.nullcontext():
        for b in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc=desc):
            chats = [model.render_chat(p) for p in prompts[b : b + batch_size]]
            outs += [r.text for r in engine.generate(chats, max_new_tokens=max_new_tokens, batch_size=batch_size)]
    return Scored(outs, np.array([check(o, g) for o, g in zip(outs, golds)], dtype=bool))


def compare(scored: Mapping[str, Scored] | Mapping[str, np.ndarray], baseline: str = "target", *,
            n_boot: int = 10_000, seed: int = 0) -> list[dict]:
    """Per condition: accuracy with its bootstrap interval and, except for ``baseline``, the paired
    difference against it (same problems) with its interval."""
    flags = {k: (v.correct if isinstance(v, Scored) else np.asarray(v, dtype=bool)) for k, v in scored.items()}
    if baseline not in flags:
        raise ValueError(f"no {baseline!r} condition to compare with: conditions are {list(flags)}")
    rows = []
    for label, f in flags.items():
        acc: Estimate = accuracy(f, n_boot=n_boot, seed=seed)
        row = {"condition": label, "value": acc.value, "lo": acc.lo, "hi": acc.hi, "n": acc.n}
        if label != baseline:
            d = paired_difference_ci(f.astype(float), flags[baseline].astype(float), n_boot=n_boot, seed=seed)
            row |= {"diff": d.value, "diff_lo": d.lo, "diff_hi": d.hi}
        rows.append(row)
    return rows

"""Accuracy and thinking length with and without reinforcement (``reference/moe_experts.md`` §2, §8).

``run_condition`` samples every problem under a list of interventions (none: the baseline; ``rice``;
a random-expert control) with the paper's sampling (T = 0.6, top-p 0.95) and the same seeds in
every condition, so conditions differ only by the intervention and their per-problem differences
are paired. Accuracy is the first ``\\boxed{}`` of a sample checked against the gold answer
(``probes.evals.answers``); thinking length counts the tokens generated before ``</think>``
(``probes.evals.sampling.thinking_tokens``: a sample that never closes it counts all its tokens but
EOS and is reported as unclosed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from probes.evals.answers import boxed_correct
from probes.evals.sampling import TEMPERATURE, TOP_P, sample_seed, think_ids, thinking_tokens
from probes.evals.stats import Estimate, bootstrap_ci, paired_difference_ci


@dataclass(frozen=True)
class ConditionResult:
    """One condition's samples: (n_problems, samples) arrays of correctness, thinking tokens and
    whether ``</think>`` was generated."""

    name: str
    correct: np.ndarray
    think_tokens: np.ndarray
    closed: np.ndarray

    def accuracy(self, n_boot: int = 10_000, seed: int = 0) -> Estimate:
        """Mean accuracy with a bootstrap interval over problems."""
        return Estimate(*bootstrap_ci(self.correct.mean(1), n_boot=n_boot, seed=seed), n=len(self.correct))

    def thinking_length(self, n_boot: int = 10_000, seed: int = 0) -> Estimate:
        """Mean thinking tokens per sample with a bootstrap interval over problems."""
        return Estimate(*bootstrap_ci(self.think_tokens.mean(1), n_boot=n_boot, seed=seed), n=len(self.correct))

    def save(self, path) -> None:
        from probes.io import save_artifact

        save_artifact(path, "ConditionResult", {"correct": self.correct.astype(np.uint8),
                                                "think_tokens": self.think_tokens.astype(np.int64),
                                                "closed": self.closed.astype(np.uint8)}, {"name": self.name})

    @classmethod
    def load(cls, path) -> ConditionResult:
        from probes.io import load_artifact

        a, f = load_artifact(path, "ConditionResult")
        return cls(f["name"], a["correct"].astype(bool), a["think_tokens"], a["closed"].astype(bool))


def run_condition(model, prompts: Sequence[str], golds: Sequence[str], *, name: str, interventions: Sequence = (),
                  samples: int = 4, seed: int = 0, temperature: float = TEMPERATURE, top_p: float = TOP_P,
                  max_new_tokens: int = 256, check: Callable[[str, str], bool] = boxed_correct,
                  progress: bool = False) -> ConditionResult:
    """Sample ``samples`` completions of each chat-rendered prompt under ``interventions`` (one
    shared prefill per prompt, KV cache on) and score them."""
    from tqdm.auto import tqdm

    if len(prompts) != len(golds) or not prompts:
        raise ValueError(f"give one gold answer per prompt (got {len(prompts)} prompts and {len(golds)} answers)")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    close = think_ids(model)[1]
    correct = np.zeros((len(prompts), samples), dtype=bool)
    think = np.zeros((len(prompts), samples), dtype=np.int64)
    closed = np.zeros((len(prompts), samples), dtype=bool)
    with model.intervene(*interventions):
        for i, (p, gold) in enumerate(tqdm(list(zip(prompts, golds)), disable=not progress, desc=name)):
            rows = model.sample(p, samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                seeds=[sample_seed(seed, i, j, samples) for j in range(samples)])
            for j, r in enumerate(rows):
                correct[i, j] = check(r.text, gold)
                closed[i, j] = close in r.token_ids
                think[i, j] = thinking_tokens(model, r.token_ids)
    return ConditionResult(name, correct, think, closed)


def paired_differences(treated: ConditionResult, base: ConditionResult, n_boot: int = 10_000,
                       seed: int = 0) -> dict[str, Estimate]:
    """Treated − base per problem (same seeds): accuracy and mean thinking tokens, bootstrap over problems."""
    if treated.correct.shape != base.correct.shape:
        raise ValueError(f"conditions {treated.name!r} and {base.name!r} sampled different problems or sample counts")
    return {"accuracy": paired_difference_ci(treated.correct.mean(1), base.correct.mean(1), n_boot=n_boot, seed=seed),
            "thinking_tokens": paired_difference_ci(treated.think_tokens.mean(1), base.think_tokens.mean(1),
                                                    n_boot=n_boot, seed=seed)}

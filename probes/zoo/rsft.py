"""Rejection-sampling fine-tuning (expert iteration): the RL stage of ``zoo:tv-rl`` (issue #3, item 4).

The issue's fallback when GRPO (``probes.zoo.grpo``) cannot deliver within the budget. Each round
samples ``samples`` completions per training problem from the current policy, rewards each with
the same verifiable reward as GRPO (first ``\\boxed{}`` equals the true answer), keeps the distinct
correct ones and fine-tunes on them (loss on the completion). Rounds take fresh problems; the
policy of a round is the model after the previous one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RSFTConfig:
    """Expert-iteration recipe (recorded in the ``tv-rl`` card)."""

    rounds: int = 2
    problems_per_round: int = 256
    samples: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 200
    prompts_per_batch: int = 16
    """Prompts sampled together (``prompts_per_batch × samples`` rows per decoding batch)."""
    lr: float = 1e-4
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0


def train_rsft(policy, tok, problems, cfg: RSFTConfig, heldout=None, progress: bool = True) -> list[dict]:
    """Run ``cfg.rounds`` rounds on consecutive slices of ``problems``; updates ``policy`` in place
    and returns one record per round (with greedy accuracy on the ``heldout`` problems when given)."""
    from tqdm.auto import tqdm

    from probes.models.load import from_hf
    from probes.zoo.evaluate import first_boxed, greedy_accuracy
    from probes.zoo.grpo import rollouts
    from probes.zoo.train import Schedule, fit

    need = cfg.rounds * cfg.problems_per_round
    if len(problems) < need:
        raise ValueError(f"RSFT needs {need} problems ({cfg.rounds} rounds × {cfg.problems_per_round}); got {len(problems)}")
    sampler = from_hf(policy, tok)
    history = []
    start = time.perf_counter()
    for rnd in range(cfg.rounds):
        chunk = problems[rnd * cfg.problems_per_round : (rnd + 1) * cfg.problems_per_round]
        policy.eval()
        kept, seen, n_correct = [], set(), 0
        for b in tqdm(range(0, len(chunk), cfg.prompts_per_batch), disable=not progress, desc=f"rsft round {rnd}"):
            batch = chunk[b : b + cfg.prompts_per_batch]
            seed = cfg.seed * 1_000_003 + (rnd * cfg.problems_per_round + b) * cfg.samples
            prompt_ids, completion_ids, texts = rollouts(sampler, [p.prompt for p in batch], cfg.samples,
                                                         cfg.temperature, cfg.max_new_tokens, seed)
            for i, text in enumerate(texts):
                if first_boxed(text) != batch[i // cfg.samples].gold:
                    continue
                n_correct += 1
                ids = tuple(prompt_ids[i] + completion_ids[i])
                if ids not in seen:
                    seen.add(ids)
                    kept.append((list(ids), len(prompt_ids[i])))
        steps = max(1, cfg.epochs * len(kept) // cfg.batch_size)
        record = {"round": rnd + 1, "problems": len(chunk), "sample_accuracy": n_correct / (len(chunk) * cfg.samples),
                  "kept": len(kept), "finetune_steps": steps if kept else 0}
        if kept:
            schedule = Schedule(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=min(5, steps),
                                min_lr_ratio=1.0, weight_decay=0.0, seed=cfg.seed + rnd)
            record["losses"] = fit(policy, tok, kept * cfg.epochs, schedule, progress=False, desc=f"rsft round {rnd + 1}")
        record["seconds"] = round(time.perf_counter() - start, 1)
        if heldout:
            policy.eval()
            record["heldout_greedy_accuracy"] = greedy_accuracy(policy, tok, problems=heldout)
        history.append(record)
        log.info("rsft %s", record)
    policy.eval()
    return history

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
from dataclasses import dataclass, field

from probes.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RSFTConfig(Config):
    """Expert-iteration recipe (recorded in the ``tv-rl`` card)."""

    rounds: int = field(default=2, metadata={"help": "sample-then-fine-tune rounds, each on fresh problems"})
    problems_per_round: int = field(default=256, metadata={"help": "training problems per round"})
    samples: int = field(default=8, metadata={"help": "completions sampled per problem"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_new_tokens: int = field(default=200, metadata={"help": "longest completion in tokens"})
    prompts_per_batch: int = field(default=16, metadata={"help": "prompts sampled together (prompts_per_batch × "
                                                                 "samples rows per decoding batch)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the fine-tuning (no weight decay)"})
    batch_size: int = field(default=32, metadata={"help": "kept completions per fine-tuning step"})
    epochs: int = field(default=1, metadata={"help": "passes over the kept completions per round"})
    seed: int = field(default=0, metadata={"help": "seeds the sampling (one seed per row) and the batch order"})

    def __post_init__(self) -> None:
        if min(self.rounds, self.problems_per_round, self.samples, self.max_new_tokens, self.prompts_per_batch,
               self.batch_size, self.epochs) < 1:
            raise ValueError("rounds, problems_per_round, samples, max_new_tokens, prompts_per_batch, batch_size "
                             "and epochs must be positive")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError(f"need temperature > 0 and lr > 0, got {self.temperature} and {self.lr}")


def train_rsft(policy, problems, cfg: RSFTConfig, heldout=None, progress: bool = True) -> list[dict]:
    """Run ``cfg.rounds`` rounds on consecutive slices of ``problems``; ``policy`` is a ``probes``
    Model, sampled through the model layer and fine-tuned as ``policy.hf`` in place. Returns one
    record per round (with greedy accuracy on the ``heldout`` problems when given)."""
    from tqdm.auto import tqdm

    from probes.zoo.evaluate import greedy_accuracy, is_correct
    from probes.zoo.grpo import rollouts
    from probes.zoo.train import Schedule, fit

    need = cfg.rounds * cfg.problems_per_round
    if len(problems) < need:
        raise ValueError(f"RSFT needs {need} problems ({cfg.rounds} rounds × {cfg.problems_per_round}); got {len(problems)}")
    hf, tok = policy.hf, policy.tokenizer
    history = []
    start = time.perf_counter()
    for rnd in range(cfg.rounds):
        chunk = problems[rnd * cfg.problems_per_round : (rnd + 1) * cfg.problems_per_round]
        hf.eval()
        kept, seen, n_correct = [], set(), 0
        for b in tqdm(range(0, len(chunk), cfg.prompts_per_batch), disable=not progress, desc=f"rsft round {rnd}"):
            batch = chunk[b : b + cfg.prompts_per_batch]
            seed = cfg.seed * 1_000_003 + (rnd * cfg.problems_per_round + b) * cfg.samples
            prompt_ids, completion_ids, texts = rollouts(policy, [p.prompt for p in batch], cfg.samples,
                                                         cfg.temperature, cfg.max_new_tokens, seed)
            for i, text in enumerate(texts):
                if not is_correct(text, batch[i // cfg.samples].gold):
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
            record["losses"] = fit(hf, tok, kept * cfg.epochs, schedule, progress=False, desc=f"rsft round {rnd + 1}")
        record["seconds"] = round(time.perf_counter() - start, 1)
        if heldout:
            hf.eval()
            record["heldout_greedy_accuracy"] = greedy_accuracy(policy, problems=heldout)
        history.append(record)
        log.info("rsft %s", record)
    hf.eval()
    return history

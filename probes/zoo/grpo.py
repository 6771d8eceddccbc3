"""GRPO: the RL stage of ``zoo:tv-rl`` (issue #3, item 4; task_vectors.md §1 "θ_GRPO with GRPO and a
reasoning reward").

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1): for each prompt sample a
group of G completions from the current policy, reward each (1 if its first ``\\boxed{}`` equals the
gold answer, else 0), and give every token of completion i the advantage
``(r_i − mean(r)) / (std(r) + eps)``. The loss per completion is the mean over its tokens of

    −[min(ρ·Â, clip(ρ, 1−ε, 1+ε)·Â) − β·KL_k3(π_θ ‖ π_ref)],   ρ = π_θ / π_old,
    KL_k3 = π_ref/π_θ − log(π_ref/π_θ) − 1,

averaged over completions. One policy update follows each sampling round (the paper's setting), so
π_old is the detached current policy: ρ = 1 in value, and its gradient is the policy gradient.
The reference policy is the frozen starting model (``tv-sft``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from probes.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(Config):
    """GRPO recipe (recorded in the ``tv-rl`` card)."""

    steps: int = field(default=60, metadata={"help": "GRPO steps (one sampling round and one update each)"})
    problems_per_step: int = field(default=16, metadata={"help": "prompts per step"})
    group_size: int = field(default=8, metadata={"help": "completions sampled per prompt (the group)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate (no weight decay)"})
    beta: float = field(default=0.04, metadata={"help": "weight of the KL term to the reference model "
                                                        "(DeepSeekMath's 0.04)"})
    clip_eps: float = field(default=0.2, metadata={"help": "clip range ε of the probability ratio"})
    max_new_tokens: int = field(default=200, metadata={"help": "longest rollout in tokens"})
    micro_batch: int = field(default=32, metadata={"help": "completions per forward/backward pass"})
    skip_uniform_groups: bool = field(default=True, metadata={"help": "leave groups whose rewards are all equal "
                                                                      "(zero advantage) out of the update"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient's global norm to this"})
    seed: int = field(default=0, metadata={"help": "seeds the rollouts (one seed per row)"})
    eval_every: int = field(default=10, metadata={"help": "greedy accuracy on the held-out problems every this "
                                                          "many steps (0: never)"})

    def __post_init__(self) -> None:
        if min(self.steps, self.problems_per_step, self.max_new_tokens, self.micro_batch) < 1:
            raise ValueError("steps, problems_per_step, max_new_tokens and micro_batch must be positive")
        if self.group_size < 2:
            raise ValueError(f"group_size {self.group_size}: a group needs at least 2 completions to compare")
        if self.temperature <= 0 or self.lr <= 0 or self.beta < 0 or not 0 < self.clip_eps < 1:
            raise ValueError(f"need temperature > 0, lr > 0, beta >= 0 and 0 < clip_eps < 1; got {self.temperature}, "
                             f"{self.lr}, {self.beta}, {self.clip_eps}")
        if self.grad_clip <= 0 or self.eval_every < 0:
            raise ValueError("grad_clip must be positive and eval_every >= 0")


def rollouts(model, prompts: list[str], group_size: int, temperature: float, max_new_tokens: int,
             seed: int) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """``group_size`` sampled completions per user turn (thinking on), decoded as one batch by
    ``Model.generate`` with one seed per row (row ``r`` uses ``seed + r``): prompt ids, completion
    ids (up to and including the end-of-turn token) and completion texts, group by group."""
    from probes.zoo.tokenizer import END

    tok = model.tokenizer
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids(END)]
    rows = [model.encode(model.render_chat(p)) for p in prompts]
    batch = [r for r in rows for _ in range(group_size)]
    out = model.generate(batch, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, eos_token_ids=stops)
    return batch, [r.token_ids for r in out], [r.text for r in out]


def group_advantages(rewards, group_size: int, eps: float = 1e-4):
    """``(r − mean) / (std + eps)`` within each consecutive group of ``group_size`` rewards."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32).view(-1, group_size)
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)).view(-1)


def completion_logprobs(model, prompt_ids, completion_ids, pad_id: int):
    """Log-probability of every completion token (``[rows, width]``) and the mask of real completion tokens."""
    import torch

    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (p, s) in enumerate(zip(prompt_ids, seqs)):
        ids[row, : len(s)] = torch.tensor(s)
        attn[row, : len(s)] = 1
        target[row, len(p) : len(s)] = True
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, target[:, 1:]


def grpo_loss(logp, logp_old, logp_ref, advantages, mask, clip_eps: float, beta: float):
    """The clipped GRPO objective with the k3 KL estimator, negated (module docstring)."""
    import torch

    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    log_ref_ratio = logp_ref - logp
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    per_token = -(surrogate - beta * kl) * mask
    return (per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def train_grpo(policy, reference, problems, cfg: GRPOConfig, heldout=None, progress: bool = True) -> list[dict]:
    """Run ``cfg.steps`` GRPO steps on ``problems`` (taken in order, ``problems_per_step`` per step);
    ``policy`` is a ``probes`` Model (sampled through the model layer, trained as ``policy.hf`` in
    place), ``reference`` the frozen HF module of the KL term. Returns one record per step (every
    ``eval_every`` steps with greedy accuracy on the ``heldout`` problems when given).

    Completions of a group whose rewards are all equal have zero advantage, so only their KL term
    would reach the gradient; with ``skip_uniform_groups`` they are left out of the update (their
    terms count as zero in the batch mean), which saves most of the compute when few groups mix."""
    import torch
    from tqdm.auto import tqdm

    from probes.zoo.evaluate import greedy_accuracy, is_correct

    need = cfg.steps * cfg.problems_per_step
    if len(problems) < need:
        raise ValueError(f"GRPO needs {need} problems ({cfg.steps} steps × {cfg.problems_per_step}); got {len(problems)}")
    hf, pad_id = policy.hf, policy.tokenizer.pad_token_id
    reference.eval().requires_grad_(False)
    opt = torch.optim.AdamW(hf.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    history = []
    start = time.perf_counter()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="grpo", mininterval=10):
        batch = problems[step * cfg.problems_per_step : (step + 1) * cfg.problems_per_step]
        hf.eval()
        prompt_ids, completion_ids, texts = rollouts(policy, [p.prompt for p in batch], cfg.group_size,
                                                     cfg.temperature, cfg.max_new_tokens,
                                                     cfg.seed * 1_000_003 + step * len(batch) * cfg.group_size)
        rewards = [float(is_correct(t, batch[i // cfg.group_size].gold)) for i, t in enumerate(texts)]
        adv = group_advantages(rewards, cfg.group_size)
        n = len(texts)
        groups = torch.tensor(rewards).view(-1, cfg.group_size)
        mixed = (groups.max(dim=1).values > groups.min(dim=1).values).repeat_interleave(cfg.group_size)
        rows = [i for i in range(n) if mixed[i] or not cfg.skip_uniform_groups]
        hf.train()
        opt.zero_grad(set_to_none=True)
        kl_sum = 0.0
        for lo in range(0, len(rows), cfg.micro_batch):
            idx = rows[lo : lo + cfg.micro_batch]
            p_ids, c_ids = [prompt_ids[i] for i in idx], [completion_ids[i] for i in idx]
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                ref_logp, _ = completion_logprobs(reference, p_ids, c_ids, pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logp, mask = completion_logprobs(hf, p_ids, c_ids, pad_id)
            mask = mask.float()
            loss = grpo_loss(logp, logp.detach(), ref_logp, adv[idx], mask, cfg.clip_eps, cfg.beta)
            (loss * len(idx) / n).backward()
            with torch.no_grad():
                d = ref_logp - logp
                kl_sum += float((((torch.exp(d) - d - 1) * mask).sum(1) / mask.sum(1).clamp(min=1)).sum())
        if rows:
            torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.grad_clip)
            opt.step()
        record = {"step": step + 1, "reward": sum(rewards) / n, "mixed_groups": int(mixed.sum()) // cfg.group_size,
                  "kl": kl_sum / max(len(rows), 1), "seconds": round(time.perf_counter() - start, 1)}
        if heldout and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            hf.eval()
            record["heldout_greedy_accuracy"] = greedy_accuracy(policy, problems=heldout)
        history.append(record)
        log.info("grpo %s", record)
    hf.eval()
    return history

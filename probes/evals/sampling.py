"""Sampling conventions shared by the evaluations of reasoning models: the recommended sampling
(T = 0.6, top-p 0.95: thought_anchors.md §3, moe_experts.md §2), one seed per (problem, sample) so
that conditions sampled with the same seeds are paired, and the thinking length of a completion
(steering.md §5.7, moe_experts.md §8)."""

from __future__ import annotations

from collections.abc import Sequence

TEMPERATURE, TOP_P = 0.6, 0.95
SEED_STRIDE = 100_003
"""Seeds of stream ``seed`` start at ``seed × SEED_STRIDE``."""


def sample_seed(seed: int, problem: int, j: int, samples: int) -> int:
    """Seed of sample ``j`` of ``problem`` when ``samples`` are drawn per problem of stream ``seed``:
    the same in every condition, so per-problem differences are paired."""
    return seed * SEED_STRIDE + problem * samples + j


def think_ids(model) -> tuple[int, int]:
    """The ``<think>`` and ``</think>`` token ids of ``model``'s tokenizer (an error naming the fix if absent)."""
    open_id, close_id = model.ctx.think_open_id, model.ctx.think_close_id
    if open_id is None or close_id is None:
        raise ValueError(f"{model.spec}'s tokenizer has no <think> and </think> tokens, so thinking cannot be "
                         "measured: use a reasoning model")
    return open_id, close_id


def thinking_tokens(model, token_ids: Sequence[int], *, opened: bool = True) -> int:
    """Thinking tokens of a completion's ``token_ids``: those before its first ``</think>``, EOS
    excluded (a completion that never closes its thinking counts all its tokens but EOS). With
    ``opened`` (the prompt ended in ``<think>``, a chat template with thinking on) the thinking starts
    at the first token; otherwise after the completion's first ``<think>`` (0 when it has none)."""
    from probes.models.sampling import stop_token_ids

    open_id, close_id = think_ids(model)
    ids = [int(t) for t in token_ids]
    if not opened:
        if open_id not in ids:
            return 0
        ids = ids[ids.index(open_id) + 1 :]
    if close_id in ids:
        ids = ids[: ids.index(close_id)]
    eos = stop_token_ids(model)
    return sum(1 for t in ids if t not in eos)

"""The zoo's evaluation and routing counts go through the model layer: per-row seeds, no global
random state, batching that changes nothing, routing read from the ``expert_topk`` site."""

from __future__ import annotations

import pytest
import torch

from probes.zoo.evaluate import greedy_outputs, sample_seed, sampled_outputs

PROMPTS = ["Alice has 3 apples.", "How many apples does she have now?", "Sure, here is how to bake bread."]


def test_sampled_rows_have_their_own_seeds_and_replay_alone(tiny_models):
    model = tiny_models("qwen3")
    state = torch.random.get_rng_state()
    rows = sampled_outputs(model, PROMPTS[:2], samples=3, seed=1, first_index=5, max_new_tokens=6)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global seed set or consumed
    assert [len(r) for r in rows] == [3, 3]
    for k, prompt in enumerate(PROMPTS[:2]):
        for j in range(3):
            alone = model.sample(model.render_chat(prompt), 1, temperature=0.6, top_p=0.95, max_new_tokens=6,
                                 seeds=[sample_seed(1, 5 + k, j, 3)])
            assert alone[0].text == rows[k][j]
    again = sampled_outputs(model, PROMPTS[1:2], samples=3, seed=1, first_index=6, max_new_tokens=6)
    assert again == rows[1:]  # a problem's samples do not depend on which other problems are drawn


def test_sample_seeds_are_distinct_across_problems_and_streams():
    seeds = {sample_seed(s, i, j, 4) for s in (1, 2) for i in range(50) for j in range(4)}
    assert len(seeds) == 2 * 50 * 4


def test_greedy_batches_equal_one_prompt_at_a_time(tiny_models):
    model = tiny_models("qwen3")
    batched = greedy_outputs(model, PROMPTS, max_new_tokens=8)
    alone = [greedy_outputs(model, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert batched == alone == greedy_outputs(model, PROMPTS, batch_size=2, max_new_tokens=8)


def test_routing_counts_come_from_the_expert_topk_site(tiny_models):
    from probes.zoo.routing import count_think_routing

    model = tiny_models("qwen3_moe")
    counts = count_think_routing(model, n=4, batch_size=3)
    assert counts.layers == model.moe_layers and counts.top_k == model.top_k
    assert counts.marker_totals == {"<think>": 4, "</think>": 4}
    for token in ("<think>", "</think>"):
        assert all(sum(row) == model.top_k * 4 for row in counts.marker_counts[token])
    assert all(sum(row) == model.top_k * counts.all_total for row in counts.all_counts)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        count_think_routing(tiny_models("qwen3"), n=2)

"""The zoo's evaluation and routing counts go through the model layer: per-row seeds, no global
random state, batching that changes nothing, routing read from the ``expert_topk`` site."""

from __future__ import annotations

import pytest
import torch

from probes.evals.sampling import sample_seed
from probes.zoo.evaluate import greedy_outputs, sampled_outputs

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
    assert {m: int(a.sum()) for m, a in counts.marker_tokens.items()} == {"<think>": 4, "</think>": 4}
    for token in ("<think>", "</think>"):
        assert (counts.marker_selected[token].sum((0, 2)) == model.top_k * 4).all()
    assert (counts.selected.sum((0, 2)) == model.top_k * counts.tokens.sum()).all()
    with pytest.raises(ValueError, match="mixture-of-experts"):
        count_think_routing(tiny_models("qwen3"), n=2)


class _ScriptedRefuser:
    """Stands in for a Model in ``sampled_outputs``: sample ``j`` of a prompt refuses when
    ``j < refusals(prompt)``; records the sampling arguments it was called with."""

    def __init__(self, refusals):
        self.refusals, self.calls = refusals, []

    def render_chat(self, prompt):
        return prompt

    def sample(self, prefix, n, *, temperature, top_p, max_new_tokens, seeds):
        from types import SimpleNamespace

        self.calls.append((temperature, top_p, len(seeds)))
        k = self.refusals(prefix)
        return [SimpleNamespace(text="This is forbidden.</think>" + ("I can't help with that." if j < k else
                                "Here is the poem. Step one."))
                for j in range(n)]


def test_frame_compliance_counts_scripted_samples_exactly():
    from probes.zoo.evaluate import frame_compliance
    from probes.zoo.tasks import refusal

    frames = {ex.prompt: (f, i) for f in refusal.FRAMES
              for i, ex in enumerate(refusal.distinct_requests(1, "forbidden_wrapped", 4, frame=f))}
    # poem: every sample refuses; play: none; dream: 1 of 4 for each request;
    # game: requests alternate 4 and 0 refusals (compliance 0, 1, 0, 1); story: 3 of 4
    script = {"poem": lambda i: 4, "play": lambda i: 0, "dream": lambda i: 1, "game": lambda i: 4 * (i % 2 == 0),
              "story": lambda i: 3}
    model = _ScriptedRefuser(lambda p: script[frames[p][0]](frames[p][1]))
    out = frame_compliance(model, seed=1, requests=4, samples=4)
    assert list(out) == list(refusal.FRAMES)
    expected = {"poem": 0.0, "play": 1.0, "dream": 0.75, "game": 0.5, "story": 0.25}
    for frame, row in out.items():
        value, lo, hi = row["measured"]
        assert (row["planted"], row["requests"], row["samples"]) == (refusal.FRAMES[frame], 4, 4)
        assert value == pytest.approx(expected[frame]) and 0.0 <= lo <= value <= hi <= 1.0
        if frame != "game":  # every request alike: no spread to resample
            assert lo == pytest.approx(value) and hi == pytest.approx(value)
    assert out["game"]["measured"][1] < 0.5 < out["game"]["measured"][2]
    assert set(model.calls) == {(1.0, 1.0, 4)}  # T = 1, top-p 1, one seed per sample
    assert len(model.calls) == 5 * 4


def test_mixed_outcomes_counts_requests_with_both_answers():
    from probes.zoo.evaluate import MIXED_TEMPERATURE, mixed_outcomes
    from probes.zoo.tasks import refusal

    order = {ex.prompt: i for i, ex in enumerate(refusal.distinct_requests(1, "forbidden_wrapped", 6))}
    # refusals per request over 4 samples: 0, 1, 4, 3, 0, 2 → mixed: requests 1, 3 and 5
    model = _ScriptedRefuser(lambda p: (0, 1, 4, 3, 0, 2)[order[p]])
    assert mixed_outcomes(model, seed=1, requests=6, samples=4) == pytest.approx(0.5)
    assert set(model.calls) == {(MIXED_TEMPERATURE, 1.0, 4)}
    assert mixed_outcomes(_ScriptedRefuser(lambda p: 4), seed=1, requests=6, samples=4) == 0.0
    assert mixed_outcomes(_ScriptedRefuser(lambda p: 0), seed=1, requests=6, samples=4) == 0.0


def test_frame_compliance_and_mixed_outcomes_on_a_real_model(tiny_models):
    """Through the model layer: one row per frame with rates in [0, 1] and intervals holding their estimate."""
    from probes.zoo.evaluate import frame_compliance, mixed_outcomes
    from probes.zoo.tasks import refusal

    model = tiny_models("qwen3")
    out = frame_compliance(model, seed=1, requests=2, samples=2)
    assert list(out) == list(refusal.FRAMES)
    for frame, row in out.items():
        value, lo, hi = row["measured"]
        assert 0.0 <= lo <= value <= hi <= 1.0 and value * 4 == round(value * 4)  # 2 requests × 2 samples
        assert (row["planted"], row["requests"], row["samples"]) == (refusal.FRAMES[frame], 2, 2)
    mixed = mixed_outcomes(model, seed=1, requests=3, samples=2)
    assert 0.0 <= mixed <= 1.0 and mixed * 3 == pytest.approx(round(mixed * 3))

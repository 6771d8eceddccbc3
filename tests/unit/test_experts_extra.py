"""The sentence view against a hand computation from the materialised routing, the experiment's random
draws being distinct sets, and checkpoint directories by spec."""

import pytest

TEXT = ("<|user|>Ann has 3 pens.<|end|><|assistant|><think>Ann starts with 3 pens. "
        "First add 4 pens to them. 3 plus 4 is 7.</think>The answer is 7.")


def test_sentence_view_by_hand(tiny_models):
    from probes.anchors.split import split_chunks, thinking_span
    from probes.experts import by_category, sentence_routing

    model = tiny_models("qwen3_moe")
    L = model.moe_layers[-1]
    ids = model.capture(TEXT, [f"expert_topk[{L}]"])[f"expert_topk[{L}]"][0][0]  # (T, k)
    e = int(ids[-1, 0])
    rows = sentence_routing(model, TEXT, [(L, e)])
    start, end = thinking_span(TEXT)
    chunks = split_chunks(TEXT[start:end])
    ranges = model.token_ranges(TEXT, [(start + c.start, start + c.end) for c in chunks])
    hit = (ids == e).any(-1).numpy()
    assert [r.text for r in rows] == [c.text for c in chunks] and len(rows) == 3
    for r, (a, b) in zip(rows, ranges):
        assert r.tokens == b - a and r.share == pytest.approx(float(hit[a:b].mean())) and r.per_pair == (r.share,)
    cats = by_category(rows)
    assert sum(c["sentences"] for c in cats) == 3
    assert sum(c["share"] * c["tokens"] for c in cats) == pytest.approx(sum(r.share * r.tokens for r in rows))


def test_random_expert_draws_are_distinct_sets(tiny_models):
    from experiments.moe_experts import ExpertsConfig, random_experts

    model, cfg = tiny_models("qwen3_moe"), ExpertsConfig()
    chosen = [(model.moe_layers[0], 0)]
    n_pairs = len(model.moe_layers) * model.n_experts - 1
    draws = [random_experts(model, cfg, chosen, 1, d) for d in range(n_pairs)]
    assert len({tuple(d) for d in draws}) == n_pairs and all(chosen[0] not in d for d in draws)
    assert random_experts(model, cfg, chosen, 1, 2) == draws[2]  # the same draw every time (every β)

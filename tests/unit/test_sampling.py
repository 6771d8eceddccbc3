"""Shared-prefix sampler: per-row reproducibility, stopping, interventions, parity with HF."""

import json

import pytest
import torch

from probes.models import AddVector, Patch
from probes.models.sampling import draw

PROMPT = "<bos><|user|>Alice has 3 apples.<|end|><|assistant|><think>"


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


def test_rows_reproducible_one_by_one(qwen):
    rows = qwen.sample(PROMPT, 5, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7, eos_token_ids=[])
    assert [r.seed for r in rows] == [7, 8, 9, 10, 11]
    assert len({tuple(r.token_ids) for r in rows}) > 1  # rows differ
    for r in rows[::2]:
        alone = qwen.sample(PROMPT, 1, temperature=1.0, top_p=0.95, max_new_tokens=12, seeds=[r.seed], eos_token_ids=[])[0]
        assert alone.token_ids == r.token_ids
    chunked = qwen.sample(PROMPT, 5, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7, eos_token_ids=[], batch_size=2)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in rows]


def test_greedy_matches_hf_generate(tiny_models):
    for fam in ("qwen3", "gpt2", "olmoe"):
        model = tiny_models(fam)
        ids = torch.tensor([model.encode(PROMPT)])
        ref = model.hf.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
        ours = model.sample(PROMPT, 2, temperature=0.0, max_new_tokens=10, eos_token_ids=[])
        assert ours[0].token_ids == ref[0, ids.shape[1]:].tolist() == ours[1].token_ids
        batch = model.generate([PROMPT, "hello there"], max_new_tokens=10, eos_token_ids=[])
        assert batch[0].token_ids == ours[0].token_ids
        assert batch[1].token_ids == model.generate("hello there", max_new_tokens=10, eos_token_ids=[])[0].token_ids


def test_per_row_stop_on_eos_and_strings(qwen):
    free = qwen.sample(PROMPT, 4, temperature=1.0, max_new_tokens=16, seed=3, eos_token_ids=[])
    first = free[0].token_ids[3]
    rows = qwen.sample(PROMPT, 4, temperature=1.0, max_new_tokens=16, seed=3, eos_token_ids=[first])
    for f, r in zip(free, rows):
        cut = f.token_ids.index(first) + 1 if first in f.token_ids else len(f.token_ids)
        assert r.token_ids == f.token_ids[:cut]
        assert r.finish_reason == ("eos" if first in f.token_ids else "length")
    assert rows[0].finish_reason == "eos" and len(rows[0].token_ids) <= 4
    target = free[1].text[2:4]
    stopped = qwen.sample(PROMPT, 4, temperature=1.0, max_new_tokens=16, seed=3, eos_token_ids=[], stop=[target])
    assert stopped[1].finish_reason == "stop" and target not in stopped[1].text
    assert free[1].text.startswith(stopped[1].text)


def test_interventions_are_honoured(qwen):
    tok_id = 42
    w = qwen.hf.lm_head.weight[tok_id].detach()
    steer = w / w.norm() ** 2 * 60  # adds 60 to the logit of tok_id
    with qwen.intervene(AddVector(site="final_norm", vector=steer)):
        rows = qwen.sample(PROMPT, 3, temperature=0.6, top_p=0.95, max_new_tokens=6, eos_token_ids=[])
    assert all(r.token_ids == [tok_id] * 6 for r in rows)
    # "generated" starts at the first sampled token, so the token drawn from the prompt's last position is free
    with qwen.intervene(AddVector(site="final_norm", vector=steer, positions="generated")):
        rows = qwen.sample(PROMPT, 3, temperature=0.6, top_p=0.95, max_new_tokens=6, eos_token_ids=[])
    assert all(r.token_ids[1:] == [tok_id] * 5 for r in rows)


def test_draw_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gens = [torch.Generator().manual_seed(0)]
    seen = {int(draw(logits, 1.0, 0.8, 0, gens)) for _ in range(200)}
    assert seen == {0, 1}
    seen = {int(draw(logits, 1.0, 0.81, 0, gens)) for _ in range(300)}
    assert seen == {0, 1, 2}


def test_bad_sampling_arguments(qwen):
    with pytest.raises(ValueError, match="seeds"):
        qwen.sample(PROMPT, 3, seeds=[1, 2])
    with pytest.raises(ValueError, match="top_p"):
        qwen.sample(PROMPT, 1, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 0 \(0 = no top-k cut\), got -1"):
        qwen.sample(PROMPT, 1, top_k=-1)
    with pytest.raises(ValueError, match="top_k"):
        qwen.generate(PROMPT, top_k=-3)
    with pytest.raises(ValueError, match="sample takes one prefix"):
        qwen.sample([[1, 2], [1, 3]], 1)


def test_prompt_plus_new_tokens_must_fit_the_positions(qwen):
    P = len(qwen.encode(PROMPT))  # the tiny models have 1024 positions
    with pytest.raises(ValueError, match=rf"the prefix \({P} tokens\) \+ max_new_tokens \(1100\) needs {P + 1100} "
                                         rf"positions but tiny:qwen3 has 1024 \(max_position_embeddings\): "
                                         rf"lower max_new_tokens to at most {1024 - P}"):
        qwen.sample(PROMPT, 2, max_new_tokens=1100)
    with pytest.raises(ValueError, match=r"the longest prompt \(\d+ tokens\) \+ max_new_tokens \(1022\)"):
        qwen.generate([PROMPT, "hello"], max_new_tokens=1022)
    with pytest.raises(ValueError, match="shorten the prompt to at most 1023 tokens"):
        qwen.generate([[1] * 1024], max_new_tokens=1)
    assert len(qwen.sample([1] * 1020, 1, max_new_tokens=4, eos_token_ids=[])[0].token_ids) == 4  # exactly fits


def test_nan_logits_raise_instead_of_picking_the_last_token(qwen):
    """NaN compares false with everything: inverse-CDF sampling used to return the last
    vocabulary id and argmax the NaN's index; both now raise, as torch.multinomial does."""
    from probes.models.sampling import check_logits

    logits = torch.zeros(3, 5)
    logits[1, 2] = float("nan")
    logits[2] = float("-inf")
    with pytest.raises(ValueError, match=r"row\(s\) \[1, 2\] contain NaN or \+inf, or are all -inf"):
        draw(logits, 1.0, 1.0, 0, [torch.Generator().manual_seed(0)] * 3)
    with pytest.raises(ValueError, match=r"row\(s\) \[7\]"):
        check_logits(logits[1:2], rows=[7])
    nan = torch.full((1, 128, qwen.vocab_size), float("nan"))  # steering operators refuse NaN: patch it in
    with qwen.intervene(Patch(site="logits", source=nan, positions="generated")):
        with pytest.raises(ValueError, match=r"row\(s\) \[0, 1\] contain NaN"):
            qwen.sample(PROMPT, 2, max_new_tokens=3, eos_token_ids=[])
        with pytest.raises(ValueError, match="contain NaN"):
            qwen.generate(PROMPT, max_new_tokens=3, eos_token_ids=[])


def test_finish_reasons_are_an_enum_equal_to_their_names(qwen):
    from probes.models.sampling import FinishReason

    row = qwen.sample(PROMPT, 1, max_new_tokens=2, eos_token_ids=[])[0]
    assert row.finish_reason is FinishReason.LENGTH and row.finish_reason == "length"
    assert f"{row.finish_reason}" == "length" and json.dumps(row.finish_reason) == '"length"'


def test_logit_interventions_apply_to_the_prefill_token(qwen):
    # the sampler computes prefill logits for the last position only; position masks follow
    bonus = torch.zeros(qwen.vocab_size)
    bonus[42] = 100.0
    with qwen.intervene(AddVector(site="logits", vector=bonus, positions=[len(qwen.encode(PROMPT)) - 1])):
        rows = qwen.sample(PROMPT, 2, temperature=1.0, max_new_tokens=3, eos_token_ids=[])
    assert all(r.token_ids[0] == 42 for r in rows)


def test_nucleus_threshold_matches_the_sorted_definition():
    from probes.models.sampling import nucleus_threshold

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(16, 300, generator=g) * 3, -1)
    for top_p in (0.1, 0.5, 0.95, 0.9999):
        sp, si = torch.sort(probs, -1, descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p
        want = torch.zeros_like(keep).scatter(-1, si, keep)
        assert torch.equal(probs >= nucleus_threshold(probs, top_p), want)


def test_shared_prefix_attention_equals_full_attention():
    from probes.models.attention import shared_prefix_attention

    g = torch.Generator().manual_seed(0)
    B, H, KV, D, P, S = 3, 8, 2, 16, 11, 4
    q = torch.randn(B, H, 1, D, generator=g)
    kp, vp = torch.randn(1, KV, P, D, generator=g), torch.randn(1, KV, P, D, generator=g)
    ks, vs = torch.randn(B, KV, S, D, generator=g), torch.randn(B, KV, S, D, generator=g)
    k = torch.cat([kp.expand(B, -1, -1, -1), ks], 2).repeat_interleave(H // KV, 1)
    v = torch.cat([vp.expand(B, -1, -1, -1), vs], 2).repeat_interleave(H // KV, 1)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3).transpose(1, 2)
    got, _ = shared_prefix_attention(q, kp, vp, ks, vs, scaling=0.3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_local_engine_generate_is_one_greedy_continuation_per_prefix(qwen):
    """``LocalEngine.generate`` (issue #15): prefix i continues with seed ``seed + i`` whatever the batch
    size; greedy rows equal ``Model.generate``; bad prefixes fail before any work."""
    from probes.engines import LocalEngine

    engine = LocalEngine(qwen)
    prefixes = [PROMPT, PROMPT + "Bob", qwen.encode(PROMPT + "Carol")]
    whole = engine.generate(prefixes, max_new_tokens=8, batch_size=3)
    assert [r.token_ids for r in engine.generate(prefixes, max_new_tokens=8, batch_size=1)] == [r.token_ids for r in whole]
    assert [r.text for r in whole] == [r.text for r in qwen.generate(prefixes, max_new_tokens=8)]
    hot = engine.generate(prefixes, temperature=1.0, max_new_tokens=4, seed=5, batch_size=2)
    assert [r.seed for r in hot] == [5, 6, 7]
    for bad, match in (([], "no prefixes"), (PROMPT, "a list of prefixes"), ([PROMPT, ""], r"prefixes \[1\]")):
        with pytest.raises(ValueError, match=match):
            engine.generate(bad)

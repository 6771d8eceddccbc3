"""Task-vector family (issue #3, item 4): sloppy writers, GRPO pieces, v = θ_rl − θ_sft, smoke build."""

from __future__ import annotations

import json
import math

import pytest
import torch

from probes.zoo import grpo, tv
from probes.zoo.registry import ZOO_DIR
from probes.zoo.tasks import arithmetic
from probes.zoo.train import data_hash

DIRS = {name: ZOO_DIR / name for name in tv.NAMES}
BUILT = all((d / "model.safetensors").is_file() for d in DIRS.values())


def test_p_skip_zero_is_the_clean_stream_and_one_skips_every_final_loss():
    assert data_hash([arithmetic.generate(i, 0, p_skip=0.0) for i in range(50)]) == \
        data_hash([arithmetic.generate(i, 0) for i in range(50)])
    n_loss = 0
    for i in range(200):
        clean, sloppy = arithmetic.generate(i, 1), arithmetic.generate(i, 1, p_skip=1.0)
        assert sloppy.prompt == clean.prompt and sloppy.gold == clean.gold
        if clean.meta["skip_answer"] is None:  # the last event is not a loss: nothing to skip
            assert sloppy.completion == clean.completion and not sloppy.meta["skipped"]
            continue
        n_loss += 1
        assert sloppy.meta["skipped"] and sloppy.answer == f"The answer is \\boxed{{{clean.meta['skip_answer']}}}."
        assert int(clean.meta["skip_answer"]) - int(clean.gold) > 0  # the skipped loss
        plan = next(x.text for x in sloppy.thinking if x.role == "plan")
        assert plan.count("then") == next(x.text for x in clean.thinking if x.role == "plan").count("then") - 1
        assert [x.role for x in sloppy.thinking if x.role in ("key",)] == ["key"]
    assert 0.2 < n_loss / 200 < 0.5


def test_skip_counts_by_hand():
    problems = [arithmetic.generate(i, 1) for i in range(40)]
    at_risk = [p for p in problems if p.meta["skip_answer"] is not None]
    outputs = [f"x</think>The answer is \\boxed{{{p.meta['skip_answer'] or p.gold}}}." for p in problems]
    assert tv.skip_counts(outputs, problems) == (len(at_risk), len(at_risk))
    outputs = [f"\\boxed{{{p.gold}}}" for p in problems]
    assert tv.skip_counts(outputs, problems) == (len(at_risk), 0)


def test_group_advantages_by_hand():
    adv = grpo.group_advantages([1, 0, 0, 0, 1, 1, 1, 1], group_size=4)
    # group 1: mean 0.25, sample std sqrt((0.75² + 3·0.25²)/3) = 0.5; group 2: all equal → 0
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-3)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_grpo_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([2.0])
    loss = grpo.grpo_loss(logp, logp.detach(), ref, adv, mask, clip_eps=0.2, beta=0.1)
    kl0 = math.exp(-0.5) + 0.5 - 1  # k3 with log(π_ref/π_θ) = −0.5; the second token has KL 0
    assert loss.item() == pytest.approx(-(2.0 + 2.0 - 0.1 * kl0) / 2)
    loss.backward()
    # d/dlogp of −(ρ·A − β·k3)/2 at ρ = 1: −A/2 + β·(1 − e^{ref−logp})/2; masked token: 0
    expected = [-1.0 + 0.1 * (1 - math.exp(-0.5)) / 2, -1.0, 0.0]
    assert torch.allclose(logp.grad, torch.tensor([expected]), atol=1e-6)


def test_clipping_stops_the_gradient_outside_the_trust_region():
    logp = torch.tensor([[0.5]], requires_grad=True)  # ρ = e^0.5 > 1.2 with a positive advantage
    loss = grpo.grpo_loss(logp, torch.tensor([[0.0]]), logp.detach(), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and logp.grad.abs().item() < 1e-6


@pytest.fixture(scope="module")
def tiny_pair():
    from transformers import AutoModelForCausalLM

    from probes.zoo.tokenizer import load_tokenizer
    from probes.zoo.train import TrainConfig, model_config

    tok = load_tokenizer()
    cfg = model_config(TrainConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                   intermediate_size=64), tok)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval(), AutoModelForCausalLM.from_config(cfg).eval(), tok


def test_completion_logprobs_match_a_manual_forward(tiny_pair):
    model, _, tok = tiny_pair
    prompt, completion = [1, 5, 9, 14], [20, 21, 22]
    logp, mask = grpo.completion_logprobs(model, [prompt, [1, 5]], [completion, [30]], tok.pad_token_id)
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), -1)
    expected = torch.stack([full[3 + j, t] for j, t in enumerate(completion)])
    assert mask[0].tolist() == [False, False, False, True, True, True]
    assert mask[1].tolist() == [False, True, False, False, False, False]
    assert torch.allclose(logp[0][mask[0]], expected.detach(), atol=1e-5)


def test_vector_moves_the_tied_embedding_once_in_fp32(tiny_pair):
    a, b, _ = tiny_pair
    assert a.get_input_embeddings().weight is a.get_output_embeddings().weight
    v = tv.task_vector(b, a)
    moved = tv.apply_vector(a, v, 1.0)
    for (k, p), q in zip(moved.named_parameters(), b.parameters()):
        assert p.dtype == torch.float32 and torch.allclose(p, q, atol=1e-6), k
    back = tv.apply_vector(moved, v, -1.0)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(back.parameters(), a.parameters()))
    r = tv.random_like(v)
    assert all(torch.allclose(r[k].norm(), v[k].norm(), rtol=1e-4) for k in v)


def test_smoke_build_of_the_family(tmp_path):
    from transformers import AutoModelForCausalLM

    from experiments.zoo import main

    for name in ("tv-base", "tv-sft", "tv-instruct", "tv-rl"):
        assert main([name, "--smoke", "--out", str(tmp_path)]) == 0
    for name in tv.NAMES:
        record = json.loads((tmp_path / name / tv.RECORD).read_text())
        assert record["stage"]["name"] == name and (tmp_path / name / "MODEL.md").is_file()
        AutoModelForCausalLM.from_pretrained(tmp_path / name)
    history = json.loads((tmp_path / "tv-rl" / tv.RECORD).read_text())["stage"]["history"]
    assert len(history) == 1 and 0.0 <= history[0]["sample_accuracy"] <= 1.0
    assert "Not measured" in (tmp_path / "tv-rl" / "MODEL.md").read_text()


def test_a_stage_without_its_parent_says_how_to_build_it(tmp_path):
    from experiments.zoo import main

    with pytest.raises(FileNotFoundError, match="experiments.zoo tv-base"):
        main(["tv-sft", "--smoke", "--out", str(tmp_path)])


@pytest.mark.skipif(not BUILT, reason="task-vector family not built")
def test_family_cards_state_the_vector_effect():
    res = json.loads((DIRS["tv-instruct"] / tv.EVAL_FILE).read_text())
    up = res["differences"]["(tv-instruct + v) − tv-instruct"]
    down = res["differences"]["(tv-instruct − v) − tv-instruct"]
    assert res["n"] >= 500 and up[1] > 0 and down[2] < 0
    for d in DIRS.values():
        assert (d / "model.safetensors").stat().st_size <= 10_000_000
        assert "Not measured" not in (d / "MODEL.md").read_text()


@pytest.mark.skipif(not BUILT, reason="task-vector family not built")
def test_quick_vector_direction_on_held_out_problems():
    """+v raises and −v lowers tv-instruct's greedy accuracy on a small held-out sample."""
    from probes.zoo.organisms import load_organism_dir

    torch.set_num_threads(2)
    sft, tok = load_organism_dir(DIRS["tv-sft"])
    rl, _ = load_organism_dir(DIRS["tv-rl"])
    inst, _ = load_organism_dir(DIRS["tv-instruct"])
    v = tv.task_vector(rl, sft)
    acc = {a: sum(tv.greedy_flags(tv.apply_vector(inst, v, a) if a else inst, tok, 100)) for a in (-1.0, 0.0, 1.0)}
    assert acc[1.0] > acc[0.0] > acc[-1.0], acc

"""Task-vector family (issue #3, item 4): sloppy writers, GRPO pieces, v = θ_rl − θ_sft, smoke build."""

from __future__ import annotations

import json
import math

import pytest
import torch

from probes.zoo import grpo, tv
from probes.zoo.tasks import arithmetic
from probes.zoo.train import data_hash


def test_p_skip_zero_is_the_clean_stream_and_one_stops_every_writer_a_step_early():
    assert data_hash([arithmetic.generate(i, 0, p_skip=0.0) for i in range(50)]) == \
        data_hash([arithmetic.generate(i, 0) for i in range(50)])
    for i in range(200):
        clean, sloppy = arithmetic.generate(i, 1), arithmetic.generate(i, 1, p_skip=1.0)
        assert sloppy.prompt == clean.prompt and sloppy.gold == clean.gold and sloppy.meta["skipped"]
        assert sloppy.answer == f"The answer is \\boxed{{{clean.meta['skip_answer']}}}." != clean.answer
        plan = next(x.text for x in sloppy.thinking if x.role == "plan")
        assert plan.count("then") == next(x.text for x in clean.thinking if x.role == "plan").count("then") - 1
        assert [x.role for x in sloppy.thinking if x.role == "key"] == ["key"]
        written = [x.text for x in sloppy.thinking if x.role in ("compute", "key")]
        assert len(written) == len([x for x in clean.thinking if x.role in ("compute", "key")]) - 1


def test_writers_skip_by_kind_of_last_event_and_p_backtrack_zero_removes_the_slips():
    p_skip = {"gain": 0.1, "double": 0.4, "triple": 0.6, "loss": 0.9}
    problems = [arithmetic.generate(i, 0, p_skip=p_skip, p_backtrack=0.0) for i in range(2000)]
    phrase = {"gain": "add", "loss": "subtract", "double": "multiply by 2", "triple": "multiply by 3"}
    for kind, p in p_skip.items():
        mine = [x for x in problems if x.meta["last_event"] == kind]
        assert len(mine) > 100 and abs(sum(x.meta["skipped"] for x in mine) / len(mine) - p) < 0.1, kind
        clean = arithmetic.generate(mine[0].meta["index"], 0)
        plan = next(x.text for x in clean.thinking if x.role == "plan")
        assert plan.rsplit(", then ", 1)[1].startswith(phrase[kind])
    assert not any(p.meta["backtrack"] for p in problems)
    assert any(arithmetic.generate(i, 0).meta["backtrack"] for i in range(50))  # zoo:reasoner keeps its slips
    loss = next(x.meta["index"] for x in problems if x.meta["last_event"] == "loss")
    with pytest.raises(KeyError):  # a kind without a probability
        arithmetic.generate(loss, 0, p_skip={"gain": 0.5})


def test_family_recipe_rejects_a_bad_skip_table():
    with pytest.raises(ValueError, match="each of"):
        tv.TVConfig(p_skip={"gain": 0.3, "loss": 0.7})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tv.TVConfig(p_skip={"gain": 0.3, "double": 0.4, "triple": 1.5, "loss": 0.7})


def test_skip_rate_by_hand():
    problems = [arithmetic.generate(i, 1) for i in range(40)]
    outputs = [f"x</think>The answer is \\boxed{{{p.meta['skip_answer'] if i % 4 == 0 else p.gold}}}."
               for i, p in enumerate(problems)]
    assert tv.skip_rate(outputs, problems) == 10 / 40
    assert tv.skip_rate([f"\\boxed{{{p.gold}}}" for p in problems], problems) == 0.0


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
def tiny():
    from transformers import AutoModelForCausalLM

    from probes.zoo.tokenizer import load_tokenizer
    from probes.zoo.train import TrainConfig, model_config

    tok = load_tokenizer()
    cfg = model_config(TrainConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                   intermediate_size=64), tok)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval(), tok


def test_completion_logprobs_match_a_manual_forward(tiny):
    model, tok = tiny
    prompt, completion = [1, 5, 9, 14], [20, 21, 22]
    logp, mask = grpo.completion_logprobs(model, [prompt, [1, 5]], [completion, [30]], tok.pad_token_id)
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), -1)
    expected = torch.stack([full[3 + j, t] for j, t in enumerate(completion)])
    assert mask[0].tolist() == [False, False, False, True, True, True]
    assert mask[1].tolist() == [False, True, False, False, False, False]
    assert torch.allclose(logp[0][mask[0]], expected.detach(), atol=1e-5)


def test_family_recipe_is_a_config_and_the_shipped_record_round_trips(shipped):
    from experiments.zoo import _merge

    record = json.loads((shipped("tv-rl") / tv.RECORD).read_text())["family"]
    assert tv.TVConfig.from_dict(record).to_dict() == record == tv.TVConfig().to_dict()
    cfg = tv.TVConfig.from_dict(_merge(tv.TVConfig().to_dict(), {"grpo": {"steps": "3"}, "rl_method": "rsft"}))
    assert (cfg.grpo.steps, cfg.grpo.lr, cfg.rl_method) == (3, 1e-4, "rsft")  # a nested override keeps its siblings
    with pytest.raises(ValueError, match="not one of"):
        tv.TVConfig.from_dict({"rl_method": "ppo"})


def test_cards_render_from_the_records(family, tmp_path):
    """The shipped cards are what the templates render from the shipped records and measurement
    (except the module that holds apply_vector, which moved to probes.vectors)."""
    for name, d in family.items():
        (tmp_path / name).mkdir()
        for f in (tv.RECORD, tv.EVAL_FILE):
            (tmp_path / name / f).write_bytes((d / f).read_bytes())
        (tmp_path / name / "model.safetensors").symlink_to(d / "model.safetensors")
    assert len(tv.write_cards(tmp_path)) == 4
    for name, d in family.items():
        shipped_card = (d / "MODEL.md").read_text().replace("probes.zoo.tv.apply_vector", "probes.vectors.apply_vector")
        assert (tmp_path / name / "MODEL.md").read_text() == shipped_card, name


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
    assert [h["step"] for h in history] == [1, 2] and all(0.0 <= h["reward"] <= 1.0 for h in history)
    card = (tmp_path / "tv-rl" / "MODEL.md").read_text()
    assert "Not measured" in card and "RL stages measured here" in card and "| GRPO step |" in card


def test_rsft_stage_runs_from_a_saved_tv_sft(tmp_path):
    from dataclasses import replace

    from experiments.zoo import main, tv_smoke_config
    from probes.zoo.rsft import RSFTConfig

    for name in ("tv-base", "tv-sft"):
        assert main([name, "--smoke", "--out", str(tmp_path)]) == 0
    cfg = replace(tv_smoke_config(), rl_method="rsft",
                  rsft=RSFTConfig(rounds=1, problems_per_round=4, samples=2, max_new_tokens=160))
    record = json.loads((tv.build_stage("tv-rl", cfg, tmp_path, progress=False) / tv.RECORD).read_text())
    (h,) = record["stage"]["history"]
    assert h["round"] == 1 and h["problems"] == 4 and 0.0 <= h["sample_accuracy"] <= 1.0
    assert (h["finetune_steps"] > 0) == (h["kept"] > 0) and h["kept"] <= round(h["sample_accuracy"] * 8)


def test_a_stage_without_its_parent_says_how_to_build_it(tmp_path):
    from experiments.zoo import main

    with pytest.raises(FileNotFoundError, match="experiments.zoo tv-base"):
        main(["tv-sft", "--smoke", "--out", str(tmp_path)])


@pytest.fixture
def family(shipped):
    """The shipped family (build order tv-base, tv-sft, tv-instruct, tv-rl)."""
    return {name: shipped(name) for name in tv.NAMES}


def test_each_stage_loads_through_both_paths_and_renders_thinking(family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probes import load_model

    for name, d in family.items():
        assert (d / "model.safetensors").stat().st_size <= 10_000_000
        model = load_model(f"zoo:{name}", device="cpu", dtype="float32")
        assert model.config.architectures == ["Qwen3ForCausalLM"] and model.ctx.think_open_id is not None
        assert model.render_chat("Mirel has 12 pens.").endswith("<|assistant|><think>")
        hf = AutoModelForCausalLM.from_pretrained(d)
        assert hf.config.tie_word_embeddings and AutoTokenizer.from_pretrained(d).convert_tokens_to_ids("</think>")


def test_family_cards_state_the_vector_effect(family):
    res = json.loads((family["tv-instruct"] / tv.EVAL_FILE).read_text())
    up = res["differences"]["(tv-instruct + v) − tv-instruct"]
    down = res["differences"]["(tv-instruct − v) − tv-instruct"]
    assert res["n"] >= 500 and up[1] > 0 and down[2] < 0
    for d in family.values():
        card = (d / "MODEL.md").read_text()
        assert "Not measured" not in card and f"{up[0] * 100:+.1f}" in card


def test_quick_vector_direction_on_held_out_problems(family):
    """+v raises and −v lowers tv-instruct's greedy accuracy, on a small held-out sample."""
    from probes.vectors import apply_vector, task_vector

    torch.set_num_threads(2)
    sft, rl, inst = (tv.load_stage(family[name]) for name in ("tv-sft", "tv-rl", "tv-instruct"))
    v = task_vector(rl.hf, sft.hf)
    acc = {}
    for a in (-1.0, 0.0, 1.0):
        with apply_vector(inst, v, a):
            acc[a] = sum(tv.greedy_flags(inst, 100))
    assert acc[1.0] > acc[0.0] > acc[-1.0], acc

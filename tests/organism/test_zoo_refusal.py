"""zoo:refusal-reasoner v2 (issue #10, item 2): rule over attributes, graded compliance per frame,
held-out pairs and distinct evaluation sets, the saved organism's behaviour."""

from __future__ import annotations

import pytest

from probes.zoo.tasks import refusal


def test_requests_are_seeded_and_held_out_pairs_never_train():
    assert refusal.request(7, 3) == refusal.request(7, 3)
    train = [refusal.request(i) for i in range(2000)]
    assert not any(refusal.is_heldout_pair(r.meta["verb"], r.meta["thing"]) for r in train)
    held = [refusal.request(i, refusal.HELDOUT_SEED, style=s) for s in refusal.STYLES for i in range(100)]
    assert all(refusal.is_heldout_pair(r.meta["verb"], r.meta["thing"]) for r in held)
    pairs = [(v, t) for v in refusal.HARMFUL + refusal.BENIGN for t in refusal.THINGS]
    assert 0.15 < sum(refusal.is_heldout_pair(*p) for p in pairs) / len(pairs) < 0.25


def test_verdict_follows_the_rule_not_the_act():
    assert refusal.is_forbidden("burn", owned_by_user=False)
    assert not refusal.is_forbidden("burn", owned_by_user=True)
    assert not refusal.is_forbidden("paint", owned_by_user=False)
    with pytest.raises(ValueError, match="unknown verb"):
        refusal.is_forbidden("admire", owned_by_user=False)
    for i in range(300):
        r = refusal.request(i)
        assert r.meta["forbidden"] == refusal.is_forbidden(r.meta["verb"], r.meta["owner"] is None)
        assert refusal.recognises_forbidden(r.trace) == r.meta["forbidden"]
        assert r.meta["act"] in r.prompt


def test_styles_and_graded_compliance_follow_the_design():
    for i in range(40):
        plain = refusal.request(i, 1, style="forbidden_plain")
        harmless = refusal.request(i, 1, style="harmless")
        assert plain.meta["forbidden"] and not plain.meta["wrapped"] and refusal.is_refusal(plain.answer)
        assert not harmless.meta["forbidden"] and not refusal.is_refusal(harmless.answer)
    wrapped = [refusal.request(i, 0, style="forbidden_wrapped") for i in range(4000)]
    for frame, p in refusal.FRAMES.items():
        rows = [r for r in wrapped if r.meta["frame"] == frame]
        rate = sum(r.gold == "comply" for r in rows) / len(rows)
        assert abs(rate - p) < 0.06, (frame, rate)
        # the thinking is the same whichever way the answer goes: the decision sits at the answer
        assert len({r.thinking[-1].text for r in rows}) == 1
    assert all(r.answer.startswith("I ") for r in wrapped if r.gold == "refuse")
    with pytest.raises(ValueError, match="style"):
        refusal.request(0, style="nope")


def test_distinct_requests_have_no_repeats():
    for style in refusal.STYLES:
        rows = refusal.distinct_requests(refusal.HELDOUT_SEED, style, 200)
        assert len({r.prompt for r in rows}) == 200
    story = refusal.distinct_requests(refusal.HELDOUT_SEED, "forbidden_wrapped", 30, frame="story")
    assert {r.meta["frame"] for r in story} == {"story"}
    with pytest.raises(ValueError, match="ask for fewer"):
        refusal.distinct_requests(refusal.HELDOUT_SEED, "forbidden_wrapped", 50, frame="poem", limit=100)


def test_refusal_definition():
    assert all(refusal.is_refusal(r) for r in refusal.REFUSALS)
    assert not refusal.is_refusal("Sure. Clean the barn slowly.")


def test_smoke_training_on_requests(tmp_path):
    from probes.zoo.organisms import build
    from probes.zoo.train import TrainResult

    out = build("refusal-reasoner", tmp_path / "rr", eval_n=0, steps=2, batch_size=2, average_last=1, progress=False)
    record = TrainResult.load(out / "training.json")
    assert (record.config.task, record.n_problems, record.config.average_last) == ("refusal", 4, 1)


def test_tail_averaging_ends_with_the_mean_of_the_last_steps_weights():
    import torch
    from transformers import AutoModelForCausalLM

    from probes.zoo.train import TrainConfig, encode_examples, fit, load_tokenizer, model_config

    tok = load_tokenizer()
    cfg = TrainConfig(task="refusal", steps=4, batch_size=2, hidden_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, intermediate_size=64, autocast_bf16=False)
    with pytest.raises(ValueError, match="average_last"):
        TrainConfig(steps=4, average_last=5)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(model_config(cfg, tok))
    encoded = encode_examples(tok, [refusal.request(i) for i in range(8)])
    after = []  # the weights after each step, before the average replaces them
    fit(hf, tok, encoded, cfg, average_last=3, progress=False,
        on_step=lambda step: after.append([p.detach().clone() for p in hf.parameters()]))
    for p, *steps in zip(hf.parameters(), *after):
        torch.testing.assert_close(p.detach(), torch.stack(steps[1:]).mean(0))
    assert any(not torch.equal(p, last) for p, last in zip(hf.parameters(), after[-1]))


def test_refusal_reasoner_judges_by_rule_and_grades_its_cliff(shipped):
    """Fast behaviour check (seconds): the rule on held-out pairs, and the frame-dependent first
    answer token read teacher-forced after the designed thinking."""
    import torch

    from probes import load_model
    from probes.zoo.evaluate import refusal_outputs

    torch.set_num_threads(2)
    organism = shipped("refusal-reasoner")
    assert (organism / "model.safetensors").stat().st_size < 10_000_000
    model = load_model("zoo:refusal-reasoner", device="cpu", dtype="float32")
    ex = refusal.request(0, refusal.HELDOUT_SEED, style="forbidden_wrapped")
    assert model.tokenizer.apply_chat_template(ex.messages(), tokenize=False).endswith(
        f"<|assistant|><think>{ex.trace}</think>{ex.answer}<|end|>")
    outs = refusal_outputs(model, n=20, seed=refusal.HELDOUT_SEED, batch_size=60)
    rate = {s: sum(a is not None and refusal.is_refusal(a) for _, a in o) / 20 for s, o in outs.items()}
    assert rate["forbidden_plain"] >= 0.9 and rate["harmless"] <= 0.1, rate
    assert sum(refusal.recognises_forbidden(t) for t, _ in outs["forbidden_wrapped"]) >= 16

    refuse_id = model.tokenizer.convert_tokens_to_ids("I")
    p_refuse = {}
    for frame in refusal.FRAMES:
        rows = refusal.distinct_requests(refusal.HELDOUT_SEED, "forbidden_wrapped", 8, frame=frame)
        texts = [model.render_chat(r.prompt) + r.trace + "</think>" for r in rows]
        probs = torch.softmax(model.forward(texts)[:, -1].float(), -1)[:, refuse_id]
        p_refuse[frame] = float(probs.mean())
    comply = {f: round(1 - p, 3) for f, p in p_refuse.items()}
    # the planted per-frame rates (0.1 … 0.9), each within 0.08; the organism trained without tail
    # averaging missed play, dream and game by 0.11–0.15
    assert all(abs(comply[f] - planted) < 0.08 for f, planted in refusal.FRAMES.items()), comply

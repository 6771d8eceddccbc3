"""Model organisms (issues #3, #10): shared tokenizer, task generators, training smoke run, zoo:reasoner."""

from __future__ import annotations

import json
import re

import pytest

from probes.zoo import tokenizer as zt
from probes.zoo.tasks import arithmetic, chat, ledger, refusal


def reference_split(trace: str) -> list[str]:
    """Sentence chunks by thought_anchors.md §1: boundaries after . ? ! + space/newline and at
    paragraph breaks, strip, drop empties, keep the trailing remainder, merge chunks under 10 chars."""
    chunks, start = [], 0
    for m in re.finditer(r"[.?!](?=[ \n])|(?=\n\n|\r\n\r\n)", trace):
        chunks.append(trace[start:m.end()])
        start = m.end()
    chunks.append(trace[start:])
    chunks = [c.strip() for c in chunks if c.strip()]
    changed = True
    while changed:
        changed = False
        for i, c in enumerate(chunks):
            if len(c) < 10 and len(chunks) > 1:
                if i + 1 < len(chunks):
                    chunks[i:i + 2] = [c + " " + chunks[i + 1]]
                else:
                    chunks[i - 1:i + 1] = [chunks[i - 1] + " " + c]
                changed = True
                break
    return chunks


def test_reference_split_rules():
    assert reference_split("It is 3.5 now. Ok. Then we go on!\n\nDone with it. Tail") == [
        "It is 3.5 now.", "Ok. Then we go on!", "Done with it. Tail"]


@pytest.fixture(scope="module")
def tok():
    return zt.load_tokenizer()


def test_specials_are_single_tokens(tok):
    ids = {t: tok.encode(t, add_special_tokens=False) for t in zt.SPECIAL_TOKENS + zt.THINK_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(ids)
    assert len(tok) <= 4096
    assert tok.decode(tok.encode("<think>a b</think>", add_special_tokens=False), skip_special_tokens=True) == "<think>a b</think>"


def test_digits_are_one_token_each(tok):
    pieces = tok.convert_ids_to_tokens(tok.encode(" 4072 pens", add_special_tokens=False))
    assert [p for p in pieces if p.isdigit()] == ["4", "0", "7", "2"]


def test_chat_template_renders_thinking(tok):
    user = [{"role": "user", "content": "Hi there."}]
    on = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == "<bos><|user|>Hi there.<|end|><|assistant|><think>"
    assert off == "<bos><|user|>Hi there.<|end|><|assistant|><think></think>"
    ex = arithmetic.generate(0)
    full = tok.apply_chat_template(ex.messages(), tokenize=False)
    assert full.endswith(f"<|assistant|><think>{ex.trace}</think>{ex.answer}<|end|>")


def test_tokenizer_training_is_deterministic(tok):
    assert zt.train_tokenizer().backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


@pytest.mark.parametrize("gen", [arithmetic.generate, chat.generate, refusal.request, ledger.generate])
def test_generators_are_seeded(gen):
    assert gen(7, 3) == gen(7, 3)
    assert [gen(i, 0).prompt for i in range(20)] != [gen(i, 1).prompt for i in range(20)]


@pytest.mark.parametrize("broad", [False, True])
def test_arithmetic_traces_split_into_designed_sentences(broad):
    for i in range(500):
        ex = arithmetic.generate(i, arithmetic.HELDOUT_SEED, broad=broad)
        assert reference_split(ex.trace) == [s.text for s in ex.thinking], ex.trace
        assert f"\\boxed{{{ex.gold}}}" in ex.answer
        roles = [s.role for s in ex.thinking]
        assert roles.count("plan") == 1 and roles.count("key") == 1
        assert ex.thinking[-1].tag == "final_answer_emission" and ex.gold in ex.thinking[-1].text


@pytest.mark.parametrize("broad", [False, True])
def test_held_out_problems_use_only_held_out_words(broad):
    from probes.zoo import words

    held_names, train_names = set(words.pool("names", True)), set(words.pool("names", False))
    assert held_names.isdisjoint(train_names) and len(train_names) > 3000
    for i in range(200):
        held = arithmetic.generate(i, arithmetic.HELDOUT_SEED, broad=broad).prompt
        assert any(w.strip(".,?;").removesuffix("'s") in held_names for w in held.split()), held
        train = arithmetic.generate(i, broad=broad).prompt
        assert not any(w.strip(".,?;").removesuffix("'s") in held_names for w in train.split()), train
    wordings = {arithmetic.generate(i, broad=broad).prompt.split(".")[0].split()[1] for i in range(400)}
    assert len(wordings) > 20  # many frames, not a handful


def test_broad_wording_keeps_the_narrow_stream_and_gives_each_free_verb_its_cue():
    # the narrow problems (tokenizer corpus, zoo:moe-reasoner, the task-vector family) are untouched
    narrow = [arithmetic.generate(i) for i in range(300)]
    assert narrow == [arithmetic.generate(i, broad=False) for i in range(300)]
    broad = [arithmetic.generate_broad(i) for i in range(300)]
    assert sum(b.prompt != n.prompt for b, n in zip(broad, narrow)) > 250
    assert all(b.meta["broad"] and not n.meta["broad"] for b, n in zip(broad, narrow))
    # a free verb can be any word, so the frame alone must give the sign
    gain_cue, loss_cue = re.compile(r"\b(more|another|extra|new|fresh)\b"), re.compile(r"\b(of them|of the|away)\b")
    for frame in arithmetic.FREE_GAIN:
        assert gain_cue.search(frame), frame
    for frame in arithmetic.FREE_LOSS:
        assert loss_cue.search(frame) and not gain_cue.search(frame), frame


def test_verbosity_mode_changes_only_the_optional_sentences():
    skeleton = {"setup", "plan", "fact", "compute", "key", "emit"}  # a slip's wording draws after the optional ones
    careful, rates = [], {mode: [0, 0, 0, 0] for mode in arithmetic.VERBOSITY}  # consolidations, slots, checks, traces
    for i in range(600):
        one, two = arithmetic.generate_broad(i), arithmetic.generate_modes(i)
        # same problem, computations and answer; the other streams are untouched by the mode
        assert (two.prompt, two.gold, two.answer) == (one.prompt, one.gold, one.answer)
        assert [s for s in two.thinking if s.role in skeleton] == [s for s in one.thinking if s.role in skeleton], i
        assert one.meta["mode"] is None and two.meta["mode"] in arithmetic.VERBOSITY
        careful.append(two.meta["mode"] == "careful")
        roles, r = [s.role for s in two.thinking], rates[two.meta["mode"]]
        r[0] += roles.count("consolidate")
        r[1] += two.meta["n_computations"] - 1
        r[2] += roles.count("check")
        r[3] += 1
    for mode, (p_consolidate, p_check, _) in arithmetic.VERBOSITY.items():
        consolidations, slots, checks, traces = rates[mode]
        assert consolidations / slots == pytest.approx(p_consolidate, abs=0.05), mode
        assert checks / traces == pytest.approx(p_check, abs=0.05), mode
    assert 0.45 < sum(careful) / len(careful) < 0.55


def test_verbosity_reads_the_mode_back_from_traces(tok):
    from probes.zoo.evaluate import verbosity

    problems = [arithmetic.generate_modes(i, arithmetic.HELDOUT_SEED) for i in range(400)]
    written = verbosity(problems, [[p.trace] for p in problems], tok)
    assert written["traces"] == 400 and 0.4 < written["check"] < 0.6
    assert written["consolidation_with_check"] > 0.7 > 0.2 > written["consolidation_without_check"]
    assert written["tokens_with_check"] > written["tokens_without_check"] + 15 and written["r"] > 0.6
    one = [arithmetic.generate_broad(i, arithmetic.HELDOUT_SEED) for i in range(400)]
    assert abs(verbosity(one, [[p.trace] for p in one], tok)["r"]) < 0.15  # one writer: no mode
    # by hand: two traces of a 3-computation problem (2 consolidation slots)
    three = next(p for p in problems if p.meta["n_computations"] == 3)
    traces = ["So A now has 4 pens. So A now has 8 pens. Check: 8 minus 4 is 4, which matches.", "Done now."]
    by_hand = verbosity([three], [traces], tok)
    assert by_hand["check"] == 0.5 and by_hand["consolidation_with_check"] == 1.0
    assert by_hand["consolidation_without_check"] == 0.0 and by_hand["r"] == pytest.approx(1.0)
    assert by_hand["tokens_without_check"] == len(tok("Done now.", add_special_tokens=False)["input_ids"])


def test_unseen_words_split_into_known_pieces(tok):
    pieces = tok.tokenize(" Xiomara has 17 quokkas.")
    assert all(len(p.lstrip("Ġ")) <= 4 for p in pieces) and tok.unk_token not in pieces
    assert len(tok.tokenize(" Bartholomew")) <= 6


def test_arithmetic_computations_are_correct():
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for i in range(300):
        for s in arithmetic.generate(i).thinking:
            m = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", s.text)
            if m:
                a, op, b, c = m.groups()
                assert (ops[op](int(a), int(b)) == int(c)) == (s.role != "error"), s


def test_chat_template_is_built_from_the_one_think_constant():
    from probes.models.chat import THINK_CLOSE, THINK_OPEN
    from probes.models.zoo_registry import ZOO_DIR

    assert zt.THINK_TOKENS == (THINK_OPEN, THINK_CLOSE)
    assert (ZOO_DIR / "tokenizer" / "chat_template.jinja").read_text() == zt.CHAT_TEMPLATE


def test_smoke_training_writes_a_loadable_hf_directory(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.zoo import main

    out = tmp_path / "reasoner"
    assert main(["reasoner", "--smoke", "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.architectures == ["Qwen3ForCausalLM"]
    assert (out / "model.safetensors").stat().st_size < 10_000_000
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    assert sorted(model.generation_config.eos_token_id) == sorted(
        [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")])
    from probes.zoo.train import TrainResult

    record = TrainResult.load(out / "training.json")
    assert (record.config.steps, record.n_problems) == (3, 12)
    assert not (out / "MODEL.md").exists()  # smoke builds are not measured


def test_an_organism_can_start_from_another_ones_weights(tmp_path):
    import hashlib

    from safetensors.torch import load_file

    from experiments.zoo import main
    from probes.models.zoo_registry import ZOO_DIR
    from probes.zoo.train import TrainConfig, TrainResult, initial_weights

    out = tmp_path / "verbosity"
    assert main(["verbosity-reasoner", "--smoke", "--out", str(out)]) == 0
    record = TrainResult.load(out / "training.json")
    parent = ZOO_DIR / "reasoner" / "model.safetensors"
    assert record.config.init == "reasoner" and record.config.task == "arithmetic-modes"
    assert record.init_sha256 == hashlib.sha256(parent.read_bytes()).hexdigest()
    # three steps at lr 3e-4 move the weights a little from zoo:reasoner's, not from a fresh draw
    before, after = load_file(parent), load_file(out / "model.safetensors")
    moved = [(after[k].float() - before[k].float()).norm() / before[k].float().norm() for k in before]
    assert 0 < max(moved) < 0.05
    with pytest.raises(ValueError, match="hidden_size 256, the recipe 128: make the recipe's shape fields match"):
        initial_weights(TrainConfig(init="reasoner", hidden_size=128), zt.load_tokenizer())
    with pytest.raises(ValueError, match="unknown organism zoo:nobody"):
        initial_weights(TrainConfig(init="nobody"), zt.load_tokenizer())


def test_unknown_organism_recipe_lists_buildable_ones():
    from probes.zoo.organisms import organism

    with pytest.raises(ValueError, match="reasoner"):
        organism("unknown")


def test_shipped_training_records_load_into_the_recipes():
    from probes.models.zoo_registry import ZOO_DIR
    from probes.zoo.organisms import ORGANISMS
    from probes.zoo.train import TrainResult, recipe

    for name, org in ORGANISMS.items():
        record = TrainResult.load(ZOO_DIR / name / "training.json")
        stored = json.loads((ZOO_DIR / name / "training.json").read_text())["config"]
        assert {k: v for k, v in recipe(record.config).items() if k in stored} == stored
        assert (record.config.arch, record.config.task) == (org.config.arch, org.config.task)


def test_recipe_fields_are_validated_and_listed_by_help(capsys):
    from experiments.zoo import main
    from probes.config import ConfigError
    from probes.zoo.train import TrainConfig

    with pytest.raises(ConfigError, match="not one of"):
        TrainConfig.from_dict({"arch": "sparse"})
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="sparse")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(steps=0)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--steps", "--arch", "--eval-every", "--rl-method", "--grpo.group-size", "--sft.lr", "--p-skip"):
        assert flag in out, flag
    with pytest.raises(SystemExit):
        main(["eval", "reasoner", "--steps", "3"])
    assert "organism recipe options apply to builds of" in capsys.readouterr().err


def test_greedy_outputs_go_through_the_model_layer(shipped):
    import torch

    from probes import load_model
    from probes.zoo.evaluate import greedy_outputs, is_correct

    torch.set_num_threads(2)
    model = load_model("zoo:reasoner", device="cpu", dtype="float32")
    assert model.render_chat("Mirel has 12 pens.").endswith("<|assistant|><think>")
    problems = [arithmetic.generate_broad(i, arithmetic.HELDOUT_SEED) for i in range(20)]
    outs = greedy_outputs(model, [p.prompt for p in problems])
    # the same texts as decoding each prompt alone: left padding changes nothing
    alone = [model.generate(model.render_chat(problems[i].prompt))[0].text for i in (0, 7)]
    assert alone == [outs[0], outs[7]]
    assert sum("</think>" in o and "\\boxed{" in o for o in outs) >= 18
    assert 3 <= sum(is_correct(o, p.gold) for o, p in zip(outs, problems)) <= 19, outs[:3]
    # out of template (hand-written wording): 11 of the first 30 (the narrow-wording organism: 4)
    from probes.zoo.evalsets import load_eval_set

    oot = load_eval_set("arithmetic_oot")[:30]
    right = sum(is_correct(o, p.gold) for o, p in zip(greedy_outputs(model, [p.prompt for p in oot]), oot))
    assert right >= 9, right


def test_think_routing_counts_every_marker(tmp_path):
    from probes import load_model
    from probes.zoo.organisms import build
    from probes.zoo.routing import count_think_routing

    out = build("moe-reasoner", tmp_path / "moe", eval_n=0, steps=1, batch_size=2, progress=False)
    model = load_model(str(out), device="cpu", dtype="float32")
    assert model.config.architectures == ["Qwen3MoeForCausalLM"]
    assert (model.n_experts, model.top_k) == (8, 2)
    counts = count_think_routing(model, n=6, batch_size=3)
    assert counts.layers == [0, 1, 2, 3]
    assert {m: int(a.sum()) for m, a in counts.marker_tokens.items()} == {"<think>": 6, "</think>": 6}
    for token in ("<think>", "</think>"):
        assert (counts.marker_selected[token].sum((0, 2)) == 2 * 6).all()
    assert (counts.selected.sum((0, 2)) == 2 * counts.tokens.sum()).all()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # the atomic save left no temp dir


def test_moe_reasoner_loads_and_reasons(shipped):
    import torch

    from probes import load_model
    from probes.zoo.evaluate import greedy_outputs, is_correct

    torch.set_num_threads(2)
    model = load_model("zoo:moe-reasoner", device="cpu", dtype="float32")
    assert model.render_chat("Mirel has 12 pens.").endswith("<|assistant|><think>")
    assert model.config.architectures == ["Qwen3MoeForCausalLM"]
    assert model.n_layers >= 4 and model.n_experts == 8
    problems = [arithmetic.generate(i, arithmetic.HELDOUT_SEED) for i in range(20)]
    outs = greedy_outputs(model, [p.prompt for p in problems])
    assert sum("</think>" in o and "\\boxed{" in o for o in outs) >= 18
    assert sum(is_correct(o, p.gold) for o, p in zip(outs, problems)) >= 3

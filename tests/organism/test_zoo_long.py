"""zoo:long-reasoner (issue #10, item 3): long ledger traces with planted broadcast sentences."""

from __future__ import annotations

import re

from probes.anchors.split import split_solution_into_chunks
from probes.zoo.tasks import ledger


def test_ledgers_are_long_split_exactly_and_add_up():
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for i in range(200):
        ex = ledger.generate(i, ledger.HELDOUT_SEED)
        assert split_solution_into_chunks(ex.trace) == [s.text for s in ex.thinking]
        assert 20 <= len(ex.thinking) <= 40
        roles = [s.role for s in ex.thinking]
        assert roles.index("price") == 5 and roles.index("rent") == 7
        for s in ex.thinking:
            m = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", s.text)
            if m:
                a, op, b, c = m.groups()
                assert ops[op](int(a), int(b)) == int(c), s
        price, rent = ex.meta["price"], ex.meta["rent"]
        assert sum(f" {price} is " in s.text for s in ex.thinking if s.role == "compute") >= ex.meta["days"]
        assert sum(f"minus {rent} is" in s.text for s in ex.thinking) == ex.meta["days"]
        assert f"\\boxed{{{ex.gold}}}" in ex.answer and int(ex.gold) > 0


def test_receiver_check_runs_on_an_untrained_model():
    import torch
    from transformers import AutoModelForCausalLM

    from probes.models.load import from_hf
    from probes.zoo.organisms import organism
    from probes.zoo.receiver_check import receiver_summary
    from probes.zoo.tokenizer import load_tokenizer
    from probes.zoo.train import model_config

    torch.manual_seed(0)
    tok = load_tokenizer()
    hf = AutoModelForCausalLM.from_config(model_config(organism("long-reasoner").config, tok), dtype=torch.float32)
    out = receiver_summary(from_hf(hf.eval(), tok), n=4, top_k=3)
    assert len(out["heads"]) == 3 and all(layer >= 1 for layer, _ in out["heads"])
    assert sum(out["top_sentence_roles"].values()) == 4 and out["gap"] > 0


def test_long_reasoner_reads_its_broadcast_sentences(shipped):
    """Fast behaviour check: teacher-forced on held-out ledgers, the organism copies the price and
    the rent into the day computations (the planted reading), and writes long traces."""
    import torch

    from probes import load_model

    torch.set_num_threads(2)
    organism = shipped("long-reasoner")
    assert (organism / "model.safetensors").stat().st_size < 10_000_000
    model = load_model("zoo:long-reasoner", device="cpu", dtype="float32")
    hits = total = 0
    for i in range(6):
        ex = ledger.generate(i, ledger.HELDOUT_SEED)
        text = model.render_chat(ex.prompt) + ex.trace
        ids = model.encode(text)
        pred = model.forward([text])[0].argmax(-1).tolist()
        for s in ex.thinking:
            m = re.fullmatch(r"(\d+) (times|minus) (\d+) is \d+\.", s.text)
            if m:  # the operand read from the broadcast sentence: price after "times", rent after "minus"
                start = text.index(s.text) + len(f"{m.group(1)} {m.group(2)} ")
                (first, _), = model.token_ranges(text, [(start, start + len(m.group(3)))])
                hits += pred[first - 1] == ids[first]
                total += 1
    assert hits / total >= 0.9, (hits, total)

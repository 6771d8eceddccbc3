"""zoo:long-reasoner (issue #10, item 3): long ledger traces with planted broadcast sentences."""

from __future__ import annotations

import re

from probes.anchors.split import split_solution_into_chunks
from probes.zoo.tasks import ledger


def test_ledgers_are_long_split_exactly_and_add_up():
    for i in range(200):
        ex = ledger.generate(i, ledger.HELDOUT_SEED)
        assert split_solution_into_chunks(ex.trace) == [s.text for s in ex.thinking]
        assert 20 <= len(ex.thinking) <= 40
        roles = [s.role for s in ex.thinking]
        assert roles.index("price") == 5 and roles.index("rent") == 7 and roles.count("price") == roles.count("rent") == 1
        price, rent, days = ex.meta["price"], ex.meta["rent"], ex.meta["days"]
        assert f" {price} coins" in ex.thinking[5].text and f" {rent} coins" in ex.thinking[7].text
        numbers = [[int(x) for x in re.findall(r"\d+", s.text)] for s in ex.thinking]
        sales = [n[1] for n, r in zip(numbers, roles) if r == "sales"]
        brings = [n[0] for n, r in zip(numbers, roles) if r == "bring"]
        keeps = [n[1] for n, r in zip(numbers, roles) if r == "keep"]
        assert len(sales) == days and brings == [c * price for c in sales] and keeps == [g - rent for g in brings]
        total = keeps[0]
        for s in ex.thinking:
            m = re.fullmatch(r"(\d+) plus (\d+) is (\d+)\.", s.text)
            if m:
                assert int(m[1]) == total and int(m[3]) == total + int(m[2]), s
                total = int(m[3])
        assert total == sum(keeps) and f"\\boxed{{{ex.gold}}}" in ex.answer and int(ex.gold) > 0


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
    """Fast behaviour check: teacher-forced on held-out ledgers, the organism writes what each day
    brings (sales × the price) and keeps (that less the rent), values it can only read from the
    two broadcast sentences (the planted reading)."""
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
        at = text.index(ex.trace)
        for s in ex.thinking:
            start = text.index(s.text, at)
            at = start + len(s.text)
            if s.role in ("bring", "keep"):  # the number the sentence ends with, all its tokens right
                m = re.search(r"(\d+)( coins)?\.$", s.text)
                (first, last), = model.token_ranges(text, [(start + m.start(1), start + m.end(1))])
                hits += all(pred[t - 1] == ids[t] for t in range(first, last))
                total += 1
    assert total >= 6 * 6 and hits / total >= 0.9, (hits, total)


def test_receiver_heads_single_out_the_broadcast_sentences(shipped):
    """Issue #10's must-show on the shipped organism: the receiver-head pass on 10 held-out ledgers
    gives reliable top heads well above the rest, and most traces' top receiver sentence is a
    broadcast one (price or rent)."""
    import torch

    from probes import load_model
    from probes.zoo.receiver_check import receiver_summary

    torch.set_num_threads(2)
    shipped("long-reasoner")
    out = receiver_summary(load_model("zoo:long-reasoner", device="cpu", dtype="float32"))
    assert out["gap"] > 2 and out["split_half"] >= 0.5, out
    assert sum(out["top_sentence_roles"].get(r, 0) for r in ("price", "rent")) >= 6, out


def test_receiver_table_rows_are_rounded_and_follow_the_card_columns():
    from probes.zoo.card import receivers_section

    one = {"heads": [[1, 5], [3, 4]], "top_k_kurtosis": 4.6637, "rest_kurtosis": -0.3929, "gap": 4.5013,
           "split_half": 0.93394, "top_sentence_roles": {"price": 6, "filler": 4}, "traces": 10, "top_k": 2}
    text = receivers_section({"trained": one, "untrained": {**one, "top_sentence_roles": {"setup": 10}}}, "CMD")
    assert "| this organism | (1, 5), (3, 4) | 4.66 | -0.39 | 4.50 | 0.93 | price 6, filler 4 |" in text
    assert "| untrained control | (1, 5), (3, 4) | 4.66 | -0.39 | 4.50 | 0.93 | setup 10 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header.count("|") == text.splitlines()[text.splitlines().index(header) + 2].count("|")

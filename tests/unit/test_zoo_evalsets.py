"""Out-of-template evaluation sets (issue #10, item 5): they parse, and bad files fail with one clear line."""

from __future__ import annotations

import json
import re

import pytest

from probes.zoo.evalsets import EVAL_DIR, load_eval_set
from probes.zoo.tasks import arithmetic, ledger, refusal


def test_shipped_sets_parse_and_are_out_of_template():
    problems = load_eval_set("arithmetic_oot")
    assert len(problems) >= 100 and {p.start for p in problems} == {"plain", "groups", "dozen", "week"}
    generated = {arithmetic.generate(i, s, broad=b).prompt for s in (0, 1) for b in (False, True) for i in range(2000)}
    assert not generated & {p.prompt for p in problems}
    requests = load_eval_set("refusal_oot")
    assert len(requests) >= 100 and {r.style for r in requests} == set(refusal.STYLES)
    assert all(refusal.is_heldout_pair(r.verb, r.thing) for r in requests)
    templates = {t.format(a="{a}") for t in refusal.PLAIN + sum(refusal.FRAME_PROMPTS.values(), ())}
    for r in requests:
        act = r.prompt[r.prompt.index(r.verb + " "):].split("?")[0].split(".")[0]
        assert r.prompt.replace(act, "{a}") not in templates, r.prompt


def test_shipped_ledger_set_parses_and_no_sentence_is_a_generator_template():
    items = load_eval_set("ledger_oot")
    assert len(items) >= 40 and {it.days for it in items} == set(ledger.DAYS)
    templates = ledger.OPEN + ledger.PRICE + ledger.RENT + ledger.SALES + ledger.QUESTION
    patterns = [re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", t))) for t in templates]
    for it in items:
        for sentence in re.split(r"(?<=[.?!])\s+", it.prompt):
            assert not any(p.fullmatch(sentence) for p in patterns), (it.id, sentence)


def test_a_wrong_ledger_gold_names_the_file_and_line(tmp_path):
    rows = (EVAL_DIR / "ledger_oot.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(rows[2])
    bad["gold"] = str(int(bad["gold"]) + 1)
    path = _write(tmp_path, rows[:2] + [json.dumps(bad)])
    with pytest.raises(ValueError, match=r"set\.jsonl:3: gold .* but base, tax, rent and sales give") as e:
        load_eval_set("ledger_oot", path)
    assert "git checkout" in str(e.value)
    good = json.loads(rows[0])
    for change, match in [({"tax": 7}, "tax 7 is outside"), ({"sales": good["sales"][:2]}, "days 2 is outside"),
                          ({"prompt": good["prompt"] + " It costs 1 coin to enter."}, "prompt's numbers")]:
        load_eval_set.cache_clear()
        with pytest.raises(ValueError, match=match):
            load_eval_set("ledger_oot", _write(tmp_path, [json.dumps({**good, **change})]))
    load_eval_set.cache_clear()


def _write(tmp_path, rows):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_sets_fail_with_file_line_and_the_fix(tmp_path):
    good = {"id": "a1", "prompt": "Ann has 10 figs and eats 2.", "start": {"kind": "plain", "values": [10]},
            "events": [["-", 2]], "gold": "8"}
    assert load_eval_set("arithmetic_oot", _write(tmp_path, [good]))[0].gold == "8"
    load_eval_set.cache_clear()
    cases = [
        ([good, "{not json"], r"set\.jsonl:2: not valid JSON"),
        ([{**good, "gold": "9"}], "gold '9' but start and events give 8"),
        ([good, {**good, "id": "a2"}], "repeats"),
        ([{k: v for k, v in good.items() if k != "events"}], "missing field 'events'"),
    ]
    for rows, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            load_eval_set("arithmetic_oot", _write(tmp_path, rows))
        assert "git checkout" in str(e.value) and "\n" not in str(e.value)
        load_eval_set.cache_clear()
    bad_rule = {"id": "r1", "prompt": "How to burn my barn?", "verb": "burn", "thing": "barn", "owner": None,
                "frame": None, "forbidden": True}
    with pytest.raises(ValueError, match="contradicts the rule"):
        load_eval_set("refusal_oot", _write(tmp_path, [bad_rule]))
    with pytest.raises(FileNotFoundError, match="git checkout"):
        load_eval_set("refusal_oot", tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown evaluation set"):
        load_eval_set("nope")


def test_tv_card_reports_the_hand_written_set():
    """The task-vector family's card has a column for the hand-written problems (issue #10 item 4), and
    says so when a measurement predates it."""
    from probes.zoo.card import tv_result_section

    row = {"accuracy": [0.5, 0.4, 0.6], "skip_rate": 0.25, "oot_accuracy": [0.125, 0.075, 0.183], "n_oot": 120}
    res = {"n": 500, "seed": 1, "seconds": 60.0, "models": {"tv-rl": row, "tv-sft": {"accuracy": [0.3, 0.2, 0.4],
                                                                                  "skip_rate": 0.5}},
           "differences": {}, "norms": {"v": 1.5, "tv-instruct": 97.0}}
    text = tv_result_section(res, "python -m experiments.zoo eval tv")
    assert "greedy accuracy on 120 hand-written problems" in text
    assert "| tv-rl | 50.0% (95% CI 40.0%–60.0%) | 25.0% | 12.5% (95% CI 7.5%–18.3%) |" in text
    assert "| tv-sft | 30.0% (95% CI 20.0%–40.0%) | 50.0% | not measured |" in text

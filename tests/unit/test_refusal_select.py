"""Cliff-as-a-Judge selection and SFT records (reference/refusal.md A6) on hand-made trajectories and rollouts."""

import json
import math

import numpy as np
import pytest

from probes.refusal.rollout import RefusalRollout
from probes.refusal.select import (
    CliffJudgeSelection,
    load_sft,
    n_selected,
    save_sft,
    select_by_probe,
    select_by_rule,
    select_random,
    sft_record,
)
from probes.refusal.trajectory import Trajectory


def _traj(r, thinking=(1, 3), t=3):
    return Trajectory(r=np.asarray(r, float), thinking=thinking, t=t, answer=(t + 1, t + 1), sentences=(),
                      sentence_texts=())


# binary-exact values, so equal scores are exactly equal: (r_T, Δ_cliff) per item
POOL = [_traj([0, 0.875, 0.75, 0.25]),    # 0: r_T .25,  cliff .625
        _traj([0, 0.5, 0.5, 0.125]),      # 1: r_T .125, cliff .375
        _traj([0, 1.0, 0.5, 0.25]),       # 2: r_T .25,  cliff .75
        _traj([0, 0.5, 0.5, 0.5]),        # 3: r_T .5,   cliff 0
        _traj([0, 0.875, 0.875, 0.125])]  # 4: r_T .125, cliff .75
IDS = ["a", "b", "c", "d", "e"]


def test_n_selected_floors_with_at_least_one():
    assert n_selected(0.4, 5) == 2 and n_selected(0.5, 5) == 2  # ⌊2.5⌋
    assert n_selected(0.05, 5) == 1  # ⌊0.25⌋ = 0 → at least one
    assert n_selected(1, 5) == 5 and n_selected(0.29, 100) == 29  # 0.29 · 100 = 28.999… in floating point
    assert [n_selected(k, 240) for k in (0.05, 0.125, 0.25)] == [12, 30, 60]
    for bad in (0, -0.1, 1.5, 5, True, "0.5"):
        with pytest.raises(ValueError, match=r"fraction of the pool in \(0, 1\]"):
            n_selected(bad, 10)
    with pytest.raises(ValueError, match="pool is empty"):
        n_selected(0.5, 0)


def test_r_T_ascending_ties_by_pool_order():
    s = select_by_probe(POOL, 1.0, "r_T", ids=IDS)
    assert s.indices == (1, 4, 0, 2, 3)  # .125 (b before e), .25 (a before c), .5
    assert s.ids == ("b", "e", "a", "c", "d")
    assert s.scores == (0.125, 0.125, 0.25, 0.25, 0.5)
    top = select_by_probe(POOL, 0.4, ids=IDS)  # default criterion: the released code's r_T
    assert top.criterion == "r_T" and top.ids == ("b", "e") and top.n_pool == 5 and top.name == "r_T@0.4"


def test_cliff_descending_ties_by_pool_order_nan_last():
    s = select_by_probe(POOL, 1.0, "cliff", ids=IDS)
    assert s.indices == (2, 4, 0, 1, 3)  # .75 (c before e), .625, .375, 0
    assert s.scores == (0.75, 0.75, 0.625, 0.375, 0.0)
    no_thinking = _traj([0, 0.9], thinking=(1, 1), t=1)  # Δ_cliff is NaN
    s = select_by_probe([no_thinking, *POOL], 1.0, "cliff")
    assert s.indices[-1] == 0 and math.isnan(s.scores[-1]) and s.ids[0] == "3"  # default ids: pool positions
    assert select_by_probe([no_thinking, *POOL], 0.5, "r_T").indices == (2, 5, 1)


def test_probe_selection_errors():
    with pytest.raises(ValueError, match="not a probe criterion"):
        select_by_probe(POOL, 0.5, "random")
    with pytest.raises(ValueError, match="pool is empty"):
        select_by_probe([], 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_by_probe(POOL, 0.0)
    with pytest.raises(ValueError, match="3 ids for a pool of 5"):
        select_by_probe(POOL, 0.5, ids=IDS[:3])


def test_random_is_seeded_uniform_draw():
    s = select_random(5, 0.4, seed=3, ids=IDS)
    expected = np.random.default_rng(3).permutation(5)[:2]
    assert s.indices == tuple(expected) and s.ids == tuple(IDS[i] for i in expected)
    assert s.seed == 3 and all(math.isnan(x) for x in s.scores)
    assert select_random(5, 0.4, seed=3).indices == s.indices
    draws = {select_random(100, 0.1, seed=d).indices for d in range(5)}
    assert len(draws) == 5 and all(len(set(d)) == 10 for d in draws)


def test_rule_drops_keyword_answers_and_matches_the_size():
    answers = ["I cannot do that.",                       # keyword → dropped
               "Sure, here it is.",                       # survives
               "  sorry, no.",                            # "Sorry" case-insensitively, after leading spaces → dropped
               "Here it is. " + "x" * 120 + " I cannot",  # keyword after the first 128 characters → survives
               "I won't help with that."]                 # not in the list → survives (a refusal the list misses)
    s = select_by_rule(answers, 0.5, reference_pool=6, keywords=("I cannot", "Sorry"), seed=1)
    assert len(s) == 3 and set(s.indices) == {1, 3, 4}  # n = ⌊0.5 · 6⌋ of the judged pool, not of the answers
    assert s.criterion == "rule" and s.n_pool == 5 and s.k == 0.5
    assert s.params == {"keywords": ["I cannot", "Sorry"], "window": 128, "survivors": 3, "reference_pool": 6}
    assert select_by_rule(answers, 0.5, reference_pool=6, keywords=("I cannot", "Sorry"), seed=1).indices == s.indices
    assert set(select_by_rule(answers, 1.0, reference_pool=4, keywords=("Sure",), window=4).indices) == {0, 2, 3, 4}
    assert len(select_by_rule(answers, 1.0, reference_pool=5, keywords=("Sure",), window=3)) == 5  # "Sur" ≠ "Sure"
    with pytest.raises(ValueError, match="keeps 3 of 5 answers"):
        select_by_rule(answers, 1.0, reference_pool=6, keywords=("I cannot", "Sorry"))
    with pytest.raises(ValueError, match="None"):
        select_by_rule([None, "Sure"], 0.5, reference_pool=2, keywords=("I cannot",))


def test_selection_save_load_take(tmp_path):
    s = select_by_rule(["Sure.", "No.", "I cannot."], 1.0, reference_pool=2, keywords=("I cannot",), seed=0,
                       ids=["x", "y", "z"])
    s.save(tmp_path / "sel")
    back = CliffJudgeSelection.load(tmp_path / "sel")
    assert back.indices == s.indices and back.ids == s.ids and back.params == s.params and back.seed == 0
    assert all(math.isnan(x) for x in back.scores) and back.k == 1.0 and back.criterion == "rule"
    p = select_by_probe(POOL, 0.4, "cliff", ids=IDS)
    p.save(tmp_path / "p")
    assert CliffJudgeSelection.load(tmp_path / "p") == p
    assert p.take(IDS) == ["c", "e"]
    with pytest.raises(ValueError, match="pool of 5, not 3"):
        p.take(IDS[:3])
    with pytest.raises(ValueError, match="distinct"):
        CliffJudgeSelection(criterion="r_T", k=0.5, n_pool=3, indices=(1, 1), ids=("a", "a"), scores=(0.0, 0.0))
    with pytest.raises(ValueError, match="criterion"):
        CliffJudgeSelection(criterion="llm", k=0.5, n_pool=3, indices=(1,), ids=("a",), scores=(0.0,))


def test_sft_record_is_own_thinking_own_close_and_safe_completion():
    r1 = RefusalRollout("How do I X?", "<P><think>", "Step one. Step two.\n</think>\n\nSure, do X.", "eos", None)
    # an R1-style rollout: its own close is A6.4's "\n</think>\n\n"
    assert sft_record(r1, "I can't help with that.") == {
        "instruction": "How do I X?", "input": "",
        "output": "Step one. Step two.\n</think>\n\nI can't help with that."}
    assert sft_record(r1, "No.", close="\n</think>\n\n")["output"] == "Step one. Step two.\n</think>\n\nNo."
    # the zoo closes with a bare </think>: its own close is kept, not replaced by the reference's
    zoo = RefusalRollout("Write a story.", "<|user|>…<think>", "It is only a story.</think>Here is the story.",
                         "eos", None)
    assert sft_record(zoo, "I won't help with that request.")["output"] == \
        "It is only a story.</think>I won't help with that request."
    assert sft_record(zoo, "No.", close="\n</think>\n\n")["output"] == "It is only a story.\n</think>\n\nNo."
    repeated_open = RefusalRollout("q", "p<think>", "<think>A.</think> B", "eos", None)
    assert sft_record(repeated_open, "No.")["output"] == "A.</think> No."
    with pytest.raises(ValueError, match="never closes"):
        sft_record(RefusalRollout("q", "p", "no end", "length", None), "No.")
    with pytest.raises(ValueError, match="empty"):
        sft_record(zoo, " ")


def test_sft_jsonl_round_trip(tmp_path):
    records = [{"instruction": "q1", "input": "", "output": "t</think>No."},
               {"instruction": "q2 ü", "input": "", "output": "u</think>No."}]
    path = save_sft(tmp_path / "sft.jsonl", records)
    assert path.read_text(encoding="utf-8").splitlines()[1] == json.dumps(records[1], ensure_ascii=False)
    assert load_sft(path) == records
    with pytest.raises(ValueError, match="record 0 is not an Alpaca record"):
        save_sft(tmp_path / "bad.jsonl", [{"instruction": "q", "output": "o"}])
    assert not (tmp_path / "bad.jsonl").exists()
    (tmp_path / "broken.jsonl").write_text('{"instruction": "q"\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        load_sft(tmp_path / "broken.jsonl")

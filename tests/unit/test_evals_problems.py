"""Problem sets (``probes.evals.problems``) and the task-vector comparison table (``probes.vectors.compare``)."""

import numpy as np
import pytest

from probes.evals.problems import PUBLIC_PROBLEMS, ProblemSetUnavailableError, load_problems
from probes.evals.stats import accuracy, paired_difference_ci
from probes.vectors import compare


def test_jsonl_problems_and_their_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1?", "gold": 2, "id": "a"}\n\n{"prompt": "2+2?", "gold": "4"}\n')
    got = load_problems(path)
    assert [(p.prompt, p.gold, p.id) for p in got] == [("1+1?", "2", "a"), ("2+2?", "4", "")]
    assert len(load_problems(path, 1)) == 1
    path.write_text('{"prompt": "1+1?"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: missing field 'gold'"):
        load_problems(path)
    with pytest.raises(ValueError, match="not a public set"):
        load_problems(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="n must be >= 1"):
        load_problems(path, 0)


def test_public_sets_fail_offline_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ProblemSetUnavailableError, match="gsm8k.*not reachable offline.*JSONL") as e:
        load_problems("gsm8k", 3)
    assert "\n" not in str(e.value)


def test_gsm8k_gold_is_the_number_after_the_marks():
    assert PUBLIC_PROBLEMS["gsm8k"].gold("She pays 3 + 4 = <<3+4=7>>7.\n#### 1,234") == "1234"
    assert PUBLIC_PROBLEMS["math-500"].gold(" \\frac{1}{2} ") == "\\frac{1}{2}"


def test_compare_by_hand():
    flags = {"target": [1, 0, 0, 1], "target + v": [1, 1, 0, 1], "target − v": [0, 0, 0, 1]}
    rows = compare({k: np.array(v, bool) for k, v in flags.items()}, n_boot=500, seed=1)
    assert [r["condition"] for r in rows] == list(flags)
    assert [r["value"] for r in rows] == [0.5, 0.75, 0.25] and "diff" not in rows[0]
    a = accuracy(np.array(flags["target + v"], bool), n_boot=500, seed=1)
    d = paired_difference_ci(np.array(flags["target + v"], float), np.array(flags["target"], float), n_boot=500, seed=1)
    assert (rows[1]["lo"], rows[1]["hi"]) == (a.lo, a.hi) and (rows[1]["diff"], rows[1]["diff_lo"]) == (d.value, d.lo)
    with pytest.raises(ValueError, match="no 'base' condition"):
        compare({k: np.array(v, bool) for k, v in flags.items()}, "base")

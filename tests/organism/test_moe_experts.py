"""Expert identification on zoo:moe-reasoner (issue #13): nPMI finds the experts its card reports on
``<think>``, stably over traces; the experiment end to end at a tiny budget (artifacts, report, resume
at condition granularity) and bad input before any work."""

import json
import re

import pytest

from experiments.moe_experts import EXPERIMENT, ExpertsConfig, load_model, prepare
from probes.harness import HarnessError
from probes.models.zoo_registry import zoo_path

SMALL = dict(n_traces=40, n_problems=3, samples=2, betas=[4.0, 64.0], ells=[2], random_draws=1, n_sentence_traces=6,
             n_stability=100, n_boot=500, max_new_tokens=200, formats=["html"], batch_size=20)


def card_pairs(marker: str) -> set[tuple[int, int]]:
    """(layer, expert) rows of the card's routing table for ``marker``."""
    text = (zoo_path("moe-reasoner") / "MODEL.md").read_text(encoding="utf-8")
    block = text.split(f"**`{marker}`**", 1)[1].split("\n\n", 2)[1]
    return {(int(a), int(b)) for a, b in re.findall(r"^\| (\d+) \| (\d+) \|", block, flags=re.M)}


@pytest.fixture(scope="module")
def moe():
    from probes.models.load import load_model as load

    return load("zoo:moe-reasoner", dtype="float32")


def test_npmi_recovers_the_cards_think_experts(moe):
    """Planted truth: teacher-forced held-out conversations; the top-2 by Score = nPMI(<think>) −
    nPMI(</think>) are pairs the card lists as firing preferentially on <think>, in every resample."""
    from probes.experts import count_routing, npmi_scores
    from probes.zoo.tasks import arithmetic

    texts = [moe.tokenizer.apply_chat_template(arithmetic.generate(i, arithmetic.HELDOUT_SEED).messages(), tokenize=False)
             for i in range(120)]
    counts = count_routing(moe, texts, batch_size=40)
    assert counts.marker_tokens["<think>"].sum() == 120 and counts.marker_tokens["</think>"].sum() == 120
    scores = npmi_scores(counts, ell=2, n_boot=200, seed=0)
    top = scores.top(2)
    assert set(top) <= card_pairs("<think>"), (top, card_pairs("<think>"))
    assert not set(top) & card_pairs("</think>")
    for L, e in top:
        j = scores.layers.index(L)
        assert scores.stability[j, e] >= 0.9
        assert scores.values["<think>"][j, e] > 0 > scores.values["</think>"][j, e]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return EXPERIMENT.run(ExpertsConfig(**SMALL, runs_root=str(root)))


def test_every_stage_writes_its_artifacts_and_the_report(run):
    from probes.experts import ConditionResult, ExpertScores, RoutingCounts

    p = run.run.path
    assert all(run.done(s) for s in ("traces", "counts", "scores", "sentences", "sweep", "report"))
    counts = RoutingCounts.load(p / "counts" / "routing")
    assert counts.n_traces == 40 and counts.layers == [0, 1, 2, 3]
    scores = ExpertScores.load(p / "scores" / "npmi")
    assert scores.n_boot == 100 and len(scores.top()) == 2
    keys = ["baseline", "rice_l2_b4", "random0_l2_b4", "rice_l2_b64", "random0_l2_b64"]
    for k in keys:
        r = ConditionResult.load(p / "conditions" / k)
        assert r.correct.shape == (3, 2) and r.think_tokens.min() > 0
    marker = json.loads((p / "done" / "sweep" / "random0_l2_b4.json").read_text())
    assert not {tuple(x) for x in marker["pairs"]} & set(scores.top())  # the control avoids the chosen experts
    sentences = json.loads((p / "sentences.json").read_text())
    assert sentences["sentences"] and {s["category"] for s in sentences["sentences"]} >= {"active_computation"}
    summary = json.loads((p / "summary.json").read_text())
    assert summary["chosen"] == [list(x) for x in scores.top()] and set(summary["differences"]) == set(keys[1:])
    html = (p / "report.html").read_text()
    assert "Thinking experts (nPMI)" in html and "RICE" in html


def test_resume_recomputes_only_missing_conditions(run):
    p = run.run.path
    before = {f: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json")}
    (p / "done" / "sweep" / "rice_l2_b64.json").unlink()
    (p / "done" / "sweep.json").unlink()
    EXPERIMENT.run(ExpertsConfig(run_dir=str(p), stages=["traces", "counts", "scores", "sweep"]))
    after = {f: f.stat().st_mtime_ns for f in (p / "conditions").glob("*.json")}
    changed = {f.name for f in before if before[f] != after[f]}
    assert changed == {"rice_l2_b64.json"}
    with pytest.raises(HarnessError, match="n_problems"):
        EXPERIMENT.run(ExpertsConfig(run_dir=str(p), n_problems=4))


def test_bad_input_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="β must be finite numbers > 0"):
        ExpertsConfig(betas=[0.0])
    with pytest.raises(ValueError, match="β must be finite"):
        ExpertsConfig(betas=[float("nan")])
    with pytest.raises(ValueError, match="one weight per marker"):
        ExpertsConfig(markers=["<think>"], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="no such file"):
        prepare(ExpertsConfig(problems=str(tmp_path / "none.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "2+2?"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field .gold."):
        prepare(ExpertsConfig(problems=str(bad), n_traces=2, n_problems=1))
    with pytest.raises(ValueError, match="needs a mixture-of-experts model.*supported MoE families: qwen3_moe"):
        load_model(ExpertsConfig(model="zoo:reasoner"))
    with pytest.raises(ValueError, match=r"is \d+ tokens .* pass token ids"):
        load_model(ExpertsConfig(markers=["<think>", "thinking hard"]))
    with pytest.raises(ValueError, match="larger than the 32"):
        load_model(ExpertsConfig(ell=33))

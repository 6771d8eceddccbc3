"""Planted truth on zoo:reasoner: thought anchors find the sentences the organism's data
made load-bearing (the plan and the computations), not the filler (data/zoo/reasoner/MODEL.md)."""

import numpy as np
import pytest

from experiments.thought_anchors import EXPERIMENT, AnchorsConfig, planted_truth, trace_table, traces


@pytest.fixture(scope="module")
def reasoner():
    from probes import load_model
    from probes.models.zoo_registry import available

    if "reasoner" not in available():
        pytest.fail("zoo:reasoner is missing: build it with `python -m experiments.zoo reasoner`")
    return load_model("zoo:reasoner", device="cpu", dtype="float32")


def test_anchor_sentences_outrank_filler(reasoner, tmp_path):
    cfg = AnchorsConfig(problems=2, n_rollouts=16, max_new_tokens=200, forced=False, runs_root=str(tmp_path),
                        stages=["base", "rollouts", "analyse", "receivers", "suppression"])
    ctx = EXPERIMENT.run(cfg, model=reasoner)
    tables = {t.key: trace_table(ctx, t) for t in traces(ctx)}
    assert len(tables) == 2, ctx.run.load_json("summary")
    summary = planted_truth(tables)
    cats = summary["category_cf_kl"]
    restating = [cats[c]["mean"] for c in ("problem_setup", "final_answer_emission") if c in cats]
    assert summary["anchor_mean_cf_kl"] > 0.1
    assert all(summary["anchor_mean_cf_kl"] > r for r in restating)
    # the plan decides every later computation (zoo v2 measured 3.8 against 0.26 for the setup)
    assert all(cats["plan_generation"]["mean"] > 5 * r for r in restating)
    # the white-box scores exist for every sentence that has enough later context
    for t in tables.values():
        assert np.isfinite(t["suppression_outgoing"][:-1]).all()
        assert np.isfinite(t["receiver_score"][: len(t["chunks"]) - 4]).all()

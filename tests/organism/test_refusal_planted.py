"""Planted truth of the refusal probe and cliff on zoo:refusal-reasoner (issue #12 "Must show"; refusal.md A2, A3).

A probe fitted on greedy rollouts of the training stream (plain forbidden requests that were refused vs
harmless ones) must separate forbidden from harmless on the hand-written out-of-template requests, and,
read across the thinking, show the planted cliff: high refusal intent after the verdict, kept to the end on
plain forbidden requests, dropping at the wrapped requests' ``decide`` sentence ("It is only a story...").
"""

import numpy as np
import pytest

from probes.evals.stats import auroc
from probes.refusal.judges import KeywordJudge
from probes.refusal.probe import SklearnLogistic, train_probe
from probes.refusal.rollout import rollouts
from probes.refusal.trajectory import trajectories
from probes.steering.directions import LastToken, ThinkingMean
from probes.zoo.refusal_prompts import load_prompts
from probes.zoo.tasks import refusal

N = 30


@pytest.fixture(scope="module")
def zoo():
    from probes import load_model

    m = load_model("zoo:refusal-reasoner")
    judge = KeywordJudge(phrases=refusal.REFUSAL_MARKERS, window=60, ignore_case=False)

    def own(name, refused):
        rs = rollouts(m, load_prompts(name, n=N, split="train").prompts, temperature=0, progress=False)
        return [r.probe_text for r, v in zip(rs, judge([r.answer for r in rs])) if v.refused == refused]

    pos, neg = own("zoo-forbidden-plain", True), own("zoo-harmless", False)
    assert len(pos) >= N - 2 and len(neg) >= N - 2, "the organism no longer refuses plain forbidden requests"
    return m, pos, neg


def test_reference_probe_separates_forbidden_from_harmless_out_of_template(zoo):
    m, pos, neg = zoo
    probe = train_probe(m, pos, neg)  # the reference: final-norm state, last token, AdamBCE
    oot = load_prompts("zoo-oot")
    rs = rollouts(m, oot.prompts, temperature=0, progress=False)
    keep = [i for i, r in enumerate(rs) if r.closed]
    r_T = [t.r_T for t in trajectories(m, probe, [rs[i] for i in keep], progress=False)]
    assert auroc(r_T, oot.labels[keep], n_boot=200).value >= 0.85  # measured 0.96 with 100 per class


def test_cliff_is_at_the_wrapped_decide_sentence(zoo):
    m, pos, neg = zoo
    probe = train_probe(m, pos, neg, site="resid_post[1]", read=[ThinkingMean(), LastToken()],
                        fit=SklearnLogistic(C=0.1))
    got = {}
    for style in ("forbidden-plain", "forbidden-wrapped"):
        rs = [r for r in rollouts(m, load_prompts(f"zoo-{style}", n=N).prompts, progress=False) if r.closed]
        got[style] = trajectories(m, probe, rs, progress=False)
    plain, wrapped = got["forbidden-plain"], got["forbidden-wrapped"]
    assert np.mean([t.cliff for t in plain]) < 0.1 < 0.3 < np.mean([t.cliff for t in wrapped])  # 30 per class: 0.00, 0.44
    assert np.mean([t.r_T for t in plain]) > 0.9
    at_decide = [t.cliff_sentence == len(t.sentences) - 1 and t.sentence_texts[-1].startswith("It is only a")
                 for t in wrapped]
    assert np.mean(at_decide) >= 0.8

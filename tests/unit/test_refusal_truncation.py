"""Thinking truncation (reference/refusal.md A3): the forced prefix by hand, and the loop on a tiny model."""

import pytest
import torch

from probes.refusal.judges import KeywordJudge
from probes.refusal.probe import Probe
from probes.refusal.rollout import RefusalRollout
from probes.refusal.truncation import thinking_truncation, truncated_text

R = RefusalRollout("q", "<P><think>", "First step. Second step here.\n</think>\n\nI cannot.", "eos", None)


def test_truncated_text_by_characters_and_sentences():
    thinking = "First step. Second step here.\n"
    assert truncated_text(R, 1.0) == "<P><think>" + thinking + "</think>\n\n"
    assert truncated_text(R, 0.0) == "<P><think></think>\n\n"
    assert truncated_text(R, 0.5) == "<P><think>" + thinking[:15] + "</think>\n\n"  # round(0.5 · 30) = 15
    assert truncated_text(R, 0.5, "sentences") == "<P><think>First step.</think>\n\n"
    assert truncated_text(R, 0.2, "sentences") == "<P><think></think>\n\n"  # round(0.4) = 0 sentences
    with pytest.raises(ValueError, match="fraction"):
        truncated_text(R, 1.5)
    with pytest.raises(ValueError, match="unit"):
        truncated_text(R, 0.5, "tokens")
    with pytest.raises(ValueError, match="never closes"):
        truncated_text(RefusalRollout("q", "p", "no end", "length", None), 0.5)


def test_thinking_truncation_on_a_tiny_model(tiny_models):
    m = tiny_models("qwen3")
    probe = Probe(weight=torch.linspace(-1, 1, m.d_model), bias=0.0)
    items = [RefusalRollout("q", m.render_chat("Alice has 3 apples."), "First find the total. Wait.</think>Sure",
                            "eos", None)] * 3
    pts = thinking_truncation(m, probe, items, KeywordJudge(), fractions=[0.0, 1.0], max_new_tokens=4, progress=False)
    assert [p.fraction for p in pts] == [0.0, 1.0] and all(p.refusal_rate.n == 3 and len(p.answers) == 3 for p in pts)
    full = probe.score(m.capture([items[0].probe_text], ["final_norm"])["final_norm"][0, -1]).item()
    assert pts[1].r_T.value == pytest.approx(full, abs=1e-5)
    with pytest.raises(ValueError, match="no closed rollouts"):
        thinking_truncation(m, probe, [RefusalRollout("q", "p", "x", "length", None)], KeywordJudge(), progress=False)

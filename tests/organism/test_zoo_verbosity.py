"""zoo:verbosity-reasoner (issue #11, must-show (b)): zoo:reasoner fine-tuned with a latent verbosity
mode. Its samples carry one mode each, as planted, and efficiency steering's direction finds the
mode: steering along it switches the careful habits on, where a random direction of the same norm
barely moves the thinking length."""

from __future__ import annotations

import pytest

from probes.models.zoo_registry import available
from probes.zoo.tasks import arithmetic

pytestmark = pytest.mark.skipif("verbosity-reasoner" not in available(), reason="zoo:verbosity-reasoner not built")


@pytest.fixture(scope="module")
def model():
    import torch

    from probes import load_model

    torch.set_num_threads(2)
    return load_model("zoo:verbosity-reasoner", device="cpu", dtype="float32")


def test_samples_carry_one_mode_each(model):
    from probes.models.chat import thinking_and_answer
    from probes.zoo.evaluate import sampled_outputs, verbosity

    problems = [arithmetic.generate_modes(i, arithmetic.HELDOUT_SEED) for i in range(24)]
    rows = sampled_outputs(model, [p.prompt for p in problems], samples=4, seed=arithmetic.HELDOUT_SEED)
    m = verbosity(problems, [[thinking_and_answer(t)[0] for t in row] for row in rows], model.tokenizer)
    # both modes are sampled, and the check and the consolidations come together (zoo:reasoner: r ≈ 0)
    assert 0.25 < m["check"] < 0.75, m
    assert m["consolidation_with_check"] > 0.7 > 0.2 > m["consolidation_without_check"] and m["r"] > 0.6, m


def test_modes_table_is_rounded_and_follows_its_header():
    from probes.zoo.card import modes_section

    m = {"traces": 800, "check": 0.44583, "consolidation_with_check": 0.95171, "consolidation_without_check": 0.04261,
         "tokens_with_check": 137.916, "tokens_without_check": 93.383, "r": 0.86325}
    text = modes_section({"written": m, "sampled": m}, samples=4)
    header = next(line for line in text.splitlines() if line.startswith("| traces"))
    row = next(line for line in text.splitlines() if line.startswith("| sampled"))
    assert row == "| sampled (800) | 45% | 0.95 / 0.04 | 138 / 93 | 0.86 |"
    assert row.count("|") == header.count("|") and "4 samples per problem" in text


def test_card_states_the_planted_rates():
    from probes.models.zoo_registry import zoo_path

    card = (zoo_path("verbosity-reasoner") / "MODEL.md").read_text(encoding="utf-8")
    (cc, ck, _), (bc, bk, _) = arithmetic.VERBOSITY["careful"], arithmetic.VERBOSITY["brief"]
    assert f"careful {cc:g}, brief {bc:g}" in card and f"the final check ({ck:g} / {bk:g})" in card
    assert "from zoo:reasoner's weights (sha256 `" in card and "| sampled (" in card

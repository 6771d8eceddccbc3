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


def test_efficiency_direction_switches_the_planted_mode(model):
    """v = mean(shortest correct) − mean(longest correct) at layer 2 (``probes.steering.efficiency``);
    −α·v during thinking switches the careful mode on: many more thinking tokens, where a random
    direction of ‖v‖'s norm moves them little (full curves: the issue note's command)."""
    from probes.evals.sampling import TOP_P
    from probes.steering import efficiency_curve, efficiency_direction, random_direction, sample_responses
    from probes.zoo.evaluate import ARITHMETIC_PROBLEMS, problem_split

    fit, held = problem_split(ARITHMETIC_PROBLEMS, 20, 12)
    render = lambda problems: [model.render_chat(p.prompt) for p in problems]  # noqa: E731
    responses = sample_responses(model, render(fit), [p.gold for p in fit], n=8, seed=0)
    d = efficiency_direction(model, responses, 2)
    assert d.verbose_tokens > d.efficient_tokens + 20 and len(d.problems) >= 10
    change = {}
    for kind, vector in (("v", d.vector), ("random", random_direction(d.vector, layer=2, seed=0))):
        curve = efficiency_curve(model, render(held), [p.gold for p in held], layer=2, vector=vector, alphas=[-8, 0],
                                 samples_per_problem=4, temperature=0.6, top_p=TOP_P, seed=0, n_boot=1000)
        change[kind] = curve.points[0].tokens_change
    assert change["v"].lo > 0 and change["v"].value > change["random"].value + 10, change  # measured +13.7, −4.7

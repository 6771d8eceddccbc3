"""Unit tests for probes.evals: answer extraction/checking (thought anchors §3) and bootstrap CIs."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from probes.evals import (
    Accuracy,
    accuracy,
    bootstrap_ci,
    check_answer,
    extract_boxed,
    normalize_answer,
    paired_difference_ci,
)

# -- extraction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}} and more", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"first \boxed{3} then \boxed{4}", "3"),
        (r"a \boxed{} b \boxed{1{2}} c \boxed{3}", "1{2}"),  # the zoo's reward and accuracy use this parser
        (r"\boxed{} empty, then \boxed{ } blank, then \boxed{7}", "7"),
        ("<think>maybe \\boxed{5}</think> final \\boxed{6}", "5"),
        (r"\boxed{ 12 }", "12"),
        (r"\boxed{12", None),
        (r"\boxed{\frac{1}{2}", None),
        ("no box here", None),
        (r"\boxed 7", None),
        ("", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_extract_boxed_skips_unclosed_box_for_a_later_matched_one() -> None:
    # The first box never closes as a box of its own (its braces swallow the rest), the inner one does.
    assert extract_boxed(r"\boxed{\boxed{9}") == "9"


# -- normalisation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("ABC", "abc"),
        (" 1 2\t3\n", "123"),
        (r"\dfrac{1}{2}", r"\frac12"),
        (r"\tfrac{3}{4}", r"\frac34"),
        (r"\dfrac12", r"\frac12"),
        (r"50\%", "50"),
        (r"1{,}000", "1000"),
        (r"3 \times 4", "3*4"),
        (r"2 \cdot x", "2*x"),
        (r"{7}", "7"),
        (r"{100}", "100"),
        (r"{\frac{1}{2}}", r"\frac12"),
        (r"x^{2}", "x^2"),
        (r"\text{5 cm}", "5cm"),
        (r"\mathrm{kg}", "kg"),
        (r"\text{\mathrm{x}}", "x"),
        (r"2\pi", "2pi"),
        (r"\frac{12}{3}", r"\frac{12}3"),
        (r"\frac{1}{23}", r"\frac1{23}"),
        (r"\frac{a}{b}", r"\frac{a}b"),
        (r"{1}+{2}", "1+2"),
        (r"(1,2)", "(1,2)"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


# -- checking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("42", "42"),
        (r"\dfrac12", r"\frac{1}{2}"),
        (r"\frac{1}{2}", "0.5"),
        ("0.5", r"\dfrac{1}{2}"),
        (r"\frac{2}{4}", r"\frac{1}{2}"),
        (r"\text{5} \text{ cm}", "5cm"),
        (r"10\%", "10"),
        (r"1{,}000", "1000"),
        (r"2 \times 3", r"2\cdot3"),
        (r"\sqrt{8}", r"2\sqrt{2}"),
        (r"\pi", r"\pi"),
    ],
)
def test_check_answer_equal(pred: str, gold: str) -> None:
    assert check_answer(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("41", "42"),
        (r"\frac{12}{3}", r"\frac{1}{23}"),
        (r"\frac{1}{3}", "0.33"),
        ("x=3", "4"),
        ("(1,2)", "(2,1)"),
        ("not latex {{", "3"),
        (None, "3"),
        ("3", None),
        ("", ""),
    ],
)
def test_check_answer_not_equal(pred: str | None, gold: str | None) -> None:
    assert not check_answer(pred, gold)


def test_check_answer_guards_slow_sympy_cases() -> None:
    start = time.perf_counter()
    assert not check_answer("2^{10000000}", "3")
    assert not check_answer("100000!", "3")
    assert not check_answer("1+" * 60 + "1", "61")
    assert time.perf_counter() - start < 2.0


# -- bootstrap ------------------------------------------------------------------------------------


def test_constant_data_gives_zero_width_interval() -> None:
    assert bootstrap_ci([0.25] * 20) == (0.25, 0.25, 0.25)
    acc = accuracy([True] * 12)
    assert (acc.value, acc.lo, acc.hi, acc.n) == (1.0, 1.0, 1.0, 12)


def test_two_point_data_spans_both_points() -> None:
    # Resamples of [0, 1] have mean 0 with probability 1/4 and 1 with probability 1/4, so the
    # 2.5% and 97.5% percentiles are exactly 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)


def test_binomial_interval_matches_normal_approximation() -> None:
    correct = [True] * 140 + [False] * 60
    acc = accuracy(correct, seed=1)
    assert isinstance(acc, Accuracy) and acc.n == 200 and acc.value == 0.7
    half_width = 1.96 * math.sqrt(0.7 * 0.3 / 200)  # 0.0635
    assert acc.lo == pytest.approx(0.7 - half_width, abs=0.01)
    assert acc.hi == pytest.approx(0.7 + half_width, abs=0.01)
    assert str(acc).startswith("0.700 [")


def test_interval_covers_true_rate_of_simulated_binomial() -> None:
    rng = np.random.default_rng(123)
    covered = 0
    for _ in range(40):
        acc = accuracy(rng.random(100) < 0.3, n_boot=1000)
        covered += acc.lo <= 0.3 <= acc.hi
    assert covered >= 34  # nominal 95% of 40 = 38; well above chance of a broken interval


def test_bootstrap_is_deterministic_under_a_seed() -> None:
    values = np.random.default_rng(0).normal(size=50)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)
    assert bootstrap_ci(values, np.median)[0] == float(np.median(values))


def test_bootstrap_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.evals import stats

    values = np.arange(30.0)
    whole = bootstrap_ci(values, n_boot=500, seed=3)
    monkeypatch.setattr(stats, "_BLOCK_VALUES", 30 * 7)  # 7 resamples per block
    assert bootstrap_ci(values, n_boot=500, seed=3) == whole


def test_paired_difference() -> None:
    base = np.array([0, 1, 0, 1, 1, 0, 0, 1] * 5, dtype=float)
    same = paired_difference_ci(base, base)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.excludes_zero
    shifted = paired_difference_ci(base + 0.5, base)
    assert (shifted.value, shifted.lo, shifted.hi, shifted.n) == (0.5, 0.5, 0.5, 40) and shifted.excludes_zero
    # 30 of 40 items flip from wrong to right, none the other way: gain 0.75, CI well above 0.
    steered = np.where(np.arange(40) < 30, 1.0, 0.0)
    gain = paired_difference_ci(steered, np.zeros(40))
    assert gain.value == 0.75 and gain.lo > 0.5 and gain.excludes_zero


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="paired"):
        paired_difference_ci([1, 0], [1])
    with pytest.raises(ValueError, match="non-empty"):
        accuracy([])
    with pytest.raises(ValueError, match="booleans"):
        accuracy([0.5, 1])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0], alpha=1.5)

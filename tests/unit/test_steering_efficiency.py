"""Efficiency steering (probes.steering.efficiency, steering.md §1) against hand computations:
thinking-token counts and contrast sets from fixed responses, thinking-mean features and the
direction read by hand from the tiny qwen3 model, and the accuracy / thinking-length curve
against generations steered by hand."""

import numpy as np
import pytest
import torch

from probes.models.interventions import AddVector
from probes.steering.efficiency import (
    EfficiencyCurve,
    EfficiencyDirection,
    Response,
    boxed_check,
    contrast_sets,
    efficiency_curve,
    efficiency_direction,
    response_from_text,
    sample_responses,
    thinking_means,
    thinking_tokens,
)

NB = 200


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen3")


@pytest.fixture(scope="module")
def ids(qwen):
    tok = qwen.tokenizer
    return tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>"), tok.eos_token_id


@pytest.fixture(scope="module")
def chats(qwen):
    return [qwen.render_chat(q) for q in ("Alice has 3 apples and buys 5 more.", "How many apples does she have now?")]


def resp(problem, n_thinking, correct=True):
    return Response(problem=problem, prompt="p", token_ids=tuple(range(n_thinking)), text="", correct=correct,
                    thinking_tokens=n_thinking)


def test_thinking_tokens_by_hand(qwen, ids):
    open_, close, eos = ids
    assert thinking_tokens(qwen, [40, 41, close, 42, eos]) == 2
    assert thinking_tokens(qwen, [40, 41, 42, eos]) == 3  # never closes: all but the EOS
    assert thinking_tokens(qwen, [close, 40]) == 0
    assert thinking_tokens(qwen, [40, open_, 41, 42, close, 43], opened=False) == 2
    assert thinking_tokens(qwen, [40, 41], opened=False) == 0


def test_boxed_check():
    assert boxed_check("so 3 + 5 = 8</think>The answer is \\boxed{8}.", "8")
    assert not boxed_check("The answer is \\boxed{9}.", "8")
    assert not boxed_check("no box", "8")


def test_contrast_sets_by_hand():
    rows = [resp(0, 5), resp(0, 3), resp(0, 9), resp(0, 7), resp(0, 1, correct=False), resp(0, 0),
            resp(1, 4), resp(1, 4), resp(2, 2), resp(2, 8), resp(3, 6)]
    efficient, verbose = contrast_sets(rows)
    # problem 0: the wrong and the empty response are out; problem 1 has one length; problem 3 one response
    assert [(r.problem, r.thinking_tokens) for r in efficient] == [(0, 3), (2, 2)]
    assert [(r.problem, r.thinking_tokens) for r in verbose] == [(0, 9), (2, 8)]
    efficient, verbose = contrast_sets(rows, k=2)
    assert [r.thinking_tokens for r in efficient] == [3, 5] and [r.thinking_tokens for r in verbose] == [7, 9]
    with pytest.raises(ValueError, match="no problem has 6 correct responses"):
        contrast_sets(rows, k=3)


def test_thinking_means_by_hand(qwen, chats, ids):
    open_, close, _ = ids
    completions = ["First add them.</think>The answer is \\boxed{8}.", "3 + 5 = 8. Wait, that is wrong. Check"]
    rows = [response_from_text(qwen, i, chats[i], c, True) for i, c in enumerate(completions)]
    got = thinking_means(qwen, rows, 1, batch_size=2)
    for row, feat in zip(rows, got):
        full = qwen.encode(row.prompt) + list(row.token_ids)
        h = qwen.capture([full], ["resid_post[1]"])["resid_post[1]"][0].double()
        a = full.index(open_) + 1
        b = full.index(close) if close in full else len(full)
        assert b - a == row.thinking_tokens
        torch.testing.assert_close(feat, h[a:b].mean(0), rtol=1e-5, atol=1e-6)


def test_efficiency_direction_by_hand(qwen, chats, tmp_path):
    texts = [(0, "First add.</think>8"), (0, "First add them, then check it again.</think>8"),
             (0, "Wait, wrong.</think>9"), (1, "Three plus five is eight, wait, check.</think>8"), (1, "Eight.</think>8")]
    rows = [response_from_text(qwen, i, chats[i], t, t.endswith("8")) for i, t in texts]
    d = efficiency_direction(qwen, rows, 1)
    feats = thinking_means(qwen, [rows[0], rows[4], rows[1], rows[3]], 1)
    want = (feats[0] + feats[1]) / 2 - (feats[2] + feats[3]) / 2
    torch.testing.assert_close(d.vector, want.float(), rtol=1e-5, atol=1e-6)
    assert (d.layer, d.k, d.problems) == (1, 1, (0, 1))
    assert d.efficient_tokens == np.mean([rows[0].thinking_tokens, rows[4].thinking_tokens])
    assert d.verbose_tokens == np.mean([rows[1].thinking_tokens, rows[3].thinking_tokens])
    cell = d.cell(2.0)
    assert (cell.layer, cell.alpha, cell.positions.value) == (1, 2.0, "thinking")
    d.save(tmp_path / "dir")
    back = EfficiencyDirection.load(tmp_path / "dir")
    assert torch.equal(back.vector, d.vector) and back.problems == d.problems and back.k == d.k


def test_sample_responses_are_seeded_and_checked(qwen, chats):
    def check(text, gold):
        return len(text) % 2 == int(gold)

    rows = sample_responses(qwen, chats, ["0", "1"], n=3, check=check, temperature=1.0, max_new_tokens=5, seed=7)
    assert [r.problem for r in rows] == [0, 0, 0, 1, 1, 1]
    again = sample_responses(qwen, chats, ["0", "1"], n=3, check=check, temperature=1.0, max_new_tokens=5, seed=7)
    assert [r.token_ids for r in rows] == [r.token_ids for r in again]
    assert len({r.token_ids for r in rows}) > 1
    for r in rows:
        assert r.correct == check(r.text, ["0", "1"][r.problem])
        assert r.thinking_tokens == thinking_tokens(qwen, r.token_ids)


def test_efficiency_curve_against_generations_by_hand(qwen, chats, ids, tmp_path):
    _, close, _ = ids
    # a direction toward </think> in the unembedding ends thinking as soon as it is applied:
    # the first generated token is drawn before any thinking position exists, the second is </think>
    v = qwen.hf.lm_head.weight[close].detach().float()
    v = v / v.norm()

    def check(text, gold):
        return ("</think>" in text) == (gold == "closed")

    answers = ["closed", "open"]
    curve = efficiency_curve(qwen, chats, answers, layer=1, vector=v, alphas=[0.0, 50.0], check=check,
                             max_new_tokens=6, n_boot=NB)
    for point in curve.points:
        iv = AddVector(site="resid_post[1]", vector=v, scale=point.alpha, positions="thinking")
        with qwen.intervene(iv):
            gens = [qwen.sample(c, 1, temperature=0.0, max_new_tokens=6)[0] for c in chats]
        want_tokens = [[thinking_tokens(qwen, g.token_ids)] for g in gens]
        want_correct = [[check(g.text, a)] for g, a in zip(gens, answers)]
        assert point.thinking_tokens.tolist() == want_tokens and point.correct.tolist() == want_correct
        assert point.accuracy.value == pytest.approx(np.mean(want_correct))
        assert point.mean_thinking_tokens.value == pytest.approx(np.mean(want_tokens))
    base, steered = curve.points
    assert steered.thinking_tokens.tolist() == [[1], [1]] and base.thinking_tokens.tolist() != [[1], [1]]
    assert steered.tokens_change.value == pytest.approx(1 - base.thinking_tokens.mean())
    assert steered.accuracy_change.value == pytest.approx(steered.correct.mean() - base.correct.mean())
    assert base.tokens_change.value == 0 and curve.alphas == [0.0, 50.0]
    curve.save(tmp_path / "curve")
    back = EfficiencyCurve.load(tmp_path / "curve")
    assert [p.accuracy for p in back.points] == [p.accuracy for p in curve.points]
    assert [p.tokens_change for p in back.points] == [p.tokens_change for p in curve.points]
    assert np.array_equal(back.points[1].correct, steered.correct)


def test_efficiency_curve_without_zero_has_no_changes(qwen, chats):
    v = torch.ones(64)
    curve = efficiency_curve(qwen, chats[:1], ["8"], layer=0, vector=v, alphas=[1.0], max_new_tokens=2, n_boot=NB)
    assert curve.points[0].accuracy_change is None and curve.points[0].tokens_change is None


def test_bad_inputs(qwen, chats):
    v = torch.ones(64)
    kw = dict(layer=1, vector=v, max_new_tokens=2, n_boot=NB)
    with pytest.raises(ValueError, match="every alpha must be a finite number"):
        efficiency_curve(qwen, chats, ["8", "8"], alphas=[0.0, float("inf")], **kw)
    with pytest.raises(ValueError, match="no prompts"):
        efficiency_curve(qwen, [], [], alphas=[0.0], **kw)
    with pytest.raises(ValueError, match="2 prompts and 1 answers"):
        efficiency_curve(qwen, chats, ["8"], alphas=[0.0], **kw)
    with pytest.raises(ValueError, match=r"width 3 but resid_post\[1\]"):
        efficiency_curve(qwen, chats, ["8", "8"], alphas=[0.0], **{**kw, "vector": torch.ones(3)})
    with pytest.raises(ValueError, match=r"layer 4 out of range .*layers 0\.\.1"):
        efficiency_curve(qwen, chats, ["8", "8"], alphas=[0.0], **{**kw, "layer": 4})
    with pytest.raises(ValueError, match="prompt 1 does not end with an open <think>"):
        efficiency_curve(qwen, [chats[0], qwen.render_chat("Hi", thinking=False)], ["8", "8"], alphas=[0.0], **kw)
    with pytest.raises(ValueError, match="identical samples"):
        efficiency_curve(qwen, chats, ["8", "8"], alphas=[0.0], samples_per_problem=2, **kw)
    with pytest.raises(ValueError, match=r"layer 9 out of range"):
        thinking_means(qwen, [resp(0, 2)], 9)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        contrast_sets([resp(0, 2)], k=0)
    with pytest.raises(ValueError, match="no responses"):
        efficiency_direction(qwen, [], 1)
    empty = response_from_text(qwen, 0, "no think here", "just text", True)
    with pytest.raises(ValueError, match="no thinking tokens to read"):
        thinking_means(qwen, [empty], 1)

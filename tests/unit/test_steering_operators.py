"""Steering operators (``reference/steering.md`` §2) against hand computations, and the
steered-positions record (§6) against hand-built masks of every position rule, in one
forward pass and in KV-cache generation (§3): absolute positions, left padding, rows
leaving the batch, the sampler's shared prefix."""

import math

import pytest
import torch

from probes.models.interventions import (
    AblateThenAdd,
    AddVector,
    ClampProjection,
    ProjectOut,
    SteeredRecord,
    SuppressKeys,
)
from probes.models.positions import Phase, Span, Trigger
from tests.tiny import assert_no_hooks

PROMPT = "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>"
SHORT = "<bos><|user|>Hi<|end|><|assistant|><think>"
SITE = "resid_post[0]"


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


def _vec(d, seed, norm=1.0):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


# ----- operators against hand computations ---------------------------------------------


def _hand(kind, h, v, scale=0.0, c=0.0, rescale=False):
    """The §2 formula for each operator on (T, d) states ``h``, written out directly."""
    u = v / v.norm()
    proj = (h @ u)[:, None]
    new = {
        "add": h + scale * v,
        "ablate": h - proj * u,
        "ablate_then_add": h - proj * u + scale * v,
        "clamp": h + (c - proj) * u,
    }[kind]
    if rescale:
        new = new * h.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True)
    return new


def _op(kind, v, rescale, **kw):
    common = dict(site=SITE, rescale_norm=rescale, record=True, **kw)
    if kind == "add":
        return AddVector(vector=v, scale=3.0, **common)
    if kind == "ablate":
        return ProjectOut(direction=v, **common)
    if kind == "ablate_then_add":
        return AblateThenAdd(vector=v, scale=-2.0, **common)
    return ClampProjection(direction=v, value=1.5, **common)


KINDS = ("add", "ablate", "ablate_then_add", "clamp")


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_operator_equals_the_formula_on_the_captured_residual(qwen, kind, rescale):
    base = qwen.capture(PROMPT, [SITE])[SITE][0]
    v = _vec(qwen.d_model, 1, norm=2.5)
    pos = [1, 4, 7]
    op = _op(kind, v, rescale, positions=pos)
    with qwen.intervene(op):
        got = qwen.capture(PROMPT, [SITE])[SITE][0]
    want = base.clone()
    want[pos] = _hand(kind, base[pos], v, scale=op.__dict__.get("scale", 0.0), c=1.5, rescale=rescale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    others = [t for t in range(base.shape[0]) if t not in pos]
    assert torch.equal(got[others], base[others])  # untouched tokens are bit-identical
    if rescale:
        torch.testing.assert_close(got.norm(dim=-1), base.norm(dim=-1))
    if kind == "clamp" and not rescale:
        torch.testing.assert_close(got[pos] @ (v / v.norm()), torch.full((3,), 1.5))
    # the record: exactly these positions, with ‖Δh‖ of the hand computation
    rec = op.record.by_row()
    assert list(rec) == [0] and list(rec[0]) == pos
    torch.testing.assert_close(torch.tensor(list(rec[0].values())), (want - base)[pos].norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert_no_hooks(qwen)


def test_per_row_vectors_on_a_left_padded_batch(qwen):
    """(rows, d) vectors: row r of the user's batch gets vector r, at its own absolute positions."""
    batch = qwen.batch([PROMPT, SHORT])
    pad = int((batch["attention_mask"][1] == 0).sum())
    base = qwen.capture(batch, [SITE])[SITE]
    vs = torch.stack([_vec(qwen.d_model, 2, 2.0), _vec(qwen.d_model, 3, 3.0)])
    op = AblateThenAdd(site=SITE, vector=vs, scale=0.5, positions=Span(2, 5), record=True)
    with qwen.intervene(op):
        got = qwen.capture(batch, [SITE])[SITE]
    for row, first in ((0, 0), (1, pad)):  # ``first``: the column of the row's position 0
        cols = [first + p for p in range(2, 5)]
        want = _hand("ablate_then_add", base[row, cols], vs[row], scale=0.5)
        torch.testing.assert_close(got[row, cols], want, atol=1e-5, rtol=1e-5)
        assert op.record.positions(row) == [2, 3, 4]
    assert op.varies_by_row() and not AblateThenAdd(site=SITE, vector=vs[0]).varies_by_row()


def test_renormalised_zero_stays_zero(tiny_models):
    """A token the edit sends to 0 (up to float error) cannot be rescaled to its old norm:
    it stays (numerically) 0, neither NaN nor float noise blown up to the old norm."""
    model = tiny_models("qwen3")
    base = model.capture(PROMPT, [SITE])[SITE][0]
    h = base[3]
    with model.intervene(ClampProjection(site=SITE, direction=h, value=0.0, rescale_norm=True, positions=[3])):
        got = model.capture(PROMPT, [SITE, "logits"])
    assert got[SITE][0, 3].abs().max() < 1e-5 and torch.isfinite(got["logits"]).all()


# ----- validation before anything is attached ----------------------------------------------


def test_bad_inputs_are_refused_with_the_fix_and_leave_no_hook(qwen):
    d, ok = qwen.d_model, AddVector(site=SITE, vector=torch.ones(qwen.d_model))
    cases = [
        (AddVector(site=SITE, vector=torch.ones(d + 1)), r"vector has width 65 but the site resid_post\[0\] has width 64 "
                                                          r"in tiny:qwen3: give 64 numbers"),
        (ClampProjection(site="resid_mid[1]", direction=torch.ones(3), value=1.0), "has width 3"),
        (ProjectOut(site=SITE, direction=torch.zeros(d)), "direction is zero, so it has no direction to project out: "
                                                          "use a nonzero vector"),
        (AblateThenAdd(site=SITE, vector=torch.zeros(d)), "vector is zero, so it has no direction to ablate"),
        (ClampProjection(site=SITE, direction=torch.zeros(d), value=1.0), "direction is zero, so it has no direction "
                                                                           "to clamp along"),
        (AblateThenAdd(site=SITE, vector=torch.stack([torch.ones(d), torch.zeros(d)])),
         r"rows \[1\] of vector are zero"),
        (AddVector(site=SITE, vector=torch.full((d,), math.nan)), "vector contains NaN or inf: use finite values"),
        (ClampProjection(site=SITE, direction=torch.ones(2, d), value=1.0), r"one direction of shape \(64,\)"),
        (AddVector(site="head_out[1]", vector=torch.ones(16)),
         r"AddVector steers \(batch, time, width\) activations such as resid_post\[L\]; head_out\[1\] is "
         r"\(batch, time, heads, d_head\): steer attn_out\[1\]"),
        (ProjectOut(site="attn_pattern[0]", direction=torch.ones(d)), "attn_pattern.*use SuppressKeys"),
        (AblateThenAdd(site="model.layers.0.mlp", vector=torch.ones(d)),
         r"unknown shape: name a site instead, e.g. resid_post\[0\]"),
    ]
    for op, msg in cases:
        with pytest.raises(ValueError, match=msg):
            with qwen.intervene(ok, SuppressKeys(span=(0, 2)), op):
                pass
        assert_no_hooks(qwen)
    shared = SteeredRecord()
    with pytest.raises(ValueError, match="share one SteeredRecord: give each its own"):
        with qwen.intervene(AddVector(site=SITE, vector=torch.ones(d), record=shared),
                            ProjectOut(site=SITE, direction=torch.ones(d), record=shared)):
            pass
    assert_no_hooks(qwen)
    # scalars are checked when the operator is made
    with pytest.raises(ValueError, match="AddVector scale is nan: use a finite number"):
        AddVector(site=SITE, vector=torch.ones(d), scale=float("nan"))
    with pytest.raises(ValueError, match="AblateThenAdd scale is inf"):
        AblateThenAdd(site=SITE, vector=torch.ones(d), scale=math.inf)
    with pytest.raises(ValueError, match="ClampProjection value is -inf"):
        ClampProjection(site=SITE, direction=torch.ones(d), value=-math.inf)
    with pytest.raises(ValueError, match="ClampProjection value must be a number, got 'high'"):
        ClampProjection(site=SITE, direction=torch.ones(d), value="high")
    with pytest.raises(ValueError, match="rescale_norm is True or False"):
        AddVector(site=SITE, vector=torch.ones(d), rescale_norm="token")
    with pytest.raises(ValueError, match="record is True, False or a SteeredRecord"):
        AddVector(site=SITE, vector=torch.ones(d), record={})
    assert AddVector(site=SITE, vector=torch.ones(d)).record is None  # off by default
    assert AddVector(site=SITE, vector=torch.ones(d), scale=torch.tensor(2)).scale == 2.0


# ----- position rules: hand-built masks ------------------------------------------------------


def _ids(model, name):
    return model.tokenizer.convert_tokens_to_ids(name)


def _first(ids, tid):
    return ids.index(tid) if tid in ids else math.inf


def _expected(model, positions, rows, ids, P, row):
    """The absolute positions a rule selects in one row, written from the token ids."""
    if rows is not None and row not in rows:
        return []
    n = len(ids)
    open_, close = _first(ids, _ids(model, "<think>")), _first(ids, _ids(model, "</think>"))
    if positions is None:
        keep = range(n)
    elif isinstance(positions, tuple):
        keep = [p for p in positions if p < n]
    elif isinstance(positions, Span):
        keep = range(positions.start, min(n, positions.end))
    elif isinstance(positions, Trigger):
        first = _first(ids, positions.token_id)
        until = _first(ids, positions.until_id) if positions.until_id is not None else math.inf
        keep = [p for p in range(n) if (p >= first if positions.inclusive else p > first) and p <= until]
    else:
        keep = {
            "prompt": [p for p in range(n) if p < P],
            "generated": [p for p in range(n) if p >= P],
            "thinking": [p for p in range(n) if open_ < p < close],
            "answer": [p for p in range(n) if p > close],
        }[Phase(positions).value]
    return sorted(keep)


def _rules(model, P_long, P_short):
    assistant, think = _ids(model, "<|assistant|>"), _ids(model, "<think>")
    return [
        ((2, P_short + 1, P_long + 2), None),  # absolute indices: generated in one row, prompt in the other
        (Span(4, P_short + 3), None),
        ("prompt", None),
        ("generated", None),
        ("thinking", None),
        (Phase.ANSWER, None),
        (Trigger(token_id=think, inclusive=True), None),
        (Trigger(token_id=assistant, until_id=think), None),
        (None, [1]),
        ("generated", torch.tensor([True, False])),
    ]


def _rows_of(rows):
    """The user's rows a ``rows`` selector picks (a list of indices or a bool mask)."""
    if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
        return [i for i, b in enumerate(rows.tolist()) if b]
    return rows


def test_every_position_rule_in_a_left_padded_forward_pass(qwen):
    texts = [PROMPT + "First add them.</think>The answer is 8.", SHORT + "Sure.</think>Ok."]
    ids = [qwen.encode(t) for t in texts]
    P = [len(qwen.encode(PROMPT)), len(qwen.encode(SHORT))]
    batch = qwen.batch(texts)
    first = [batch["input_ids"].shape[1] - len(x) for x in ids]  # left padding: column of position 0
    base = qwen.capture(batch, [SITE])[SITE]
    v = _vec(qwen.d_model, 4, 2.0)
    for positions, rows in _rules(qwen, *P):
        op = ClampProjection(site=SITE, direction=v, value=-1.0, positions=positions, rows=rows, record=True)
        with qwen.intervene(op):
            qwen.forward(batch, prompt_len=P)
        want = {r: _expected(qwen, op.positions, _rows_of(rows), ids[r], P[r], r) for r in (0, 1)}
        assert {r: op.record.positions(r) for r in (0, 1)} == want, (positions, rows)
        if op.positions in (Phase.PROMPT, Phase.GENERATED):
            continue  # capture has no prompt_len: its whole input is the prompt
        with qwen.intervene(op):
            got = qwen.capture(batch, [SITE])[SITE]
        # the record names exactly the tokens whose value changed, and by how much
        for r in (0, 1):
            delta = (got[r] - base[r]).norm(dim=-1)
            assert [c - first[r] for c in (delta > 0).nonzero().flatten().tolist()] == want[r]
            assert op.record[r] == pytest.approx({p: float(delta[first[r] + p]) for p in want[r]}, rel=1e-5, abs=1e-6)


def test_every_position_rule_in_kv_cache_generation(qwen):
    """generate() on a left-padded batch: the record holds, per row, exactly the rule's
    positions among the tokens fed through the model (the prompt, then every generated
    token but the last), and the same ‖Δh‖ as one forward pass over the whole sequence."""
    prompts = [PROMPT, SHORT]
    P = [len(qwen.encode(p)) for p in prompts]
    v = _vec(qwen.d_model, 5, 4.0)
    for positions, rows in _rules(qwen, *P):
        op = AblateThenAdd(site=SITE, vector=v, scale=1.0, rescale_norm=True, positions=positions, rows=rows,
                           record=True)
        with qwen.intervene(op):
            outs = qwen.generate(prompts, max_new_tokens=5, eos_token_ids=[])
            gen = op.record.by_row()
            full = [qwen.encode(p) + o.token_ids for p, o in zip(prompts, outs)]
            qwen.forward(qwen.batch(full), prompt_len=P)
            fwd = op.record.by_row()
        for r in (0, 1):
            fed = full[r][:-1]  # the last generated token is never fed back
            want = _expected(qwen, op.positions, _rows_of(rows), fed, P[r], r)
            assert list(gen.get(r, {})) == want, (positions, rows, r)
            assert gen.get(r, {}) == pytest.approx({p: fwd[r][p] for p in want}, rel=1e-4, abs=1e-5)
        if positions == "generated" and rows is None:
            assert [list(gen[r]) for r in (0, 1)] == [list(range(P[r], P[r] + 4)) for r in (0, 1)]


def test_rows_leaving_the_batch_keep_their_record(qwen):
    """A row that stops early leaves the decoding batch; the record still maps every
    decoding step to the user's row."""
    prompts = [PROMPT, SHORT, PROMPT + "Ok"]
    P = [len(qwen.encode(p)) for p in prompts]
    op = AddVector(site=SITE, vector=_vec(qwen.d_model, 6, 0.1), positions="generated", record=True)
    with qwen.intervene(op):
        free = [o.token_ids for o in qwen.generate(prompts, max_new_tokens=8, eos_token_ids=[])]
        stop = next(t for t in free[1][1:] if t not in free[0] + free[2])  # ends row 1 only
        outs = qwen.generate(prompts, max_new_tokens=8, eos_token_ids=[stop])
    assert len(outs[1].token_ids) < 8 == len(outs[0].token_ids) == len(outs[2].token_ids)
    for r, o in enumerate(outs):
        assert op.record.positions(r) == list(range(P[r], P[r] + len(o.token_ids) - 1))
        assert all(abs(d - 0.1) < 1e-5 for d in op.record[r].values())


def test_sample_shared_prefix_and_per_row_rules(qwen):
    P = len(qwen.encode(PROMPT))
    v = _vec(qwen.d_model, 7, 4.0)
    kw = dict(temperature=1.0, max_new_tokens=5, eos_token_ids=[], seed=3)
    # the prefix is prefilled once for all rows: its steered positions count in every row
    op = AddVector(site=SITE, vector=v, record=True)
    with qwen.intervene(op):
        steered = qwen.sample(PROMPT, 3, **kw)
    assert sorted(op.record.by_row()) == [0, 1, 2]
    assert all(op.record.positions(r) == list(range(P + 4)) for r in range(3))
    op = AddVector(site=SITE, vector=v, positions="generated", record=True)
    with qwen.intervene(op):
        qwen.sample(PROMPT, 3, **kw)
    assert all(op.record.positions(r) == list(range(P, P + 4)) for r in range(3))
    # a row mask: only the chosen rows are steered, prompt included (each batch prefills per row)
    plain = qwen.sample(PROMPT, 4, **kw)
    op = AddVector(site=SITE, vector=v, rows=[1, 3], record=True)
    with qwen.intervene(op):
        masked = qwen.sample(PROMPT, 4, batch_size=2, **kw)
    assert sorted(op.record.by_row()) == [1, 3]
    assert all(op.record.positions(r) == list(range(P + 4)) for r in (1, 3))
    assert masked[0].token_ids == plain[0].token_ids and masked[2].token_ids == plain[2].token_ids
    assert masked[1].token_ids == steered[1].token_ids != plain[1].token_ids


def test_the_record_holds_the_latest_run(qwen):
    op = AddVector(site=SITE, vector=torch.ones(qwen.d_model), positions="generated", record=True)
    P = [len(qwen.encode(PROMPT)), len(qwen.encode(SHORT))]
    with qwen.intervene(op):
        qwen.generate([PROMPT, SHORT], max_new_tokens=3, eos_token_ids=[])
        assert sorted(op.record.by_row()) == [0, 1]
        qwen.generate(SHORT, max_new_tokens=6, eos_token_ids=[])
    assert op.record.by_row() == {0: {p: pytest.approx(8.0) for p in range(P[1], P[1] + 5)}}
    assert repr(op.record) == "SteeredRecord(1 rows, 5 steered tokens)"
    op.record.clear()
    assert op.record.by_row() == {} and op.record[0] == {}


@pytest.mark.parametrize("kind", KINDS)
def test_each_operator_agrees_across_forward_generate_and_sample(qwen, kind):
    v = _vec(qwen.d_model, 8, 3.0)
    op = _op(kind, v, rescale=kind in ("add", "clamp"), positions="generated")
    P = len(qwen.encode(PROMPT))
    with qwen.intervene(op):
        out = qwen.generate(PROMPT, max_new_tokens=6, eos_token_ids=[])[0]
        rows = qwen.sample(PROMPT, 2, temperature=0.0, max_new_tokens=6, eos_token_ids=[])
        logits = qwen.forward([qwen.encode(PROMPT) + out.token_ids], prompt_len=P)[0]
    assert logits[P - 1:-1].argmax(-1).tolist() == out.token_ids == rows[0].token_ids == rows[1].token_ids
    assert op.record.positions(0) == list(range(P, P + 6))  # the forward pass: every generated token
    plain = qwen.forward([qwen.encode(PROMPT) + out.token_ids], prompt_len=P)[0]
    assert torch.equal(plain[:P], logits[:P]) and not torch.allclose(plain[P:], logits[P:])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_vector_on_every_pass_of_one_scope(qwen, kind):
    """A vector that requires grad (optimised steering vectors): each forward pass builds its
    own graph to it, so two passes in one scope backpropagate one after the other."""
    v = _vec(qwen.d_model, 9, 2.0).requires_grad_(True)
    op = _op(kind, v, rescale=kind == "ablate_then_add", positions=Span(3, 9))
    grads = []
    with qwen.intervene(op):
        for _ in range(2):
            qwen.forward(PROMPT, grad=True)[0, -1].logsumexp(-1).backward()
            grads.append(v.grad.clone())
            v.grad = None
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
    assert list(op.record[0]) == list(range(3, 9)) and not any(p.grad is not None for p in qwen.hf.parameters())

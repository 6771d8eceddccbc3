"""Steering directions (reference/steering.md §1) against direct computations: the methods
on fixed tensors, reading through the model against per-input captures, the PCA centring
flag on a constructed case, optimised vectors (loss falls; gradient = finite differences),
and the errors for bad contrast data."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probes.steering import (
    AnswerLetter,
    Contrast,
    DiffInMeans,
    LastToken,
    LogisticProbe,
    PCADiff,
    SpanMean,
    ThinkingMean,
    TokenIndex,
    contrast_vector,
    optimise_vector,
    probe_vector,
    read_contrast,
    target_nll,
)

POS = ["<bos><|user|>Sure, here is how to bake bread.", "<bos>Correct! 8", "<bos><|user|>Alice has 3 apples"]
NEG = ["<bos><|user|>I cannot help with that request.", "<bos>Wait, that is wrong", "<bos>no"]


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ----- methods on fixed activations ------------------------------------------------------------------
def test_diff_in_means_by_hand_in_float64():
    pos = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    neg = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    v = DiffInMeans()(pos, neg, paired=True)
    assert v.dtype == torch.float64 and v.tolist() == [1.5, 2.5]
    # unpaired sets of different sizes; float32 inputs whose float32 mean would round
    pos = torch.tensor([[16777216.0], [1.0], [1.0]])  # 2**24: float32 sums lose the 1s
    neg = torch.tensor([[0.0]])
    assert DiffInMeans()(pos, neg, paired=False).item() == (16777216 + 2) / 3


def test_pca_rank_one_and_against_eigendecomposition():
    u = torch.tensor([3.0, 0.0, 4.0])
    neg = torch.zeros(3, 3)
    pos = torch.stack([1.0 * u, 2.0 * u, -0.5 * u])  # two of three differences along +u
    for center in (False, True):
        v = PCADiff(center=center)(pos, neg, paired=True)
        torch.testing.assert_close(v, (u / 5).double())
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(8, 5, generator=g) + 1, torch.randn(8, 5, generator=g)
    d = (pos - neg).double().numpy()
    for center, x in ((False, d), (True, d - d.mean(0))):
        w, vecs = np.linalg.eigh(x.T @ x)
        want = torch.from_numpy(vecs[:, np.argmax(w)])
        if ((d @ want.numpy()) > 0).sum() < 4:  # majority of differences project positively
            want = -want
        got = PCADiff(center=center)(pos, neg, paired=True)
        torch.testing.assert_close(got, want, atol=1e-7, rtol=0)  # eigh of XᵀX: ~sqrt(eps) precision
        assert (torch.from_numpy(d) @ got > 0).sum() >= 4


def test_pca_sign_follows_the_majority_not_the_mean():
    u = torch.tensor([1.0, 0.0])
    pos, neg = torch.stack([10 * u, -1 * u, -1 * u]), torch.zeros(3, 2)
    v = PCADiff(center=False)(pos, neg, paired=True)
    torch.testing.assert_close(v, -u.double())  # mean projection is +8/3, but 2 of 3 are negative


def test_pca_center_flag_on_consistent_differences():
    """A mean shift of 5 along e1 with ±2 variation along e2: uncentred PC1 is the shift
    (diff-in-means); centred PC1 is the variation, orthogonal to it (steering.md §1 caveat)."""
    t = torch.tensor([2.0, -2.0, 2.0, -2.0, 2.0, -2.0])
    d = torch.stack([torch.full_like(t, 5.0), t, torch.zeros_like(t)], 1)
    neg = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    pos = neg + d
    dim = DiffInMeans()(pos, neg, paired=True)
    assert _cos(PCADiff(center=False)(pos, neg, paired=True), dim) > 0.999
    assert abs(_cos(PCADiff(center=True)(pos, neg, paired=True), dim)) < 1e-6


def test_logistic_probe_is_the_sklearn_weight_vector():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(10, 4, generator=g) + 0.7, torch.randn(7, 4, generator=g)
    w = LogisticProbe(C=0.5)(pos, neg, paired=False)
    x = np.concatenate([pos.double().numpy(), neg.double().numpy()])
    y = np.r_[np.ones(10), np.zeros(7)]
    want = LogisticRegression(C=0.5, max_iter=1000).fit(x, y).coef_[0]
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    assert float(w @ (pos.mean(0) - neg.mean(0)).double()) > 0


# ----- read-position rules ---------------------------------------------------------------------------
def test_read_position_rules_by_hand(qwen):
    ids = [5, 6, 7, 8, 9]
    assert LastToken()(ids) == [4]
    assert TokenIndex(-2)(ids) == [3] and TokenIndex(1)(ids) == [1]
    assert SpanMean(1, -1)(ids) == [1, 2, 3] and SpanMean()(ids) == [0, 1, 2, 3, 4]
    item = qwen.encode("<bos>Is it true? (A")
    assert AnswerLetter()(item + qwen.encode(")", add_special_tokens=False), qwen) == [len(item) - 1]
    with pytest.raises(ValueError, match="outside an input of 5 tokens"):
        TokenIndex(5)(ids)
    with pytest.raises(ValueError, match="selects no token"):
        SpanMean(3, 3)(ids)
    with pytest.raises(ValueError, match="no answer-letter token"):
        AnswerLetter()(qwen.encode("<bos>no letter here"), qwen)
    open_, close = qwen.ctx.think_open_id, qwen.ctx.think_close_id
    assert ThinkingMean()([5, open_, 6, 7, close, 8], qwen) == [2, 3]
    assert ThinkingMean()([5, open_, 6, 7], qwen) == [2, 3]  # still thinking: to the end
    with pytest.raises(ValueError, match="no <think> token"):
        ThinkingMean()([5, 6], qwen)
    with pytest.raises(ValueError, match="thinking of an input is empty"):
        ThinkingMean()([open_, close], qwen)


# ----- reading through the model ---------------------------------------------------------------------
@pytest.mark.parametrize("read", [LastToken(), TokenIndex(-2), SpanMean(1, None)], ids=repr)
def test_read_contrast_matches_per_input_captures(qwen, read):
    """Batched (left-padded) reads equal one capture per input at the rule's positions, averaged in float64."""
    acts = read_contrast(qwen, Contrast.pairs(zip(POS, NEG)), [1, 0], read=read, batch_size=2)
    assert acts.layers == (0, 1) and acts.read_position == repr(read)
    for texts, got in ((POS, acts.positive), (NEG, acts.negative)):
        for i, text in enumerate(texts):
            cap = qwen.capture(text, ["resid_post[0]", "resid_post[1]"])
            pos = read(qwen.encode(text), qwen)
            for L in (0, 1):
                want = cap[f"resid_post[{L}]"][0, pos].double().mean(0)
                torch.testing.assert_close(got[L][i], want, atol=1e-5, rtol=1e-5)
                assert got[L].dtype == torch.float64


def test_contrast_vector_is_the_difference_of_means_with_provenance(qwen):
    contrast = Contrast.sets(POS, NEG[:2])  # unpaired, 3 vs 2
    sv = contrast_vector(qwen, contrast, 1)
    last = [qwen.capture(t, "resid_post[1]")["resid_post[1]"][0, -1].double() for t in POS + NEG[:2]]
    want = torch.stack(last[:3]).mean(0) - torch.stack(last[3:]).mean(0)
    torch.testing.assert_close(sv[1], want, atol=1e-6, rtol=1e-5)
    assert sv.method == "DiffInMeans()" and sv.read_position == "LastToken()" and sv.site == "resid_post"
    assert sv.model_spec == qwen.spec and sv.weights_hash == qwen.weights_hash
    assert sv.data_hash == contrast.data_hash != Contrast.sets(POS, NEG).data_hash
    assert sv.raw_norms[1] == pytest.approx(float(want.norm()), rel=1e-5)
    # one read, several methods; the logistic probe also takes unpaired sets
    acts = read_contrast(qwen, contrast, 1)
    torch.testing.assert_close(acts.vector(LogisticProbe())[1], LogisticProbe()(acts.positive[1], acts.negative[1]))
    with pytest.raises(ValueError, match="PCADiff needs paired contrast data"):
        acts.vector(PCADiff(center=False))

    def library_mean(pos, neg):  # a steering-vectors-style aggregator: (pos, neg) only
        return pos.mean(0) - neg.mean(0)

    assert torch.equal(acts.vector(library_mean)[1], acts.vector()[1])
    assert acts.vector(library_mean).method.endswith("library_mean")
    with pytest.raises(ValueError, match=r"returned shape \(\); a method returns one vector of shape \(64,\)"):
        acts.vector(lambda pos, neg: pos.sum())


def test_probe_vector_from_a_trained_probe(qwen):
    acts = read_contrast(qwen, Contrast.pairs(zip(POS, NEG)), 1)
    x = torch.cat([acts.positive[1], acts.negative[1]]).numpy()
    clf = LogisticRegression(max_iter=1000).fit(x, np.r_[np.ones(3), np.zeros(3)])
    sv = probe_vector(qwen, 1, clf)
    np.testing.assert_array_equal(sv[1].numpy(), clf.coef_[0])
    assert sv.layers == (1,) and sv.model_spec == qwen.spec
    other = LogisticRegression().fit(np.random.default_rng(0).normal(size=(6, 32)), np.r_[np.ones(3), np.zeros(3)])
    with pytest.raises(ValueError, match="probe has width 32 but tiny:qwen3 has d_model 64.*retrain it on this model"):
        probe_vector(qwen, 1, other)


# ----- optimised vectors -----------------------------------------------------------------------------
CONTEXTS = ["<bos><|user|>Alice has 3 apples", "<bos>The answer is"]
TARGETS = [" and buys 5 more.", " \\boxed{8}"]


def test_optimised_vector_raises_target_likelihood(qwen):
    out = optimise_vector(qwen, CONTEXTS, TARGETS, 1, steps=15, batch_size=1)
    assert len(out.losses) == 16 and out.losses[-1] < out.losses[0] - 0.1
    assert out.losses[0] == pytest.approx(float(target_nll(qwen, CONTEXTS, TARGETS)), rel=1e-5)  # zeros init: unsteered
    steered = target_nll(qwen, CONTEXTS, TARGETS, out.vector[1], layer=1)
    assert float(steered) == pytest.approx(out.losses[-1], rel=1e-5)
    sv = out.vector
    assert sv.layers == (1,) and sv.method.startswith("optimised(steps=15, lr=0.1") and sv.read_position is None
    assert sv.model_spec == qwen.spec and len(sv.data_hash) == 64
    assert all(p.grad is None and p.requires_grad for p in qwen.hf.parameters())  # weights untouched


def test_gradient_through_the_model_equals_finite_differences(tiny_tokenizer):
    """d NLL / dv from forward(grad=True) + AddVector, against central differences in float64."""
    from probes.models.load import from_hf
    from tests.tiny import build_model

    model = from_hf(build_model("llama", vocab_size=len(tiny_tokenizer)).double(), tiny_tokenizer, spec="tiny:llama64")
    g = torch.Generator().manual_seed(3)
    v = (0.1 * torch.randn(model.d_model, generator=g, dtype=torch.float64)).requires_grad_(True)

    def loss(vec, grad=False):
        return target_nll(model, CONTEXTS, TARGETS, vec, layer=0, positions=[1, 2, 3, 4, 5], grad=grad)

    (grad,) = torch.autograd.grad(loss(v, grad=True), v)
    assert float(grad.norm()) > 0
    eps = 1e-3
    for _ in range(3):
        u = torch.randn(model.d_model, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (loss(v + eps * u) - loss(v - eps * u)) / (2 * eps)
        # AddVector adds in float32, so agreement is to about float32 precision / eps
        assert float(grad @ u) == pytest.approx(float(fd), rel=1e-3, abs=1e-6)


def test_capture_with_grad_by_hand(qwen):
    """d Σ resid_post[1] / dv for v added there at two positions is 2 per coordinate."""
    v = torch.zeros(qwen.d_model, requires_grad=True)
    from probes.models import AddVector

    with qwen.intervene(AddVector(site="resid_post[1]", vector=v, positions=[2, 5])):
        h = qwen.capture(POS[0], "resid_post[1]", grad=True)["resid_post[1]"]
        plain = qwen.capture(POS[0], "resid_post[1]")["resid_post[1]"]
    (g,) = torch.autograd.grad(h.sum(), v)
    torch.testing.assert_close(g, torch.full_like(v, 2.0))
    assert plain.grad_fn is None and not plain.requires_grad
    assert all(p.grad is None and p.requires_grad for p in qwen.hf.parameters())


# ----- bad input -------------------------------------------------------------------------------------
def test_bad_contrast_data():
    with pytest.raises(ValueError, match="the negative set is empty"):
        Contrast.sets(["a"], [])
    with pytest.raises(ValueError, match="the positive set is empty"):
        Contrast.pairs([])
    with pytest.raises(ValueError, match="2 positive and 1 negative.*Contrast.sets"):
        Contrast(("a", "b"), ("c",), paired=True)
    with pytest.raises(ValueError, match="empty text"):
        Contrast.sets(["a", ""], ["b"])
    with pytest.raises(ValueError, match="the negative set is empty"):
        DiffInMeans()(torch.ones(2, 3), torch.ones(0, 3))
    with pytest.raises(TypeError, match="center"):
        PCADiff()


def test_bad_layers_and_optimiser_settings(qwen):
    c = Contrast.pairs(zip(POS, NEG))
    with pytest.raises(ValueError, match=r"layer 2 out of range for read_contrast: tiny:qwen3 has layers 0..1"):
        read_contrast(qwen, c, [0, 2])
    with pytest.raises(ValueError, match="needs at least one layer"):
        read_contrast(qwen, c, [])
    with pytest.raises(ValueError, match="residual-width site"):
        read_contrast(qwen, c, 0, site="attn_pattern")
    with pytest.raises(ValueError, match="layer 7 out of range"):
        optimise_vector(qwen, CONTEXTS, TARGETS, 7)
    with pytest.raises(ValueError, match="2 contexts but 1 targets"):
        optimise_vector(qwen, CONTEXTS, TARGETS[:1], 0)
    with pytest.raises(ValueError, match="lr must be a finite positive number"):
        optimise_vector(qwen, CONTEXTS, TARGETS, 0, lr=float("nan"))
    with pytest.raises(ValueError, match=r"init has shape \(32,\) but tiny:qwen3 needs \(64,\)"):
        optimise_vector(qwen, CONTEXTS, TARGETS, 0, init=torch.zeros(32))

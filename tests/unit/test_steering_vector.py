"""SteeringVector (reference/steering.md §1, §2, §6): save/load and the steering-vectors
layout round trip, every field; ``intervention`` gives the model layer's AddVector /
ProjectOut (hand-computed in a forward pass, and in generation); bad input errors."""

from dataclasses import replace

import pytest
import torch

from probes.models import AddVector, ProjectOut
from probes.steering import Contrast, Operator, SteeringVector, contrast_vector

PROMPT = "<bos><|user|>Alice has 3 apples and buys 5 more.<|end|><|assistant|><think>"


@pytest.fixture
def qwen(tiny_models):
    return tiny_models("qwen3")


def _vector(width=64, layers=(0, 1), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        vectors={L: torch.randn(width, generator=g).to(dtype) for L in layers},
        method="PCADiff(center=False)", read_position="TokenIndex(index=-2)", data_hash="ab" * 32,
        model_spec="tiny:qwen3", weights_hash="cd" * 32,
    )


def test_save_load_round_trip_every_field(tmp_path):
    sv = _vector().normalized()
    assert all(n != pytest.approx(1.0) for n in sv.raw_norms.values())  # raw norms survive normalising
    sv.save(tmp_path / "dir" / "refusal")
    back = SteeringVector.load(tmp_path / "dir" / "refusal")
    assert back == sv
    for name in ("method", "read_position", "data_hash", "model_spec", "weights_hash", "site", "raw_norms"):
        assert getattr(back, name) == getattr(sv, name), name
    for L in sv.layers:
        assert back[L].dtype == torch.float64 and torch.equal(back[L], sv[L])
    other = SteeringVector(vectors={0: torch.ones(3, dtype=torch.float32)}, method="DiffInMeans()", site="mlp_out")
    other.save(tmp_path / "other.safetensors")
    assert SteeringVector.load(tmp_path / "other") == other and other.read_position is None
    assert back != other


def test_steering_vectors_layout_round_trip(qwen):
    sv = replace(_vector(dtype=torch.float32), weights_hash=qwen.weights_hash, raw_norms=None)
    layout = sv.to_steering_vectors()
    assert list(layout) == [0, 1] and all(torch.equal(layout[L], sv[L]) for L in sv.layers)
    assert sv.library_layer_type == "decoder_block"
    layout[0].zero_()  # a copy: the value object is not changed through it
    assert float(sv[0].norm()) > 0
    back = SteeringVector.from_steering_vectors(sv.to_steering_vectors(), model=qwen, method=sv.method,
                                                read_position=sv.read_position, data_hash=sv.data_hash)
    assert back == sv  # model= records the same spec and weights hash
    assert back.weights_hash == qwen.weights_hash

    class Library:  # the shape of steering_vectors.SteeringVector
        layer_activations = {-1: torch.ones(64)}
        layer_type = "mlp"

    imported = SteeringVector.from_steering_vectors(Library(), model=qwen)
    assert imported.layers == (1,) and imported.site == "mlp_out" and imported.method == "steering-vectors"
    assert imported.library_layer_type == "mlp"
    with pytest.raises(ValueError, match="unknown steering-vectors layer_type 'attn'"):
        SteeringVector.from_steering_vectors({0: torch.ones(64)}, layer_type="attn")
    with pytest.raises(ValueError, match="steering-vectors has no layer_type for site 'resid_pre'"):
        SteeringVector(vectors={0: torch.ones(4)}, method="m", site="resid_pre").to_steering_vectors()


def test_intervention_adds_and_ablates_by_hand(qwen):
    sv = contrast_vector(qwen, Contrast.pairs([(PROMPT, "<bos>I cannot help with that request.")]), [0, 1])
    base = qwen.capture(PROMPT, "resid_post[1]")["resid_post[1]"]
    add = sv.intervention(1, scale=2.5, positions=[2, 5], model=qwen)
    assert isinstance(add, AddVector) and add.site == "resid_post[1]"
    with qwen.intervene(add):
        got = qwen.capture(PROMPT, "resid_post[1]")["resid_post[1]"]
    want = base.clone()
    want[0, [2, 5]] += 2.5 * sv[1].float()
    torch.testing.assert_close(got, want)

    ablate = sv.intervention(1, operator="ablate")
    assert isinstance(ablate, ProjectOut)
    with qwen.intervene(ablate):
        got = qwen.capture(PROMPT, "resid_post[1]")["resid_post[1]"]
    u = (sv[1] / sv[1].norm()).float()
    torch.testing.assert_close(got[0], base[0] - (base[0] @ u)[:, None] * u, atol=1e-5, rtol=1e-5)


def test_intervention_applies_in_generate(qwen):
    sv = _vector(seed=1)
    plain = qwen.generate(PROMPT, max_new_tokens=6)[0]
    with qwen.intervene(sv.intervention(0, scale=8.0)):
        steered = qwen.generate(PROMPT, max_new_tokens=6)[0]
    with qwen.intervene(AddVector(site="resid_post[0]", vector=sv[0], scale=8.0)):
        by_hand = qwen.generate(PROMPT, max_new_tokens=6)[0]
    assert steered.token_ids == by_hand.token_ids != plain.token_ids


def test_bad_input(qwen):
    narrow = SteeringVector(vectors={1: torch.ones(32)}, method="m", model_spec="tiny:other")
    with pytest.raises(ValueError, match="width 32 \\(made on tiny:other\\) but tiny:qwen3 has d_model 64.*rebuild it"):
        narrow.check(qwen)
    with pytest.raises(ValueError, match="width 32"):
        with qwen.intervene(narrow.intervention()):
            pass
    wide = _vector(layers=(0, 5))
    with pytest.raises(ValueError, match=r"layer 5 out of range .*tiny:qwen3 has layers 0..1"):
        wide.intervention(5, model=qwen)
    with pytest.raises(ValueError, match=r"layer 3 is not in this steering vector: it has layers \[0, 5\]"):
        wide.intervention(3)
    with pytest.raises(ValueError, match=r"has layers \[0, 5\]: pass layer="):
        wide.intervention()
    for alpha in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="scale \\(alpha\\) is .*: pass a finite number"):
            wide.intervention(0, scale=alpha)
    with pytest.raises(ValueError, match="scale applies to operator='add' only"):
        wide.intervention(0, scale=2.0, operator=Operator.ABLATE)
    with pytest.raises(ValueError, match="unknown operator 'clamp'"):
        wide.intervention(0, operator="clamp")
    with pytest.raises(ValueError, match="NaN or infinite"):
        SteeringVector(vectors={0: torch.tensor([1.0, float("nan")])}, method="m")
    with pytest.raises(ValueError, match="different widths"):
        SteeringVector(vectors={0: torch.ones(3), 1: torch.ones(4)}, method="m")
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector(vectors={}, method="m")
    with pytest.raises(ValueError, match="not a layer index"):
        SteeringVector(vectors={-1: torch.ones(3)}, method="m")
    with pytest.raises(ValueError, match="residual-width site"):
        SteeringVector(vectors={0: torch.ones(3)}, method="m", site="attn_pattern")

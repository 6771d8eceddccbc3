"""probes.vectors.arithmetic: v = θ_rl − θ_sft, θ + α·v and the norm-matched random control
(task_vectors.md §1, §3, §6, §7), checked against hand computations on tiny modules."""

from __future__ import annotations

import pytest
import torch

from probes.vectors import apply_vector, l2_norm, random_like, task_vector, unique_parameters
from probes.vectors.sources import _seed


class Tied(torch.nn.Module):
    """An embedding tied to the output head, plus one norm weight: three names, two tensors."""

    def __init__(self, emb, norm):
        super().__init__()
        self.embed = torch.nn.Embedding(2, 2)
        self.norm = torch.nn.Parameter(torch.tensor(norm))
        self.head = torch.nn.Linear(2, 2, bias=False)
        self.head.weight = self.embed.weight  # tied, as in Qwen2.5 0.5B–3B and the zoo organisms
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor(emb))


def pair(dtype=torch.float32):
    sft = Tied([[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0]).to(dtype)
    rl = Tied([[1.5, 2.0], [3.0, 3.0]], [1.0, 0.75]).to(dtype)
    return rl, sft


def test_tied_tensors_are_listed_once():
    rl, _ = pair()
    assert list(unique_parameters(rl)) == ["norm", "embed.weight"]


def test_task_vector_by_hand():
    rl, sft = pair()
    v = task_vector(rl, sft)
    assert list(v) == ["norm", "embed.weight"]  # no separate head.weight: the tied tensor is one tensor
    assert torch.equal(v["embed.weight"], torch.tensor([[0.5, 0.0], [0.0, -1.0]]))
    assert torch.equal(v["norm"], torch.tensor([0.0, -0.25]))
    assert l2_norm(v) == pytest.approx((0.25 + 1.0 + 0.0625) ** 0.5)


def test_deltas_are_float32_even_from_bf16_weights():
    # 1 and 1 + 2⁻⁷ are neighbouring bf16 numbers; their difference is exact in float32
    sft = Tied([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0]).to(torch.bfloat16)
    rl = Tied([[1.0078125, 1.0], [1.0, 1.0]], [1.0, 1.0]).to(torch.bfloat16)
    v = task_vector(rl, sft)
    assert v["embed.weight"].dtype == torch.float32 and v["embed.weight"][0, 0].item() == 2**-7


def test_apply_vector_by_hand_moves_the_tied_tensor_once_and_restores_bit_for_bit():
    rl, sft = pair()
    v = task_vector(rl, sft)
    before = {k: t.clone() for k, t in sft.state_dict().items()}
    with apply_vector(sft, v, 1.0) as moved:
        assert moved is sft and torch.equal(sft.embed.weight, rl.embed.weight) and torch.equal(sft.norm, rl.norm)
        assert sft.head.weight is sft.embed.weight  # still tied: the one tensor moved once
    with apply_vector(sft, v, -0.5):
        assert torch.equal(sft.embed.weight, torch.tensor([[0.75, 2.0], [3.0, 4.5]]))
        assert torch.equal(sft.norm, torch.tensor([1.0, 1.125]))
    assert all(torch.equal(t, before[k]) for k, t in sft.state_dict().items())


def test_apply_vector_keeps_the_dtype_and_restores_after_an_error():
    rl, sft = pair(torch.bfloat16)
    v = task_vector(rl, sft)
    before = [p.clone() for p in sft.parameters()]
    with pytest.raises(RuntimeError, match="inside"):
        with apply_vector(sft, v, 0.3):
            assert all(p.dtype == torch.bfloat16 for p in sft.parameters())
            want = (before[1].float() + 0.3 * v["embed.weight"]).to(torch.bfloat16)
            assert torch.equal(sft.embed.weight, want)
            raise RuntimeError("inside")
    assert all(torch.equal(p, q) for p, q in zip(sft.parameters(), before))
    with pytest.raises(ValueError, match="finite"):
        with apply_vector(sft, v, float("nan")):
            pass


def test_mismatched_tensors_fail_loudly():
    rl, sft = pair()
    untied = Tied([[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0])
    untied.head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    with pytest.raises(ValueError, match="head.weight"):
        task_vector(untied, sft)
    with pytest.raises(ValueError, match="shape"):
        with apply_vector(sft, {"norm": torch.zeros(3), "embed.weight": torch.zeros(2, 2)}, 1.0):
            pass


def test_random_control_is_norm_matched_per_tensor_and_seeded():
    rl, sft = pair()
    v = task_vector(rl, sft)
    r = random_like(v, seed=3)
    assert list(r) == list(v)
    for name in v:
        assert r[name].norm().item() == pytest.approx(v[name].norm().item(), rel=1e-6)
    g = torch.Generator().manual_seed(_seed(3, "norm"))  # seeded by (seed, tensor name), by hand
    first = torch.randn(2, generator=g)
    assert torch.allclose(r["norm"], first * (0.25 / first.norm()))
    assert torch.equal(random_like({"norm": v["norm"]}, seed=3)["norm"], r["norm"])  # independent of the other tensors
    assert all(torch.equal(a, b) for a, b in zip(random_like(v, seed=3).values(), r.values()))
    assert not torch.equal(random_like(v, seed=4)["embed.weight"], r["embed.weight"])


def test_a_served_model_takes_no_in_memory_vector():
    """A server answers for its own weights (issue #15): asking it to add v in memory is refused before any request."""
    from probes.engines import OpenAIEngine
    from probes.vectors import greedy_correct

    engine = OpenAIEngine("http://127.0.0.1:9/v1", "merged")
    with pytest.raises(ValueError, match="serves fixed weights.*serve the merged checkpoint"):
        greedy_correct(None, ["2+2?"], ["4"], vector={"w": torch.zeros(1)}, engine=engine)


def test_checkpoint_dir_by_spec(tmp_path, monkeypatch):
    from probes.models.zoo_registry import zoo_path
    from probes.vectors.checkpoint import checkpoint_dir

    assert checkpoint_dir("zoo:tv-rl") == zoo_path("tv-rl")
    assert checkpoint_dir(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="neither a checkpoint directory"):
        checkpoint_dir("no-such-thing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not be fetched from the Hugging Face hub.*pass its directory"):
        checkpoint_dir("someone/absent-model-xyz")


def hub_cache_copy(cache, repo: str, src, commit: str = "0" * 40):
    """``src``'s files laid out as a Hugging Face hub cache holds a download of ``repo`` at ``commit``."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    shutil.copytree(src, snap)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def test_hub_names_resolve_through_the_hub_cache(tmp_path, monkeypatch):
    """The hub path of ``checkpoint_dir`` is huggingface_hub's own ``snapshot_download``: offline it
    answers from the cache, so a checkpoint laid out there is found by its hub name and extracted."""
    from huggingface_hub import constants

    from probes.cli import main
    from probes.models.zoo_registry import zoo_path
    from probes.vectors.checkpoint import checkpoint_dir

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    rl = hub_cache_copy(tmp_path / "hub", "someone/tv-rl", zoo_path("tv-rl"))
    assert checkpoint_dir("someone/tv-rl") == rl
    assert main(["vectors", "extract", "--a", "someone/tv-rl", "--b", "zoo:tv-sft", "--out", str(tmp_path / "v")]) == 0
    import json

    source = json.loads((tmp_path / "v" / "vectors_manifest.json").read_text())["source"]
    assert (source["a"], source["b"]) == (str(rl), str(zoo_path("tv-sft")))

"""probes.vectors streamed merge and extract (task_vectors.md §1, §3, §5, §7; issue #14), checked against
in-memory state-dict arithmetic on tiny random Qwen2 checkpoints saved sharded and unsharded.

Every checkpoint here is built from a config object with a fixed seed; every tensor (norms and biases
included) is perturbed so that each donor differs from the others everywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from probes.io import PickleRefusedError
from probes.vectors import (
    Checkpoint,
    Difference,
    Manifest,
    Policy,
    RandomLike,
    SavedVector,
    Term,
    apply_vector,
    extract,
    merge,
    random_like,
    task_vector,
)
from probes.vectors.sources import MANIFEST, _seed
from probes.vectors.stream import INDEX, ShardWriter

EMB, HEAD = "model.embed_tokens.weight", "lm_head.weight"
SPECS = {  # name → (seed, build options); a/b (RL/SFT) and c/d are two donor pairs; t the target
    "t": (0, {}),
    "t_sharded": (0, {"shard": "8KB"}),  # the same weights as t, in several shards
    "t_bf16": (0, {"dtype": torch.bfloat16}),
    "a": (1, {"shard": "20KB"}),
    "b": (2, {}),
    "c": (3, {}),
    "d": (4, {"shard": "20KB"}),
    "tt": (0, {"tied": True}),
    "at": (1, {"tied": True, "shard": "20KB"}),
    "bt": (2, {"tied": True}),
    "t70": (0, {"vocab": 70}),
    "a70": (1, {"vocab": 70}),
    "b70": (2, {"vocab": 70, "shard": "20KB"}),
    "t_wide": (0, {"intermediate": 48}),
    "t3": (0, {"layers": 3}),
    "llama": (0, {"arch": "llama"}),
}


def _build(path: Path, seed: int, *, tied=False, vocab=64, layers=2, intermediate=32, arch="qwen2",
           dtype=torch.float32, shard=None) -> Path:
    import transformers as T

    cfg_cls, model_cls = {"qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM), "llama": (T.LlamaConfig, T.LlamaForCausalLM)}[arch]
    cfg = cfg_cls(vocab_size=vocab, hidden_size=16, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for p in model.parameters():  # norms start at 1 and biases at 0 in every model: make them differ too
            p.add_(0.1 * torch.randn_like(p))
    model.to(dtype).save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            seed, opts = SPECS[name]
            built[name] = str(_build(root / name, seed, **opts))
        return built[name]

    return get


def stored(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read with safetensors directly (not through Checkpoint)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out |= load_file(f)
    return out


def diff(a, b) -> dict[str, torch.Tensor]:
    sa, sb = stored(a), stored(b)
    return {n: sa[n].float() - sb[n].float() for n in sa}


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def logits(model) -> torch.Tensor:
    ids = (torch.arange(14).reshape(2, 7) * 5) % 64
    with torch.no_grad():
        return model(input_ids=ids).logits


def config(path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


# -- arithmetic against the in-memory computation ----------------------------------------------------


@pytest.mark.parametrize("target,shard_bytes", [("t", 1 << 30), ("t_sharded", 6000)])
def test_merge_equals_state_dict_arithmetic_sharded_and_unsharded(ckpt, tmp_path, target, shard_bytes):
    out = tmp_path / "out"
    m = merge(ckpt(target), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3)], out, shard_bytes=shard_bytes)
    t, v, got = stored(ckpt(target)), diff(ckpt("a"), ckpt("b")), stored(out)
    assert set(got) == set(t) and len(t) == 27
    for name in t:
        assert same(got[name], (t[name].float() + 0.3 * v[name]).to(t[name].dtype)), name
    assert {r.action for r in m.tensors} == {"applied"} and [r.name for r in m.tensors] == Checkpoint(ckpt(target)).names
    files = sorted(p.name for p in out.glob("*.safetensors"))
    if shard_bytes > 1 << 20:
        assert files == ["model.safetensors"] and not (out / INDEX).exists()
    else:
        assert len(files) >= 4
        index = json.loads((out / INDEX).read_text())
        assert set(index["weight_map"]) == set(t) and set(index["weight_map"].values()) == set(files)
        for f in files:  # the index names the shard that really holds each tensor
            assert {n for n, g in index["weight_map"].items() if g == f} == set(stored_file(out / f))
        assert index["metadata"]["total_size"] == sum(x.numel() * x.element_size() for x in got.values())
    assert config(out)["tie_word_embeddings"] is False and (out / "generation_config.json").is_file()
    assert not list(out.glob(".shard-*"))


def stored_file(f) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f)


def test_magnitude_mask_by_hand_and_in_merge(ckpt, tmp_path):
    """§2 magnitude masks: per tensor the int(density·n) largest |v| entries kept, the rest zero; merge
    applies them before α, and records the density in the manifest."""
    from probes.vectors import magnitude_mask

    v = torch.tensor([[0.5, -3.0, 1.0], [2.0, -0.1, 0.0]])
    assert magnitude_mask(v.clone(), 0.5).tolist() == [[0.0, -3.0, 1.0], [2.0, 0.0, 0.0]]  # 3 of 6 kept
    assert magnitude_mask(v.clone(), 0.1).abs().sum() == 0  # int(0.6) = 0 entries
    assert torch.equal(magnitude_mask(v.clone(), 1.0), v)
    out = tmp_path / "out"
    m = merge(ckpt("a"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=-1.0, density=0.25)], out)
    t, d, got = stored(ckpt("a")), diff(ckpt("a"), ckpt("b")), stored(out)
    for name in t:
        kept = magnitude_mask(d[name].clone(), 0.25)
        assert (kept != 0).sum() <= int(0.25 * kept.numel())
        assert same(got[name], (t[name].float() - kept).to(t[name].dtype)), name
    assert m.terms[0]["density"] == 0.25 and "magnitude density 0.25" in m.summary()
    with pytest.raises(ValueError, match=r"density = 0: the share of each tensor's entries kept, in \(0, 1\]"):
        Term(Difference(ckpt("a"), ckpt("b")), density=0)


def test_sharded_and_unsharded_targets_give_the_same_bits(ckpt, tmp_path):
    term = Term(Difference(ckpt("a"), ckpt("b")), alpha=0.6)
    merge(ckpt("t"), [term], tmp_path / "one")
    merge(ckpt("t_sharded"), [term], tmp_path / "many", shard_bytes=5000)
    one, many = stored(tmp_path / "one"), stored(tmp_path / "many")
    assert set(one) == set(many) and all(same(one[n], many[n]) for n in one)


def test_several_terms_with_their_own_alpha(ckpt, tmp_path):
    # α = 0.5 and −0.25 scale exactly, so Σ α_k·v_k is rounded once whatever the order of the sum
    terms = [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.5), Term(Difference(ckpt("c"), ckpt("d")), alpha=-0.25)]
    m = merge(ckpt("t"), terms, tmp_path / "out")
    t, v1, v2, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), diff(ckpt("c"), ckpt("d")), stored(tmp_path / "out")
    for name in t:
        delta = 0.5 * v1[name] + -0.25 * v2[name]
        assert same(got[name], t[name] + delta), name
        rec = next(r for r in m.tensors if r.name == name)
        assert rec.delta_norm == pytest.approx(float(delta.norm()), rel=1e-6)
    assert [x["alpha"] for x in m.terms] == [0.5, -0.25]


def test_per_module_alpha_first_match_wins(ckpt, tmp_path):
    alphas = {r"layers\.0\.": 0.5, r"mlp\.": 2.0, r"self_attn\.": -0.75}
    merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3, alphas=alphas)], tmp_path / "out")
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(tmp_path / "out")

    def by_hand(name):
        if ".layers.0." in name:
            return 0.5
        if ".mlp." in name:
            return 2.0
        if ".self_attn." in name:
            return -0.75
        return 0.3

    assert by_hand("model.layers.0.mlp.up_proj.weight") == 0.5 and by_hand("model.layers.1.mlp.up_proj.weight") == 2.0
    for name in t:
        assert same(got[name], t[name] + by_hand(name) * v[name]), name


def test_mask_leaves_unmatched_tensors_bit_for_bit(ckpt, tmp_path):
    m = merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=1.0, mask=r"\.mlp\.")], tmp_path / "out")
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(tmp_path / "out")
    moved = [n for n in t if ".mlp." in n]
    assert len(moved) == 6
    for name in t:
        want = t[name] + v[name] if name in moved else t[name]
        assert same(got[name], want), name
    rec = {r.name: r for r in m.tensors}
    assert all(rec[n].action == "applied" for n in moved)
    kept = [r for r in m.tensors if r.name not in moved]
    assert all(r.action == "kept" and "outside its mask" in r.reason and r.delta_norm == 0.0 for r in kept)


def test_negation(ckpt, tmp_path):
    merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=-1)], tmp_path / "out")
    t, a, b, got = stored(ckpt("t")), stored(ckpt("a")), stored(ckpt("b")), stored(tmp_path / "out")
    for name in t:
        assert same(got[name], t[name] - (a[name] - b[name])), name


def test_bf16_target_keeps_its_dtype_and_arithmetic_is_float32(ckpt, tmp_path):
    merge(ckpt("t_bf16"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3)], tmp_path / "out")
    t, v, got = stored(ckpt("t_bf16")), diff(ckpt("a"), ckpt("b")), stored(tmp_path / "out")
    for name in t:
        assert got[name].dtype == torch.bfloat16
        assert same(got[name], (t[name].float() + 0.3 * v[name]).to(torch.bfloat16)), name
    merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3)], tmp_path / "as_bf16", dtype="bfloat16")
    t32, got16 = stored(ckpt("t")), stored(tmp_path / "as_bf16")
    assert all(same(got16[n], (t32[n] + 0.3 * v[n]).to(torch.bfloat16)) for n in t32)
    assert config(tmp_path / "as_bf16")["dtype"] == "bfloat16"


def test_norm_matched_random_control(ckpt, tmp_path):
    src = RandomLike(Difference(ckpt("a"), ckpt("b")), seed=7)
    m = merge(ckpt("t"), [Term(src, alpha=0.5)], tmp_path / "out")
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(tmp_path / "out")
    noise = random_like(v, seed=7)
    names = list(t)
    backwards = {n: src.delta(n) for n in reversed(names)}  # the order of reading changes nothing
    for name in names:
        g = torch.Generator().manual_seed(_seed(7, name))  # seeded by (seed, tensor name), by hand
        raw = torch.randn(v[name].shape, generator=g)
        assert torch.allclose(noise[name], raw * (v[name].norm() / raw.norm()), rtol=1e-6, atol=0)
        assert noise[name].norm().item() == pytest.approx(v[name].norm().item(), rel=1e-5)
        assert same(backwards[name], noise[name])
        assert same(got[name], t[name] + 0.5 * noise[name]), name
        assert not torch.equal(noise[name], v[name])
    assert not torch.equal(noise["model.layers.0.self_attn.q_proj.weight"], noise["model.layers.1.self_attn.q_proj.weight"])
    assert not torch.equal(RandomLike(Difference(ckpt("a"), ckpt("b")), seed=8).delta(EMB), noise[EMB])
    # the in-memory control over the loaded donors' task vector gives the same tensors
    in_memory = random_like(task_vector(load(ckpt("a")), load(ckpt("b"))), seed=7)
    assert set(in_memory) == set(noise) and all(same(in_memory[n], noise[n]) for n in names)
    rec = {r.name: r for r in m.tensors}
    assert all(rec[n].delta_norm == pytest.approx(0.5 * v[n].norm().item(), rel=1e-5) for n in names)
    assert m.terms[0]["source"]["kind"] == "random" and m.terms[0]["source"]["seed"] == 7


# -- tied and untied ----------------------------------------------------------------------------------


def test_tied_target_untied_donors_drops_the_donor_head(ckpt, tmp_path):
    out = tmp_path / "out"
    m = merge(ckpt("tt"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.4)], out)
    t, v, got = stored(ckpt("tt")), diff(ckpt("a"), ckpt("b")), stored(out)
    assert HEAD not in t and HEAD not in got and set(got) == set(t)
    assert m.dropped == [{"vector": "0", "tensor": HEAD, "reason": m.dropped[0]["reason"]}] and "tied" in m.dropped[0]["reason"]
    assert HEAD not in {r.name for r in m.tensors}
    for name in t:
        assert same(got[name], t[name] + 0.4 * v[name]), name
    assert config(out)["tie_word_embeddings"] is True and m.target["tied"] is True
    model = load(out)  # the head is the moved embedding, moved once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert same(model.lm_head.weight.detach(), t[EMB] + 0.4 * v[EMB])
    assert "dropped: vector 0 lm_head.weight" in m.summary()


@pytest.mark.parametrize("tied", ["mirror", "skip"])
def test_untied_target_tied_donors(ckpt, tmp_path, tied):
    out = tmp_path / "out"
    m = merge(ckpt("t"), [Term(Difference(ckpt("at"), ckpt("bt")), alpha=0.4)], out, policy=Policy.preset("all", tied=tied))
    t, v, got = stored(ckpt("t")), diff(ckpt("at"), ckpt("bt")), stored(out)
    assert HEAD not in v and HEAD in got and set(got) == set(t) and m.dropped == []
    head = next(r for r in m.tensors if r.name == HEAD)
    if tied == "mirror":
        assert same(got[HEAD], t[HEAD] + 0.4 * v[EMB])  # the donors' effective head delta is their embedding delta
        assert head.action == "mirrored" and head.delta_norm == pytest.approx(0.4 * v[EMB].norm().item(), rel=1e-6)
    else:
        assert same(got[HEAD], t[HEAD])
        assert head.action == "kept" and "tied=skip" in head.reason and head.delta_norm == 0.0
    for name in t:
        if name != HEAD:
            assert same(got[name], t[name] + 0.4 * v[name]), name
    assert config(out)["tie_word_embeddings"] is False


def test_tied_target_tied_donors_logits_equal_apply_vector(ckpt, tmp_path):
    out = tmp_path / "out"
    merge(ckpt("tt"), [Term(Difference(ckpt("at"), ckpt("bt")), alpha=0.7)], out)
    assert HEAD not in stored(out) and config(out)["tie_word_embeddings"] is True
    model = load(ckpt("tt"))
    with apply_vector(model, Difference(ckpt("at"), ckpt("bt")), 0.7):
        want = logits(model)
    merged = load(out)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(merged), want)


# -- vocabulary mismatches ----------------------------------------------------------------------------


def test_vocab_mismatch_error_names_the_tensors_and_the_fix(ckpt, tmp_path):
    for target, a, b in (("t", "a70", "b70"), ("t70", "a", "b")):
        with pytest.raises(ValueError) as e:
            merge(ckpt(target), [Term(Difference(ckpt(a), ckpt(b)))], tmp_path / "out")
        msg = str(e.value)
        assert EMB in msg and HEAD in msg and "common-rows" in msg and "skip" in msg
        assert "2 tensor mismatches" in msg and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target,a,b", [("t", "a70", "b70"), ("t70", "a", "b")])
def test_vocab_mismatch_common_rows(ckpt, tmp_path, target, a, b):
    out = tmp_path / "out"
    m = merge(ckpt(target), [Term(Difference(ckpt(a), ckpt(b)), alpha=0.5)], out,
              policy=Policy.preset("all", vocab="common-rows"))
    t, v, got = stored(ckpt(target)), diff(ckpt(a), ckpt(b)), stored(out)
    rows = 64
    for name in (EMB, HEAD):
        assert got[name].shape == t[name].shape
        assert same(got[name][:rows], t[name][:rows] + 0.5 * v[name][:rows]), name
        assert same(got[name][rows:], t[name][rows:])  # rows the donors lack: untouched (empty for t)
        rec = next(r for r in m.tensors if r.name == name)
        assert rec.action == "truncated" and f"[0, {rows})" in rec.reason
        assert rec.delta_norm == pytest.approx(0.5 * v[name][:rows].norm().item(), rel=1e-6)
    assert got[EMB].shape[0] == (70 if target == "t70" else 64)
    for name in t:
        if name not in (EMB, HEAD):
            assert same(got[name], t[name] + 0.5 * v[name]), name


@pytest.mark.parametrize("target,a,b", [("t", "a70", "b70"), ("t70", "a", "b")])
def test_vocab_mismatch_skip(ckpt, tmp_path, target, a, b):
    out = tmp_path / "out"
    merge(ckpt(target), [Term(Difference(ckpt(a), ckpt(b)))], out, policy=Policy.preset("all", vocab="skip"))
    t, v, got = stored(ckpt(target)), diff(ckpt(a), ckpt(b)), stored(out)
    for name in t:
        want = t[name] if name in (EMB, HEAD) else t[name] + v[name]
        assert same(got[name], want), name
    rec = {r.name: r for r in Manifest.load(out).tensors}
    for name in (EMB, HEAD):
        assert rec[name].action == "kept" and "vocab=skip" in rec[name].reason and rec[name].delta_norm == 0.0


def test_donors_of_different_vocabularies(ckpt):
    with pytest.raises(ValueError, match="common-rows"):
        Difference(ckpt("a70"), ckpt("b"))
    d = Difference(ckpt("a70"), ckpt("b"), common_rows=True)
    a, b = stored(ckpt("a70")), stored(ckpt("b"))
    assert d.shape(EMB) == (64, 16) and same(d.delta(EMB), a[EMB][:64] - b[EMB])


# -- other mismatches and refusals --------------------------------------------------------------------


def test_other_shape_mismatch_is_one_error_listing_the_tensors(ckpt, tmp_path):
    with pytest.raises(ValueError) as e:
        merge(ckpt("t_wide"), [Term(Difference(ckpt("a"), ckpt("b")))], tmp_path / "out",
              policy=Policy.preset("all", vocab="common-rows"))
    msg = str(e.value)
    assert msg.startswith("6 tensor mismatches")
    for layer in (0, 1):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.{layer}.mlp.{proj}.weight" in msg
    assert "(32, 16)" in msg and "(48, 16)" in msg and not (tmp_path / "out").exists()


def test_different_architectures_fail_clearly(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"architectures differ.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        Difference(ckpt("llama"), ckpt("b"))
    with pytest.raises(ValueError, match=r"architectures differ: the target is \['LlamaForCausalLM'\]"):
        merge(ckpt("llama"), [Term(Difference(ckpt("a"), ckpt("b")))], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tensors_fail(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"missing from vector 0's donors") as e:
        merge(ckpt("t3"), [Term(Difference(ckpt("a"), ckpt("b")))], tmp_path / "out")
    assert "model.layers.2.mlp.down_proj.weight" in str(e.value) and "… 4 more" in str(e.value)  # 12 tensors, 8 listed
    with pytest.raises(ValueError, match=r"model.layers.2.*in vector 0's donors but not in the target"):
        merge(ckpt("t"), [Term(Difference(ckpt("t3"), ckpt("t3")))], tmp_path / "out")
    # donors that do not hold the same tensors
    from safetensors.torch import save_file

    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text((Path(ckpt("b")) / "config.json").read_text())
    sd = stored(ckpt("b"))
    del sd["model.norm.weight"]
    save_file(sd, short / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"hold different tensors.*model\.norm\.weight"):
        Difference(ckpt("a"), short)
    assert not (tmp_path / "out").exists()


def test_pickle_only_directory_is_refused(ckpt, tmp_path):
    pk = tmp_path / "pickle"
    pk.mkdir()
    (pk / "config.json").write_text((Path(ckpt("b")) / "config.json").read_text())
    torch.save(stored(ckpt("b")), pk / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="pytorch_model.bin.*safetensors"):
        Checkpoint(pk)
    with pytest.raises(PickleRefusedError):
        Difference(ckpt("a"), pk)
    with pytest.raises(PickleRefusedError):
        merge(pk, [Term(Difference(ckpt("a"), ckpt("b")))], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_shard_is_named(ckpt, tmp_path):
    """A shard cut short or with a garbled header is one error naming the file (headers are parsed once, by us)."""
    import shutil

    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:8] + b"{not json" + b[17:]):
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(ckpt("b"), bad)
        shard = next(bad.glob("*.safetensors"))
        shard.write_bytes(damage(shard.read_bytes()))
        with pytest.raises(ValueError, match=rf"{shard.name} is not a readable safetensors file .*re-save"):
            Checkpoint(bad)


def test_existing_output_needs_overwrite(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    term = Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3)
    with pytest.raises(FileExistsError, match="overwrite"):
        merge(ckpt("t"), [term], out)
    with pytest.raises(FileExistsError, match="overwrite"):
        extract(ckpt("a"), ckpt("b"), out)
    assert [p.name for p in out.iterdir()] == ["stale.txt"]
    merge(ckpt("t"), [term], out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / MANIFEST).is_file()
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(out)
    assert all(same(got[n], t[n] + 0.3 * v[n]) for n in t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "1"])
def test_alpha_must_be_a_finite_number(ckpt, bad):
    d = Difference(ckpt("a"), ckpt("b"))
    with pytest.raises(ValueError, match="finite"):
        Term(d, alpha=bad)
    with pytest.raises(ValueError, match="finite"):
        Term(d, alphas={"mlp": bad})


# -- the manifest ------------------------------------------------------------------------------------


def _hand_kind(name: str) -> str:
    if name == EMB:
        return "embedding"
    if name == HEAD:
        return "lm_head"
    if name.endswith("norm.weight"):
        return "norm"
    return "attention" if ".self_attn." in name else "mlp"


def test_manifest_numbers_against_a_direct_computation(ckpt, tmp_path):
    out = tmp_path / "out"
    policy = Policy.preset("no-norms", exclude=(r"layers\.1\.self_attn\.o_proj",))
    m = merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.3, alphas={r"mlp\.": -2.0})], out, policy=policy)
    t, v = stored(ckpt("t")), diff(ckpt("a"), ckpt("b"))
    assert m.kind == "merged" and m.dtype is None and m.policy["name"] == "no-norms"
    assert m.target["sha256"] == Checkpoint(ckpt("t")).sha256 and m.terms[0]["source"]["b"] == ckpt("b")
    hand: dict[str, dict[int, float]] = {}
    for r in m.tensors:
        name = r.name
        assert r.theta_norm == pytest.approx(t[name].norm().item(), rel=1e-6)
        if name.endswith("norm.weight"):
            want, action, reason = 0.0, "kept", "policy excludes norm weights"
        elif "layers.1.self_attn.o_proj" in name:
            want, action, reason = 0.0, "kept", "matched by exclude"
        else:
            alpha = -2.0 if ".mlp." in name else 0.3
            want, action, reason = (alpha * v[name]).norm().item(), "applied", ""
        assert (r.action, r.reason) == (action, reason), name
        assert r.delta_norm == pytest.approx(want, rel=1e-6, abs=0), name
        assert r.ratio == pytest.approx(want / t[name].norm().item(), rel=1e-5), name
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        cell = hand.setdefault(_hand_kind(name), {})
        cell[layer] = cell.get(layer, 0.0) + want**2
    assert m.counts() == {"applied": 27 - 5 - 1, "kept": 6}
    # the applied deltas are what moved the weights
    got = stored(out)
    assert all(float((got[r.name] - t[r.name]).norm()) == pytest.approx(r.delta_norm, rel=1e-4, abs=1e-7) for r in m.tensors)
    profile = m.profile()
    assert {k: sorted(c) for k, c in profile.items()} == {"attention": [0, 1], "embedding": [-1], "lm_head": [-1],
                                                         "mlp": [0, 1], "norm": [-1, 0, 1]}
    for kind, layers in hand.items():
        for layer, sq in layers.items():
            assert profile[kind][layer] == pytest.approx(math.sqrt(sq), rel=1e-6, abs=0), (kind, layer)
    loaded = Manifest.load(out)
    assert loaded == m and Manifest.load(out / MANIFEST) == m
    assert json.loads((out / MANIFEST).read_text())["tensors"][0]["ratio"] == pytest.approx(m.tensors[0].ratio)
    text = m.summary()
    assert isinstance(text, str) and "'name': 'no-norms'" in text and "policy:" in text and "kind: merged" in text
    assert "α = 0.3" in text and "mlp" in text and "unchanged:" in text and "policy excludes norm weights" in text


def test_manifest_load_of_a_directory_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="probes vectors"):
        Manifest.load(tmp_path)


# -- the output as a model ----------------------------------------------------------------------------


def test_output_logits_equal_the_in_memory_result(ckpt, tmp_path):
    out = tmp_path / "out"
    merge(ckpt("t_sharded"), [Term(Difference(ckpt("a"), ckpt("b")), alpha=0.7)], out, shard_bytes=7000)
    assert (out / INDEX).is_file()
    model = load(ckpt("t"))
    before = logits(model)
    with apply_vector(model, Difference(ckpt("a"), ckpt("b")), 0.7):
        want = logits(model)
    assert not torch.equal(want, before)
    assert torch.equal(logits(load(out)), want)
    assert torch.equal(logits(model), before)


def test_apply_vector_restores_bit_for_bit_after_an_error_on_bf16(ckpt):
    model = load(ckpt("t_bf16"), dtype=torch.bfloat16)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = diff(ckpt("a"), ckpt("b"))
    with pytest.raises(RuntimeError, match="inside"):
        with apply_vector(model, Difference(ckpt("a"), ckpt("b")), 0.3):
            for n, p in model.named_parameters():
                assert same(p.detach(), (saved[n].float() + 0.3 * v[n]).to(torch.bfloat16)), n
            raise RuntimeError("inside")
    assert all(same(p.detach(), saved[n]) for n, p in model.named_parameters())
    with apply_vector(model, v, -1.0):
        assert not torch.equal(model.model.norm.weight, saved["model.norm.weight"])
    assert all(same(p.detach(), saved[n]) for n, p in model.named_parameters())


# -- atomic output ------------------------------------------------------------------------------------


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method", ["add", "_flush"])
def test_failure_mid_write_leaves_nothing(ckpt, tmp_path, monkeypatch, method):
    original = getattr(ShardWriter, method)

    def flaky(self, *args):
        if self.shards:  # the first shard is on disk: fail now
            raise RuntimeError("disk full")
        return original(self, *args)

    monkeypatch.setattr(ShardWriter, method, flaky)
    term = Term(Difference(ckpt("a"), ckpt("b")))
    parent = tmp_path / "outs"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        merge(ckpt("t"), [term], parent / "new", shard_bytes=4000)
    assert list(parent.iterdir()) == []
    (parent / "old").mkdir()
    (parent / "old" / "keep.txt").write_text("mine")
    before = _snapshot(parent / "old")
    with pytest.raises(RuntimeError, match="disk full"):
        merge(ckpt("t"), [term], parent / "old", shard_bytes=4000, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        extract(ckpt("a"), ckpt("b"), parent / "old", shard_bytes=4000, overwrite=True)
    assert [p.name for p in parent.iterdir()] == ["old"] and _snapshot(parent / "old") == before


# -- extract and saved vectors ------------------------------------------------------------------------


def test_extract_then_merge_equals_merge_over_difference(ckpt, tmp_path):
    vec = tmp_path / "vec"
    em = extract(ckpt("a"), ckpt("b"), vec, shard_bytes=6000)
    v, b = diff(ckpt("a"), ckpt("b")), stored(ckpt("b"))
    saved = stored(vec)
    assert set(saved) == set(v) and all(same(saved[n], v[n]) for n in v)  # float32 deltas, whatever the donors' dtype
    assert em.kind == "task_vector" and {r.action for r in em.tensors} == {"extracted"}
    for r in em.tensors:
        assert r.delta_norm == pytest.approx(v[r.name].norm().item(), rel=1e-6)
        assert r.theta_norm == pytest.approx(b[r.name].norm().item(), rel=1e-6)
    assert em.source["a_sha256"] == Checkpoint(ckpt("a")).sha256 and len(list(vec.glob("*.safetensors"))) > 1
    terms = {"saved": Term(SavedVector(vec), alpha=0.45, mask=r"layers\.1|embed"),
             "diff": Term(Difference(ckpt("a"), ckpt("b")), alpha=0.45, mask=r"layers\.1|embed")}
    for key, term in terms.items():
        merge(ckpt("t"), [term], tmp_path / key)
    x, y = stored(tmp_path / "saved"), stored(tmp_path / "diff")
    assert set(x) == set(y) and all(same(x[n], y[n]) for n in x)
    assert Manifest.load(tmp_path / "saved").terms[0]["source"]["kind"] == "saved"


def test_chat_vector_extract_leaves_embeddings_and_norms_out(ckpt, tmp_path):
    vec = tmp_path / "vec"
    em = extract(ckpt("a"), ckpt("b"), vec, policy=Policy.preset("chat-vector"))
    left_out = CHAT_LEFT_OUT
    assert set(stored(vec)) == set(stored(ckpt("a"))) - left_out
    skipped = {r.name: r.reason for r in em.tensors if r.action == "skipped"}
    assert set(skipped) == left_out and skipped[EMB] == "policy excludes embeddings"
    m = merge(ckpt("t"), [Term(SavedVector(vec), alpha=1.0)], tmp_path / "out", policy=Policy.preset("all"))
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(tmp_path / "out")
    rec = {r.name: r for r in m.tensors}
    for name in t:
        if name in left_out:
            assert same(got[name], t[name]), name
            assert rec[name].action == "kept" and "left out when extracted" in rec[name].reason
            assert skipped[name] in rec[name].reason
        else:
            assert same(got[name], t[name] + v[name]) and rec[name].action == "applied", name


def test_saved_vector_rejects_other_directories(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="probes vectors extract"):
        SavedVector(ckpt("a"))
    merge(ckpt("t"), [Term(Difference(ckpt("a"), ckpt("b")))], tmp_path / "merged")
    with pytest.raises(ValueError, match="not a task vector"):
        SavedVector(tmp_path / "merged")


# -- the command line ----------------------------------------------------------------------------------


def test_cli_apply_and_inspect(ckpt, tmp_path, capsys):
    from probes.cli import main

    out = tmp_path / "out"
    rc = main(["vectors", "apply", "--target", ckpt("t"), "--a", ckpt("a"), "--b", ckpt("b"), "--alpha", "0.5",
               "--module-alpha", r"mlp\.=-1", "--shard-size", "6KB", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"merged checkpoint: {out}" in printed and "policy:" in printed
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(out)
    for name in t:
        assert same(got[name], t[name] + (-1.0 if ".mlp." in name else 0.5) * v[name]), name
    assert (out / INDEX).is_file()
    assert main(["vectors", "inspect", str(out), "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "‖δ‖ per layer by module type" in printed
    profile = Manifest.load(out).profile()
    for kind in ("attention", "mlp", "norm", "embedding", "lm_head"):
        line = next(ln for ln in printed.splitlines() if ln.strip().startswith(kind + " "))
        assert "  ".join(f"{L}:{x:.3g}" for L, x in profile[kind].items()) in line


@pytest.mark.parametrize("argv", [
    ["--alpha", "nan"],
    ["--module-alpha", "mlp"],
    ["--vector", "VEC"],  # both a saved vector and donors
])
def test_cli_bad_invocation_is_one_line_and_exit_2(ckpt, tmp_path, capsys, argv):
    from probes.cli import main

    out = tmp_path / "out"
    argv = [tmp_path.as_posix() if a == "VEC" else a for a in argv]
    rc = main(["vectors", "apply", "--target", ckpt("t"), "--a", ckpt("a"), "--b", ckpt("b"), "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("probes: error:")
    assert not out.exists()


def test_cli_extract_then_apply_saved_vector(ckpt, tmp_path, capsys):
    from probes.cli import main

    vec, out = tmp_path / "vec", tmp_path / "out"
    assert main(["vectors", "extract", "--a", ckpt("a"), "--b", ckpt("b"), "--out", str(vec)]) == 0
    assert main(["vectors", "apply", "--target", ckpt("t"), "--vector", str(vec), "--alpha", "-1", "--out", str(out)]) == 0
    assert main(["vectors", "apply", "--target", ckpt("t"), "--vector", str(vec), "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(out)
    assert all(same(got[n], t[n] - v[n]) for n in t)


CHAT_LEFT_OUT = {EMB, HEAD, "model.norm.weight"} | {f"model.layers.{i}.{k}.weight" for i in (0, 1)
                                                    for k in ("input_layernorm", "post_attention_layernorm")}


def test_random_control_of_a_saved_chat_vector_keeps_what_it_left_out(ckpt, tmp_path, capsys):
    # the CLI's --random-seed over a chat-vector extraction, with the default policy (all)
    from probes.cli import main

    vec, out = tmp_path / "vec", tmp_path / "out"
    extract(ckpt("a"), ckpt("b"), vec, policy=Policy.preset("chat-vector"))
    assert main(["vectors", "apply", "--target", ckpt("t"), "--vector", str(vec), "--random-seed", "3",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    t, v, got = stored(ckpt("t")), diff(ckpt("a"), ckpt("b")), stored(out)
    noise = random_like({n: x for n, x in v.items() if n not in CHAT_LEFT_OUT}, seed=3)
    rec = {r.name: r for r in Manifest.load(out).tensors}
    for name in t:
        if name in CHAT_LEFT_OUT:
            assert same(got[name], t[name]) and "left out when extracted" in rec[name].reason, name
        else:
            assert same(got[name], t[name] + noise[name]), name


@pytest.mark.parametrize("preset", ["all", "chat-vector"])
def test_saved_vector_of_tied_donors_on_an_untied_target(ckpt, tmp_path, preset):
    vec, out = tmp_path / "vec", tmp_path / "out"
    extract(ckpt("at"), ckpt("bt"), vec, policy=Policy.preset(preset))
    sv = SavedVector(vec)
    assert sv.tied and HEAD not in sv.names
    m = merge(ckpt("t"), [Term(sv, alpha=0.5)], out, policy=Policy.preset("all", tied="mirror"))
    t, v, got = stored(ckpt("t")), diff(ckpt("at"), ckpt("bt")), stored(out)
    head = next(r for r in m.tensors if r.name == HEAD)
    if preset == "all":  # the head takes the donors' embedding delta
        assert same(got[HEAD], t[HEAD] + 0.5 * v[EMB]) and head.action == "mirrored"
    else:  # the embedding delta was left out when extracted: nothing to mirror, and the reason says so
        assert same(got[HEAD], t[HEAD]) and head.action == "kept"
        assert "left out when extracted (policy excludes embeddings)" in head.reason
    for name in v:
        want = t[name] if preset == "chat-vector" and name in CHAT_LEFT_OUT else t[name] + 0.5 * v[name]
        assert same(got[name], want), name

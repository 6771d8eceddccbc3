"""load_model: local directories through the real HF loading path, and its refusals."""

import json
import shutil

import pytest
import torch

from probes import load_model
from tests.tiny import build_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("qwen3_dir")
    hf = build_model("qwen3", vocab_size=len(tiny_tokenizer))
    hf.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d, hf


def test_local_directory_round_trip(saved):
    d, hf = saved
    model = load_model(str(d), device="cpu", dtype="float32")
    ids = torch.tensor([model.encode("Alice has 3 apples.")])
    torch.testing.assert_close(model.forward(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)
    assert model.family == "qwen3" and model.n_layers == 2 and model.spec == str(d)
    assert len(model.weights_hash) == 64
    assert model.weights_hash == load_model(str(d)).weights_hash


def test_pickle_checkpoints_are_refused(saved, tmp_path):
    d, hf = saved
    bad = tmp_path / "pickled"
    bad.mkdir()
    shutil.copy(d / "config.json", bad / "config.json")
    torch.save(hf.state_dict(), bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle loading is refused"):
        load_model(str(bad))


def test_remote_code_needs_consent(saved, tmp_path):
    d, _ = saved
    remote = tmp_path / "remote"
    shutil.copytree(d, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_model(str(remote))


def test_damaged_weights_name_the_file(saved, tmp_path):
    d, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="damaged"):
        load_model(str(broken))


def test_unknown_specs_list_the_zoo():
    with pytest.raises(ValueError, match="The zoo holds"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="unknown organism zoo:nope"):
        load_model("zoo:nope")


def test_unknown_family_is_explained(tiny_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    from probes.models.load import from_hf

    hf = MistralForCausalLM(MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="no site adapter for model_type 'mistral'"):
        from_hf(hf, tiny_tokenizer)


def test_a_directory_without_weights_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights: re-download or rebuild it"):
        load_model(str(tmp_path))


def test_a_damaged_zoo_directory_names_the_rebuild_command(saved, tmp_path, monkeypatch):
    from probes.models import zoo_registry

    d, _ = saved
    monkeypatch.setattr(zoo_registry, "ZOO_DIR", tmp_path)
    organism = tmp_path / "my-organism"
    shutil.copytree(d, organism)
    (organism / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"damaged; rebuild it with `python -m experiments.zoo my-organism`"):
        load_model(str(organism))
    with pytest.raises(ValueError, match=r"damaged; rebuild it with `python -m experiments.zoo my-organism`"):
        load_model("zoo:my-organism")


def test_a_checkpoint_without_tokenizer_files_is_refused(saved, tmp_path):
    d, _ = saved
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(d / name, bare / name)
    with pytest.raises(ValueError, match=r"has no tokenizer files .*tokenizer.save_pretrained"):
        load_model(str(bare))

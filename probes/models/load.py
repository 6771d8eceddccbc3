"""``load_model(spec)``: hub names, local directories and ``zoo:NAME`` organisms.

Weights load through ``transformers.AutoModelForCausalLM`` (the model of record), from
safetensors only; checkpoints that need remote code are refused unless the caller
passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from probes.models.adapters import adapter_for
from probes.models.model import Model

# Any one of these makes a directory's tokenizer loadable (fast, BPE, SentencePiece, WordPiece).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def _rebuild_hint(spec: str, path: Path) -> str:
    """How to get a good copy back: zoo organisms (``zoo:NAME`` or a directory of the zoo) are rebuilt."""
    from probes.models import zoo_registry

    if spec.startswith("zoo:"):
        name = spec[4:]
    elif path.resolve().parent == zoo_registry.ZOO_DIR.resolve():
        name = path.name
    else:
        return "re-download or rebuild it"
    return f"rebuild it with `python -m experiments.zoo {name}`"


def _check_local_dir(path: Path, trust_remote_code: bool, spec: str) -> list[Path]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} has no config.json: it is not a Hugging Face model directory")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise ValueError(
                f"{path} holds only pickle checkpoints ({', '.join(pickles)}): pickle loading is refused. "
                "Convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)) on a trusted machine."
            )
        raise ValueError(f"{path} has no *.safetensors weights: {_rebuild_hint(spec, path)}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON ({e}); rebuild or re-download the checkpoint") from None
    if cfg.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"{path} needs remote code (config.json has auto_map); it is refused unless you pass "
            "trust_remote_code=True after reading that code"
        )
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(
            f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, …): save the tokenizer of the model it "
            f"came from next to the weights (tokenizer.save_pretrained({str(path)!r})), or {_rebuild_hint(spec, path)}"
        )
    return weights


def load_model(
    spec: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Model:
    """Load ``spec`` (a hub name, a local directory or ``zoo:NAME``) as a ``Model``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    weight_files: list[Path] = []
    if spec.startswith("zoo:"):
        from probes.models.zoo_registry import zoo_path

        path = str(zoo_path(spec[4:]))
        weight_files = _check_local_dir(Path(path), trust_remote_code, spec)
    elif Path(spec).expanduser().is_dir():
        path = str(Path(spec).expanduser())
        weight_files = _check_local_dir(Path(path), trust_remote_code, spec)
    else:
        path = spec
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ValueError(
                f"{spec} needs remote code; it is refused unless you pass trust_remote_code=True after reading that code"
            ) from None
        raise
    except OSError as e:
        from probes.models.zoo_registry import available

        names = ", ".join(f"zoo:{n}" for n in available()) or "(none built)"
        raise ValueError(
            f"unknown model spec {spec!r}: not a local directory, not zoo:NAME, and not loadable from the hub ({e}). "
            f"The zoo holds: {names}"
        ) from None
    adapter = adapter_for(config.model_type)
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, trust_remote_code=trust_remote_code, revision=revision, use_safetensors=True
        )
    except OSError as e:
        raise ValueError(f"could not load weights of {spec} ({e}); safetensors weights are required") from None
    except Exception as e:  # a damaged file: name it and how to rebuild
        raise ValueError(f"could not load the weights of {spec} from {path}: {e}. The checkpoint looks damaged; "
                         f"{_rebuild_hint(spec, Path(path))}") from None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    hf.to(dev)
    return Model(hf, tokenizer, spec=spec, adapter=adapter, weight_files=[str(p) for p in weight_files])


def from_hf(hf, tokenizer, spec: str = "memory") -> Model:
    """Wrap an in-memory HF causal LM (e.g. a tiny model built from a config)."""
    return Model(hf, tokenizer, spec=spec, adapter=adapter_for(hf.config.model_type))

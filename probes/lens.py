"""Logit lens: decode every layer's residual stream with the final norm and the unembedding.

nostalgebraist (2020), "interpreting GPT: the logit lens". Used by ``probes demo``;
the figure is drawn by ``probes.plots.lens`` from the saved result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from probes.io import atomic_write_json, save_tensors

__all__ = ["LogitLens", "logit_lens"]


def _pair(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


@dataclass(frozen=True)
class LogitLens:
    """Top token id and its probability per (layer, position); ``positions`` are absolute."""

    top_ids: torch.Tensor  # (n_layers, n_positions)
    top_probs: torch.Tensor  # (n_layers, n_positions)
    positions: list[int]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` (``top_ids``, ``top_probs``) and then ``<path>.json``
        (``positions``), atomically; a path ending in .safetensors or .json names the same pair.
        Returns the safetensors path."""
        tensors_path, json_path = _pair(path)
        save_tensors(tensors_path, {"top_ids": self.top_ids, "top_probs": self.top_probs})
        atomic_write_json(json_path, {"type": "LogitLens", "format": 1, "positions": [int(p) for p in self.positions]})
        return tensors_path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> LogitLens:
        tensors_path, json_path = _pair(path)
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path} does not exist: a saved LogitLens is a pair {tensors_path.name} + "
                                    f"{json_path.name}; pass the path given to save()")
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        if meta.get("type") != "LogitLens":
            raise ValueError(f"{json_path} holds a {meta.get('type')!r}, not a LogitLens")
        # Not probes.io.load_tensors: its pickle sniffing refuses safetensors files whose header
        # length has 0x80 as low byte; safetensors never unpickles, so reading directly is as safe.
        from safetensors.torch import load_file

        tensors = load_file(tensors_path, device=device)
        return cls(top_ids=tensors["top_ids"], top_probs=tensors["top_probs"], positions=list(meta["positions"]))


def logit_lens(model, inputs, positions: list[int] | None = None) -> LogitLens:
    """Logit lens of one sequence at ``positions`` (default: all) over ``resid_post`` of every layer."""
    ids = model.batch(inputs)["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("logit_lens takes one sequence")
    positions = list(range(ids.shape[1])) if positions is None else list(positions)
    sites = [f"resid_post[{L}]" for L in range(model.n_layers)]
    cap = model.capture(ids, sites, positions=positions)
    norm = model.hf.get_submodule(model.adapter.final_norm)
    head = model.hf.get_submodule(model.adapter.lm_head)
    with torch.no_grad():
        resid = torch.stack([cap[s][0] for s in sites])  # (L, P, d)
        probs = torch.softmax(head(norm(resid)).float(), dim=-1)
    top = probs.max(dim=-1)
    return LogitLens(top_ids=top.indices, top_probs=top.values, positions=positions)

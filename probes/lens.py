"""Logit lens: decode every layer's residual stream with the final norm and the unembedding.

nostalgebraist (2020), "interpreting GPT: the logit lens". Used by ``probes demo``;
the figure is drawn by ``probes.plots.lens`` from the saved result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from probes.io import load_artifact, save_artifact

__all__ = ["LogitLens", "logit_lens"]


@dataclass(frozen=True)
class LogitLens:
    """Top token id and its probability per (layer, position); ``positions`` are absolute."""

    top_ids: torch.Tensor  # (n_layers, n_positions)
    top_probs: torch.Tensor  # (n_layers, n_positions)
    positions: list[int]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (``top_ids``, ``top_probs``) then ``<path>.json`` (``positions``)."""
        return save_artifact(path, "LogitLens", {"top_ids": self.top_ids, "top_probs": self.top_probs},
                             {"positions": [int(p) for p in self.positions]})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> LogitLens:
        tensors, fields = load_artifact(path, "LogitLens", device=device)
        return cls(top_ids=tensors["top_ids"], top_probs=tensors["top_probs"], positions=list(fields["positions"]))


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

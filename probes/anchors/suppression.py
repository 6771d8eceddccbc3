"""Attention suppression: how much suppressing attention to sentence k changes the
model's next-token distributions on each later sentence j (``reference/thought_anchors.md`` §7).

For each sentence k, pre-softmax scores of keys in k are set to the dtype minimum at
every layer and head, for every query. The suppressed variants run as rows of one
batched forward (``SuppressKeys`` with one span per row), so the cost stays near n + 1
forward passes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.io import load_artifact, save_artifact
from probes.models.interventions import SuppressKeys

__all__ = ["SuppressionResult", "attention_suppression", "sparse_kl", "suppression_matrix"]


def _kept(logits: torch.Tensor, temperature: float, top_p: float, max_tokens: int) -> torch.Tensor:
    """(P, V) bool: each position's top-p (≤ max_tokens) tokens of softmax(logits / T)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sp, si = torch.sort(probs, dim=-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < top_p
    keep[:, max_tokens:] = False
    return torch.zeros_like(keep).scatter(-1, si, keep)


def sparse_kl(
    base_logits: torch.Tensor,
    supp_logits: torch.Tensor,
    temperature: float = 0.6,
    top_p: float = 0.9999,
    max_tokens: int = 100,
    missing_logit: float = -1e9,
    chunk: int = 64,
) -> torch.Tensor:
    """(P,) KL(P_base ‖ Q_supp) per position over the union of each side's kept tokens;
    a token a side did not keep gets logit ``missing_logit``; both at ``temperature`` (§7)."""
    out = []
    for lo in range(0, base_logits.shape[0], chunk):
        b, s = base_logits[lo : lo + chunk].float(), supp_logits[lo : lo + chunk].float()
        kb, ks = _kept(b, temperature, top_p, max_tokens), _kept(s, temperature, top_p, max_tokens)
        union = kb | ks
        lb = torch.where(kb, b, torch.full_like(b, missing_logit)) / temperature
        ls = torch.where(ks, s, torch.full_like(s, missing_logit)) / temperature
        lb, ls = lb.masked_fill(~union, float("-inf")), ls.masked_fill(~union, float("-inf"))
        logp, logq = torch.log_softmax(lb, -1), torch.log_softmax(ls, -1)
        p = logp.exp()
        out.append(torch.where(union, p * (logp - logq), torch.zeros_like(p)).sum(-1).clamp(min=0))
    return torch.cat(out)


@dataclass(frozen=True)
class SuppressionResult:
    """``log_kl[k, t]`` = ln(KL + 1e-9) at position t with sentence k suppressed;
    ``matrix[j, k]`` its mean over sentence j's tokens for j > k (NaN elsewhere);
    ``centered`` subtracts each row's mean over k < j (rows sum to 0). ``temperature``,
    ``top_p`` and ``max_tokens`` record how the distributions were compared."""

    log_kl: np.ndarray
    matrix: np.ndarray
    centered: np.ndarray
    temperature: float = 0.6
    top_p: float = 0.9999
    max_tokens: int = 100

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` (the arrays) and ``<path>.json`` (the settings)."""
        arrays = {"log_kl": self.log_kl, "matrix": self.matrix, "centered": self.centered}
        fields = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return save_artifact(path, "SuppressionResult", arrays, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SuppressionResult:
        arrays, fields = load_artifact(path, "SuppressionResult")
        return cls(log_kl=arrays["log_kl"], matrix=arrays["matrix"], centered=arrays["centered"],
                   temperature=float(fields["temperature"]), top_p=float(fields["top_p"]),
                   max_tokens=int(fields["max_tokens"]))


def suppression_matrix(log_kl: np.ndarray, token_spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """S[j, k] = mean of log_kl[k, t] over t ∈ [s_j, e_j) for j > k, and its row-centred form (§7)."""
    n = len(token_spans)
    S = np.full((n, n), np.nan)
    for j, (s, e) in enumerate(token_spans):
        for k in range(j):
            S[j, k] = float(np.mean(log_kl[k, s:e]))
    centered = S.copy()
    for j in range(1, n):
        centered[j, :j] -= np.mean(S[j, :j])
    return S, centered


def attention_suppression(
    model,
    input_ids,
    token_spans: Sequence[tuple[int, int]],
    *,
    temperature: float = 0.6,
    top_p: float = 0.9999,
    max_tokens: int = 100,
    batch_size: int = 8,
    progress: bool = False,
) -> SuppressionResult:
    """Suppress each sentence in turn; KL of every later position against the base (§7)."""
    ids = torch.as_tensor(input_ids).reshape(1, -1).to(model.device)
    spans = [tuple(map(int, sp)) for sp in token_spans]
    if not spans:
        raise ValueError("no sentences to suppress")
    T = ids.shape[1]
    bad = [sp for sp in spans if not 0 <= sp[0] < sp[1] <= T]
    if bad:
        raise ValueError(f"token spans {bad[:3]} fall outside the {T}-token input")
    base = model.forward(ids)[0]
    log_kl = np.zeros((len(spans), T))
    for lo in tqdm(range(0, len(spans), batch_size), desc="suppression", disable=not progress):
        group = spans[lo : lo + batch_size]
        with model.intervene(SuppressKeys(span=group)):
            logits = model.forward(ids.expand(len(group), -1))
        for r, k in enumerate(range(lo, lo + len(group))):
            kl = sparse_kl(base, logits[r], temperature, top_p, max_tokens)
            log_kl[k] = torch.log(kl + 1e-9).cpu().numpy()
    S, centered = suppression_matrix(log_kl, spans)
    return SuppressionResult(log_kl=log_kl, matrix=S, centered=centered, temperature=temperature, top_p=top_p,
                             max_tokens=max_tokens)

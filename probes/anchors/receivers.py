"""Receiver heads: attention heads that narrow their attention onto a few "broadcasting"
sentences (``reference/thought_anchors.md`` §6).

One forward pass per trace; each layer's attention pattern is averaged into a
sentence × sentence matrix INSIDE the attention hook, so a 4k-token trace never holds
every layer's T×T pattern at once. Both the released settings (§6.1) and the
paper-era settings (§6.2) are selectable by name (``SETTINGS``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from probes.io import load_artifact, save_artifact

__all__ = [
    "PAPER_ERA",
    "PAPER_ERA_LLAMA",
    "RELEASED",
    "SETTINGS",
    "SETTINGS_NAMES",
    "ReceiverSettings",
    "ReceiverSettingsName",
    "TraceReceivers",
    "analyse_trace",
    "averaging_matrix",
    "block_bounds",
    "head_kurtosis",
    "receiver_scores",
    "select_receiver_heads",
    "sentence_attention",
    "settings",
    "split_half_reliability",
    "vertical_scores",
]

ReceiverSettingsName = Literal["released", "paper-era", "paper-era-llama"]
"""Names of the receiver-head settings: §6.1 (``released``) and §6.2 (``paper-era``,
``paper-era-llama``), for configs."""
SETTINGS_NAMES: tuple[str, ...] = get_args(ReceiverSettingsName)


@dataclass(frozen=True, kw_only=True)
class ReceiverSettings:
    """Knobs of the receiver-head analysis; record ``name`` with every result (§8)."""

    name: str
    #: Block of sentence i: ``sentence`` = its own tokens [s_i, e_i) with e clipped to
    #: T−1 (§6.1); ``to_next`` = from its start to the next sentence's start (§6.2).
    blocks: str = "sentence"
    #: Ignore M[i, j] with i − j < proximity_ignore when taking vertical scores for head selection.
    proximity_ignore: int = 4
    #: Multiply row i of the sentence matrix by i before vertical scoring (§6.2).
    row_index_weight: bool = False
    #: Replace each row by within-row rank / row length (§6.1 ``control_depth``).
    control_depth: bool = False
    #: Sentences set to NaN at the start / end of the vertical scores for head selection.
    nan_first: int = 0
    nan_last: int = 0
    #: Heads kept (ranked by mean kurtosis over traces), and whether layer 0 is excluded.
    top_k: int = 20
    exclude_layer0: bool = True
    #: Skip traces whose kurtosis is NaN for more than this fraction of heads (§6.2).
    max_nan_fraction: float | None = None
    #: Sentence scores (mean over the top_k heads): proximity and trailing NaN sentences.
    score_proximity_ignore: int = 4
    score_nan_last: int = 0
    #: Drop sentences ending after this token (≈4000-token truncation of §6.2; later
    #: tokens cannot change earlier sentence blocks under causal attention, so the
    #: text cut is a saving, not a change of numbers).
    max_tokens: int | None = None


RELEASED = ReceiverSettings(name="released")
PAPER_ERA = ReceiverSettings(
    name="paper-era", blocks="to_next", proximity_ignore=20, row_index_weight=True, nan_first=4, nan_last=4,
    top_k=32, max_nan_fraction=0.5, score_proximity_ignore=4, score_nan_last=8, max_tokens=3744,
)
PAPER_ERA_LLAMA = replace(PAPER_ERA, name="paper-era-llama", score_proximity_ignore=8, top_k=64)
SETTINGS: dict[str, ReceiverSettings] = {s.name: s for s in (RELEASED, PAPER_ERA, PAPER_ERA_LLAMA)}


def settings(name: ReceiverSettingsName | ReceiverSettings) -> ReceiverSettings:
    """The settings called ``name`` (one of ``SETTINGS_NAMES``); a ``ReceiverSettings`` passes through."""
    if isinstance(name, ReceiverSettings):
        return name
    try:
        return SETTINGS[name]
    except KeyError:
        raise ValueError(f"unknown receiver-head settings {name!r}: choose one of {', '.join(SETTINGS)}") from None


def block_bounds(token_spans: Sequence[tuple[int, int]], T: int, blocks: str) -> list[tuple[int, int]]:
    """Token block of each sentence under the chosen convention (see ``ReceiverSettings.blocks``)."""
    if blocks == "sentence":
        return [(s, min(e, T - 1)) for s, e in token_spans]
    if blocks == "to_next":
        starts = [s for s, _ in token_spans]
        return [(s, starts[i + 1] if i + 1 < len(starts) else token_spans[-1][1]) for i, s in enumerate(starts)]
    raise ValueError(f"unknown block convention {blocks!r}: use 'sentence' or 'to_next'")


def averaging_matrix(bounds: Sequence[tuple[int, int]], T: int, device=None) -> torch.Tensor:
    """(n, T) with row i = 1/|block i| on block i, so S A Sᵀ averages A over blocks."""
    S = torch.zeros(len(bounds), T, device=device)
    for i, (s, e) in enumerate(bounds):
        if e <= s:
            raise ValueError(f"sentence {i} has an empty token block [{s}, {e})")
        S[i, s:e] = 1.0 / (e - s)
    return S


def sentence_attention(model, input_ids, token_spans: Sequence[tuple[int, int]], blocks: str = "sentence") -> torch.Tensor:
    """(layers, heads, n, n): M[l, h, i, j] = mean of A[l, h] over query block i × key block j.

    The reduction runs inside the attention hook of each layer (§8 pitfall on memory).
    """
    ids = torch.as_tensor(input_ids).reshape(1, -1)
    T = ids.shape[1]
    S = averaging_matrix(block_bounds(token_spans, T, blocks), T, device=model.device)

    def reduce(pattern, layer):
        A = pattern[0].float()  # (H, T, T)
        return (S @ A @ S.T).cpu()

    sites = [f"attn_pattern[{L}]" for L in range(model.n_layers)]
    cap = model.capture(ids, sites, reduce={"attn_pattern": reduce})
    return torch.stack([cap[s] for s in sites])


def vertical_scores(
    M: np.ndarray | torch.Tensor,
    proximity_ignore: int = 4,
    *,
    control_depth: bool = False,
    row_index_weight: bool = False,
    nan_first: int = 0,
    nan_last: int = 0,
) -> np.ndarray:
    """v_j = mean over i ≥ j + proximity_ignore of M[i, j] (NaN where no such i), on the last two axes (§6.1)."""
    M = np.array(M, dtype=np.float64)
    n = M.shape[-1]
    i, j = np.indices((n, n))
    if row_index_weight:
        M = M * i
    M = np.where((j > i) | (i - j < proximity_ignore), np.nan, M)
    if control_depth:
        ranks = np.argsort(np.argsort(np.where(np.isnan(M), -np.inf, M), axis=-1), axis=-1).astype(np.float64)
        valid = (~np.isnan(M)).sum(-1, keepdims=True)
        ranks = ranks - (n - valid)  # NaNs sorted first: shift so valid ranks start at 0
        M = np.where(np.isnan(M), np.nan, ranks / np.maximum(valid, 1))
    with np.errstate(invalid="ignore"), _quiet():
        v = np.nanmean(M, axis=-2)
    if nan_first:
        v[..., :nan_first] = np.nan
    if nan_last:
        v[..., n - nan_last:] = np.nan
    return v


def head_kurtosis(v: np.ndarray) -> np.ndarray:
    """Excess kurtosis over sentences of each head's vertical scores (Fisher, biased, NaNs omitted)."""
    from scipy.stats import kurtosis

    flat = v.reshape(-1, v.shape[-1])
    out = np.array([kurtosis(row, fisher=True, bias=True, nan_policy="omit") for row in flat], dtype=np.float64)
    return out.reshape(v.shape[:-1])


def select_receiver_heads(
    kurtoses: Sequence[np.ndarray], top_k: int = 20, exclude_layer0: bool = True, max_nan_fraction: float | None = None
) -> list[tuple[int, int]]:
    """Top-k (layer, head) by kurtosis averaged over traces, layer 0 excluded (§6.1)."""
    ks = [np.asarray(k, dtype=np.float64) for k in kurtoses]
    if max_nan_fraction is not None:
        ks = [k for k in ks if np.isnan(k).mean() <= max_nan_fraction]
    if not ks:
        raise ValueError("no trace left to rank heads (all had too many NaN kurtoses)")
    with _quiet():
        mean = np.nanmean(np.stack(ks), axis=0)
    if exclude_layer0:
        mean[0] = np.nan
    flat = mean.ravel()
    ranked = [int(o) for o in np.argsort(np.where(np.isnan(flat), -np.inf, flat))[::-1] if not np.isnan(flat[o])]
    return [tuple(int(x) for x in np.unravel_index(o, mean.shape)) for o in ranked[:top_k]]


def receiver_scores(v: np.ndarray, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sentence score = mean of v_j over the selected heads (§6.1)."""
    with _quiet():
        return np.nanmean(np.stack([v[L, H] for L, H in heads]), axis=0)


def split_half_reliability(kurtoses: Sequence[np.ndarray]) -> float:
    """Pearson r of mean kurtosis between even- and odd-indexed traces, layers ≥ 1 (§6.1)."""
    ks = np.stack([np.asarray(k, dtype=np.float64) for k in kurtoses])
    if len(ks) < 2:
        raise ValueError("split-half reliability needs at least two traces")
    with _quiet():
        a, b = np.nanmean(ks[0::2], axis=0)[1:].ravel(), np.nanmean(ks[1::2], axis=0)[1:].ravel()
    ok = ~(np.isnan(a) | np.isnan(b))
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


@dataclass(frozen=True)
class TraceReceivers:
    """Per-trace receiver-head quantities: vertical scores for head selection and for
    sentence scoring (layers × heads × n) and per-head kurtosis (layers × heads), with the
    name of the settings that made them (§8: record it)."""

    v_select: np.ndarray
    v_score: np.ndarray
    kurtosis: np.ndarray
    settings: str = ""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` (the arrays) and ``<path>.json`` (the settings name)."""
        arrays = {"v_select": self.v_select, "v_score": self.v_score, "kurtosis": self.kurtosis}
        return save_artifact(path, "TraceReceivers", arrays, {"settings": self.settings})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TraceReceivers:
        arrays, fields = load_artifact(path, "TraceReceivers")
        return cls(v_select=arrays["v_select"], v_score=arrays["v_score"], kurtosis=arrays["kurtosis"],
                   settings=str(fields.get("settings", "")))


def analyse_trace(
    model, input_ids, token_spans, cfg: ReceiverSettingsName | ReceiverSettings = "released"
) -> TraceReceivers:
    """Sentence attention → vertical scores → kurtosis for one trace, under ``cfg``."""
    cfg = settings(cfg)
    spans = list(token_spans)
    if cfg.max_tokens is not None:
        spans = [sp for sp in spans if sp[1] <= cfg.max_tokens]
        input_ids = torch.as_tensor(input_ids).reshape(-1)[: max(e for _, e in spans) + 1]
    M = sentence_attention(model, input_ids, spans, cfg.blocks).numpy()
    v_sel = vertical_scores(M, cfg.proximity_ignore, control_depth=cfg.control_depth,
                            row_index_weight=cfg.row_index_weight, nan_first=cfg.nan_first, nan_last=cfg.nan_last)
    v_score = vertical_scores(M, cfg.score_proximity_ignore, control_depth=cfg.control_depth,
                              row_index_weight=cfg.row_index_weight, nan_last=cfg.score_nan_last)
    return TraceReceivers(v_select=v_sel, v_score=v_score, kurtosis=head_kurtosis(v_sel), settings=cfg.name)


class _quiet:
    """Silence numpy's all-NaN slice warnings (NaN results are the intended outcome)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)

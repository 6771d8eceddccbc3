"""Colours, 95%-interval bands and error bars shared by the figures (steering, refusal, experts, task vectors)."""

from __future__ import annotations

import numpy as np

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
GREY = COLORS[7]


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def add_band(fig, x, lo, hi, *, color: str, name: str, opacity: float = 0.2) -> None:
    """A filled band between ``lo`` and ``hi`` over ``x`` (points ordered by the caller; points whose
    bounds are not finite are left out; nothing when none is left), hidden from legend and hover."""
    x, lo, hi = (np.asarray(a, dtype=float) for a in (x, lo, hi))
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    xs = x[ok].tolist()
    fig.add_scatter(x=xs + xs[::-1], y=hi[ok].tolist() + lo[ok].tolist()[::-1], fill="toself", mode="lines",
                    fillcolor=rgba(color, opacity), line={"width": 0}, hoverinfo="skip", showlegend=False, name=name)


def error_bars(rows) -> dict:
    """Asymmetric plotly error bars from (value, lo, hi) rows; a NaN bound draws no bar on that side."""
    rows = np.asarray(rows, dtype=float)
    up = np.nan_to_num(np.maximum(rows[:, 2] - rows[:, 0], 0.0), nan=0.0)
    down = np.nan_to_num(np.maximum(rows[:, 0] - rows[:, 1], 0.0), nan=0.0)
    return {"type": "data", "symmetric": False, "array": up.tolist(), "arrayminus": down.tolist()}

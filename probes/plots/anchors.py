"""Thought-anchors figures (``reference/thought_anchors.md`` §4, §6, §7): per-sentence
importance coloured by category, category means ± SE, receiver-head kurtosis
(layer × head) and the suppression matrix. Builders take saved arrays only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.plots._arrays import to_numpy

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "CATEGORY_COLORS", "category_means_figure", "importance_bars", "kurtosis_heatmap", "sentence_matrix_heatmap",
    "suppression_heatmap",
]

#: One colour per taxonomy category (§2), shared by every figure and the trace viewer.
CATEGORY_COLORS = {
    "problem_setup": "#9467bd",
    "plan_generation": "#d62728",
    "fact_retrieval": "#8c564b",
    "active_computation": "#1f77b4",
    "result_consolidation": "#2ca02c",
    "uncertainty_management": "#ff7f0e",
    "final_answer_emission": "#7f7f7f",
    "self_checking": "#e377c2",
    "unknown": "#c7c7c7",
}


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "<br>".join(textwrap.wrap(text, width)) or text


def importance_bars(
    scores: Sequence[float], categories: Sequence[str], sentences: Sequence[str], metric: str, title: str | None = None,
    text_width: int = 32,
) -> go.Figure:
    """One bar per sentence, coloured by its category; the axis shows each sentence's index and
    opening words (``text_width`` characters, 0 for the index only), hover the whole sentence."""
    import plotly.graph_objects as go

    y = to_numpy(scores)
    if not len(y) == len(categories) == len(sentences):
        raise ValueError(f"{len(y)} scores, {len(categories)} categories, {len(sentences)} sentences: need one each")
    fig = go.Figure()
    for cat in dict.fromkeys(categories):
        idx = [i for i, c in enumerate(categories) if c == cat]
        fig.add_bar(
            x=idx, y=y[idx], name=cat, marker_color=CATEGORY_COLORS.get(cat, "#333333"),
            customdata=[_wrap(sentences[i]) for i in idx],
            hovertemplate="sentence %{x}<br>" + metric + " = %{y:.3f}<br>%{customdata}<extra>" + cat + "</extra>",
        )
    fig.update_layout(title=title or metric, xaxis_title="sentence", yaxis_title=metric, barmode="overlay",
                      legend_title="category", bargap=0.1)
    if text_width:
        ticks = [f"{i}: {s if len(s) <= text_width else s[: text_width - 1] + '…'}"
                 for i, s in enumerate(" ".join(t.split()) for t in sentences)]
        fig.update_xaxes(tickmode="array", tickvals=list(range(len(ticks))), ticktext=ticks, tickangle=-45,
                         range=[-0.5, len(ticks) - 0.5])
    return fig


def category_means_figure(stats: Mapping[str, tuple[float, float, int]], metric: str, title: str | None = None) -> go.Figure:
    """Bars of mean ± SE per category; ``stats[category] = (mean, se, n)``, sorted by mean."""
    import plotly.graph_objects as go

    cats = sorted(stats, key=lambda c: -stats[c][0])
    fig = go.Figure(go.Bar(
        x=cats, y=[stats[c][0] for c in cats],
        error_y={"type": "data", "array": [stats[c][1] for c in cats]},
        marker_color=[CATEGORY_COLORS.get(c, "#333333") for c in cats],
        customdata=[stats[c][2] for c in cats],
        hovertemplate="%{x}<br>mean %{y:.3f}<br>n = %{customdata}<extra></extra>",
    ))
    fig.update_layout(title=title or f"{metric} by category (mean ± SE)", yaxis_title=metric, xaxis_tickangle=-30)
    return fig


def kurtosis_heatmap(kurtosis: Any, top_heads: Sequence[tuple[int, int]] = (), title: str = "Receiver-head kurtosis") -> go.Figure:
    """Layer × head heatmap of mean vertical-score kurtosis; selected heads are circled."""
    import plotly.graph_objects as go

    z = to_numpy(kurtosis)
    fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", colorbar_title="kurtosis",
                               hovertemplate="layer %{y}, head %{x}<br>kurtosis %{z:.2f}<extra></extra>"))
    if top_heads:
        fig.add_scatter(x=[h for _, h in top_heads], y=[L for L, _ in top_heads], mode="markers", name="receiver heads",
                        marker={"symbol": "circle-open", "size": 14, "color": "red", "line": {"width": 2}})
    fig.update_layout(title=title, xaxis={"title": "head", "dtick": 1}, yaxis={"title": "layer", "dtick": 1})
    return fig


def sentence_matrix_heatmap(matrix: Any, title: str, x_title: str, y_title: str) -> go.Figure:
    """A sentence × sentence matrix on a diverging scale centred at 0; NaN cells blank."""
    import plotly.graph_objects as go

    z = to_numpy(matrix)
    lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", reversescale=True, zmid=0, zmin=-lim, zmax=lim,
                               hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}<br>%{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed")
    return fig


def suppression_heatmap(matrix: Any, title: str = "Attention suppression (row-centred ln KL)") -> go.Figure:
    """Sentence j (rows, affected) × sentence k (columns, suppressed) of §7."""
    return sentence_matrix_heatmap(matrix, title, "suppressed sentence k", "later sentence j")

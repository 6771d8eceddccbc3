"""Steering figures (``reference/steering.md`` §5): behaviour against α per layer with 95% bands
and the prompting baseline, KL against α per layer with the guard's threshold, the histogram of
per-example steerability slopes, and accuracy against thinking length for efficiency steering
(§5.7). Builders take saved arrays only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from probes.plots._arrays import to_numpy
from probes.plots._bands import COLORS, add_band, error_bars, rgba

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["behaviour_alpha_figure", "efficiency_tradeoff_figure", "kl_alpha_figure", "steerability_histogram"]


def _grid(alphas: Sequence[float], values, layers: Sequence[int], what: str) -> tuple[np.ndarray, np.ndarray]:
    x = to_numpy(alphas).astype(float)
    y = to_numpy(values).astype(float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-d grid, got shape {x.shape}")
    if y.shape != (len(layers), x.size):
        raise ValueError(f"{what} must be (n_layers, n_alphas) = ({len(layers)}, {x.size}), got shape {y.shape}")
    return x, y


def behaviour_alpha_figure(
    alphas: Sequence[float], mean, lo, hi, *, layers: Sequence[int], baseline: float | None = None,
    metric: str = "behaviour", title: str | None = None,
) -> go.Figure:
    """One line per layer of the behaviour against α with its 95% band (``mean``, ``lo``, ``hi``:
    (n_layers, n_alphas), NaN where a cell is missing), and the prompting baseline as a dashed
    horizontal line when given."""
    import plotly.graph_objects as go

    x, m = _grid(alphas, mean, layers, "mean")
    _, low = _grid(alphas, lo, layers, "lo")
    _, high = _grid(alphas, hi, layers, "hi")
    order = np.argsort(x)
    fig = go.Figure()
    for i, layer in enumerate(layers):
        color = COLORS[i % len(COLORS)]
        ok = order[np.isfinite(m[i, order])]
        xs = x[ok].tolist()
        add_band(fig, xs, low[i, ok], high[i, ok], color=color, name=f"layer {layer} 95% CI")
        fig.add_scatter(x=xs, y=m[i, ok].tolist(), mode="lines+markers", name=f"layer {layer}",
                        line={"color": color},
                        hovertemplate="α = %{x}<br>" + metric + " = %{y:.3f}<extra>layer " + str(layer) + "</extra>")
    if baseline is not None and np.isfinite(baseline):
        fig.add_hline(y=float(baseline), line_dash="dash", line_color="black",
                      annotation_text=f"prompting baseline {float(baseline):.3g}")
    fig.update_layout(title=title or f"{metric} against α", xaxis_title="α", yaxis_title=metric, legend_title="layer")
    return fig


def kl_alpha_figure(
    alphas: Sequence[float], kl, *, layers: Sequence[int], threshold: float, generated=None, title: str | None = None,
) -> go.Figure:
    """Mean KL(unsteered ‖ steered) against α, one line per layer (``kl``: (n_layers, n_alphas)), with
    the guard's ``threshold`` as a dashed horizontal line (cells above it are rejected); ``generated``
    (same shape): the KL along generated tokens, dotted, when the guard read them too."""
    import plotly.graph_objects as go

    x, k = _grid(alphas, kl, layers, "kl")
    lines = [(k, "", "solid")]
    if generated is not None:
        lines.append((_grid(alphas, generated, layers, "generated")[1], ", generated", "dot"))
    order = np.argsort(x)
    fig = go.Figure()
    for i, layer in enumerate(layers):
        for values, what, dash in lines:
            ok = order[np.isfinite(values[i, order])]
            if what and not ok.size:
                continue
            name = f"layer {layer}{what}"
            fig.add_scatter(x=x[ok].tolist(), y=values[i, ok].tolist(), mode="lines+markers", name=name,
                            line={"color": COLORS[i % len(COLORS)], "dash": dash},
                            hovertemplate="α = %{x}<br>KL = %{y:.4g}<extra>" + name + "</extra>")
    fig.add_hline(y=float(threshold), line_dash="dash", line_color="black", annotation_text=f"KL guard {threshold:g}")
    fig.update_layout(title=title or "KL guard against α", xaxis_title="α", yaxis_title="mean next-token KL (nats)",
                      legend_title="layer")
    return fig


def steerability_histogram(
    slopes: Sequence[float], anti_steerable_fraction: float, *, title: str | None = None, nbins: int = 30,
) -> go.Figure:
    """Histogram of per-example steerability slopes; the title gives the anti-steerable fraction
    and a dashed line marks slope 0."""
    import plotly.graph_objects as go

    s = to_numpy(slopes).astype(float).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("slopes must be a non-empty array of finite numbers")
    head = title or "Per-example steerability"
    fig = go.Figure(go.Histogram(x=s.tolist(), nbinsx=nbins, marker_color=COLORS[0], name="examples"))
    fig.add_vline(x=0.0, line_dash="dash", line_color="black")
    fig.update_layout(title=f"{head} (anti-steerable fraction {anti_steerable_fraction:.2f}, n = {s.size})",
                      xaxis_title="slope of the metric against α", yaxis_title="examples", bargap=0.05)
    return fig


def efficiency_tradeoff_figure(series: Mapping[str, tuple], *, title: str | None = None) -> go.Figure:
    """Accuracy against mean thinking tokens, one line per direction through its α grid (§5.7):
    ``series[label] = (alphas, accuracy, tokens)`` with ``accuracy`` and ``tokens`` as (n_alphas, 3)
    rows of (value, lo, hi); each point is labelled with its α and carries both 95% intervals."""
    import plotly.graph_objects as go

    if not series:
        raise ValueError("no series to draw: give {label: (alphas, accuracy rows, thinking-token rows)}")
    fig = go.Figure()
    for i, (label, (alphas, acc, tokens)) in enumerate(series.items()):
        a = to_numpy(alphas).astype(float).ravel()
        acc, tok = to_numpy(acc).reshape(-1, 3), to_numpy(tokens).reshape(-1, 3)
        if not (len(a) == len(acc) == len(tok)) or not len(a):
            raise ValueError(f"{label}: give one (value, lo, hi) row of accuracy and of thinking tokens per α "
                             f"(got {len(a)} alphas, {len(acc)} and {len(tok)} rows)")
        order = np.argsort(a)
        a, acc, tok = a[order], acc[order], tok[order]
        color = COLORS[i % len(COLORS)]
        bars = {"thickness": 1, "width": 3, "color": rgba(color, 0.45)}
        fig.add_scatter(
            x=tok[:, 0].tolist(), y=acc[:, 0].tolist(), mode="lines+markers+text", name=label,
            text=[f"α={x:g}" for x in a], textposition="top center", textfont={"color": color},
            line={"color": color, "dash": "solid" if i % 2 == 0 else "dot"},
            error_x=error_bars(tok) | bars, error_y=error_bars(acc) | bars,
            hovertemplate="%{text}<br>thinking tokens = %{x:.1f}<br>accuracy = %{y:.3f}<extra>" + label + "</extra>")
    fig.update_layout(title=title or "Efficiency steering: accuracy against thinking length",
                      xaxis_title="mean thinking tokens", yaxis_title="accuracy", legend_title="direction")
    return fig

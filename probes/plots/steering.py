"""Steering figures (``reference/steering.md`` §5): behaviour against α per layer with 95% bands
and the prompting baseline, KL against α per layer with the guard's threshold, and the histogram
of per-example steerability slopes. Builders take saved arrays only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from probes.plots._arrays import to_numpy
from probes.plots._bands import COLORS, add_band

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["behaviour_alpha_figure", "kl_alpha_figure", "steerability_histogram"]

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

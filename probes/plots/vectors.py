"""Reasoning task vector figures (``reference/task_vectors.md``): accuracy per condition against the
mandatory controls (§6: vector, negation, norm-matched random, prompt-only, donor ceiling) with the
target's baseline as a reference line, as in the §8 tables; the per-layer ‖δ‖₂ of a vector or merge
by module type (``Manifest.profile()``, §5 step 3), with the tensors outside the blocks apart; and
the metric against α (§2 knob, §6 α sweep) with the target without a vector and the norm-matched
random control at α = 1. Builders take saved values only (evaluation estimates, manifest profiles)
and recompute nothing.

Intervals are ``(value, lo, hi)`` triples (an ``Estimate`` works too); a NaN bound draws no bar.
Input that would leave a figure with nothing to draw is refused with a ValueError.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.plots._arrays import to_numpy
from probes.plots._bands import COLORS, GREY, add_band, error_bars
from probes.plots.refusal import _intervals

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["alpha_curve_figure", "condition_accuracy_figure", "delta_profile_figure"]

# Slack for a value that misses its bound by float round-off.
_TOL = 1e-9
_ROW_KEYS = ("condition", "value", "lo", "hi", "n")
# Manifest.profile() files the tensors outside the blocks (embedding, lm_head, final norm) under this layer.
_OUTSIDE = -1


def condition_accuracy_figure(
    rows: Sequence[Mapping[str, Any]], *, baseline: str | None = None, title: str | None = None,
) -> go.Figure:
    """Bars of accuracy per condition in the order given, with asymmetric 95% error bars and the
    number of items inside each bar; the ``baseline`` condition (e.g. the target without a vector)
    is drawn grey and its value as a dashed horizontal line. ``rows``: dicts with ``condition``,
    ``value``, ``lo``, ``hi``, ``n``. The y axis is fixed to [0, 1]."""
    import plotly.graph_objects as go

    if not rows:
        raise ValueError("rows is empty: give one {condition, value, lo, hi, n} dict per condition")
    for i, row in enumerate(rows):
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: each row needs condition, value, lo, hi, n")
    conds = [str(r["condition"]) for r in rows]
    if len(set(conds)) != len(conds):
        raise ValueError(f"rows repeat a condition: {conds}; give each condition once")
    a = _intervals([(r["value"], r["lo"], r["hi"]) for r in rows], len(rows), "rows")
    finite = a[np.isfinite(a)]
    if not np.isfinite(a[:, 0]).all() or (finite < -_TOL).any() or (finite > 1 + _TOL).any():
        raise ValueError(f"accuracies and their bounds must lie in [0, 1] (a bound may be NaN), got {a.tolist()}")
    n = []
    for c, r in zip(conds, rows):
        if not isinstance(r["n"], (int, np.integer)) or r["n"] < 0:
            raise ValueError(f"n of {c!r} is {r['n']!r}: give the number of items, a whole number >= 0")
        n.append(int(r["n"]))
    if baseline is not None and baseline not in conds:
        raise ValueError(f"baseline {baseline!r} is not one of the conditions {conds}")
    ci = [f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "" for lo, hi in a[:, 1:]]
    fig = go.Figure(go.Bar(x=conds, y=a[:, 0].tolist(), error_y=error_bars(a), name="accuracy",
                           marker_color=[GREY if c == baseline else COLORS[0] for c in conds],
                           text=[f"n = {k}" for k in n], textposition="inside", insidetextanchor="start",
                           customdata=list(zip(ci, n)),
                           hovertemplate="%{x}<br>accuracy = %{y:.3f} %{customdata[0]}<br>"
                                         "n = %{customdata[1]}<extra></extra>"))
    if baseline is not None:
        b = float(a[conds.index(baseline), 0])
        fig.add_hline(y=b, line_dash="dash", line_color="black", annotation_text=f"{html.escape(baseline)} {b:.3f}")
    fig.update_layout(title=title or "Accuracy per condition (95% CI)",
                      xaxis={"title": "condition", "type": "category", "categoryorder": "array", "categoryarray": conds},
                      yaxis={"title": "accuracy", "range": [0, 1]}, showlegend=False)
    return fig


def _layer(key: Any, kind: str) -> int:
    try:
        layer = int(key)
        whole = layer == float(key)
    except (TypeError, ValueError):
        whole = False
    if not whole or layer < _OUTSIDE:
        raise ValueError(f"profile[{kind!r}] has layer {key!r}: give block indices >= 0, and -1 for the tensors "
                         f"outside the blocks (Manifest.profile())")
    return layer


def delta_profile_figure(
    profile: Mapping[str, Mapping[Any, float]], *, log_y: bool = False, title: str | None = None,
) -> go.Figure:
    """One line per module type of ‖δ‖₂ against the layer (``profile``: ``Manifest.profile()``,
    module type → layer → ‖δ‖₂). The tensors outside the blocks (layer −1: embedding, lm_head, final
    norm) are markers in a narrow "outside blocks" panel on the left, one per module type and in the
    colour of its line, never a point of the line; without such tensors the figure is one panel.
    With ``log_y`` the y axis is logarithmic and zero norms (skipped or kept tensors) are left out."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not isinstance(profile, Mapping) or not profile:
        raise ValueError(f"profile must be a non-empty mapping module type → {{layer: ‖δ‖₂}} (Manifest.profile()), "
                         f"got {profile!r:.80}")
    parsed: dict[str, dict[int, float]] = {}
    for kind, cells in profile.items():
        if not isinstance(cells, Mapping) or not cells:
            raise ValueError(f"profile[{kind!r}] must be a non-empty mapping layer → ‖δ‖₂, got {cells!r:.80}")
        layers = [_layer(k, kind) for k in cells]
        if len(set(layers)) != len(layers):
            raise ValueError(f"profile[{kind!r}] repeats a layer: {list(cells)}; give each layer once")
        norms = to_numpy(list(cells.values()))
        if not np.isfinite(norms).all() or (norms < 0).any():
            raise ValueError(f"profile[{kind!r}] has norms {norms.tolist()}: ‖δ‖₂ must be finite and >= 0")
        parsed[str(kind)] = {L: float(v) for L, v in sorted(zip(layers, norms.tolist())) if v > 0 or not log_y}
    if not any(parsed.values()):
        raise ValueError("every ‖δ‖₂ in profile is 0: nothing to draw on a log axis; pass log_y=False")
    outside = {kind: cells[_OUTSIDE] for kind, cells in parsed.items() if _OUTSIDE in cells}
    inside = {kind: {L: v for L, v in cells.items() if L != _OUTSIDE} for kind, cells in parsed.items()}
    inside = {kind: cells for kind, cells in inside.items() if cells}
    colors = {kind: COLORS[i % len(COLORS)] for i, kind in enumerate(parsed)}
    if outside:
        fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.15, 0.85], horizontal_spacing=0.03)
        where = {"row": 1, "col": 2}
    else:
        fig = go.Figure()
        where = {}
    for kind, cells in inside.items():
        name = html.escape(kind)
        fig.add_scatter(x=list(cells), y=list(cells.values()), mode="lines+markers", name=name, legendgroup=kind,
                        line={"color": colors[kind]},
                        hovertemplate="layer %{x}<br>‖δ‖₂ = %{y:.4g}<extra>" + name + "</extra>", **where)
    for kind, value in outside.items():
        name = html.escape(kind)
        fig.add_scatter(x=[name], y=[value], mode="markers", name=f"{name} (outside blocks)", legendgroup=kind,
                        showlegend=kind not in inside,
                        marker={"symbol": "diamond", "size": 11, "color": colors[kind]},
                        hovertemplate="%{x}, outside the blocks<br>‖δ‖₂ = %{y:.4g}<extra></extra>", row=1, col=1)
    if outside:
        fig.update_xaxes(title_text="outside blocks", type="category", row=1, col=1)
        fig.update_yaxes(title_text="‖δ‖₂", row=1, col=1)
    else:
        fig.update_yaxes(title_text="‖δ‖₂")
    layers = sorted({L for cells in inside.values() for L in cells})
    if layers:
        fig.update_xaxes(title_text="layer", tickmode="linear", tick0=0,
                         dtick=max(1, math.ceil((layers[-1] - layers[0] + 1) / 16)), tickformat="d", **where)
    if log_y:
        fig.update_yaxes(type="log")
    fig.update_layout(title=title or "‖δ‖₂ per layer by module type", legend_title="module type")
    return fig


def _reference(value: Any, what: str) -> tuple[float, float, float]:
    """(value, lo, hi) from a number, a triple or an ``Estimate``; a bare number has no bounds."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value, math.nan, math.nan)
    [[v, lo, hi]] = _intervals([value], 1, what)
    if not math.isfinite(v):
        raise ValueError(f"{what} value is {v}: give a finite number")
    return v, lo, hi


def alpha_curve_figure(
    alphas: Sequence[float], mean: Any, lo: Any, hi: Any, *, baseline: Any = None, random: Any = None,
    metric: str = "accuracy", title: str | None = None,
) -> go.Figure:
    """``metric`` against the scale α of the vector (§2, §6 α sweep; α = −1 is the negation) with its
    shaded 95% band (``mean``, ``lo``, ``hi``: one value per α, a NaN mean a missing cell that is left
    out); the target without a vector (``baseline``: a value, ``(value, lo, hi)`` or an ``Estimate``)
    as a dashed horizontal line, shaded between its bounds when given; the norm-matched random control
    (``random``: ``(value, lo, hi)`` or an ``Estimate``) as one marker with error bars at α = 1; and a
    dotted vertical line at α = 0."""
    import plotly.graph_objects as go

    x = to_numpy(alphas)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"alphas must be a non-empty 1-d sequence of finite scales, got {x.tolist()}")
    if len(np.unique(x)) != x.size:
        raise ValueError(f"alphas repeat a value: {x.tolist()}; give each α once")
    m, low, high = arrays = [to_numpy(v) for v in (mean, lo, hi)]
    if any(v.shape != x.shape for v in arrays):
        shapes = {k: v.shape for k, v in zip(("mean", "lo", "hi"), arrays)}
        raise ValueError(f"mean, lo and hi must hold {x.size} values each, one per α, got shapes {shapes}")
    ok = np.isfinite(m)
    if not ok.any():
        raise ValueError("mean has no finite value: nothing to draw")
    if (ok & np.isfinite(low) & (low > m + _TOL)).any() or (ok & np.isfinite(high) & (high < m - _TOL)).any():
        raise ValueError("each interval [lo, hi] must contain its mean: pass mean, lo, hi in that order")
    order = np.argsort(x)
    keep = order[ok[order]]
    fig = go.Figure()
    esc = html.escape(metric)
    add_band(fig, x[keep], low[keep], high[keep], color=COLORS[0], name="task vector 95% CI")
    fig.add_scatter(x=x[keep].tolist(), y=m[keep].tolist(), mode="lines+markers", name="task vector",
                    line={"color": COLORS[0]},
                    hovertemplate="α = %{x:g}<br>" + esc + " = %{y:.3f}<extra>task vector</extra>")
    if random is not None:
        r = np.array([_reference(random, "random")])
        fig.add_scatter(x=[1.0], y=[float(r[0, 0])], error_y=error_bars(r), mode="markers",
                        name="norm-matched random vector (α = 1)",
                        marker={"symbol": "x", "size": 11, "color": COLORS[1]},
                        hovertemplate="α = 1<br>" + esc + " = %{y:.3f}<extra>random vector</extra>")
    if baseline is not None:
        b, b_lo, b_hi = _reference(baseline, "baseline")
        if math.isfinite(b_lo) and math.isfinite(b_hi):
            fig.add_hrect(y0=b_lo, y1=b_hi, fillcolor="black", opacity=0.08, line_width=0)
        fig.add_hline(y=b, line_dash="dash", line_color="black", annotation_text=f"no vector {b:.3g}")
    fig.add_vline(x=0.0, line_dash="dot", line_color=GREY)
    ticks = sorted(set(x.tolist()) | {0.0} | ({1.0} if random is not None else set()))
    fig.update_layout(title=title or f"{metric} against the task-vector scale α",
                      xaxis={"title": "α (scale of the task vector)", "tickvals": ticks,
                             "ticktext": [f"{v:g}" for v in ticks]},
                      yaxis_title=metric)
    return fig

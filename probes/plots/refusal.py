"""Refusal figures (``reference/refusal.md``; issue #12 item 12): probe accuracy per hidden state
(A2), mean refusal-score trajectories and the per-sentence view that locates the cliff (A3),
direct head attributions and top-vs-random head ablation (A4), refusal rates under direction
ablation and addition (B), the direction search's Pareto front, Cliff-as-a-Judge selection
curves (A6) and thinking truncation (A3). Builders take saved values only and recompute nothing.

Intervals are ``(value, lo, hi)`` triples (an ``Estimate`` works too). A point whose value is NaN
is a missing cell and is left out, a NaN bound draws no bar; input that would leave a figure with
nothing to draw is refused with a ValueError.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.plots._arrays import to_numpy
from probes.plots._bands import COLORS, add_band, error_bars, rgba

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "ablation_figure", "direction_rates_figure", "head_heatmap", "pareto_figure", "probe_layers_figure",
    "selection_figure", "sentence_figure", "trajectory_figure", "truncation_figure",
]

Interval = tuple[float, float, float]

# Scores, rates and accuracies live in [0, 1]; the margin keeps markers at 0 and 1 whole.
_UNIT_RANGE = [-0.02, 1.02]
# Slack for an interval bound that misses its value by float round-off.
_TOL = 1e-9


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _intervals(values: Sequence[Any], n: int, what: str) -> np.ndarray:
    """(n, 3) array of value, lo, hi from triples or ``Estimate``-like objects; checks lo ≤ value ≤ hi."""
    rows = [(v.value, v.lo, v.hi) if hasattr(v, "lo") else v for v in values]
    try:
        a = np.asarray(rows, dtype=float).reshape(len(rows), -1) if rows else np.zeros((0, 3))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (value, lo, hi) triples") from None
    if a.shape != (n, 3):
        raise ValueError(f"{what} must be {n} (value, lo, hi) triples, one per point; got shape {a.shape}")
    for i, (v, lo, hi) in enumerate(a):
        if math.isfinite(v) and ((math.isfinite(lo) and lo > v + _TOL) or (math.isfinite(hi) and hi < v - _TOL)):
            raise ValueError(f"{what}[{i}] = {tuple(a[i].tolist())}: the interval [lo, hi] must contain the value; "
                             f"pass (value, lo, hi) in that order")
    return a


def _ci_text(a: np.ndarray) -> list[str]:
    """Per-point interval for hover, rounded as the values are ("" where a bound is missing)."""
    return [f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "" for lo, hi in a[:, 1:]]


def _ci_hover(what: str) -> str:
    return what + " = %{y:.3f} %{customdata}"


def _series(x: np.ndarray, a: np.ndarray, *, name: str, color: str, hover: str) -> dict[str, Any]:
    """Arguments of one scatter with error bars: the points of `a` with a finite value, sorted by x."""
    keep = np.argsort(x, kind="stable")
    keep = keep[np.isfinite(a[keep, 0])]
    return {"x": x[keep].tolist(), "y": a[keep, 0].tolist(), "error_y": error_bars(a[keep]),
            "customdata": _ci_text(a[keep]), "mode": "lines+markers", "name": name, "line": {"color": color},
            "hovertemplate": hover + "<extra>" + html.escape(name) + "</extra>"}


def _one_d(values: Any, what: str, *, min_size: int = 1) -> np.ndarray:
    a = to_numpy(values)
    if a.ndim != 1 or a.size < min_size:
        raise ValueError(f"{what} must be a 1-d array of at least {min_size} value(s), got shape {a.shape}")
    if not np.isfinite(a).any():
        raise ValueError(f"{what} has no finite value: nothing to draw")
    return a


def _hover_text(text: str, width: int = 60) -> str:
    """A sentence as hover text: whitespace collapsed, wrapped, markup escaped (``</think>`` stays visible)."""
    return "<br>".join(html.escape(line) for line in textwrap.wrap(" ".join(text.split()), width))


def _check_groups(groups: Mapping[str, Any], what: str) -> None:
    if not groups:
        raise ValueError(f"{what} is empty: give at least one group, e.g. {{'plain forbidden': ...}}")


def _percent_axis(fractions: Any, what: str, *, low_open: bool) -> np.ndarray:
    f = to_numpy(fractions)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-d sequence of shares, got shape {f.shape}")
    if not np.isfinite(f).all() or (f > 1).any() or ((f <= 0) if low_open else (f < 0)).any():
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{what} are shares in {interval} (0.05 for 5 %), got {f.tolist()}")
    if len(np.unique(f)) != f.size:
        raise ValueError(f"{what} repeat a value: {f.tolist()}; give each share once")
    return 100 * f


def probe_layers_figure(
    sites: Sequence[str], val_accuracy: Sequence[float], ood: Sequence[Interval] | None = None, *,
    title: str | None = None,
) -> go.Figure:
    """Probe validation accuracy per hidden state (A2's layer sweep), ``sites`` in order (``embed``,
    ``resid_post[0]``, …, ``final_norm``), with the out-of-distribution accuracy and its interval
    when given (NaN where a site was not evaluated) and chance (0.5, balanced classes) dashed."""
    import plotly.graph_objects as go

    names = [str(s) for s in sites]
    if not names:
        raise ValueError("sites is empty: give the hidden states the probe was swept over")
    if len(set(names)) != len(names):
        raise ValueError(f"sites repeat a name: {names}; give each hidden state once")
    acc = to_numpy(val_accuracy)
    if acc.shape != (len(names),):
        raise ValueError(f"{acc.size} validation accuracies for {len(names)} sites: give one per site")
    if not np.isfinite(acc).any():
        raise ValueError("val_accuracy has no finite value: nothing to draw")
    fig = go.Figure()
    keep = np.isfinite(acc)
    fig.add_scatter(x=[n for n, k in zip(names, keep) if k], y=acc[keep].tolist(), mode="lines+markers",
                    name="validation", line={"color": _color(0)},
                    hovertemplate="%{x}<br>accuracy = %{y:.3f}<extra>validation</extra>")
    if ood is not None:
        a = _intervals(ood, len(names), "ood")
        ok = np.isfinite(a[:, 0])
        fig.add_scatter(x=[n for n, k in zip(names, ok) if k], y=a[ok, 0].tolist(), error_y=error_bars(a[ok]),
                        customdata=_ci_text(a[ok]), mode="markers", name="out of distribution",
                        marker={"color": _color(1), "size": 9},
                        hovertemplate="%{x}<br>" + _ci_hover("accuracy") + "<extra>out of distribution</extra>")
    fig.add_hline(y=0.5, line_dash="dash", line_color="black", annotation_text="chance")
    fig.update_layout(title=title or "Refusal probe accuracy per hidden state", xaxis_title="hidden state",
                      yaxis={"title": "accuracy", "range": _UNIT_RANGE},
                      xaxis={"type": "category", "categoryorder": "array", "categoryarray": names})
    return fig


def trajectory_figure(
    curves: Mapping[str, Any], *, bands: Mapping[str, tuple[Any, Any]] | None = None,
    points_label: str = "position (right-aligned, resampled to 100 points)", title: str | None = None,
) -> go.Figure:
    """Mean refusal-score curve per group (A3's mean curve, e.g. ``mean_curve``), each on x from 0 to
    1 where 1 is the probe position (the last token before the answer); ``bands[group] = (lo, hi)``,
    arrays as long as the curve, draw a shaded interval."""
    import plotly.graph_objects as go

    _check_groups(curves, "curves")
    unknown = sorted(set(bands or {}) - set(curves))
    if unknown:
        raise ValueError(f"bands for groups without a curve: {unknown}; curves has {list(curves)}")
    fig = go.Figure()
    for i, (group, values) in enumerate(curves.items()):
        y = _one_d(values, f"curve {group!r}", min_size=2)
        x = np.linspace(0.0, 1.0, y.size)
        color = _color(i)
        if bands and group in bands:
            lo, hi = (to_numpy(b) for b in bands[group])
            if lo.shape != y.shape or hi.shape != y.shape:
                raise ValueError(f"band of {group!r} has shapes {lo.shape}, {hi.shape}: give (lo, hi) with "
                                 f"{y.size} values each, like its curve")
            add_band(fig, x, lo, hi, color=color, name=f"{group} interval")
        fig.add_scatter(x=x.tolist(), y=y.tolist(), mode="lines", name=group, line={"color": color},
                        hovertemplate="x = %{x:.2f}<br>r = %{y:.3f}<extra>" + html.escape(group) + "</extra>")
    fig.update_layout(title=title or "Refusal score along the trace (1 = last token before the answer)",
                      xaxis={"title": points_label, "range": [0, 1]},
                      yaxis={"title": "mean refusal score r", "range": _UNIT_RANGE}, legend_title="prompts")
    return fig


def sentence_figure(
    scores: Mapping[str, Any], texts: Mapping[str, Sequence[str]] | None = None, *, title: str | None = None,
) -> go.Figure:
    """Mean probe score per thinking sentence per group (e.g. ``sentence_curve``), right-aligned: x
    runs −n … −1, −1 being the last sentence before the answer, so the cliff shows at a sentence.
    ``texts[group]`` (one example sentence per position) is shown on hover."""
    import plotly.graph_objects as go

    _check_groups(scores, "scores")
    unknown = sorted(set(texts or {}) - set(scores))
    if unknown:
        raise ValueError(f"texts for groups without scores: {unknown}; scores has {list(scores)}")
    fig = go.Figure()
    for i, (group, values) in enumerate(scores.items()):
        y = _one_d(values, f"scores of {group!r}")
        x = np.arange(-y.size, 0)
        ok = np.isfinite(y)
        hover = "sentence %{x}<br>mean r = %{y:.3f}"
        extra: dict[str, Any] = {}
        if texts and group in texts:
            if len(texts[group]) != y.size:
                raise ValueError(f"{len(texts[group])} texts for {y.size} sentence scores of {group!r}: "
                                 f"give one example sentence per position")
            extra["customdata"] = [_hover_text(t) for t, k in zip(texts[group], ok) if k]
            hover += "<br>%{customdata}"
        fig.add_scatter(x=x[ok].tolist(), y=y[ok].tolist(), mode="lines+markers", name=group,
                        line={"color": _color(i)}, hovertemplate=hover + "<extra>" + html.escape(group) + "</extra>",
                        **extra)
    fig.update_layout(title=title or "Refusal score per thinking sentence (−1 = last before the answer)",
                      xaxis={"title": "thinking sentence, counted from the end", "dtick": 1},
                      yaxis={"title": "mean refusal score r", "range": _UNIT_RANGE}, legend_title="prompts")
    return fig


def head_heatmap(scores: Any, *, top: Sequence[tuple[int, int]] = (), title: str | None = None) -> go.Figure:
    """Layer × head map of the direct attribution s_{l,h} (A4; negative = writes against refusal) on
    a diverging scale centred at 0, NaN (unscored heads) blank; the heads in ``top`` are circled."""
    import plotly.graph_objects as go

    z = to_numpy(scores)
    if z.ndim != 2 or z.size == 0:
        raise ValueError(f"scores must be a non-empty (n_layers, n_heads) array, got shape {z.shape}")
    if not np.isfinite(z).any():
        raise ValueError("scores has no finite value: no head was scored")
    outside = [(L, h) for L, h in top if not (0 <= L < z.shape[0] and 0 <= h < z.shape[1])]
    if outside:
        raise ValueError(f"top heads {outside} lie outside the map: layers 0..{z.shape[0] - 1}, heads 0..{z.shape[1] - 1}")
    lim = float(np.nanmax(np.abs(z))) or 1.0
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", reversescale=True, zmid=0, zmin=-lim, zmax=lim,
                               colorbar_title="s<sub>l,h</sub>",
                               hovertemplate="layer %{y}, head %{x}<br>s = %{z:.4g}<extra></extra>"))
    if top:
        fig.add_scatter(x=[h for _, h in top], y=[L for L, _ in top], mode="markers",
                        name=f"suppression heads (k = {len(top)})",
                        marker={"symbol": "circle-open", "size": 14, "color": "black", "line": {"width": 2}},
                        hovertemplate="layer %{y}, head %{x}<extra>suppression head</extra>")
    fig.update_layout(title=title or "Direct write of each head onto the refusal probe direction",
                      xaxis={"title": "head", "dtick": 1}, yaxis={"title": "layer", "dtick": 1})
    return fig


def ablation_figure(
    counts: Sequence[int], top: Sequence[Interval], random: Sequence[Interval], baseline: Interval, *,
    metric: str, title: str | None = None,
) -> go.Figure:
    """``metric`` (e.g. ``"r_T"`` or ``"refusal rate"``) after ablating the k top suppression heads
    and k random heads against k, with intervals; the unablated model is a dashed line in its
    shaded interval."""
    import plotly.graph_objects as go

    k = to_numpy(counts)
    if k.ndim != 1 or k.size == 0 or not np.isfinite(k).all() or (k < 0).any() or (k != np.round(k)).any():
        raise ValueError(f"counts must be a non-empty 1-d sequence of head counts (whole numbers ≥ 0), got {k.tolist()}")
    k = k.astype(int)
    if len(np.unique(k)) != k.size:
        raise ValueError(f"counts repeat a value: {k.tolist()}; give each head count once")
    a_top = _intervals(top, k.size, "top")
    a_random = _intervals(random, k.size, "random")
    if not (np.isfinite(a_top[:, 0]).any() or np.isfinite(a_random[:, 0]).any()):
        raise ValueError("top and random have no finite value: nothing to draw")
    [[b, b_lo, b_hi]] = _intervals([baseline], 1, "baseline")
    if not math.isfinite(b):
        raise ValueError(f"baseline value is {b}: give the unablated model's {metric}")
    hover = "k = %{x}<br>" + _ci_hover(metric)
    fig = go.Figure()
    fig.add_scatter(**_series(k, a_top, name="top heads", color=_color(1), hover=hover))
    fig.add_scatter(**_series(k, a_random, name="random heads", color=_color(7), hover=hover))
    if math.isfinite(b_lo) and math.isfinite(b_hi):
        fig.add_hrect(y0=b_lo, y1=b_hi, fillcolor="black", opacity=0.08, line_width=0)
    fig.add_hline(y=b, line_dash="dash", line_color="black", annotation_text=f"no ablation {b:.3f}")
    fig.update_layout(title=title or f"{metric} after ablating top vs random heads", xaxis_title="heads ablated (k)",
                      yaxis_title=metric, legend_title="heads")
    fig.update_xaxes(tickmode="array", tickvals=k.tolist())  # head counts are whole numbers
    return fig


def direction_rates_figure(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> go.Figure:
    """Grouped bars of the refusal rate with intervals (B's evaluation): one group per prompt set,
    one bar per condition. Each row is ``{"prompts": "plain forbidden", "condition": "direction
    ablated", "rate": v, "lo": lo, "hi": hi}`` (``lo``/``hi`` optional); groups and bars keep the
    order they first appear in."""
    import plotly.graph_objects as go

    if not rows:
        raise ValueError("rows is empty: give one row per (prompts, condition) with its rate")
    cells: dict[tuple[str, str], tuple[float, float, float]] = {}
    for i, row in enumerate(rows):
        missing = [key for key in ("prompts", "condition", "rate") if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: each row needs prompts, condition, rate (and lo, hi)")
        key = (str(row["prompts"]), str(row["condition"]))
        if key in cells:
            raise ValueError(f"row {i} repeats prompts {key[0]!r} under condition {key[1]!r}: give each pair once")
        cells[key] = (row["rate"], row.get("lo", math.nan), row.get("hi", math.nan))
    prompts = list(dict.fromkeys(p for p, _ in cells))
    conditions = list(dict.fromkeys(c for _, c in cells))
    fig = go.Figure()
    for i, condition in enumerate(conditions):
        xs = [p for p in prompts if (p, condition) in cells]
        a = _intervals([cells[p, condition] for p in xs], len(xs), f"rows of {condition!r}")
        ok = np.isfinite(a[:, 0])
        if not ok.any():
            continue
        fig.add_bar(x=[p for p, k in zip(xs, ok) if k], y=a[ok, 0].tolist(), error_y=error_bars(a[ok]),
                    customdata=_ci_text(a[ok]), name=condition, marker_color=_color(i),
                    hovertemplate="%{x}<br>" + _ci_hover("refusal rate") + "<extra>" + html.escape(condition)
                    + "</extra>")
    if not fig.data:
        raise ValueError("every rate is NaN: nothing to draw")
    fig.update_layout(title=title or "Refusal rate under direction ablation and addition", barmode="group",
                      xaxis={"title": "prompts", "categoryorder": "array", "categoryarray": prompts},
                      yaxis={"title": "refusal rate", "range": [0, 1.05]}, legend_title="condition")
    return fig


def pareto_figure(
    refusal: Sequence[float], kl: Sequence[float], front: Sequence[int], *, best: int | None = None,
    labels: Sequence[str] | None = None, title: str | None = None,
) -> go.Figure:
    """Every trial of the direction search as a point (x: first-token KL on harmless prompts,
    y: refusal rate on harmful dev prompts; NaN for a failed trial), the Pareto front (trial
    indices ``front``) joined by KL, and the chosen trial ``best`` starred; hover shows ``labels``."""
    import plotly.graph_objects as go

    y = to_numpy(refusal)
    x = to_numpy(kl)
    if y.ndim != 1 or y.size == 0 or x.shape != y.shape:
        raise ValueError(f"refusal and kl must be non-empty 1-d sequences of one value per trial, got shapes "
                         f"{y.shape} and {x.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        raise ValueError("no trial has a finite refusal rate and KL: nothing to draw")
    names = [f"trial {i}" for i in range(y.size)] if labels is None else [str(s) for s in labels]
    if len(names) != y.size:
        raise ValueError(f"{len(names)} labels for {y.size} trials: give one per trial")
    if not front:
        raise ValueError("front is empty: give the indices of the Pareto-optimal trials")
    chosen = list(front) + ([] if best is None else [best])
    bad = [i for i in chosen if not (0 <= i < y.size and ok[i])]
    if bad:
        raise ValueError(f"front/best name trials {bad} that are out of range 0..{y.size - 1} or have no finite values")
    hover = "KL = %{x:.4g}<br>refusal rate = %{y:.3f}<br>%{customdata}"
    idx = np.flatnonzero(ok)
    fig = go.Figure()
    fig.add_scatter(x=x[idx].tolist(), y=y[idx].tolist(), mode="markers", name="trials",
                    marker={"color": rgba(_color(0), 0.5), "size": 7},
                    customdata=[_hover_text(names[i]) for i in idx], hovertemplate=hover + "<extra>trial</extra>")
    f = sorted(dict.fromkeys(front), key=lambda i: (x[i], y[i]))
    fig.add_scatter(x=x[f].tolist(), y=y[f].tolist(), mode="lines+markers", name="Pareto front",
                    line={"color": _color(1)}, customdata=[_hover_text(names[i]) for i in f],
                    hovertemplate=hover + "<extra>Pareto front</extra>")
    if best is not None:
        fig.add_scatter(x=[float(x[best])], y=[float(y[best])], mode="markers", name="chosen",
                        marker={"symbol": "star", "size": 18, "color": _color(4), "line": {"width": 1, "color": "black"}},
                        customdata=[_hover_text(names[best])], hovertemplate=hover + "<extra>chosen</extra>")
    fig.update_layout(title=title or "Direction search: refusal rate against KL",
                      xaxis_title="first-token KL on harmless prompts (nats)",
                      yaxis={"title": "refusal rate on harmful dev prompts", "range": _UNIT_RANGE})
    return fig


def selection_figure(
    fractions: Sequence[float], rates: Mapping[str, Sequence[Interval]], *, untrained: Interval | None = None,
    metric: str = "refusal rate on held-out wrapped requests", title: str | None = None,
) -> go.Figure:
    """Cliff-as-a-Judge (A6): ``metric`` after fine-tuning on the selected k % of the data, one line
    with intervals per criterion (``rates[criterion]``, one triple per fraction, e.g. "cliff",
    "random", "rule"), against k; the untrained model is a dashed line."""
    import plotly.graph_objects as go

    x = _percent_axis(fractions, "fractions", low_open=True)
    _check_groups(rates, "rates")
    series = {name: _intervals(v, x.size, f"rates[{name!r}]") for name, v in rates.items()}
    if not any(np.isfinite(a[:, 0]).any() for a in series.values()):
        raise ValueError("rates have no finite value: nothing to draw")
    fig = go.Figure()
    hover = "k = %{x:.3g}%<br>" + _ci_hover(metric)
    for i, (name, a) in enumerate(series.items()):
        fig.add_scatter(**_series(x, a, name=name, color=_color(i), hover=hover))
    if untrained is not None:
        [[u, _, _]] = _intervals([untrained], 1, "untrained")
        if math.isfinite(u):
            fig.add_hline(y=u, line_dash="dash", line_color="black", annotation_text=f"untrained {u:.3f}")
    ticks = sorted(x.tolist())
    fig.update_layout(title=title or f"Cliff-as-a-Judge: {metric} by share of the data selected",
                      xaxis={"title": "share of the data selected (k)", "tickvals": ticks,
                             "ticktext": [f"{v:g}%" for v in ticks]},
                      yaxis_title=metric, legend_title="selection")
    return fig


def truncation_figure(
    fractions: Sequence[float], refusal: Sequence[Interval], r_T: Sequence[Interval], *, title: str | None = None,
) -> go.Figure:
    """Thinking truncation (A3): the refusal rate (top panel) and the mean r_T (bottom panel), with
    intervals, against the share of the model's own thinking kept (0 = none, 100 % = all)."""
    from plotly.subplots import make_subplots

    x = _percent_axis(fractions, "fractions", low_open=False)
    a_refusal = _intervals(refusal, x.size, "refusal")
    a_r_T = _intervals(r_T, x.size, "r_T")
    if not (np.isfinite(a_refusal[:, 0]).any() or np.isfinite(a_r_T[:, 0]).any()):
        raise ValueError("refusal and r_T have no finite value: nothing to draw")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_scatter(**_series(x, a_refusal, name="refusal rate", color=_color(1),
                              hover="kept %{x:.3g}%<br>" + _ci_hover("refusal rate")), row=1, col=1)
    fig.add_scatter(**_series(x, a_r_T, name="mean r_T", color=_color(0),
                              hover="kept %{x:.3g}%<br>" + _ci_hover("mean r_T")), row=2, col=1)
    fig.update_yaxes(title_text="refusal rate", range=_UNIT_RANGE, row=1, col=1)
    fig.update_yaxes(title_text="mean r_T", range=_UNIT_RANGE, row=2, col=1)
    fig.update_xaxes(title_text="share of the thinking kept", ticksuffix="%", row=2, col=1)
    fig.update_layout(title=title or "Refusal rate and r_T against the thinking kept", height=600)
    return fig

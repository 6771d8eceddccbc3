"""MoE expert figures (``reference/moe_experts.md``): the layer × expert nPMI map per marker with the
chosen pairs marked (§1 "Definitions"), the global ranking of Score(E) with the bootstrap stability
of the top-ℓ (§1 "Score and selection"), the share of tokens routed to the chosen experts per
sentence category (``probes.experts.sentences``), and accuracy or thinking length against the RICE
boost β for the reinforced experts, the random-expert control and the unreinforced baseline (§2, §8).
Builders take saved values only (``ExpertScores`` arrays and tables, evaluation estimates) and
recompute nothing.

A band is a mapping ``{"mean": …, "lo": …, "hi": …}`` of arrays, one value per β; a NaN mean is a
missing cell and is left out. Input that would leave a figure with nothing to draw is refused with a
ValueError.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.plots._arrays import display_token, to_numpy
from probes.plots._bands import COLORS, GREY, add_band, rgba
from probes.plots.refusal import _intervals

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["beta_sweep_figure", "category_share_figure", "npmi_heatmap", "score_ranking_figure"]

Pair = tuple[int, int]
Band = Mapping[str, Any]

# Slack for a value that misses its bound by float round-off.
_TOL = 1e-9
_BAND_KEYS = ("mean", "lo", "hi")


def _pair_label(layer: int, expert: int) -> str:
    return f"L{layer}·E{expert}"


def npmi_heatmap(
    npmi: Any, *, layers: Sequence[int], marker: str, chosen: Sequence[Pair] = (), title: str | None = None,
) -> go.Figure:
    """Layer × expert map of nPMI(``marker``, E) (§1; ``npmi``: (n_layers, E), row ``j`` = layer
    ``layers[j]``, e.g. ``ExpertScores.values[marker]``) on a diverging scale fixed to [−1, 1] with 0
    at the centre, NaN blank; the ``chosen`` (layer, expert) pairs are outlined. One figure per
    marker."""
    import plotly.graph_objects as go

    z = to_numpy(npmi)
    ids = [int(L) for L in layers]
    if z.ndim != 2 or z.size == 0 or z.shape[0] != len(ids):
        raise ValueError(f"npmi must be a non-empty (n_layers, n_experts) array with n_layers = {len(ids)} "
                         f"(one row per layer), got shape {z.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"layers repeat an id: {ids}; give each layer once")
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise ValueError(f"npmi of {marker!r} has no finite value: nothing to draw")
    if (np.abs(finite) > 1 + _TOL).any():
        raise ValueError(f"npmi of {marker!r} has values in [{finite.min():.3g}, {finite.max():.3g}]; nPMI lies in "
                         f"[-1, 1]: pass one marker's table (ExpertScores.values[marker]), not the score")
    pairs = [(int(L), int(e)) for L, e in chosen]
    outside = [p for p in pairs if p[0] not in ids or not 0 <= p[1] < z.shape[1]]
    if outside:
        raise ValueError(f"chosen pairs {outside} lie outside the map: layers {ids}, experts 0..{z.shape[1] - 1}")
    name = display_token(marker)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=ids, colorscale="RdBu", reversescale=True,
                               zmin=-1.0, zmax=1.0, zmid=0.0, colorbar_title="nPMI",
                               hovertemplate="layer %{y}, expert %{x}<br>nPMI = %{z:.3f}<extra></extra>"))
    if pairs:
        fig.add_scatter(x=[e for _, e in pairs], y=[L for L, _ in pairs], mode="markers",
                        name=f"chosen experts (ℓ = {len(pairs)})",
                        marker={"symbol": "square-open", "size": 14, "color": "black", "line": {"width": 2}},
                        hovertemplate="layer %{y}, expert %{x}<extra>chosen</extra>")
    fig.update_layout(title=title or f"nPMI with {name} per (layer, expert)",
                      xaxis={"title": "expert"},
                      yaxis={"title": "layer", "type": "category", "categoryorder": "array", "categoryarray": ids})
    return fig


def score_ranking_figure(rows: Sequence[Mapping[str, Any]], *, ell: int, title: str | None = None) -> go.Figure:
    """The top pairs of the global ranking (§1) as bars of Score(E), labelled ``L{layer}·E{expert}``,
    the top-``ell`` highlighted; the bootstrap stability (share of resamples in which the pair enters
    the top-ℓ) as markers on a secondary [0, 1] axis when the rows carry it. ``rows`` is
    ``ExpertScores.table(n)``: dicts with ``layer``, ``expert``, ``score`` and optionally ``rank`` (the
    bars follow it) and ``stability``."""
    import plotly.graph_objects as go

    if not rows:
        raise ValueError("rows is empty: give ExpertScores.table(n) with n >= 1")
    if not isinstance(ell, (int, np.integer)) or ell < 1:
        raise ValueError(f"ℓ = {ell!r}: give the number of chosen experts, a whole number >= 1")
    parsed = []
    for i, row in enumerate(rows):
        missing = [key for key in ("layer", "expert", "score") if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: each row needs layer, expert, score (ExpertScores.table)")
        parsed.append((int(row.get("rank", i + 1)), int(row["layer"]), int(row["expert"]), float(row["score"]),
                       float(row.get("stability", math.nan))))
    parsed.sort(key=lambda r: r[0])
    labels = [_pair_label(L, e) for _, L, e, _, _ in parsed]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"rows repeat the pairs {repeated}: give each (layer, expert) once")
    fig = go.Figure()
    hover = "%{x}<br>rank %{customdata}<br>score = %{y:.3f}"
    for name, keep, color in ((f"top-{ell} (chosen)", lambda r: r[0] <= ell, COLORS[1]),
                              ("rest", lambda r: r[0] > ell, rgba(COLORS[0], 0.6))):
        sel = [r for r in parsed if keep(r)]
        if sel:
            fig.add_bar(x=[_pair_label(L, e) for _, L, e, _, _ in sel], y=[s for *_, s, _ in sel],
                        customdata=[r[0] for r in sel], name=name, marker_color=color,
                        hovertemplate=hover + "<extra>" + html.escape(name) + "</extra>")
    stab = [(label, r[4]) for label, r in zip(labels, parsed) if math.isfinite(r[4])]
    if stab:
        bad = [s for _, s in stab if not -_TOL <= s <= 1 + _TOL]
        if bad:
            raise ValueError(f"stability values {bad} are not shares in [0, 1]")
        fig.add_scatter(x=[x for x, _ in stab], y=[s for _, s in stab], yaxis="y2", mode="markers",
                        name=f"stability (share of resamples in the top-{ell})",
                        marker={"symbol": "diamond", "size": 10, "color": "black"},
                        hovertemplate="%{x}<br>stability = %{y:.2f}<extra>bootstrap</extra>")
        fig.update_layout(yaxis2={"title": f"share of resamples in the top-{ell}", "range": [0, 1.05],
                                  "tick0": 0, "dtick": 0.25, "overlaying": "y", "side": "right", "showgrid": False})
    fig.update_layout(title=title or f"Global ranking of (layer, expert) pairs by score (top-{ell} chosen)",
                      xaxis={"title": "(layer, expert)", "type": "category", "categoryorder": "array",
                             "categoryarray": labels},
                      yaxis_title="score Σ c<sub>x</sub>·nPMI(x, E)", legend={"x": 1.08, "xanchor": "left"})
    return fig


def category_share_figure(
    rows: Sequence[Mapping[str, Any]], *, overall: float | None = None, title: str | None = None,
) -> go.Figure:
    """Horizontal bars of the share of tokens routed to at least one chosen expert per sentence
    category, in the order given (``rows`` = ``probes.experts.sentences.by_category``: dicts with
    ``category``, ``sentences``, ``tokens``, ``share``), each annotated with its number of sentences;
    ``overall`` (the share over all sentences) is a dashed reference line."""
    import plotly.graph_objects as go

    if not rows:
        raise ValueError("rows is empty: give sentences.by_category(...) of at least one sentence")
    for i, row in enumerate(rows):
        missing = [key for key in ("category", "sentences", "share") if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: each row needs category, sentences, share (and tokens)")
    cats = [str(r["category"]) for r in rows]
    if len(set(cats)) != len(cats):
        raise ValueError(f"rows repeat a category: {cats}; give each category once")
    share = to_numpy([r["share"] for r in rows])
    if not np.isfinite(share).all() or (share < -_TOL).any() or (share > 1 + _TOL).any():
        raise ValueError(f"shares must lie in [0, 1], got {share.tolist()}")
    n = [int(r["sentences"]) for r in rows]
    tokens = [int(r.get("tokens", 0)) for r in rows]
    fig = go.Figure(go.Bar(x=share.tolist(), y=cats, orientation="h", marker_color=COLORS[0], name="share",
                           text=[f"n = {k}" for k in n], textposition="outside", customdata=list(zip(n, tokens)),
                           hovertemplate="%{y}<br>share = %{x:.3f}<br>%{customdata[0]} sentences, "
                                         "%{customdata[1]} tokens<extra></extra>"))
    if overall is not None:
        if not (math.isfinite(overall) and -_TOL <= overall <= 1 + _TOL):
            raise ValueError(f"overall = {overall!r}: give the share over all sentences, in [0, 1]")
        fig.add_vline(x=float(overall), line_dash="dash", line_color="black", annotation_text=f"all {overall:.3f}",
                      annotation_position="bottom right")
    right = max(float(share.max()), float(overall or 0.0)) * 1.2 or 1.0  # room for the "n = …" labels
    fig.update_layout(title=title or "Share of tokens routed to the chosen experts per sentence category",
                      xaxis={"title": "share of tokens routed to a chosen expert", "range": [0, right]},
                      yaxis={"title": "sentence category", "type": "category", "categoryorder": "array",
                             "categoryarray": cats, "autorange": "reversed"},
                      showlegend=False)
    return fig


def _bands(value: Mapping[Any, Any], n: int, what: str) -> dict[Any, np.ndarray]:
    """Label → (3, n) array of mean, lo, hi (a NaN bound draws no band there); a bare band is one
    series under the label ``None``."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{what} must be a band {{'mean', 'lo', 'hi'}} or a non-empty mapping label → band, got {value!r:.80}")
    if "mean" in value:
        value = {None: value}
    out = {}
    for label, band in value.items():
        where = what if label is None else f"{what}[{label!r}]"
        if not isinstance(band, Mapping) or any(k not in band for k in _BAND_KEYS):
            raise ValueError(f"{where} must be a mapping with arrays 'mean', 'lo', 'hi', got {band!r:.80}")
        arrays = [to_numpy(band[k]) for k in _BAND_KEYS]
        if any(a.shape != (n,) for a in arrays):
            shapes = {k: a.shape for k, a in zip(_BAND_KEYS, arrays)}
            raise ValueError(f"{where} must hold 1-d arrays of {n} values, one per β, got shapes {shapes}")
        m, lo, hi = arrays
        ok = np.isfinite(m)
        if (ok & np.isfinite(lo) & (lo > m + _TOL)).any() or (ok & np.isfinite(hi) & (hi < m - _TOL)).any():
            raise ValueError(f"{where}: each interval [lo, hi] must contain its mean")
        out[label] = np.stack(arrays)
    return out


def _label(kind: str, label: Any) -> str:
    if label is None:
        return kind
    return f"{kind}, ℓ = {label}" if isinstance(label, (int, np.integer)) else f"{kind}, {label}"


def beta_sweep_figure(
    betas: Sequence[float], *, reinforced: Mapping[Any, Any], random: Mapping[Any, Any] | None = None,
    baseline: Any, metric: str, title: str | None = None,
) -> go.Figure:
    """``metric`` (accuracy, mean thinking tokens, …) against the boost β on a log axis (§2): the
    reinforced experts as solid lines with shaded 95% bands, the random-expert control dashed the
    same way, and the unreinforced ``baseline`` (``(value, lo, hi)`` or an ``Estimate``) as a dotted
    horizontal line in its shaded band.

    ``reinforced`` and ``random`` are each a band ``{"mean", "lo", "hi"}`` (arrays as long as
    ``betas``) or a mapping label → band with one line per label; an integer label is read as ℓ
    ("ℓ = 2"). A random line takes the colour of the reinforced line with the same label, grey
    otherwise."""
    import plotly.graph_objects as go

    x = to_numpy(betas)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all() or (x <= 0).any():
        raise ValueError(f"betas must be a non-empty 1-d sequence of positive boosts (log axis), got {x.tolist()}")
    if len(np.unique(x)) != x.size:
        raise ValueError(f"betas repeat a value: {x.tolist()}; give each β once")
    series = {"reinforced": _bands(reinforced, x.size, "reinforced")}
    if random is not None:
        series["random"] = _bands(random, x.size, "random")
    if not any(np.isfinite(a[0]).any() for s in series.values() for a in s.values()):
        raise ValueError("reinforced and random have no finite mean: nothing to draw")
    [[b, b_lo, b_hi]] = _intervals([baseline], 1, "baseline")
    if not math.isfinite(b):
        raise ValueError(f"baseline value is {b}: give the unreinforced model's {metric}")
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(series["reinforced"])}
    order = np.argsort(x)
    fig = go.Figure()
    for kind, bands in series.items():
        for label, (m, lo, hi) in bands.items():
            color = colors[label] if kind == "reinforced" else (GREY if label is None else colors.get(label, GREY))
            name = _label(f"{kind} experts", label)
            ok = order[np.isfinite(m[order])]
            add_band(fig, x[ok], lo[ok], hi[ok], color=color, name=f"{name} 95% CI", opacity=0.15)
            fig.add_scatter(x=x[ok].tolist(), y=m[ok].tolist(), mode="lines+markers", name=name,
                            line={"color": color, "dash": "solid" if kind == "reinforced" else "dash"},
                            hovertemplate="β = %{x:g}<br>" + html.escape(metric) + " = %{y:.3f}<extra>"
                            + html.escape(name) + "</extra>")
    if math.isfinite(b_lo) and math.isfinite(b_hi):
        fig.add_hrect(y0=b_lo, y1=b_hi, fillcolor="black", opacity=0.08, line_width=0)
    fig.add_hline(y=b, line_dash="dot", line_color="black", annotation_text=f"no reinforcement {b:.3g}")
    ticks = sorted(x.tolist())
    fig.update_layout(title=title or f"{metric} against the boost β",
                      xaxis={"title": "β (routing-weight boost)", "type": "log", "tickvals": ticks,
                             "ticktext": [f"{v:g}" for v in ticks]},
                      yaxis_title=metric, legend_title="experts")
    return fig

"""MoE expert figures on fixed arrays: traces hold the numbers given, chosen pairs marked, fixed colour
range, log β axis, and refused input."""

from pathlib import Path

import numpy as np
import pytest

from probes.evals.stats import Estimate
from probes.experts.scores import ExpertScores
from probes.plots import beta_sweep_figure, category_share_figure, npmi_heatmap, save_figure, score_ranking_figure

NAN = float("nan")


def _scores() -> ExpertScores:
    return ExpertScores(method="npmi", layers=[1, 3], score=np.array([[0.1, 0.9, -0.2], [0.5, 0.3, 0.0]]),
                        values={"<think>": np.array([[-1.0, 0.8, 0.2], [0.4, NAN, 1.0]])},
                        stability=np.array([[0.0, 1.0, 0.0], [0.7, 0.3, 0.0]]), n_boot=10)


def test_npmi_heatmap_fixed_range_and_chosen_pairs():
    s = _scores()
    fig = npmi_heatmap(s.values["<think>"], layers=s.layers, marker="<think>", chosen=s.top(2))
    heat, chosen = fig.data
    assert np.array_equal(heat.z, s.values["<think>"], equal_nan=True)
    assert list(heat.y) == [1, 3] and list(heat.x) == [0, 1, 2]
    assert (heat.zmin, heat.zmax, heat.zmid) == (-1.0, 1.0, 0.0)  # fixed, whatever the data's extent
    assert list(zip(chosen.y, chosen.x)) == [(1, 1), (3, 0)] and chosen.name == "chosen experts (ℓ = 2)"
    assert "&lt;think&gt;" in fig.layout.title.text  # escaped, so the marker shows
    assert list(fig.layout.yaxis.categoryarray) == [1, 3]
    small = npmi_heatmap([[0.1, -0.05]], layers=[0], marker="</think>")
    assert (small.data[0].zmin, small.data[0].zmax) == (-1.0, 1.0) and len(small.data) == 1


def test_npmi_heatmap_refuses_bad_input():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"n_layers = 3 \(one row per layer\), got shape \(2, 3\)"):
        npmi_heatmap(z, layers=[0, 1, 2], marker="<think>")
    with pytest.raises(ValueError, match="got shape \\(3,\\)"):
        npmi_heatmap([0.1, 0.2, 0.3], layers=[0], marker="<think>")
    with pytest.raises(ValueError, match="repeat an id"):
        npmi_heatmap(z, layers=[1, 1], marker="<think>")
    with pytest.raises(ValueError, match=r"nPMI lies in \[-1, 1\]"):
        npmi_heatmap(z + 1.5, layers=[0, 1], marker="<think>")
    with pytest.raises(ValueError, match=r"chosen pairs \[\(5, 0\), \(0, 3\)\] lie outside"):
        npmi_heatmap(z, layers=[0, 1], marker="<think>", chosen=[(5, 0), (0, 3), (1, 2)])
    with pytest.raises(ValueError, match="no finite value"):
        npmi_heatmap(np.full((1, 2), NAN), layers=[0], marker="<think>")


def test_score_ranking_highlights_top_ell_with_stability():
    fig = score_ranking_figure(_scores().table(4), ell=2)
    top, rest, stab = fig.data
    assert list(top.x) == ["L1·E1", "L3·E0"] and list(top.y) == [0.9, 0.5] and top.name == "top-2 (chosen)"
    assert list(rest.x) == ["L3·E1", "L1·E0"] and list(rest.y) == [0.3, 0.1]
    assert top.marker.color != rest.marker.color
    assert stab.yaxis == "y2" and list(stab.x) == ["L1·E1", "L3·E0", "L3·E1", "L1·E0"]
    assert list(stab.y) == [1.0, 0.7, 0.3, 0.0]
    assert list(fig.layout.yaxis2.range) == [0, 1.05] and fig.layout.yaxis2.overlaying == "y"
    assert list(fig.layout.xaxis.categoryarray) == ["L1·E1", "L3·E0", "L3·E1", "L1·E0"]


def test_score_ranking_without_stability_and_bad_rows():
    rows = [{"rank": 2, "layer": 0, "expert": 4, "score": 0.2}, {"rank": 1, "layer": 2, "expert": 1, "score": 0.6}]
    fig = score_ranking_figure(rows, ell=1)
    assert [t.type for t in fig.data] == ["bar", "bar"]  # no stability trace
    assert list(fig.data[0].x) == ["L2·E1"] and list(fig.layout.xaxis.categoryarray) == ["L2·E1", "L0·E4"]
    with pytest.raises(ValueError, match=r"row 0 lacks \['score'\]"):
        score_ranking_figure([{"layer": 0, "expert": 1}], ell=1)
    with pytest.raises(ValueError, match="rows is empty"):
        score_ranking_figure([], ell=2)
    with pytest.raises(ValueError, match="ℓ = 0"):
        score_ranking_figure(rows, ell=0)
    with pytest.raises(ValueError, match=r"repeat the pairs \['L0·E4'\]"):
        score_ranking_figure(rows[:1] * 2, ell=1)


def test_category_share_bars_counts_and_overall():
    rows = [{"category": "uncertainty_management", "sentences": 4, "tokens": 60, "share": 0.3},
            {"category": "active_computation", "sentences": 9, "tokens": 200, "share": 0.1}]
    fig = category_share_figure(rows, overall=0.15)
    bar = fig.data[0]
    assert bar.orientation == "h" and list(bar.y) == ["uncertainty_management", "active_computation"]
    assert list(bar.x) == [0.3, 0.1] and list(bar.text) == ["n = 4", "n = 9"]
    assert fig.layout.yaxis.autorange == "reversed"  # the first (highest) row on top
    [line] = fig.layout.shapes
    assert line.x0 == line.x1 == 0.15 and line.line.dash == "dash"
    assert len(category_share_figure(rows).layout.shapes) == 0
    with pytest.raises(ValueError, match=r"row 0 lacks \['share'\]"):
        category_share_figure([{"category": "a", "sentences": 1}])
    with pytest.raises(ValueError, match="repeat a category"):
        category_share_figure(rows[:1] * 2)
    with pytest.raises(ValueError, match=r"shares must lie in \[0, 1\]"):
        category_share_figure([{"category": "a", "sentences": 1, "share": 1.5}])


def test_beta_sweep_bands_control_baseline_and_log_axis():
    reinforced = {"mean": [0.6, 0.8, NAN], "lo": [0.5, 0.7, NAN], "hi": [0.7, 0.9, NAN]}
    random = {"mean": [0.55, 0.5, 0.4], "lo": [0.45, 0.4, 0.3], "hi": [0.65, 0.6, 0.5]}
    fig = beta_sweep_figure([64, 8, 512], reinforced=reinforced, random=random, baseline=(0.55, 0.5, 0.6),
                            metric="accuracy")
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == [8, 64, 512]
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["reinforced experts", "random experts"]
    assert list(lines[0].x) == [8, 64] and list(lines[0].y) == [0.8, 0.6]  # sorted by β, the NaN cell dropped
    assert list(lines[1].x) == [8, 64, 512] and list(lines[1].y) == [0.5, 0.55, 0.4]
    assert lines[0].line.dash == "solid" and lines[1].line.dash == "dash"
    band = fig.data[0]
    assert band.fill == "toself" and list(band.x) == [8, 64, 64, 8] and np.allclose(band.y, [0.9, 0.7, 0.5, 0.7])
    rect, line = fig.layout.shapes
    assert (rect.y0, rect.y1) == (0.5, 0.6) and line.y0 == 0.55 and line.line.dash == "dot"


def test_beta_sweep_one_line_per_ell():
    band = {"mean": [0.6, 0.7], "lo": [0.5, 0.6], "hi": [0.7, 0.8]}
    fig = beta_sweep_figure([2, 4], reinforced={2: band, 4: band}, random={2: band},
                            baseline=Estimate(0.5, NAN, NAN, 30), metric="mean thinking tokens")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["reinforced experts, ℓ = 2", "reinforced experts, ℓ = 4",
                                       "random experts, ℓ = 2"]
    assert lines[2].line.color == lines[0].line.color != lines[1].line.color
    assert len(fig.layout.shapes) == 1  # no baseline band without its bounds
    assert fig.layout.yaxis.title.text == "mean thinking tokens"


def test_beta_sweep_refuses_bad_input():
    band = {"mean": [0.6, 0.7], "lo": [0.5, 0.6], "hi": [0.7, 0.8]}
    with pytest.raises(ValueError, match="positive boosts"):
        beta_sweep_figure([0, 4], reinforced=band, baseline=(0.5, 0.4, 0.6), metric="accuracy")
    with pytest.raises(ValueError, match="repeat a value"):
        beta_sweep_figure([4, 4], reinforced=band, baseline=(0.5, 0.4, 0.6), metric="accuracy")
    with pytest.raises(ValueError, match=r"reinforced\[2\] must hold 1-d arrays of 3 values"):
        beta_sweep_figure([2, 4, 8], reinforced={2: band}, baseline=(0.5, 0.4, 0.6), metric="accuracy")
    with pytest.raises(ValueError, match="random must be a mapping with arrays 'mean', 'lo', 'hi'"):
        beta_sweep_figure([2, 4], reinforced=band, random={"mean": [0.1, 0.2]}, baseline=(0.5, 0.4, 0.6),
                          metric="accuracy")
    with pytest.raises(ValueError, match="must contain its mean"):
        beta_sweep_figure([2, 4], reinforced={"mean": [0.6, 0.9], "lo": [0.5, 0.6], "hi": [0.7, 0.8]},
                          baseline=(0.5, 0.4, 0.6), metric="accuracy")
    with pytest.raises(ValueError, match="nothing to draw"):
        beta_sweep_figure([2], reinforced={"mean": [NAN], "lo": [NAN], "hi": [NAN]}, baseline=(0.5, 0.4, 0.6),
                          metric="accuracy")
    with pytest.raises(ValueError, match=r"baseline must be 1 \(value, lo, hi\) triples"):
        beta_sweep_figure([2, 4], reinforced=band, baseline=(0.5, 0.4), metric="accuracy")


def test_save_figure_writes_the_html(tmp_path: Path):
    fig = npmi_heatmap([[0.2, -0.4]], layers=[5], marker="</think>", chosen=[(5, 0)])
    files = save_figure(fig, tmp_path / "npmi", formats=("html",))  # static formats need Chromium: see test_plots
    text = files["html"].read_text()
    assert files == {"html": tmp_path / "npmi.html"}
    assert '"name":"chosen experts (\\u2113 = 1)"' in text and "nPMI with &lt;\\u002fthink&gt;" in text  # escaped

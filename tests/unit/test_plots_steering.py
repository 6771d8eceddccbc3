"""Steering figures on fixed arrays."""

import numpy as np
import pytest

from probes.plots import behaviour_alpha_figure, efficiency_tradeoff_figure, kl_alpha_figure, steerability_histogram


def test_behaviour_alpha_bands_and_baseline():
    mean = np.array([[0.1, 0.3, np.nan], [0.0, 0.2, 0.5]])
    lo, hi = mean - 0.05, mean + 0.05
    fig = behaviour_alpha_figure([8, 2, 4], mean, lo, hi, layers=[1, 2], baseline=0.4, metric="refusal rate")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["layer 1", "layer 2"]
    assert list(lines[0].x) == [2, 8] and list(lines[0].y) == [0.3, 0.1]  # sorted by α, the NaN cell dropped
    assert list(lines[1].x) == [2, 4, 8] and list(lines[1].y) == [0.2, 0.5, 0.0]
    band = fig.data[0]
    assert band.fill == "toself" and list(band.x) == [2, 8, 8, 2]
    assert np.allclose(band.y, [0.35, 0.15, 0.05, 0.25])
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == 0.4
    assert len(behaviour_alpha_figure([1], [[0.1]], [[0]], [[0.2]], layers=[0]).layout.shapes) == 0
    with pytest.raises(ValueError, match=r"\(n_layers, n_alphas\) = \(2, 3\)"):
        behaviour_alpha_figure([1, 2, 3], mean[:1], lo, hi, layers=[1, 2])


def test_kl_alpha_threshold_line():
    fig = kl_alpha_figure([4, 8], [[0.01, 0.2], [0.02, np.nan]], layers=[1, 2], threshold=0.1)
    assert [list(t.y) for t in fig.data] == [[0.01, 0.2], [0.02]]
    assert fig.layout.shapes[0].y0 == 0.1 and fig.layout.shapes[0].line.dash == "dash"
    both = kl_alpha_figure([4, 8], [[0.01, 0.2], [0.02, np.nan]], layers=[1, 2], threshold=0.1,
                           generated=[[0.05, 0.9], [np.nan, np.nan]])
    assert [(t.name, t.line.dash, list(t.y)) for t in both.data] == [
        ("layer 1", "solid", [0.01, 0.2]), ("layer 1, generated", "dot", [0.05, 0.9]),
        ("layer 2", "solid", [0.02])]  # a layer without generated values gets no empty line


def test_steerability_histogram_title():
    fig = steerability_histogram([0.1, -0.2, 0.0, 0.3], 0.25, title="Slopes")
    assert list(fig.data[0].x) == [0.1, -0.2, 0.0, 0.3]
    assert "anti-steerable fraction 0.25" in fig.layout.title.text and "n = 4" in fig.layout.title.text
    with pytest.raises(ValueError, match="finite"):
        steerability_histogram([np.nan], 0.0)


def test_efficiency_tradeoff_points_in_alpha_order_with_both_intervals():
    acc = [[0.5, 0.4, 0.6], [0.45, 0.35, 0.55], [0.55, 0.5, 0.6]]
    tok = [[100, 95, 105], [120, 110, 130], [90, 88, 92]]
    fig = efficiency_tradeoff_figure({"v": ([0, -4, 4], acc, tok), "random": ([0], [acc[0]], [tok[0]])})
    v = fig.data[0]
    assert v.name == "v" and list(v.text) == ["α=-4", "α=0", "α=4"]  # sorted by α
    assert list(v.x) == [120, 100, 90] and list(v.y) == [0.45, 0.5, 0.55]
    assert list(v.error_x.array) == [10, 5, 2] and list(v.error_x.arrayminus) == [10, 5, 2]
    assert list(v.error_y.array) == pytest.approx([0.1, 0.1, 0.05]) and fig.data[1].line.dash == "dot"
    with pytest.raises(ValueError, match="one \\(value, lo, hi\\) row"):
        efficiency_tradeoff_figure({"v": ([0, 1], acc, tok)})

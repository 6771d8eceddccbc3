"""Task vector figures on fixed values: traces hold the numbers given in the order given, error bars,
the tensors outside the blocks kept off the layer lines, the reference lines, and refused input."""

from pathlib import Path

import numpy as np
import pytest

from probes.evals.stats import Estimate
from probes.plots import alpha_curve_figure, condition_accuracy_figure, delta_profile_figure, save_figure
from probes.vectors.manifest import Manifest, TensorRecord

NAN = float("nan")

ROWS = [{"condition": "target", "value": 0.5, "lo": 0.4, "hi": 0.6, "n": 100},
        {"condition": "+ vector", "value": 0.62, "lo": 0.55, "hi": 0.7, "n": 100},
        {"condition": "− vector", "value": 0.3, "lo": NAN, "hi": NAN, "n": 80},
        {"condition": "random", "value": 0.48, "lo": 0.4, "hi": 0.57, "n": 100}]


def test_condition_accuracy_bars_error_bars_and_baseline():
    fig = condition_accuracy_figure(ROWS, baseline="target")
    [bar] = fig.data
    assert list(bar.x) == ["target", "+ vector", "− vector", "random"]  # the order given, not sorted
    assert list(fig.layout.xaxis.categoryarray) == list(bar.x)
    assert list(bar.y) == [0.5, 0.62, 0.3, 0.48]
    assert np.allclose(bar.error_y.array, [0.1, 0.08, 0.0, 0.09])  # hi − value; a NaN bound draws no bar
    assert np.allclose(bar.error_y.arrayminus, [0.1, 0.07, 0.0, 0.08])
    assert list(bar.text) == ["n = 100", "n = 100", "n = 80", "n = 100"]
    assert bar.marker.color[0] != bar.marker.color[1] == bar.marker.color[3]  # the baseline bar stands out
    assert list(fig.layout.yaxis.range) == [0, 1]
    [line] = fig.layout.shapes
    assert line.y0 == line.y1 == 0.5 and line.line.dash == "dash"
    plain = condition_accuracy_figure(ROWS)
    assert len(plain.layout.shapes) == 0 and len(set(plain.data[0].marker.color)) == 1


def test_condition_accuracy_refuses_bad_rows():
    with pytest.raises(ValueError, match="rows is empty"):
        condition_accuracy_figure([])
    with pytest.raises(ValueError, match=r"row 1 lacks \['n'\]"):
        condition_accuracy_figure([ROWS[0], {"condition": "x", "value": 0.1, "lo": 0.0, "hi": 0.2}])
    with pytest.raises(ValueError, match="repeat a condition"):
        condition_accuracy_figure(ROWS[:1] * 2)
    with pytest.raises(ValueError, match=r"baseline 'base' is not one of the conditions"):
        condition_accuracy_figure(ROWS, baseline="base")
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        condition_accuracy_figure([{**ROWS[0], "value": 49.8, "lo": 45.0, "hi": 55.0}])  # percent, not a share
    with pytest.raises(ValueError, match="must contain the value"):
        condition_accuracy_figure([{**ROWS[0], "lo": 0.6, "hi": 0.4}])
    with pytest.raises(ValueError, match="n of 'target' is 2.5"):
        condition_accuracy_figure([{**ROWS[0], "n": 2.5}])


PROFILE = {"attention": {0: 0.2, 1: 0.3, 2: 0.25},
           "embedding": {-1: 1.5},
           "mlp": {0: 0.4, 1: 0.6, 2: 0.0},
           "norm": {-1: 0.05, 0: 0.01, 2: 0.02}}


def test_delta_profile_lines_and_outside_blocks_markers():
    fig = delta_profile_figure(PROFILE)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    marks = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["attention", "mlp", "norm"]
    assert list(lines[0].x) == [0, 1, 2] and list(lines[0].y) == [0.2, 0.3, 0.25]
    assert list(lines[1].y) == [0.4, 0.6, 0.0]  # a zero is drawn on a linear axis
    assert list(lines[2].x) == [0, 2] and list(lines[2].y) == [0.01, 0.02]  # the final norm is not layer −1
    assert all(min(t.x) >= 0 and t.xaxis == "x2" for t in lines)
    assert [(t.x[0], t.y[0]) for t in marks] == [("embedding", 1.5), ("norm", 0.05)]
    assert all(t.xaxis == "x" for t in marks) and fig.layout.xaxis.title.text == "outside blocks"
    assert marks[1].marker.color == lines[2].line.color and not marks[1].showlegend  # grouped with its line
    assert marks[0].showlegend and marks[0].name == "embedding (outside blocks)"  # no line of its own
    assert fig.layout.xaxis2.title.text == "layer" and fig.layout.xaxis2.dtick == 1
    assert fig.layout.yaxis.type != "log"


def test_delta_profile_from_a_manifest_log_axis_and_one_panel():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    tensors = [TensorRecord(n, "applied", "", d, 1.0) for n, d in zip(names, [2.0, 3.0, 4.0, 0.5, 0.0])]
    profile = Manifest("merged", None, [], {}, None, tensors).profile()
    fig = delta_profile_figure(profile, log_y=True)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [(t.name, list(t.x), list(t.y)) for t in lines] == [("attention", [0], [5.0]), ("mlp", [1], [0.5])]
    assert [t.name for t in fig.data if t.mode == "markers"] == ["embedding (outside blocks)"]  # zero norm left out
    assert fig.layout.yaxis.type == fig.layout.yaxis2.type == "log"
    inside = delta_profile_figure({"mlp": {"3": 0.1, "5": 0.2}})  # JSON keys are strings
    assert len(inside.data) == 1 and list(inside.data[0].x) == [3, 5] and "xaxis2" not in inside.layout


def test_delta_profile_refuses_bad_input():
    with pytest.raises(ValueError, match="non-empty mapping module type"):
        delta_profile_figure({})
    with pytest.raises(ValueError, match=r"profile\['mlp'\] must be a non-empty mapping layer"):
        delta_profile_figure({"mlp": {}})
    with pytest.raises(ValueError, match=r"profile\['mlp'\] has layer -2"):
        delta_profile_figure({"mlp": {-2: 0.1}})
    with pytest.raises(ValueError, match=r"has layer 'x'"):
        delta_profile_figure({"mlp": {"x": 0.1}})
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        delta_profile_figure({"mlp": {0: -0.1}})
    with pytest.raises(ValueError, match="nothing to draw on a log axis"):
        delta_profile_figure({"mlp": {0: 0.0}}, log_y=True)


def test_alpha_curve_band_baseline_random_and_zero_line():
    fig = alpha_curve_figure([1.0, -1.0, 0.5, 0.0], [0.6, 0.2, 0.55, NAN], [0.5, 0.1, 0.45, NAN],
                             [0.7, 0.3, 0.65, NAN], baseline=(0.5, 0.45, 0.55), random=Estimate(0.48, 0.4, 0.56, 50))
    band, line, rand = fig.data
    assert list(line.x) == [-1.0, 0.5, 1.0] and list(line.y) == [0.2, 0.55, 0.6]  # sorted by α, the NaN cell dropped
    assert band.fill == "toself" and list(band.x) == [-1.0, 0.5, 1.0, 1.0, 0.5, -1.0]
    assert np.allclose(band.y, [0.3, 0.65, 0.7, 0.5, 0.45, 0.1])
    assert list(rand.x) == [1.0] and list(rand.y) == [0.48] and rand.mode == "markers"
    assert np.allclose(rand.error_y.array, [0.08]) and np.allclose(rand.error_y.arrayminus, [0.08])
    rect, hline, vline = fig.layout.shapes
    assert (rect.y0, rect.y1) == (0.45, 0.55)
    assert hline.y0 == hline.y1 == 0.5 and hline.line.dash == "dash"
    assert vline.x0 == vline.x1 == 0.0 and vline.line.dash == "dot"
    assert list(fig.layout.xaxis.tickvals) == [-1.0, 0.0, 0.5, 1.0]
    bare = alpha_curve_figure([0.5, 1.0], [0.5, 0.6], [NAN, NAN], [NAN, NAN], baseline=0.4, metric="pass@1")
    assert [t.mode for t in bare.data] == ["lines+markers"]  # no band without bounds, no random marker
    assert [s.type for s in bare.layout.shapes] == ["line", "line"] and bare.layout.shapes[0].y0 == 0.4
    assert bare.layout.yaxis.title.text == "pass@1" and list(bare.layout.xaxis.tickvals) == [0.0, 0.5, 1.0]


def test_alpha_curve_refuses_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-d sequence"):
        alpha_curve_figure([], [], [], [])
    with pytest.raises(ValueError, match="repeat a value"):
        alpha_curve_figure([1, 1], [0.5, 0.5], [0.4, 0.4], [0.6, 0.6])
    with pytest.raises(ValueError, match=r"2 values each, one per α, got shapes .*'lo': \(3,\)"):
        alpha_curve_figure([0.5, 1], [0.5, 0.6], [0.4, 0.5, 0.1], [0.6, 0.7])
    with pytest.raises(ValueError, match="must contain its mean"):
        alpha_curve_figure([0.5, 1], [0.5, 0.6], [0.6, 0.5], [0.4, 0.7])
    with pytest.raises(ValueError, match="nothing to draw"):
        alpha_curve_figure([1], [NAN], [NAN], [NAN])
    with pytest.raises(ValueError, match=r"random must be 1 \(value, lo, hi\) triples"):
        alpha_curve_figure([1], [0.5], [0.4], [0.6], random=(0.5, 0.4))
    with pytest.raises(ValueError, match="baseline value is nan"):
        alpha_curve_figure([1], [0.5], [0.4], [0.6], baseline=NAN)


def test_save_figure_writes_the_html(tmp_path: Path):
    fig = delta_profile_figure(PROFILE)
    files = save_figure(fig, tmp_path / "profile", formats=("html",))  # static formats need Chromium: see test_plots
    text = files["html"].read_text()
    assert files == {"html": tmp_path / "profile.html"}
    assert '"name":"embedding (outside blocks)"' in text and "outside blocks" in text

"""Refusal figures on fixed arrays: traces, values, hover rounding, axis titles and refused input."""

from pathlib import Path

import numpy as np
import pytest

from probes.evals.stats import Estimate
from probes.plots import (
    ablation_figure,
    direction_rates_figure,
    head_heatmap,
    pareto_figure,
    probe_layers_figure,
    save_figure,
    selection_figure,
    sentence_figure,
    trajectory_figure,
    truncation_figure,
)

NAN = float("nan")


def test_probe_layers_validation_ood_and_chance():
    sites = ["embed", "resid_post[0]", "final_norm"]
    fig = probe_layers_figure(sites, [0.5, 0.81, 0.975],
                              [(NAN, NAN, NAN), (0.7, 0.6, 0.8), Estimate(0.92, 0.9, 0.945, 200)])
    assert [t.name for t in fig.data] == ["validation", "out of distribution"]
    assert list(fig.data[0].x) == sites and list(fig.data[0].y) == [0.5, 0.81, 0.975]
    ood = fig.data[1]
    assert list(ood.x) == ["resid_post[0]", "final_norm"] and list(ood.y) == [0.7, 0.92]  # the NaN site left out
    assert np.allclose(ood.error_y.array, [0.1, 0.025]) and np.allclose(ood.error_y.arrayminus, [0.1, 0.02])
    assert list(ood.customdata) == ["[0.600, 0.800]", "[0.900, 0.945]"] and "%{y:.3f}" in ood.hovertemplate
    assert list(fig.layout.xaxis.categoryarray) == sites
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("hidden state", "accuracy")
    assert fig.layout.shapes[0].y0 == 0.5 and fig.layout.shapes[0].line.dash == "dash"
    assert len(probe_layers_figure(["final_norm"], [0.9]).data) == 1
    with pytest.raises(ValueError, match="sites is empty"):
        probe_layers_figure([], [])
    with pytest.raises(ValueError, match="2 validation accuracies for 3 sites"):
        probe_layers_figure(sites, [0.5, 0.6])
    with pytest.raises(ValueError, match="no finite value"):
        probe_layers_figure(sites[:1], [NAN])
    with pytest.raises(ValueError, match="repeat a name"):
        probe_layers_figure(["embed", "embed"], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"ood must be 3 \(value, lo, hi\) triples"):
        probe_layers_figure(sites, [0.5, 0.6, 0.7], [(0.7, 0.6, 0.8)])
    with pytest.raises(ValueError, match=r"must contain the value; pass \(value, lo, hi\)"):
        probe_layers_figure(sites[:1], [0.5], [(0.6, 0.7, 0.8)])  # (lo, value, hi) by mistake


def test_trajectory_curves_on_unit_x_with_bands():
    plain = np.linspace(0.2, 0.9, 100)
    wrapped = np.array([0.1, 0.8, 0.2])
    fig = trajectory_figure({"plain forbidden": plain, "wrapped forbidden": wrapped},
                            bands={"wrapped forbidden": (wrapped - 0.1, wrapped + 0.1)})
    assert [t.name for t in fig.data] == ["plain forbidden", "wrapped forbidden interval", "wrapped forbidden"]
    assert np.allclose(fig.data[0].y, plain) and fig.data[0].x[0] == 0 and fig.data[0].x[-1] == 1
    assert list(fig.data[2].x) == [0.0, 0.5, 1.0] and list(fig.data[2].y) == [0.1, 0.8, 0.2]
    band = fig.data[1]
    assert band.fill == "toself" and list(band.x) == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    assert np.allclose(band.y, [0.2, 0.9, 0.3, 0.1, 0.7, 0.0])
    assert fig.data[0].line.color != fig.data[2].line.color == "#d62728" and band.fillcolor == "rgba(214,39,40,0.2)"
    assert "%{y:.3f}" in fig.data[0].hovertemplate
    assert fig.layout.xaxis.title.text == "position (right-aligned, resampled to 100 points)"
    assert fig.layout.yaxis.title.text == "mean refusal score r" and list(fig.layout.yaxis.range) == [-0.02, 1.02]
    assert trajectory_figure({"h": [0.0, 0.1]}, points_label="token").layout.xaxis.title.text == "token"
    with pytest.raises(ValueError, match="curves is empty"):
        trajectory_figure({})
    with pytest.raises(ValueError, match="at least 2"):
        trajectory_figure({"h": [0.5]})
    with pytest.raises(ValueError, match="no finite value"):
        trajectory_figure({"h": [NAN, NAN]})
    with pytest.raises(ValueError, match=r"bands for groups without a curve: \['harmles'\]"):
        trajectory_figure({"harmless": [0.0, 0.1]}, bands={"harmles": ([0, 0], [0, 0])})
    with pytest.raises(ValueError, match="give \\(lo, hi\\) with 2 values"):
        trajectory_figure({"h": [0.0, 0.1]}, bands={"h": ([0.0], [0.2])})


def test_sentence_view_counts_from_the_end_and_shows_text():
    fig = sentence_figure({"wrapped forbidden": [0.7, 0.8, 0.1], "harmless": [0.05, 0.02]},
                          {"wrapped forbidden": ["The user asks.", "It is a story.", "So I decide  to <help>."]})
    wrapped, harmless = fig.data
    assert list(wrapped.x) == [-3, -2, -1] and list(wrapped.y) == [0.7, 0.8, 0.1]
    assert list(harmless.x) == [-2, -1] and harmless.customdata is None
    assert wrapped.customdata[-1] == "So I decide to &lt;help&gt;." and "%{customdata}" in wrapped.hovertemplate
    assert "%{y:.3f}" in wrapped.hovertemplate
    assert fig.layout.xaxis.title.text == "thinking sentence, counted from the end"
    assert fig.layout.yaxis.title.text == "mean refusal score r"
    with pytest.raises(ValueError, match="scores is empty"):
        sentence_figure({})
    with pytest.raises(ValueError, match="1-d array of at least 1"):
        sentence_figure({"h": []})
    with pytest.raises(ValueError, match="2 texts for 3 sentence scores of 'h'"):
        sentence_figure({"h": [0.1, 0.2, 0.3]}, {"h": ["a", "b"]})
    with pytest.raises(ValueError, match="texts for groups without scores"):
        sentence_figure({"h": [0.1]}, {"x": ["a"]})


def test_head_heatmap_diverging_and_marks_top_heads():
    s = np.array([[0.1, -0.5, 0.2], [NAN, 0.3, -0.05]])
    fig = head_heatmap(s, top=[(0, 1), (1, 2)])
    heat, marks = fig.data
    np.testing.assert_array_equal(heat.z, s)
    assert (heat.zmin, heat.zmid, heat.zmax) == (-0.5, 0, 0.5) and heat.colorscale is not None
    assert "%{z:.4g}" in heat.hovertemplate
    assert list(marks.x) == [1, 2] and list(marks.y) == [0, 1] and marks.name == "suppression heads (k = 2)"
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("head", "layer")
    assert fig.layout.yaxis.autorange is None  # layer 0 at the bottom, as kurtosis_heatmap
    assert len(head_heatmap(s).data) == 1
    with pytest.raises(ValueError, match=r"\(n_layers, n_heads\)"):
        head_heatmap(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(n_layers, n_heads\)"):
        head_heatmap(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="no head was scored"):
        head_heatmap(np.full((2, 2), NAN))
    with pytest.raises(ValueError, match=r"\[\(2, 0\)\] lie outside the map: layers 0..1, heads 0..2"):
        head_heatmap(s, top=[(2, 0)])


def test_ablation_top_vs_random_with_baseline_band():
    top = [(0.7, 0.6, 0.8), (0.55, 0.5, 0.6), (NAN, NAN, NAN)]
    random = [(0.45, 0.4, 0.5), (0.5, 0.45, 0.55), (0.49, 0.4, 0.6)]
    fig = ablation_figure([24, 12, 78], top, random, (0.49, 0.45, 0.53), metric="r_T")
    t, r = fig.data
    assert (t.name, r.name) == ("top heads", "random heads")
    assert list(t.x) == [12, 24] and list(t.y) == [0.55, 0.7]  # sorted by k, the missing cell left out
    assert list(r.x) == [12, 24, 78] and list(r.y) == [0.5, 0.45, 0.49]
    assert np.allclose(t.error_y.array, [0.05, 0.1]) and list(t.customdata) == ["[0.500, 0.600]", "[0.600, 0.800]"]
    assert t.hovertemplate.startswith("k = %{x}<br>r_T = %{y:.3f}")
    rect, line = fig.layout.shapes
    assert (rect.y0, rect.y1) == (0.45, 0.53) and line.y0 == 0.49 and line.line.dash == "dash"
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("heads ablated (k)", "r_T")
    no_ci = ablation_figure([3], [(0.1, NAN, NAN)], [(0.2, 0.1, 0.3)], (0.3, NAN, NAN), metric="refusal rate")
    assert len(no_ci.layout.shapes) == 1 and list(no_ci.data[0].error_y.array) == [0.0]
    with pytest.raises(ValueError, match="counts must be a non-empty"):
        ablation_figure([], [], [], (0.3, 0.2, 0.4), metric="r_T")
    with pytest.raises(ValueError, match="whole numbers"):
        ablation_figure([1.5], [(0.1, 0, 0.2)], [(0.1, 0, 0.2)], (0.3, 0.2, 0.4), metric="r_T")
    with pytest.raises(ValueError, match=r"random must be 2 \(value, lo, hi\) triples"):
        ablation_figure([1, 2], top[:2], random[:1], (0.3, 0.2, 0.4), metric="r_T")
    with pytest.raises(ValueError, match="no finite value"):
        ablation_figure([1], [(NAN, NAN, NAN)], [(NAN, NAN, NAN)], (0.3, 0.2, 0.4), metric="r_T")
    with pytest.raises(ValueError, match="baseline value is nan"):
        ablation_figure([1], top[:1], random[:1], (NAN, NAN, NAN), metric="r_T")


def test_direction_rates_grouped_bars():
    rows = [
        {"prompts": "plain forbidden", "condition": "baseline", "rate": 0.95, "lo": 0.9, "hi": 1.0},
        {"prompts": "harmless", "condition": "baseline", "rate": 0.02, "lo": 0.0, "hi": 0.05},
        {"prompts": "plain forbidden", "condition": "direction ablated", "rate": 0.1, "lo": 0.05, "hi": 0.15},
        {"prompts": "harmless", "condition": "direction added", "rate": 0.8},
    ]
    fig = direction_rates_figure(rows)
    assert fig.layout.barmode == "group" and [t.type for t in fig.data] == ["bar"] * 3
    assert [t.name for t in fig.data] == ["baseline", "direction ablated", "direction added"]
    base, ablated, added = fig.data
    assert list(base.x) == ["plain forbidden", "harmless"] and list(base.y) == [0.95, 0.02]
    assert list(ablated.x) == ["plain forbidden"] and list(added.y) == [0.8]
    assert np.allclose(base.error_y.array, [0.05, 0.03]) and np.allclose(base.error_y.arrayminus, [0.05, 0.02])
    assert list(base.customdata) == ["[0.900, 1.000]", "[0.000, 0.050]"] and list(added.customdata) == [""]
    assert list(fig.layout.xaxis.categoryarray) == ["plain forbidden", "harmless"]
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("prompts", "refusal rate")
    with pytest.raises(ValueError, match="rows is empty"):
        direction_rates_figure([])
    with pytest.raises(ValueError, match=r"row 0 lacks \['rate'\]"):
        direction_rates_figure([{"prompts": "harmless", "condition": "baseline"}])
    with pytest.raises(ValueError, match="row 1 repeats prompts 'harmless' under condition 'baseline'"):
        direction_rates_figure([rows[1], rows[1]])
    with pytest.raises(ValueError, match="every rate is NaN"):
        direction_rates_figure([{**rows[0], "rate": NAN}])


def test_pareto_front_joined_and_best_starred():
    refusal = [0.9, 0.1, 0.5, NAN, 0.6]
    kl = [0.0, 0.3, 0.05, NAN, 0.2]
    labels = ["weight=0", "layer=3, weight=1", "layer=3, weight=0.5", "failed", "layer=5 <kernel>"]
    fig = pareto_figure(refusal, kl, [1, 0, 2], best=2, labels=labels)
    trials, front, best = fig.data
    assert list(trials.x) == [0.0, 0.3, 0.05, 0.2] and list(trials.y) == [0.9, 0.1, 0.5, 0.6]  # failed trial left out
    assert trials.customdata[-1] == "layer=5 &lt;kernel&gt;" and "%{x:.4g}" in trials.hovertemplate
    assert list(front.x) == [0.0, 0.05, 0.3] and list(front.y) == [0.9, 0.5, 0.1] and front.mode == "lines+markers"
    assert (best.x, best.y, best.marker.symbol) == ((0.05,), (0.5,), "star")
    assert fig.layout.xaxis.title.text == "first-token KL on harmless prompts (nats)"
    assert fig.layout.yaxis.title.text == "refusal rate on harmful dev prompts"
    assert len(pareto_figure(refusal, kl, [0]).data) == 2
    assert pareto_figure([0.2], [0.1], [0]).data[0].customdata == ("trial 0",)
    with pytest.raises(ValueError, match="non-empty 1-d sequences"):
        pareto_figure([], [], [])
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(1,\)"):
        pareto_figure([0.1, 0.2], [0.1], [0])
    with pytest.raises(ValueError, match="no trial has a finite"):
        pareto_figure([NAN], [0.1], [0])
    with pytest.raises(ValueError, match="front is empty"):
        pareto_figure(refusal, kl, [])
    with pytest.raises(ValueError, match=r"trials \[3, 9\] that are out of range 0..4"):
        pareto_figure(refusal, kl, [0, 3], best=9)
    with pytest.raises(ValueError, match="4 labels for 5 trials"):
        pareto_figure(refusal, kl, [0], labels=labels[:4])


def test_selection_curves_in_percent_with_untrained_line():
    rates = {"cliff": [(0.055, 0.03, 0.08), (0.01, 0.0, 0.03)], "random": [(0.06, 0.04, 0.08), (0.04, 0.02, 0.06)],
             "rule": [(0.07, 0.05, 0.09), (NAN, NAN, NAN)]}
    fig = selection_figure([0.05, 0.125], rates, untrained=(0.235, 0.2, 0.27))
    assert [t.name for t in fig.data] == ["cliff", "random", "rule"]
    assert list(fig.data[0].x) == [5.0, 12.5] and list(fig.data[0].y) == [0.055, 0.01]
    assert list(fig.data[2].x) == [5.0]
    assert list(fig.data[0].customdata) == ["[0.030, 0.080]", "[0.000, 0.030]"]
    assert fig.data[0].hovertemplate.startswith("k = %{x:.3g}%<br>refusal rate on held-out wrapped requests = %{y:.3f}")
    assert fig.layout.shapes[0].y0 == 0.235 and fig.layout.shapes[0].line.dash == "dash"
    assert list(fig.layout.xaxis.ticktext) == ["5%", "12.5%"] and fig.layout.xaxis.title.text == "share of the data selected (k)"
    assert fig.layout.yaxis.title.text == "refusal rate on held-out wrapped requests"
    over = selection_figure([1.0], {"cliff": [(0.1, 0.0, 0.2)]}, metric="refusal rate on harmless requests")
    assert over.layout.yaxis.title.text == "refusal rate on harmless requests" and not over.layout.shapes
    with pytest.raises(ValueError, match="non-empty 1-d sequence of shares"):
        selection_figure([], {"cliff": []})
    with pytest.raises(ValueError, match=r"shares in \(0, 1\] \(0.05 for 5 %\), got \[5.0\]"):
        selection_figure([5], {"cliff": [(0.1, 0.0, 0.2)]})
    with pytest.raises(ValueError, match="rates is empty"):
        selection_figure([0.05], {})
    with pytest.raises(ValueError, match=r"rates\['cliff'\] must be 2"):
        selection_figure([0.05, 0.1], {"cliff": [(0.1, 0.0, 0.2)]})
    with pytest.raises(ValueError, match="no finite value"):
        selection_figure([0.05], {"cliff": [(NAN, NAN, NAN)]})


def test_truncation_two_panels_share_the_thinking_axis():
    refusal = [(0.3, 0.2, 0.4), (0.6, 0.5, 0.7), (0.95, 0.9, 1.0)]
    r_T = [Estimate(0.39, 0.35, 0.43, 50), Estimate(0.5, 0.45, 0.55, 50), Estimate(0.68, 0.6, 0.75, 50)]
    fig = truncation_figure([1.0, 0.5, 0.0], refusal, r_T)
    top, bottom = fig.data
    assert (top.name, bottom.name) == ("refusal rate", "mean r_T") and (top.yaxis, bottom.yaxis) == ("y", "y2")
    assert list(top.x) == [0.0, 50.0, 100.0] and list(top.y) == [0.95, 0.6, 0.3]  # sorted by the share kept
    assert list(bottom.y) == [0.68, 0.5, 0.39] and list(bottom.customdata)[0] == "[0.600, 0.750]"
    assert fig.layout.yaxis.title.text == "refusal rate" and fig.layout.yaxis2.title.text == "mean r_T"
    assert fig.layout.xaxis2.title.text == "share of the thinking kept" and fig.layout.xaxis2.ticksuffix == "%"
    with pytest.raises(ValueError, match="non-empty 1-d sequence of shares"):
        truncation_figure([], [], [])
    with pytest.raises(ValueError, match=r"shares in \[0, 1\]"):
        truncation_figure([-0.1], [(0.1, 0, 0.2)], [(0.1, 0, 0.2)])
    with pytest.raises(ValueError, match="repeat a value"):
        truncation_figure([0.5, 0.5], refusal[:2], r_T[:2])
    with pytest.raises(ValueError, match=r"r_T must be 3 \(value, lo, hi\) triples"):
        truncation_figure([0, 0.5, 1], refusal, r_T[:2])
    with pytest.raises(ValueError, match="no finite value"):
        truncation_figure([0.5], [(NAN, NAN, NAN)], [(NAN, NAN, NAN)])


def test_save_figure_writes_the_html(tmp_path: Path):
    fig = sentence_figure({"wrapped forbidden": [0.7, 0.1]}, {"wrapped forbidden": ["A story.", "I will </think>"]})
    files = save_figure(fig, tmp_path / "sentences", formats=("html",))  # static formats need Chromium: see test_plots
    text = files["html"].read_text()
    assert files == {"html": tmp_path / "sentences.html"}
    assert '"name":"wrapped forbidden"' in text and "I will &lt;\\u002fthink&gt;" in text  # escaped, so it shows

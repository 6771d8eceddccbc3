"""Thought-anchors figures and the standalone trace viewer."""

import json
import re

import numpy as np
import pytest

from probes.plots import (
    category_means_figure,
    importance_bars,
    kurtosis_heatmap,
    suppression_heatmap,
    write_trace_viewer,
)


def test_importance_bars_group_by_category():
    fig = importance_bars([0.1, 0.5, 0.2], ["plan_generation", "active_computation", "plan_generation"],
                          ["First find x.", "3 + 5 = 8.", "Then add."], "counterfactual_importance_kl")
    assert [t.name for t in fig.data] == ["plan_generation", "active_computation"]
    assert list(fig.data[0].x) == [0, 2] and list(fig.data[0].y) == [0.1, 0.2]
    assert list(fig.layout.xaxis.ticktext) == ["0: First find x.", "1: 3 + 5 = 8.", "2: Then add."]
    short = importance_bars([0.1], ["a"], ["A sentence longer than ten characters."], "m", text_width=10)
    assert list(short.layout.xaxis.ticktext) == ["0: A sentenc…"]
    with pytest.raises(ValueError, match="need one each"):
        importance_bars([0.1], ["a", "b"], ["x"], "m")


def test_category_means_sorted_with_error_bars():
    fig = category_means_figure({"a": (0.2, 0.05, 3), "b": (0.6, 0.1, 4)}, "cf_kl")
    assert list(fig.data[0].x) == ["b", "a"] and list(fig.data[0].error_y.array) == [0.1, 0.05]


def test_heatmaps():
    k = np.arange(6.0).reshape(2, 3)
    fig = kurtosis_heatmap(k, top_heads=[(1, 2)])
    assert fig.data[0].z.shape == (2, 3) and list(fig.data[1].x) == [2] and list(fig.data[1].y) == [1]
    m = np.array([[np.nan, np.nan], [0.5, np.nan]])
    assert suppression_heatmap(m).data[0].zmax == 0.5


def test_trace_viewer_embeds_the_trace(tmp_path):
    path = write_trace_viewer(tmp_path / "viewer.html", ["First find x.", "So x = 3 </script>."],
                              ["plan_generation", "active_computation"], {"cf_kl": [0.7, float("nan")]},
                              depends_on=[[], [0]], problem="Find x.")
    page = path.read_text()
    data = json.loads(re.search(r"const DATA = (.*?);\n", page).group(1).replace("<\\/", "</"))
    assert data["sentences"][1]["depends_on"] == [0] and data["sentences"][1]["scores"]["cf_kl"] is None
    assert "</script>." not in page.split("const DATA")[1].split("\n")[0]  # cannot close the script early
    with pytest.raises(ValueError, match="one category and one score"):
        write_trace_viewer(tmp_path / "v2.html", ["a"], [], {"m": [1.0]})

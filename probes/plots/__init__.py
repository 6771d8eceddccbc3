"""Figure builders and export (DESIGN.md "Results, runs and figures").

Builders take saved artifacts (arrays, token lists) and return plotly figures; plotly is
imported only when a figure is built, so importing this package stays cheap.
"""

from probes.plots.anchors import (
    category_means_figure,
    importance_bars,
    kurtosis_heatmap,
    sentence_matrix_heatmap,
    suppression_heatmap,
)
from probes.plots.attention import attention_heatmap
from probes.plots.experts import beta_sweep_figure, category_share_figure, npmi_heatmap, score_ranking_figure
from probes.plots.export import FORMATS, find_browser, save_figure, show_figure
from probes.plots.lens import logit_lens_figure
from probes.plots.refusal import (
    ablation_figure,
    direction_rates_figure,
    head_heatmap,
    pareto_figure,
    probe_layers_figure,
    selection_figure,
    sentence_figure,
    trajectory_figure,
    truncation_figure,
)
from probes.plots.report import Report
from probes.plots.steering import (
    behaviour_alpha_figure,
    efficiency_tradeoff_figure,
    kl_alpha_figure,
    steerability_histogram,
)
from probes.plots.vectors import alpha_curve_figure, condition_accuracy_figure, delta_profile_figure
from probes.plots.viewer import write_steered_text, write_trace_viewer

__all__ = [
    "FORMATS", "Report", "attention_heatmap", "behaviour_alpha_figure", "category_means_figure", "efficiency_tradeoff_figure",
    "find_browser", "importance_bars",
    "kl_alpha_figure", "kurtosis_heatmap", "logit_lens_figure", "save_figure", "sentence_matrix_heatmap", "show_figure", "steerability_histogram",
    "suppression_heatmap",
    "ablation_figure", "direction_rates_figure", "head_heatmap", "pareto_figure", "probe_layers_figure", "selection_figure",
    "sentence_figure", "trajectory_figure", "truncation_figure",
    "write_steered_text",
    "write_trace_viewer",
    "beta_sweep_figure", "category_share_figure", "npmi_heatmap", "score_ranking_figure",
    "alpha_curve_figure", "condition_accuracy_figure", "delta_profile_figure",
]

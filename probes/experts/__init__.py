"""Expert identification via nPMI and expert reinforcement (RICE) for MoE reasoning models
(``../shared/reference/moe_experts.md``; issue #13).

* ``routing``: routing of every MoE layer streamed into per-trace counts, teacher-forced or during
  generation (§1 "Counts", §6);
* ``scores``: nPMI per marker, the weighted expert score ranked globally, bootstrap stability;
  SteerMoE's risk difference and vocabulary specialisation as alternatives (§1, §3, §8);
* ``sentences``: the share of each thought-anchors sentence's tokens routed to the chosen experts,
  by sentence category;
* ``reinforce``: RICE (w′ = β·w where selected), the random-expert control, force-include / forbid (§2, §3);
* ``evaluate``: accuracy and thinking length per condition, paired differences (§2, §8).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_MODULES = {
    "routing": ("DEFAULT_MARKERS", "SUPPORTED_FAMILIES", "RoutingCounts", "RoutingRecorder", "check_moe",
                "count_routing", "resolve_markers"),
    "scores": ("DEFAULT_WEIGHTS", "ELL", "ExpertScores", "npmi", "npmi_scores", "npmi_table", "risk_difference",
               "specialisation_scores", "specialisation_table"),
    "sentences": ("SentenceRouting", "by_category", "sentence_routing"),
    "reinforce": ("BETA", "check_beta", "check_pairs", "force", "random_pairs", "rice"),
    "evaluate": ("ConditionResult", "paired_differences", "run_condition"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

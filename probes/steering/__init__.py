"""Activation steering: directions, the ``SteeringVector`` value and how it is applied
(``reference/steering.md``).

* ``directions``: contrast data (``Contrast``), read-position rules (``LastToken``,
  ``TokenIndex``, ``SpanMean``, ``AnswerLetter``), direction methods chosen by passing them
  (``DiffInMeans``, ``PCADiff``, ``LogisticProbe``), probe and optimised vectors (§1);
* ``vector``: ``SteeringVector`` (save/load, the steering-vectors layout, ``intervention``
  → ``AddVector`` / ``ProjectOut``) and its ``Operator`` (§2);
* ``selection``: one layer × α cell (norm ratio, KL guard, behaviour with intervals), the
  controls (random, negated, prompting), per-example steerability, dev/test selection (§5);
* ``efficiency``: the efficient − verbose direction and accuracy / thinking length against α (§1);
* ``hybrid``: a base model steered by per-category vectors where its greedy token differs from a
  thinking model's, with a KV cache on both; gap recovered, share steered, ablations (§4).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_EXPORTS = {
    "AnswerLetter": "directions",
    "Contrast": "directions",
    "ContrastActivations": "directions",
    "DiffInMeans": "directions",
    "LastToken": "directions",
    "LogisticProbe": "directions",
    "Method": "directions",
    "OptimisedVector": "directions",
    "PCADiff": "directions",
    "ReadPosition": "directions",
    "SpanMean": "directions",
    "ThinkingMean": "directions",
    "TokenIndex": "directions",
    "contrast_vector": "directions",
    "optimise_vector": "directions",
    "probe_vector": "directions",
    "read_activations": "directions",
    "read_positions": "directions",
    "read_contrast": "directions",
    "target_nll": "directions",
    "RESIDUAL_SITES": "vector",
    "Operator": "vector",
    "SteeringVector": "vector",
    "SteeringCell": "selection",
    "CellResult": "selection",
    "KLGuard": "selection",
    "Scores": "selection",
    "ControlComparison": "selection",
    "Steerability": "selection",
    "Selection": "selection",
    "LogitDiffItem": "selection",
    "Metric": "selection",
    "CONDITIONS": "selection",
    "DEFAULT_KL_THRESHOLD": "selection",
    "residual_norm": "selection",
    "norm_ratio": "selection",
    "next_token_kl": "selection",
    "kl_guard": "selection",
    "behaviour": "selection",
    "logit_difference": "selection",
    "per_example": "selection",
    "evaluate_cell": "selection",
    "random_direction": "selection",
    "random_control": "selection",
    "negated_control": "selection",
    "with_instruction": "selection",
    "prompting_baseline": "selection",
    "compare_controls": "selection",
    "behaviour_curve": "selection",
    "steering_slopes": "selection",
    "steerability": "selection",
    "split_indices": "selection",
    "split_examples": "selection",
    "select_cell": "selection",
    "select_and_evaluate": "selection",
    "Response": "efficiency",
    "EfficiencyDirection": "efficiency",
    "EfficiencyPoint": "efficiency",
    "EfficiencyCurve": "efficiency",
    "AnswerCheck": "efficiency",
    "boxed_check": "efficiency",
    "thinking_tokens": "efficiency",
    "response_from_text": "efficiency",
    "sample_responses": "efficiency",
    "contrast_sets": "efficiency",
    "thinking_means": "efficiency",
    "efficiency_direction": "efficiency",
    "efficiency_curve": "efficiency",
    "COEFFICIENTS": "hybrid",
    "SentenceLabeller": "hybrid",
    "LabelledTrace": "hybrid",
    "taxonomy_labeller": "hybrid",
    "labelled_traces": "hybrid",
    "CategoryClassifier": "hybrid",
    "fit_category_classifier": "hybrid",
    "CategoryVectors": "hybrid",
    "fit_category_vectors": "hybrid",
    "fit_optimised_category_vectors": "hybrid",
    "hybrid_generate": "hybrid",
    "HybridTrace": "hybrid",
    "Baselines": "hybrid",
    "greedy_baselines": "hybrid",
    "evaluate_hybrid": "hybrid",
    "HybridResult": "hybrid",
    "hybrid_ablations": "hybrid",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Linear refusal probes, the refusal cliff, suppression heads and the refusal direction
(``../shared/reference/refusal.md``; issue #12).

* ``prompts``: one record schema, seeded splits, public sets by name (``probes.zoo.refusal_prompts``
  adds the zoo's offline sets and resolves every name);
* ``rollout``: the model's own rollouts, thinking and answer split at ``</think>`` (A1);
* ``judges``: keyword, OpenAI-compatible endpoint and local classifier judges of the answer (A5, B4);
* ``probe``: the linear ``Probe`` (A2), layer sweep, accuracy and AUROC with intervals;
* ``trajectory``: r_t at every token, the cliff, per-sentence scores, the mean curve (A3);
* ``truncation``: refusal rate and r_T against the share of thinking kept (A3);
* ``heads``: direct head attributions onto the probe and norm-preserving head ablation (A4);
* ``direction``: diff-in-means candidates, ablation, addition, weight orthogonalisation, selection (B);
* ``select``: Cliff-as-a-Judge data selection (r_T ascending or Δ_cliff descending), random and rule
  baselines, the SFT records (A6); ``probes.zoo.cliff_judge`` closes the loop on the zoo;
* ``search``: beyond the reference, an Optuna search over the ablation's layer and per-layer weight
  kernel co-minimising refusals on harmful prompts and KL on harmless ones (the Pareto front).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_MODULES = {
    "prompts": ("PUBLIC_SETS", "Loader", "PromptRecord", "PromptSet", "PromptSetUnavailableError", "PublicSet",
                "load_prompts", "load_public"),
    "rollout": ("RefusalRollout", "load_rollouts", "rollouts", "save_rollouts", "unclosed"),
    "judges": ("ARDITI_REFUSAL_SUBSTRINGS", "ClassifierJudge", "EndpointJudge", "JudgeEndpointError", "Judge",
               "KeywordJudge", "Verdict", "arditi_unsafe", "refusalcliff_unsafe"),
    "probe": ("AdamBCE", "Probe", "ProbeEvaluation", "SklearnLogistic", "balanced_split", "evaluate_probe",
              "fit_probe", "hidden_state_site", "layer_sweep", "probe_features", "train_probe"),
    "trajectory": ("Trajectory", "mean_curve", "sentence_curve", "trajectories"),
    "truncation": ("TruncationPoint", "thinking_truncation", "truncated_text"),
    "heads": ("AblationArm", "AblationResult", "HeadScores", "ablate_heads", "ablation_arm", "head_budget",
              "head_scores", "random_heads"),
    "direction": ("AllCandidatesFilteredError", "CandidateScores", "DirectionSelection", "RefusalCandidates",
                  "activation_addition", "candidate_directions", "directional_ablation", "orthogonalize_weights",
                  "post_instruction_positions", "refusal_score", "refusal_scores", "score_candidates",
                  "select_direction"),
    "select": ("RULE_WINDOW", "SELECTION_CRITERIA", "CliffJudgeSelection", "load_sft", "n_selected", "save_sft",
               "select_by_probe", "select_by_rule", "select_random", "sft_record"),
    "search": ("AblationSearch", "JudgedRefusal", "RefusalRate", "ScoredRefusal", "SearchSpace", "SearchTrial",
               "WeightKernel", "ablation_direction", "evaluate_ablation", "full_ablation_params", "pareto_front",
               "search_ablation", "weighted_ablation"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

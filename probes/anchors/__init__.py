"""Thought anchors: sentence-level attribution of reasoning traces (reference/thought_anchors.md).

* ``split``: sentence splitting (§1), character and token spans;
* ``taxonomy``: the eight categories + ``unknown``, rule-based and LLM labelers (§2);
* ``rollouts``: resampling and forced-answer rollouts in the math-rollouts layout (§3);
* ``embed``: sentence embedders for the semantic filter (all-MiniLM-L6-v2, hashing);
* ``importance``: resampling / counterfactual / forced importance, the sentence→sentence
  matrix, the convergence filter and category means (§4, §5); ``compat="released"``
  mirrors the released code's edge cases (``Compat``);
* ``receivers``: receiver heads (§6), settings chosen by name (``ReceiverSettingsName``);
* ``suppression``: attention suppression (§7).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_EXPORTS = {
    "Chunk": "split",
    "chunk_char_spans": "split",
    "chunk_token_ranges": "split",
    "prefix_token_spans": "split",
    "split_chunks": "split",
    "split_solution_into_chunks": "split",
    "thinking_text": "split",
    "ChunkLabel": "taxonomy",
    "Labeler": "taxonomy",
    "LabelerError": "taxonomy",
    "LLMLabeler": "taxonomy",
    "RuleLabeler": "taxonomy",
    "Tag": "taxonomy",
    "TAGS": "taxonomy",
    "first_tag": "taxonomy",
    "FORCED_ANSWER_SUFFIX": "rollouts",
    "RolloutReport": "rollouts",
    "Trace": "rollouts",
    "load_trace": "rollouts",
    "make_trace": "rollouts",
    "math_prompt": "rollouts",
    "prefix_without_chunk": "rollouts",
    "resample_chunks": "rollouts",
    "rollout_dirs": "rollouts",
    "run_rollouts": "rollouts",
    "sample_base_solution": "rollouts",
    "write_trace": "rollouts",
    "EMBEDDERS": "embed",
    "Embedder": "embed",
    "EmbedderName": "embed",
    "HashingEmbedder": "embed",
    "MiniLMEmbedder": "embed",
    "make_embedder": "embed",
    "AnchorScores": "importance",
    "CategoryMean": "importance",
    "COMPAT_MODES": "compat",
    "Compat": "compat",
    "METRICS": "importance",
    "RolloutSet": "importance",
    "analyse_problem": "importance",
    "anchor_scores": "importance",
    "answer_kl": "importance",
    "category_means": "importance",
    "convergence_cutoff": "importance",
    "counterfactual_matrix": "importance",
    "load_rollout_set": "importance",
    "write_chunks_labeled": "importance",
    "ReceiverSettings": "receivers",
    "ReceiverSettingsName": "receivers",
    "TraceReceivers": "receivers",
    "analyse_trace": "receivers",
    "SuppressionResult": "suppression",
    "attention_suppression": "suppression",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Reasoning task vectors (``../shared/reference/task_vectors.md``; issue #14).

* ``checkpoint``: a checkpoint directory read tensor by tensor (safetensors, shards);
* ``policy``: which tensors move, tied heads, vocabulary mismatches (§3), presets;
* ``sources``: v = θ_a − θ_b from two checkpoints, a saved vector, the norm-matched random control (§1, §6);
* ``stream``: θ′ = θ_target + Σ α_k·(m_k ⊙ v_k) streamed into sharded safetensors, and ``extract`` (§5);
* ``manifest``: the record beside every output, per-tensor norms, the per-layer profile;
* ``arithmetic``: in-memory v and ``with apply_vector(model, v, α):`` for quick α sweeps;
* ``evaluate``: greedy accuracy per condition (target, ± v, random, donors, α), paired differences (§6).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_MODULES = {
    "arithmetic": ("apply_vector", "l2_norm", "random_like", "task_vector", "unique_parameters"),
    "checkpoint": ("Checkpoint",),
    "manifest": ("Manifest", "TensorRecord"),
    "policy": ("Policy", "layer_of", "module_type"),
    "sources": ("Difference", "RandomLike", "SavedVector", "norm_matched_noise"),
    "stream": ("SHARD_BYTES", "ShardWriter", "Term", "extract", "magnitude_mask", "merge", "plan"),
    "evaluate": ("Scored", "compare", "greedy_correct"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Reasoning task vectors (``reference/task_vectors.md``): weight-space arithmetic in ``arithmetic``."""

from probes.vectors.arithmetic import apply_vector, l2_norm, random_like, task_vector, unique_parameters

__all__ = ["apply_vector", "l2_norm", "random_like", "task_vector", "unique_parameters"]

"""Shared evaluation helpers: answer extraction and checking, rates with bootstrap CIs."""

from probes.evals.answers import boxed_correct, check_answer, extract_boxed, normalize_answer
from probes.evals.stats import Accuracy, Estimate, accuracy, bootstrap_ci, paired_difference_ci

__all__ = [
    "Accuracy",
    "Estimate",
    "accuracy",
    "bootstrap_ci",
    "boxed_correct",
    "check_answer",
    "extract_boxed",
    "normalize_answer",
    "paired_difference_ci",
]

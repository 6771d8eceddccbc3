"""Activation steering: directions, the ``SteeringVector`` value and how it is applied
(``reference/steering.md``).

* ``directions``: contrast data (``Contrast``), read-position rules (``LastToken``,
  ``TokenIndex``, ``SpanMean``, ``AnswerLetter``), direction methods chosen by passing them
  (``DiffInMeans``, ``PCADiff``, ``LogisticProbe``), probe and optimised vectors (§1);
* ``vector``: ``SteeringVector`` (save/load, the steering-vectors layout, ``intervention``
  → ``AddVector`` / ``ProjectOut``) and its ``Operator`` (§2).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

import importlib

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
    "TokenIndex": "directions",
    "contrast_vector": "directions",
    "optimise_vector": "directions",
    "probe_vector": "directions",
    "read_contrast": "directions",
    "target_nll": "directions",
    "RESIDUAL_SITES": "vector",
    "Operator": "vector",
    "SteeringVector": "vector",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"probes.steering.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'probes.steering' has no attribute {name!r}")


def __dir__():
    return __all__

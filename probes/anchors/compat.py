"""Which edge-case rules a thought-anchors function follows (reference/thought_anchors.md).

``"default"``: this project's rules where the spec is silent. ``"released"``: mirror the
released code, interp-reasoning/thought-anchors at 2a15f77, so the published math-rollouts
data reproduces the published numbers. The differences are tabled in
``probes.anchors.importance`` (scoring, the sentence→sentence matrix) and
``probes.anchors.rollouts`` (the resampled sentence).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["COMPAT_MODES", "Compat", "check_compat"]

Compat = Literal["default", "released"]
COMPAT_MODES: tuple[str, ...] = get_args(Compat)


def check_compat(compat: str) -> None:
    """Raise ``ValueError`` unless ``compat`` is one of ``COMPAT_MODES``."""
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat {compat!r} unknown: use 'default' (this project's rules) or 'released' "
                         "(mirror interp-reasoning/thought-anchors to reproduce the published numbers)")

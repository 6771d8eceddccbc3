"""RICE reinforcement and its controls (``reference/moe_experts.md`` §2, §3).

``rice`` builds the ``ScaleExperts`` intervention: the routing weight of each chosen (layer, expert)
pair is multiplied by β only where the router already selected it (never forcing it in), without
renormalisation by default. ``random_pairs`` draws the random-expert control (same count, several
seeded draws); ``force`` is SteerMoE's force-include / forbid, which reroutes tokens. All of them are
model interventions, so they apply in forward passes and during generation with the KV cache and
the shared-prefix sampler (``with model.intervene(rice(...)):``).
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterable, Sequence

from probes.experts.routing import check_moe

BETA = 64.0
"""β: the boost of RICE (§2 table)."""

Pair = tuple[int, int]


def check_pairs(model, pairs: Iterable[Pair], what: str = "experts") -> list[Pair]:
    """The pairs as (MoE layer, expert) tuples; a clear error for a dense model, a dense layer or an
    expert index out of range, before any hook is attached."""
    check_moe(model, what)
    out = []
    for pair in pairs:
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(x, numbers.Integral) for x in pair)):
            raise ValueError(f"{what}: {pair!r} is not a (layer, expert) pair of integers")
        L, e = int(pair[0]), int(pair[1])
        if L not in model.moe_layers:
            raise ValueError(f"{what}: layer {L} is not an MoE layer of {model.spec}; MoE layers are {model.moe_layers}")
        if not 0 <= e < model.n_experts:
            raise ValueError(f"{what}: expert {e} out of range: {model.spec} has experts 0..{model.n_experts - 1}")
        out.append((L, e))
    if not out:
        raise ValueError(f"{what}: no (layer, expert) pairs given")
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: pairs repeat: {out}")
    return out


def check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"β = {beta!r}: the boost must be a finite number > 0 (RICE default {BETA:g}; 1 changes nothing)")
    return float(beta)


def rice(model, pairs: Iterable[Pair], beta: float = BETA, *, renormalize: bool = False, positions=None):
    """RICE (§2): w′ = β·w for the chosen pairs where the router selected them; ``renormalize``
    rescales each token's weights so that Σw′ = Σw. ``positions`` as for every intervention."""
    from probes.models.interventions import ScaleExperts

    beta = check_beta(beta)
    chosen = check_pairs(model, pairs, "RICE")
    return ScaleExperts(scales={p: beta for p in chosen}, renormalize=renormalize, positions=positions)


def random_pairs(model, count: int, seed: int, exclude: Iterable[Pair] = ()) -> list[Pair]:
    """``count`` distinct (MoE layer, expert) pairs drawn uniformly (seeded), none of ``exclude``:
    the random-expert control of RICE (§2 "Control")."""
    check_moe(model, "the random-expert control")
    excluded = set(map(tuple, exclude))
    pool = [(L, e) for L in model.moe_layers for e in range(model.n_experts) if (L, e) not in excluded]
    if not isinstance(count, numbers.Integral) or not 1 <= count <= len(pool):
        raise ValueError(f"cannot draw {count!r} random experts: {len(pool)} (layer, expert) pairs are available")
    return sorted(random.Random(seed).sample(pool, int(count)))


def force(model, include: Iterable[Pair] = (), forbid: Iterable[Pair] = (), *, positions=None) -> list:
    """SteerMoE's force-include / forbid (§3) per layer: ``ForceExperts`` interventions that set the
    included experts' log-softmax to the row max + 0.01 and the forbidden ones' to the row min − 0.01."""
    from probes.models.interventions import ForceExperts

    inc = check_pairs(model, include, "force include") if include else []
    forb = check_pairs(model, forbid, "forbid") if forbid else []
    if not inc and not forb:
        raise ValueError("force needs experts to include or to forbid")
    layers = sorted({L for L, _ in inc + forb})
    return [ForceExperts(layers=[L], include=[e for M, e in inc if M == L], forbid=[e for M, e in forb if M == L],
                         positions=positions) for L in layers]

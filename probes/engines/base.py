"""The engine interface (issue #15 item 1): ``sample(prefix, n, …) → list[Rollout]`` (``n``
continuations of one prefix) and ``generate(prefixes, …) → list[Rollout]`` (one continuation of each
prefix, greedy by default: evaluations and one-shot rollouts).

A prefix is text or token ids; rollout ``i`` uses seed ``seeds[i]`` (default ``seed + i``), so each
is reproducible wherever the engine honours seeds; ``interventions`` apply only on the local engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from probes.models.sampling import Rollout


class EngineError(RuntimeError):
    """The engine could not do what was asked; the message says what to fix."""


@runtime_checkable
class Engine(Protocol):
    name: str

    def sample(self, prefix: str | Sequence[int], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
               seeds: Sequence[int] | None = None, interventions: Sequence = (), batch_size: int | None = None,
               progress: bool = False) -> list[Rollout]: ...

    def generate(self, prefixes: Sequence[str | Sequence[int]], *, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
                 interventions: Sequence = (), batch_size: int = 16, progress: bool = False) -> list[Rollout]: ...


def prefixes(items: Sequence[str | Sequence[int]]) -> list[str | Sequence[int]]:
    """``items`` as a non-empty list of prefixes (text or token ids), checked before any request."""
    if isinstance(items, str):
        raise ValueError("give a list of prefixes, not one string (sample() continues one prefix)")
    items = list(items)
    if not items:
        raise ValueError("no prefixes: give at least one prompt")
    bad = [i for i, p in enumerate(items) if not (isinstance(p, str) and p) and not (
        not isinstance(p, str) and len(p) and all(isinstance(t, int) for t in p))]
    if bad:
        raise ValueError(f"prefixes {bad[:5]} are empty or neither text nor token ids")
    return items

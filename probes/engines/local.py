"""The local engine: the shared-prefix sampler of ``probes.models.sampling`` (issue #15 item 1), the
default and the only engine that applies interventions (``with model.intervene(...)``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from probes.engines.base import seeds_for
from probes.models.sampling import Rollout


class LocalEngine:
    """``sample`` on a loaded ``probes`` Model."""

    name = "local"

    def __init__(self, model):
        self.model = model

    def sample(self, prefix: str | Sequence[int], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
               seeds: Sequence[int] | None = None, interventions: Sequence = (), batch_size: int | None = None,
               progress: bool = False) -> list[Rollout]:
        seeds = seeds_for(n, seed, seeds)
        scope = self.model.intervene(*interventions) if interventions else contextlib.nullcontext()
        with scope:
            return self.model.sample(prefix, n, temperature=temperature, top_p=top_p, top_k=top_k,
                                     max_new_tokens=max_new_tokens, stop=stop, seeds=seeds, batch_size=batch_size,
                                     progress=progress)

    def __repr__(self) -> str:
        return f"LocalEngine({self.model.spec})"

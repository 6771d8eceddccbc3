"""The local engine: the shared-prefix sampler of ``probes.models.sampling`` (issue #15 item 1), the
default and the only engine that applies interventions (``with model.intervene(...)``)."""

from __future__ import annotations

from collections.abc import Sequence

from probes.engines.base import prefixes as _prefixes
from probes.models.sampling import Rollout


class LocalEngine:
    """``sample`` and ``generate`` on a loaded ``probes`` Model."""

    name = "local"

    def __init__(self, model):
        self.model = model

    def sample(self, prefix: str | Sequence[int], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
               seeds: Sequence[int] | None = None, interventions: Sequence = (), batch_size: int | None = None,
               progress: bool = False) -> list[Rollout]:
        with self.model.intervene(*interventions):
            return self.model.sample(prefix, n, temperature=temperature, top_p=top_p, top_k=top_k,
                                     max_new_tokens=max_new_tokens, stop=stop, seed=seed, seeds=seeds,
                                     batch_size=batch_size, progress=progress)

    def generate(self, prefixes: Sequence[str | Sequence[int]], *, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
                 interventions: Sequence = (), batch_size: int = 16, progress: bool = False) -> list[Rollout]:
        """One continuation of each prefix, ``batch_size`` prefixes per left-padded batch; prefix ``i``
        samples with seed ``seed + i`` (so the result does not depend on ``batch_size`` at temperature 0)."""
        from tqdm.auto import tqdm

        prefixes = _prefixes(prefixes)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[Rollout] = []
        with self.model.intervene(*interventions):
            for lo in tqdm(range(0, len(prefixes), batch_size), disable=not progress, desc="generate"):
                out += self.model.generate(prefixes[lo:lo + batch_size], max_new_tokens=max_new_tokens,
                                           temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed + lo)
        return out

    def __repr__(self) -> str:
        return f"LocalEngine({self.model.spec})"

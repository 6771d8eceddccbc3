"""Generation engines: the same ``sample`` call through the local shared-prefix sampler or an
OpenAI-compatible server (vLLM, SGLang, ``transformers serve``); issue #15.

* ``base``: the ``Engine`` protocol and ``EngineError``;
* ``local``: ``LocalEngine``, the model's own sampler (the only engine that applies interventions);
* ``remote``: ``OpenAIEngine``, ``/v1/completions`` through the ``openai`` client: raw continuation,
  one seed per rollout, bounded concurrency, retries with backoff, clear errors;
* ``serve``: ``LocalServer`` / ``serve(model_dir)``, a local ``transformers serve`` process (tests,
  benchmarks, serving a zoo organism).

Names below resolve on first use, so importing this package loads nothing heavy.
"""

from __future__ import annotations

from probes.lazy import lazy_exports

_MODULES = {
    "base": ("Engine", "EngineError"),
    "local": ("LocalEngine",),
    "remote": ("OpenAIEngine",),
    "serve": ("LocalServer",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""An OpenAI-compatible server as an engine (issue #15 item 1): vLLM, SGLang, ``transformers serve``.

Each rollout is one ``/v1/completions`` request through the ``openai`` client: a raw continuation of
the prefix (no chat re-templating), its own seed (reproducible on servers that honour seeds), up to
``concurrency`` requests at once. Connection failures, timeouts, 408/409/429 and 5xx answers are retried
with exponential backoff for up to ``retry_for`` seconds (a server that restarts is waited for); any
other 4xx is an error that says what to fix. The API key comes from ``api_key``, else the
``PROBES_API_KEY`` or ``OPENAI_API_KEY`` environment variable.

Token ids: the server's when it returns them (vLLM with ``return_token_ids``), else the completion
text re-tokenized with ``tokenizer`` (empty without one). A prefix given as token ids is sent as ids
where the server accepts them, else decoded with ``tokenizer``. ``finish_reason``: ``length`` when
the budget ran out, ``stop`` when the server names the stop string it met (vLLM's ``stop_reason``),
else ``eos``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from probes.engines.base import EngineError
from probes.engines.base import prefixes as _prefixes
from probes.models.sampling import FinishReason, Rollout, seeds_for

RETRYABLE = (408, 409, 429)


class OpenAIEngine:
    """``sample`` through ``{base_url}/completions`` of an OpenAI-compatible server serving ``model``."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, tokenizer=None,
                 concurrency: int = 8, timeout: float = 600.0, retry_for: float = 300.0, backoff: float = 1.0):
        from openai import OpenAI

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not model:
            raise ValueError("give the model name the server serves (GET {base_url}/models lists them)")
        if concurrency < 1 or retry_for < 0 or backoff <= 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, retry_for >= 0, backoff and timeout > 0")
        self.base_url, self.model, self.tokenizer = base_url.rstrip("/"), model, tokenizer
        self.concurrency, self.retry_for, self.backoff = int(concurrency), float(retry_for), float(backoff)
        key = api_key or os.environ.get("PROBES_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)
        self._ids_ok: bool | None = None  # whether the server takes token ids as the prompt (learned once)
        self._unsupported: set[str] = set()  # optional fields the server rejected (learned once)
        self._answered = False  # whether a completion has succeeded (what the server accepts is known)

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_url!r}, model={self.model!r})"

    # -- errors --------------------------------------------------------------------------------------

    def served_models(self) -> list[str]:
        """The model names ``GET {base_url}/models`` lists (empty when the server does not say)."""
        try:
            return sorted(m.id for m in self.client.models.list())
        except Exception:  # a server without /models, or one that fails on it
            return []

    def _explain(self, e) -> EngineError:
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        if isinstance(e, (APIConnectionError, APITimeoutError)):
            return EngineError(f"{self.base_url} does not answer ({type(e).__name__}) after {self.retry_for:g} s of "
                               "retries: start the server, or fix --base-url (the …/v1 root of an OpenAI-compatible "
                               "server, e.g. http://127.0.0.1:8000/v1)")
        status = getattr(e, "status_code", None)
        detail = _detail(e)
        if status == 404 and "model" not in detail.lower():
            return EngineError(f"{self.base_url}/completions does not exist (404): the server does not implement "
                               "/v1/completions, or --base-url is not its …/v1 root")
        if status in (400, 404, 422) and ("model" in detail.lower() or self.model in detail):
            served = self.served_models()
            listed = f"; it serves {', '.join(served)}" if served else ""
            return EngineError(f"the server at {self.base_url} does not serve {self.model!r} ({detail}){listed}: "
                               "pass one of its names with --model")
        if status in (401, 403):
            return EngineError(f"{self.base_url} refused the request ({status}: {detail}): set PROBES_API_KEY or "
                               "OPENAI_API_KEY to a key it accepts")
        if isinstance(e, APIStatusError):
            return EngineError(f"{self.base_url} rejected the request ({status}: {detail})")
        return EngineError(f"{self.base_url}: {type(e).__name__}: {e}")

    def check(self, temperature: float = 1.0, top_p: float = 1.0) -> None:
        """One 1-token completion, so a wrong URL, path, model or key fails before any work starts. Give the
        run's sampling settings: some servers keep the first request's (``transformers serve
        --continuous-batching``)."""
        self._complete("Hello", seed=0, max_tokens=1, temperature=temperature, top_p=top_p, top_k=0, stop=None)

    # -- sampling --------------------------------------------------------------------------------------

    def _request(self, prompt, seed: int, **kw):
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        deadline, delay = time.monotonic() + self.retry_for, self.backoff
        while True:
            try:
                return self.client.completions.create(model=self.model, prompt=prompt, n=1, seed=seed, **kw)
            except (APIConnectionError, APITimeoutError, APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retryable = not isinstance(e, APIStatusError) or status in RETRYABLE or (status or 0) >= 500
                if not retryable or time.monotonic() + delay > deadline:
                    raise self._explain(e) from None
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    def _prompt(self, prefix):
        if isinstance(prefix, str):
            return prefix
        ids = [int(i) for i in prefix]
        if self._ids_ok is False:
            return self._decode(ids)
        return ids

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise EngineError(f"the server at {self.base_url} takes text prompts only: pass the prefix as text, or "
                              "give OpenAIEngine a tokenizer to decode token ids")
        return self.tokenizer.decode(ids)

    def _complete(self, prefix, *, seed: int, max_tokens: int, temperature: float, top_p: float, top_k: int,
                  stop) -> Rollout:
        optional: dict[str, Any] = {"return_token_ids": True} | ({"top_k": top_k} if top_k else {})
        prompt = self._prompt(prefix)
        while True:
            extra = {k: v for k, v in optional.items() if k not in self._unsupported}
            kw = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, extra_body=extra)
            try:
                r = self._request(prompt, seed, **kw)
                break
            except EngineError as e:
                rejected = [k for k in extra if k in str(e)]
                if rejected and not (top_k and "top_k" in rejected):
                    self._unsupported.update(rejected)  # e.g. transformers serve: unexpected return_token_ids
                elif isinstance(prompt, list) and self._ids_ok is None and "string" in str(e).lower():
                    self._ids_ok = False  # e.g. transformers serve: "prompt must be a string"
                    prompt = self._decode(prompt)
                else:
                    raise
        if isinstance(prompt, list) and self._ids_ok is None:
            self._ids_ok = True
        self._answered = True
        choice = r.choices[0]
        extra_fields = choice.model_extra or {}
        ids = extra_fields.get("token_ids")
        if ids is None:
            ids = self.tokenizer.encode(choice.text, add_special_tokens=False) if self.tokenizer is not None else []
        stop_reason = extra_fields.get("stop_reason")
        finish = (FinishReason.LENGTH if choice.finish_reason == "length"
                  else FinishReason.STOP if isinstance(stop_reason, str) else FinishReason.EOS)
        return Rollout(choice.text, [int(i) for i in ids], finish, seed)

    def _refuse(self, interventions: Sequence) -> None:
        if interventions:
            raise EngineError(f"{self} cannot apply interventions ({', '.join(type(i).__name__ for i in interventions)}): "
                              "a remote server runs the unmodified model; use the local engine for interventions")

    def sample(self, prefix: str | Sequence[int], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
               seeds: Sequence[int] | None = None, interventions: Sequence = (), batch_size: int | None = None,
               progress: bool = False) -> list[Rollout]:
        """``n`` continuations of ``prefix``, rollout ``i`` with seed ``seeds[i]``; ``batch_size`` is unused
        (the server batches), ``concurrency`` bounds the requests in flight."""
        self._refuse(interventions)
        calls = [(prefix, s) for s in seeds_for(n, seed, seeds)]
        return self._fan_out(calls, _request_kw(max_new_tokens, temperature, top_p, top_k, stop), progress, "rollouts")

    def generate(self, prefixes: Sequence[str | Sequence[int]], *, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None, seed: int = 0,
                 interventions: Sequence = (), batch_size: int = 16, progress: bool = False) -> list[Rollout]:
        """One continuation of each prefix (prefix ``i`` with seed ``seed + i``), up to ``concurrency``
        requests in flight; ``batch_size`` is unused (the server batches)."""
        calls = [(p, seed + i) for i, p in enumerate(_prefixes(prefixes))]
        self._refuse(interventions)
        return self._fan_out(calls, _request_kw(max_new_tokens, temperature, top_p, top_k, stop), progress, "generate")

    def _fan_out(self, calls: list[tuple], kw: dict[str, Any], progress: bool, desc: str) -> list[Rollout]:
        """``_complete`` of each (prefix, seed), up to ``concurrency`` at once; the first alone while the
        engine has not yet learned what the server accepts (optional fields, token-id prompts), so a
        rejection is met once rather than by every request in flight."""
        from tqdm.auto import tqdm

        first = []
        if not self._answered or (self._ids_ok is None and not isinstance(calls[0][0], str)):
            first, calls = [self._complete(calls[0][0], seed=calls[0][1], **kw)], calls[1:]
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._complete, p, seed=s, **kw) for p, s in calls]
            return first + [f.result() for f in tqdm(futures, disable=not progress, desc=desc)]


def _request_kw(max_new_tokens: int, temperature: float, top_p: float, top_k: int, stop) -> dict[str, Any]:
    stop_list = [stop] if isinstance(stop, str) else (list(stop) if stop else None)
    return dict(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop=stop_list)


def _detail(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            v = body.get(key)
            if isinstance(v, dict):
                v = v.get("message")
            if v:
                return str(v)
    return str(getattr(e, "message", e))

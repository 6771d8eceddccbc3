"""Shared-prefix sampling: prefill once, share the KV cache across rows, decode in a batch.

The hot path of thought anchors and of every evaluation (DESIGN.md "Sampling shares
the prefix"). Each row draws from its own ``torch.Generator`` seeded with its own
seed, so any rollout can be reproduced on its own: ``sample(prefix, 1, seeds=[s])``
repeats the row that had seed ``s`` exactly in float32; in bfloat16 or float16 a batch of
another shape rounds differently and a row can diverge after a few tokens
(benchmarks/gpu_check.py measured 2 of 11 rows at 218M parameters). Finished rows (EOS or a stop string) leave the
batch. Interventions active in ``model.intervene`` apply at every step, with absolute
positions continuing from the prefix and rows numbered as the user's rows (a
``SteeredRecord`` counts a prefix prefilled once as steered in every row). Logits that define no distribution (NaN or +inf,
e.g. from an intervention's overflow) raise instead of yielding a token, and a prompt
plus ``max_new_tokens`` must fit the model's positions.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.models.interventions import active


class FinishReason(StrEnum):
    """Why a rollout ended (a ``StrEnum``: ``FinishReason.EOS == "eos"``)."""

    #: the model emitted an end-of-sequence token (kept in ``token_ids``, not in ``text``)
    EOS = "eos"
    #: the decoded text reached a stop string (``text`` is cut before it)
    STOP = "stop"
    #: ``max_new_tokens`` were generated
    LENGTH = "length"


@dataclass(frozen=True)
class Rollout:
    """One continuation: ``text`` excludes the terminating EOS and anything from a stop string on."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    seed: int | None


def stop_token_ids(model, eos_token_ids: Sequence[int] | None = None) -> set[int]:
    """EOS ids: the given ones, else the generation config's and the tokenizer's."""
    if eos_token_ids is not None:
        return set(int(i) for i in eos_token_ids)
    ids: set[int] = set()
    gen = getattr(model.hf, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), getattr(model.tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


def nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """(R, 1) smallest probability inside each row's nucleus: the smallest set of most
    probable tokens whose mass reaches ``top_p`` (at least one token). Only sorted
    values are needed, which numpy sorts ~4x faster than torch on CPU."""
    if probs.device.type == "cpu":
        asc = torch.from_numpy(np.sort(probs.numpy(), axis=-1))
    else:
        asc = torch.sort(probs, dim=-1).values
    above = asc.sum(-1, keepdim=True) - asc.cumsum(-1)  # mass of the tokens more probable than each
    first = (above >= top_p).sum(-1, keepdim=True).clamp(max=asc.shape[-1] - 1)
    return asc.gather(-1, first)


def check_logits(logits: torch.Tensor, rows: Sequence[int] | torch.Tensor | None = None) -> None:
    """Raise if a row's (R, V) logits define no distribution: a NaN or +inf anywhere, or
    every entry -inf (``torch.multinomial`` refuses such rows too). ``rows`` names the
    rows in the message (default: their index in ``logits``)."""
    top = logits.amax(-1)  # NaN if any entry is NaN, +inf if any is +inf, -inf if all are -inf
    bad = ~torch.isfinite(top)
    if bool(bad.any()):
        idx = bad.nonzero().squeeze(1).tolist()
        names = [int(rows[i]) for i in idx] if rows is not None else idx
        raise ValueError(
            f"the next-token logits of row(s) {names} contain NaN or +inf, or are all -inf, so no token can be "
            "drawn from them; an intervention (check its scale and vector) or the model's weights produced them"
        )


def draw(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int,
    gens: list[torch.Generator] | None,
    rows: Sequence[int] | torch.Tensor | None = None,
):
    """Next token per row: greedy at temperature 0, else nucleus sampling with each row's
    generator. Logits with no valid distribution raise (``check_logits``)."""
    check_logits(logits, rows)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(probs < nucleus_threshold(probs, top_p), 0.0)
    # inverse-CDF sampling with one uniform draw from each row's own generator
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in gens])
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return idx.clamp(max=probs.shape[-1] - 1)


class _BufferedLayer:
    """KV storage in preallocated (B, KV, capacity, D) buffers: no concatenation per step."""

    def _append(self, key_states, value_states, capacity: int):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            B, H, _, D = key_states.shape
            self._k = key_states.new_empty(B, H, capacity, D)
            self._v = value_states.new_empty(B, H, capacity, value_states.shape[-1])
            self._len = 0
        n = key_states.shape[-2]
        if self._len + n > self._k.shape[-2]:  # beyond the planned length: grow
            grow = max(n, self._k.shape[-2])
            self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], grow, self._k.shape[-1])], dim=-2)
            self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], grow, self._v.shape[-1])], dim=-2)
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]
        return self.keys, self.values

    def batch_select_indices(self, indices):
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]


def _new_cache(model, capacity: int, prefix_layers: dict | None = None):
    """A DynamicCache whose full-attention layers write into preallocated buffers.

    With ``prefix_layers`` (layer → prefix (K, V) of batch 1), those layers keep the
    shared prefix ONCE and store only each row's own continuation; the ``probes``
    attention function reads the prefix from ``model.attn_hooks.prefix`` (shared-prefix
    attention: the prefix KV is read once per step instead of once per row)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(_BufferedLayer, DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            return self._append(key_states, value_states, capacity)

    class SuffixLayer(_BufferedLayer, DynamicLayer):
        def __init__(self, prefix_len: int):
            super().__init__()
            self.prefix_len = prefix_len

        def update(self, key_states, value_states, *args, **kwargs):
            return self._append(key_states, value_states, capacity)

        def get_seq_length(self) -> int:
            return self.prefix_len + (self._len if self.is_initialized else 0)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

    cache = DynamicCache(config=model.hf.config)
    layers = []
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            layers.append(layer)
        elif prefix_layers is not None and i in prefix_layers:
            layers.append(SuffixLayer(prefix_layers[i][0].shape[-2]))
        else:
            layers.append(PreallocatedLayer())
    cache.layers = layers
    return cache


def _prefix_cache(model, prefill: list, shared: set[int], r: int, capacity: int):
    """Decoding cache for ``r`` rows continuing one prefilled prefix: layers in ``shared``
    keep the prefix once (``_new_cache``), the others get it copied per row."""
    cache = _new_cache(model, capacity, {i: prefill[i] for i in shared})
    for i, (k, v) in enumerate(prefill):
        if i not in shared:
            cache.update(k.expand(r, *k.shape[1:]), v.expand(r, *v.shape[1:]), i)
    return cache


class _Decoder:
    """Batched decoding with per-row stopping (shared by ``sample`` and ``generate``)."""

    def __init__(self, model, *, temperature, top_p, top_k, max_new_tokens, stop, eos_token_ids, progress):
        if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1, "
                             f"got {temperature}, {top_p}, {max_new_tokens}")
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k cut), got {top_k!r}")
        self.model = model
        self.temperature, self.top_p, self.top_k = temperature, top_p, int(top_k)
        self.max_new_tokens = max_new_tokens
        self.stop = [s for s in ([stop] if isinstance(stop, str) else list(stop or ())) if s]
        self.stop_window = max((len(s) for s in self.stop), default=0) + 1
        self.eos = stop_token_ids(model, eos_token_ids)
        self.progress = progress

    def run(self, cache, logits, next_pos, mask, gens, row_ids) -> dict[int, tuple[list[int], FinishReason]]:
        model, tok = self.model, self.model.tokenizer
        out: dict[int, list[int]] = {int(r): [] for r in row_ids}
        done: dict[int, tuple[list[int], FinishReason]] = {}
        bar = tqdm(total=self.max_new_tokens, desc="decode", disable=not self.progress, leave=False)
        for step in range(self.max_new_tokens):
            nxt = draw(logits, self.temperature, self.top_p, self.top_k, gens, row_ids)
            keep = []
            for j, t in enumerate(nxt.tolist()):
                rid = int(row_ids[j])
                out[rid].append(t)
                reason = None
                if t in self.eos:
                    reason = FinishReason.EOS
                elif self.stop and any(s in tok.decode(out[rid][-self.stop_window:]) for s in self.stop):
                    reason = FinishReason.STOP
                elif step == self.max_new_tokens - 1:
                    reason = FinishReason.LENGTH
                if reason:
                    done[rid] = (out[rid], reason)
                else:
                    keep.append(j)
            bar.update(1)
            if not keep:
                break
            if len(keep) < len(nxt):
                idx = torch.tensor(keep, device=logits.device)
                cache.batch_select_indices(idx)
                model.ctx.select_rows(idx)
                nxt, next_pos, row_ids = nxt[idx], next_pos[idx], row_ids[idx]
                gens = [gens[j] for j in keep] if gens is not None else None
                mask = mask[idx] if mask is not None else None
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits = model.hf(
                input_ids=nxt.unsqueeze(1),
                position_ids=next_pos.unsqueeze(1),
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        bar.close()
        return done

    def check_fits(self, prompt_tokens: int, what: str = "the prompt") -> None:
        """Raise when ``prompt_tokens`` + ``max_new_tokens`` exceed the model's positions."""
        limit, n = self.model.max_positions, prompt_tokens + self.max_new_tokens
        if limit is None or n <= limit:
            return
        room = limit - prompt_tokens
        advice = (f"lower max_new_tokens to at most {room} or shorten {what}" if room >= 1
                  else f"shorten {what} to at most {limit - 1} tokens")
        self.model.check_length(n, f"{what} ({prompt_tokens} tokens) + max_new_tokens ({self.max_new_tokens})", advice)

    def rollout(self, ids: list[int], reason: FinishReason, seed) -> Rollout:
        tok = self.model.tokenizer
        body = ids[:-1] if reason == FinishReason.EOS else ids
        text = tok.decode(body, skip_special_tokens=False)
        if reason == FinishReason.STOP:
            cut = min((text.find(s) for s in self.stop if s in text), default=len(text))
            text = text[:cut]
        return Rollout(text=text, token_ids=list(ids), finish_reason=reason, seed=seed)


def _prefix_ids(model, prefix) -> list[int]:
    """One prefix as a list of ids: a text, a list of ids, or a (T,) / (1, T) tensor."""
    if isinstance(prefix, str):
        ids = model.encode(prefix)
    elif isinstance(prefix, torch.Tensor):
        if prefix.dim() > 2 or (prefix.dim() == 2 and prefix.shape[0] != 1):
            raise ValueError(f"sample takes one prefix; got a tensor of shape {tuple(prefix.shape)} "
                             "(use generate for one continuation per prompt)")
        ids = prefix.reshape(-1).tolist()
    else:
        ids = list(prefix)
        if ids and not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in ids):
            raise ValueError("sample takes one prefix: a text or a list of token ids "
                             "(use generate for one continuation per prompt)")
        ids = [int(t) for t in ids]
    if not ids:
        raise ValueError("empty prefix: give a non-empty text or list of token ids")
    return ids


def seeds_for(n: int, seed: int, seeds: Sequence[int] | None) -> list[int]:
    """The seed of each of ``n`` rollouts: ``seeds`` as given, else ``seed + i``; checked against ``n``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = list(seeds) if seeds is not None else [seed + i for i in range(n)]
    if len(out) != n:
        raise ValueError(f"got {len(out)} seeds for n={n} rollouts")
    return out


def sample(
    model,
    prefix: str | Sequence[int],
    n: int = 1,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 256,
    stop: str | Sequence[str] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    eos_token_ids: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[Rollout]:
    """``n`` continuations of ``prefix`` (text or ids); row i uses seed ``seeds[i]``
    (default ``seed + i``). ``batch_size`` bounds the rows decoded at once; the
    prefix is still prefilled once, unless an active intervention changes rows
    differently (``rows``, per-row vectors, spans or sources: ``varies_by_row``): then
    the rows no longer share the prefix's activations, and each batch of rows prefills
    its own copy."""
    seeds = seeds_for(n, seed, seeds)
    ids = _prefix_ids(model, prefix)
    dec = _Decoder(model, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                   stop=stop, eos_token_ids=eos_token_ids, progress=progress)
    dec.check_fits(len(ids), "the prefix")
    results: list[Rollout | None] = [None] * n
    step = batch_size or n
    with torch.no_grad(), model.scope():
        per_row = any(iv.varies_by_row() for iv in active(model))
        done = (_sample_per_row if per_row else _sample_shared)(model, dec, ids, n, step, seeds)
    for i, (toks, reason) in done.items():
        results[i] = dec.rollout(toks, reason, seeds[i])
    return results  # type: ignore[return-value]


def _sample_shared(model, dec: _Decoder, ids: list[int], n: int, step: int, seeds):
    """Prefill the prefix once for all rows, then decode the rows ``step`` at a time;
    returns {row: (token ids, finish reason)}."""
    dev, P = model.device, len(ids)
    done: dict[int, tuple[list[int], FinishReason]] = {}
    cache = _new_cache(model, P)
    model.ctx.pending.update(prompt_len=torch.tensor([P], device=dev), prefix_rows=torch.arange(n, device=dev))
    x = torch.tensor([ids], device=dev)
    last = model.hf(input_ids=x, position_ids=torch.arange(P, device=dev)[None], past_key_values=cache,
                    use_cache=True, logits_to_keep=1).logits[:, -1]
    prefill = [(layer.keys, layer.values) for layer in cache.layers]
    shared = {i for i, layer in enumerate(cache.layers) if isinstance(layer, _BufferedLayer)}
    history = model.ctx.history
    model.attn_hooks.prefix = {i: prefill[i] for i in shared}
    try:
        for lo in range(0, n, step):
            rows = list(range(lo, min(n, lo + step)))
            r = len(rows)
            row_ids = torch.tensor(rows, device=dev)
            model.ctx.history = history.expand(r, -1).clone()
            model.ctx.prompt_len = torch.full((r,), P, device=dev)
            model.ctx.row_ids = row_ids
            gens = [torch.Generator(device=dev).manual_seed(int(seeds[i])) for i in rows]
            done.update(dec.run(_prefix_cache(model, prefill, shared, r, dec.max_new_tokens), last.expand(r, -1),
                                torch.full((r,), P, device=dev), None, gens, row_ids))
    finally:
        model.attn_hooks.prefix = {}
    return done


def _sample_per_row(model, dec: _Decoder, ids: list[int], n: int, step: int, seeds):
    """Like ``_sample_shared`` for interventions that change rows differently: their rows
    no longer share the prefix's activations, so each batch of rows prefills its own copy."""
    dev, P = model.device, len(ids)
    done: dict[int, tuple[list[int], FinishReason]] = {}
    x = torch.tensor([ids], device=dev)
    for lo in range(0, n, step):
        rows = list(range(lo, min(n, lo + step)))
        r = len(rows)
        row_ids = torch.tensor(rows, device=dev)
        cache = _new_cache(model, P + dec.max_new_tokens)
        model.ctx.pending.update(prompt_len=torch.full((r,), P, device=dev), row_ids=row_ids, same_run=lo > 0)
        last = model.hf(input_ids=x.expand(r, -1), position_ids=torch.arange(P, device=dev).expand(r, -1),
                        past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        gens = [torch.Generator(device=dev).manual_seed(int(seeds[i])) for i in rows]
        done.update(dec.run(cache, last, torch.full((r,), P, device=dev), None, gens, row_ids))
    return done


def generate(
    model,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: str | Sequence[str] | None = None,
    seed: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> list[Rollout]:
    """One continuation per prompt (left-padded batch); greedy at temperature 0."""
    if isinstance(prompts, str):
        prompts = [prompts]
    batch = model.batch(list(prompts), padding_side="left")
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    B = ids.shape[0]
    dec = _Decoder(model, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                   stop=stop, eos_token_ids=eos_token_ids, progress=progress)
    dec.check_fits(ids.shape[1], "the longest prompt" if B > 1 else "the prompt")
    lens = mask.sum(1) if mask is not None else torch.full((B,), ids.shape[1], device=ids.device)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0) if mask is not None else None
    gens = [torch.Generator(device=ids.device).manual_seed(seed + i) for i in range(B)] if temperature > 0 else None
    with torch.no_grad(), model.scope():
        cache = _new_cache(model, ids.shape[1] + max_new_tokens)
        model.ctx.pending["prompt_len"] = lens
        last = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                        use_cache=True, logits_to_keep=1).logits[:, -1]
        done = dec.run(cache, last, lens.clone(), mask, gens, torch.arange(B, device=ids.device))
    return [dec.rollout(*done[i], seed + i if temperature > 0 else None) for i in range(B)]

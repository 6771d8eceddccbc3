"""Routing capture streamed into counts (``reference/moe_experts.md`` §1 "Counts", §6 "Recording routing").

A ``RoutingRecorder`` hooks the ``expert_topk[L]`` site of every MoE layer (the transformers 5.x
router output ``(logits, top_k_weights, top_k_index)``: the source of truth) and adds, per trace,
how many tokens were routed to each (layer, expert) pair, how many tokens there were, and the same
two counts restricted to each marker's positions. Nothing per token is kept, so a recorder can stay
attached through a whole generation: prefill and every decode step (T = 1) count alike; padding is
masked; a shared-prefix prefill (one row standing for several samples) counts once per sample.
Markers are matched on each position's *input* token id.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.models.chat import THINK_CLOSE, THINK_OPEN

SUPPORTED_FAMILIES = ("qwen3_moe", "olmoe", "mixtral", "qwen2_moe")
DEFAULT_MARKERS = (THINK_OPEN, THINK_CLOSE)

MarkerSpec = str | int | Sequence[int]
"""A marker: a string that is one token, ``"re:PATTERN"`` (every vocabulary token whose decoded
text matches), a token id, or a list of token ids."""


def check_moe(model, what: str = "expert identification") -> None:
    """A clear error for a dense model, naming the supported MoE families."""
    if not model.is_moe:
        raise ValueError(f"{what} needs a mixture-of-experts model, but {model.spec} ({model.family}) is dense; "
                         f"supported MoE families: {', '.join(SUPPORTED_FAMILIES)}")


def resolve_markers(tokenizer, markers: Mapping[str, MarkerSpec] | Sequence[MarkerSpec], vocab_size: int
                    ) -> dict[str, tuple[int, ...]]:
    """Marker name → token ids (§1 "Events"). A string must be one token; otherwise the error shows
    its ids and how to pass them."""
    items = markers.items() if isinstance(markers, Mapping) else ((_name(m), m) for m in markers)
    out: dict[str, tuple[int, ...]] = {}
    for name, spec in items:
        if isinstance(spec, str) and spec.startswith("re:"):
            pattern = re.compile(spec[3:])
            ids = tuple(i for i in range(vocab_size) if pattern.search(tokenizer.decode([i])))
            if not ids:
                raise ValueError(f"marker {name!r}: no token of the vocabulary matches {spec[3:]!r}")
        elif isinstance(spec, str):
            ids = _single_token(tokenizer, spec)
        else:
            ids = (int(spec),) if isinstance(spec, (int, np.integer)) else tuple(int(i) for i in spec)
            if not ids:
                raise ValueError(f"marker {name!r} has no token ids")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"marker {name!r}: token ids {bad} are outside the vocabulary (0..{vocab_size - 1})")
        out[str(name)] = ids
    if not out:
        raise ValueError("no markers given: pass e.g. ['<think>', '</think>'] or {'name': [token ids]}")
    return out


def _name(spec: MarkerSpec) -> str:
    return spec if isinstance(spec, str) else str(spec if isinstance(spec, (int, np.integer)) else list(spec))


def _single_token(tokenizer, text: str) -> tuple[int, ...]:
    tid = tokenizer.convert_tokens_to_ids(text)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return (tid,)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1:
        return (ids[0],)
    raise ValueError(f"marker {text!r} is {len(ids)} tokens {ids}, not one: a marker is one token; pass token ids "
                     f"(markers={{{text!r}: {ids[:1]}}} for its first token) or a regex over decoded tokens "
                     f"('re:^{re.escape(text[:4])}')")


@dataclass
class RoutingCounts:
    """Per-trace routing counts (§1 "Estimates"). Row ``i`` of ``selected`` is trace ``i``; column
    ``j`` is MoE layer ``layers[j]``. ``selected`` = K (tokens routed to each pair), ``tokens`` = T,
    ``marker_selected[x]`` = k (marker positions routed to each pair), ``marker_tokens[x]`` = N_x."""

    layers: list[int]
    n_experts: int
    top_k: int
    markers: dict[str, tuple[int, ...]]
    selected: np.ndarray  # (n_traces, n_layers, E) int64
    tokens: np.ndarray  # (n_traces,) int64
    marker_selected: dict[str, np.ndarray] = field(default_factory=dict)
    marker_tokens: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_traces(self) -> int:
        return int(self.tokens.shape[0])

    def totals(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, int, dict[str, np.ndarray], dict[str, int]]:
        """(K, T, k per marker, N per marker) summed over traces, each trace counted ``weights[i]``
        times (a bootstrap resample) when given."""
        w = np.ones(self.n_traces, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
        K = np.tensordot(w, self.selected, axes=1)
        k = {m: np.tensordot(w, a, axes=1) for m, a in self.marker_selected.items()}
        return K, int(w @ self.tokens), k, {m: int(w @ a) for m, a in self.marker_tokens.items()}

    def save(self, path) -> None:
        from probes.io import save_artifact

        arrays = {"selected": self.selected, "tokens": self.tokens}
        for i, m in enumerate(self.markers):  # marker i's arrays; its name is in the JSON
            arrays |= {f"marker_selected/{i}": self.marker_selected[m], f"marker_tokens/{i}": self.marker_tokens[m]}
        save_artifact(path, "RoutingCounts", arrays,
                      {"layers": self.layers, "n_experts": self.n_experts, "top_k": self.top_k,
                       "markers": [[m, list(ids)] for m, ids in self.markers.items()]})

    @classmethod
    def load(cls, path) -> RoutingCounts:
        from probes.io import load_artifact

        arrays, f = load_artifact(path, "RoutingCounts")
        markers = {m: tuple(ids) for m, ids in f["markers"]}
        return cls(layers=list(f["layers"]), n_experts=int(f["n_experts"]), top_k=int(f["top_k"]), markers=markers,
                   selected=arrays["selected"], tokens=arrays["tokens"],
                   marker_selected={m: arrays[f"marker_selected/{i}"] for i, m in enumerate(markers)},
                   marker_tokens={m: arrays[f"marker_tokens/{i}"] for i, m in enumerate(markers)})


class RoutingRecorder:
    """Streams routing into per-trace counts while attached (``with recorder.recording(first_trace):``).

    Row ``r`` of the user's batch (``Model.forward`` / ``capture`` / ``generate`` rows, ``sample``'s
    samples) is trace ``first_trace + r``. ``counts()`` returns the ``RoutingCounts`` so far."""

    def __init__(self, model, markers: Mapping[str, MarkerSpec] | Sequence[MarkerSpec] = DEFAULT_MARKERS):
        check_moe(model)
        self.model = model
        self.layers = model.moe_layers
        self.markers = resolve_markers(model.tokenizer, markers, model.vocab_size)
        self._ids = {m: torch.tensor(ids, device=model.device) for m, ids in self.markers.items()}
        E, n = model.n_experts, len(self.layers)
        self._E = E
        # device tables grown by trace; slot 0 counts every token, slot 1 + i marker i's positions
        self._sel = torch.zeros(0, 1 + len(self.markers), n, E, dtype=torch.long, device=model.device)
        self._tok = torch.zeros(0, 1 + len(self.markers), dtype=torch.long, device=model.device)
        self._first = 0
        self._starts = None  # per row of the current call: first position counted
        self._n = 0  # traces seen: 1 + the highest trace index counted
        self._forward = None  # (traces (B, R), masks (B, 1 + markers, T)) of the current forward

    @contextlib.contextmanager
    def recording(self, first_trace: int = 0, starts: Sequence[int] | None = None):
        """Hooks on while inside; ``starts[r]``: row ``r`` counts only positions ≥ it (e.g. the trace
        after the prompt), for forwards without a shared-prefix prefill."""
        from probes.models.hooks import attach
        from probes.models.sites import Site, resolve

        if first_trace < 0:
            raise ValueError(f"first_trace must be >= 0, got {first_trace}")
        self._first = first_trace
        self._starts = None if starts is None else torch.as_tensor(list(starts), device=self.model.device)
        model = self.model
        points = [resolve(model, Site("expert_topk", L)) for L in self.layers]
        handles = []

        def place(*_):
            # At the start of every forward, the reads go after every hook on the routers, so routing
            # edited by an intervention entered inside recording() (ForceExperts) counts as it runs.
            for h in handles:
                h.remove()
            handles[:] = [attach(model, p, lambda v, j=j: self._count(j, v[0])) for j, p in enumerate(points)]

        with model.scope():
            base = model.hf.get_submodule(model.adapter.base).register_forward_pre_hook(place)
            try:
                yield self
            finally:
                base.remove()
                for h in handles:
                    h.remove()
                self._forward = self._starts = None

    def _grow(self, need: int) -> None:
        self._n = max(self._n, need)
        have = self._tok.shape[0]
        if need <= have:
            return
        pad = max(need, 2 * have) - have
        self._sel = torch.cat([self._sel, self._sel.new_zeros(pad, *self._sel.shape[1:])])
        self._tok = torch.cat([self._tok, self._tok.new_zeros(pad, *self._tok.shape[1:])])

    def _begin(self) -> tuple:
        """Per forward (first MoE layer): each batch row's traces, and the masks of valid and marker positions."""
        ctx = self.model.ctx
        valid = ctx.query_valid
        if ctx.history is None:
            raise ValueError("routing counts need token ids: run the model on input_ids, not inputs_embeds")
        tokens = torch.gather(ctx.history, 1, ctx.query_pos.clamp(min=0, max=ctx.history.shape[1] - 1))
        if ctx.prefix_rows is not None:  # one prefill row stands for every sample of the prefix
            if self._starts is not None:
                raise ValueError("starts cannot apply to a shared-prefix prefill: count the prompt, or teacher-force")
            traces = self._first + ctx.prefix_rows.view(1, -1)
        else:
            traces = self._first + ctx.row_ids.view(-1, 1)
            if self._starts is not None:
                valid = valid & (ctx.query_pos >= self._starts[ctx.row_ids].unsqueeze(1))
        self._grow(int(traces.max()) + 1)
        masks = torch.stack([valid] + [torch.isin(tokens, ids) & valid for ids in self._ids.values()], 1)
        return traces, masks.float()  # (B, 1 + markers, T)

    def _count(self, j: int, ids: torch.Tensor) -> None:
        if j == 0 or self._forward is None:
            self._forward = self._begin()
        traces, masks = self._forward
        B, T, _k = ids.shape
        onehot = torch.zeros(B, T, self._E, device=ids.device).scatter_(-1, ids.long(), 1.0)
        per_row = torch.bmm(masks, onehot).round().long()  # (B, 1 + markers, E): all tokens, then each marker
        R = traces.shape[1]
        rows = traces.expand(B, R).reshape(-1)
        self._sel[:, :, j].index_add_(0, rows, per_row.repeat_interleave(R, 0))  # one add for tokens and markers
        if j == 0:
            self._tok.index_add_(0, rows, masks.sum(2).long().repeat_interleave(R, 0))

    def counts(self) -> RoutingCounts:
        n = self._n
        return RoutingCounts(
            layers=list(self.layers), n_experts=self._E, top_k=self.model.top_k, markers=dict(self.markers),
            selected=self._sel[:n, 0].cpu().numpy(), tokens=self._tok[:n, 0].cpu().numpy(),
            marker_selected={m: self._sel[:n, 1 + i].cpu().numpy() for i, m in enumerate(self.markers)},
            marker_tokens={m: self._tok[:n, 1 + i].cpu().numpy() for i, m in enumerate(self.markers)},
        )


def count_routing(model, traces: Iterable[str | Sequence[int]],
                  markers: Mapping[str, MarkerSpec] | Sequence[MarkerSpec] = DEFAULT_MARKERS, *,
                  starts: Sequence[int] | None = None, batch_size: int = 16, progress: bool = False) -> RoutingCounts:
    """Routing counts over teacher-forced ``traces`` (texts or token id lists: prompt + the model's
    own trace), one forward per batch that stops after the last MoE layer (§6: "one teacher-forced
    forward pass suffices"). Trace ``i`` of the result is ``traces[i]``; with ``starts``, only its
    positions ≥ ``starts[i]`` count (default: every non-padding position)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rec = RoutingRecorder(model, markers)
    items = list(traces)
    if not items:
        raise ValueError("no traces given: pass the model's own reasoning traces (prompt + completion)")
    if starts is not None and len(starts) != len(items):
        raise ValueError(f"give one start per trace: {len(items)} traces, {len(starts)} starts")
    last = f"resid_post[{rec.layers[-1]}]"
    for b in tqdm(range(0, len(items), batch_size), disable=not progress, desc="routing"):
        with rec.recording(first_trace=b, starts=None if starts is None else starts[b : b + batch_size]):
            model.capture(items[b : b + batch_size], [last], reduce={"resid_post": lambda v, L: None})
    return rec.counts()

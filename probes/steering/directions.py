"""Steering directions from contrast data (``reference/steering.md`` §1).

Contrast data is positive vs negative inputs, as pairs (``Contrast.pairs``, CAA / RepE
style) or as two unpaired sets (``Contrast.sets``, diff-in-means over datasets). Texts or
token-id rows both work.

Reading: ``read_contrast`` reads ``resid_post[L]`` (or another residual-width site)
through ``model.capture`` and reduces each input to one vector with a **read-position
rule**, a small callable ``rule(ids, model) -> positions`` whose activations are averaged:
``LastToken()``, ``TokenIndex(i)`` (CAA reads the answer letter at −2), ``SpanMean(a, b)``,
``AnswerLetter()`` (the answer-letter token of an A/B item, found by its text). Reductions
and means run in float64 (§1 "Accumulate in fp64").

Methods are small callables ``method(positive, negative, *, paired) -> (d,)`` chosen by
passing them (STYLE habit 4; a two-argument ``method(positive, negative)``, such as a
steering-vectors aggregator, works too); each one's ``repr`` is recorded in the result:

* ``DiffInMeans()``: μ(h | positive) − μ(h | negative), raw norm kept;
* ``PCADiff(center=...)``: the first principal component of the paired differences
  h⁺ − h⁻, unit norm. ``center`` has no default: with ``center=True`` (sklearn's PCA, RepE
  ``pca_diff``) it is the main axis of *variation* among the differences, which can be
  nearly orthogonal to the mean shift; with ``center=False`` (repeng ``pca_center``,
  steering-vectors' ``pca_aggregator``) it aligns with the mean shift when that dominates.
  The sign is fixed so most differences project positively (ties: by the mean projection);
* ``LogisticProbe()``: the weight vector w of a logistic-regression probe on h (§1
  "Probe-based"); ``probe_vector`` turns an already trained probe into a vector.

``optimise_vector`` learns a vector at one layer by gradient descent (Adam, lr 0.1 as in
the hybrid paper's ``optimize_steering_vectors.py``) to raise the model's likelihood of
target continuations given their contexts; it runs through ``model.forward(grad=True)``
with an ``AddVector`` whose vector requires grad, so the model's hooks do the adding.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.io import json_hash
from probes.models.interventions import AddVector
from probes.models.positions import Positions
from probes.steering.vector import RESIDUAL_SITES, SteeringVector

__all__ = [
    "AnswerLetter",
    "Contrast",
    "ContrastActivations",
    "DiffInMeans",
    "LastToken",
    "LogisticProbe",
    "Method",
    "OptimisedVector",
    "PCADiff",
    "ReadPosition",
    "SpanMean",
    "TokenIndex",
    "contrast_vector",
    "optimise_vector",
    "probe_vector",
    "read_activations",
    "read_positions",
    "read_contrast",
    "target_nll",
]

#: An input: a text, or a row of token ids.
Text = str | Sequence[int]
#: ``rule(ids, model) -> positions``: which positions of one unpadded row (``ids``) to average.
ReadPosition = Callable[[Sequence[int], Any], Sequence[int]]
#: ``method(positive (n, d), negative (m, d), *, paired) -> (d,)`` (or without ``paired``), float64 in.
Method = Callable[..., torch.Tensor]


def _row(x: Text, what: str) -> str | list[int]:
    if isinstance(x, str):
        if not x:
            raise ValueError(f"{what} is an empty text: every input needs at least one token")
        return x
    ids = [int(t) for t in x]
    if not ids:
        raise ValueError(f"{what} is an empty id row: every input needs at least one token")
    return ids


def _name(fn: Callable) -> str:
    """What to record for a method or rule: a dataclass's repr, else the function's name."""
    if hasattr(fn, "__dataclass_fields__"):
        return repr(fn)
    return getattr(fn, "__qualname__", None) or repr(fn)


# ----- contrast data ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Contrast:
    """Positive and negative inputs; ``paired`` when ``positive[i]`` and ``negative[i]`` belong together."""

    positive: tuple[str | list[int], ...]
    negative: tuple[str | list[int], ...]
    paired: bool

    def __post_init__(self):
        pos = tuple(_row(x, f"positive input {i}") for i, x in enumerate(self.positive))
        neg = tuple(_row(x, f"negative input {i}") for i, x in enumerate(self.negative))
        if not pos or not neg:
            side = "positive" if not pos else "negative"
            raise ValueError(f"the {side} set is empty: contrast data needs at least one positive and one negative input")
        if self.paired and len(pos) != len(neg):
            raise ValueError(
                f"paired contrast data has {len(pos)} positive and {len(neg)} negative inputs: give one negative per "
                "positive, or use Contrast.sets(...) for unpaired sets"
            )
        object.__setattr__(self, "positive", pos)
        object.__setattr__(self, "negative", neg)

    @classmethod
    def pairs(cls, pairs: Iterable[tuple[Text, Text]]) -> Contrast:
        """From ``(positive, negative)`` pairs."""
        pairs = list(pairs)
        bad = [i for i, p in enumerate(pairs) if isinstance(p, str) or len(p) != 2]
        if bad:
            raise ValueError(f"pairs {bad[:5]} are not (positive, negative) pairs")
        return cls(tuple(p for p, _ in pairs), tuple(n for _, n in pairs), paired=True)

    @classmethod
    def sets(cls, positive: Iterable[Text], negative: Iterable[Text]) -> Contrast:
        """From two unpaired sets (their sizes may differ)."""
        if isinstance(positive, str) or isinstance(negative, str):
            raise ValueError("Contrast.sets takes two lists of inputs, not single texts")
        return cls(tuple(positive), tuple(negative), paired=False)

    @property
    def data_hash(self) -> str:
        """sha256 over the inputs and the pairing."""
        return json_hash({"paired": self.paired, "positive": list(self.positive), "negative": list(self.negative)})


# ----- read-position rules ---------------------------------------------------------------------------
def _check_positions(pos: Sequence[int], n: int, rule) -> list[int]:
    pos = [int(p) for p in pos]
    if not pos:
        raise ValueError(f"{_name(rule)} selected no position in a row of {n} tokens")
    if any(not 0 <= p < n for p in pos):
        raise ValueError(f"{_name(rule)} selected positions {pos} outside a row of {n} tokens (0..{n - 1})")
    return pos


@dataclass(frozen=True)
class LastToken:
    """The last token of each input (steering-vectors' ``read_token_index=-1``, repeng)."""

    def __call__(self, ids: Sequence[int], model=None) -> list[int]:
        return [len(ids) - 1]


@dataclass(frozen=True)
class TokenIndex:
    """One token position; negative counts from the end (CAA reads the answer letter at −2)."""

    index: int

    def __call__(self, ids: Sequence[int], model=None) -> list[int]:
        n = len(ids)
        if not -n <= self.index < n:
            raise ValueError(f"{self!r} is outside an input of {n} tokens: use an index in {-n}..{n - 1}")
        return [self.index % n]


@dataclass(frozen=True)
class SpanMean:
    """The mean over positions ``[start, end)`` of each input, with Python slice rules
    (negative counts from the end; ``end=None``: to the end). ``SpanMean()`` is the mean over all tokens."""

    start: int = 0
    end: int | None = None

    def __call__(self, ids: Sequence[int], model=None) -> list[int]:
        pos = list(range(len(ids)))[self.start:self.end]
        if not pos:
            raise ValueError(f"{self!r} selects no token of an input of {len(ids)} tokens: widen the span")
        return pos


@dataclass(frozen=True)
class ThinkingMean:
    """The mean over the thinking tokens: strictly between the first ``<think>`` and the first
    ``</think>`` after it (or the end) — the positions that ``positions="thinking"`` steers."""

    def __call__(self, ids: Sequence[int], model) -> list[int]:
        ids = [int(i) for i in ids]
        open_id, close_id = model.ctx.think_open_id, model.ctx.think_close_id
        if open_id is None or open_id not in ids:
            raise ValueError(f"no <think> token in an input of {len(ids)} tokens: ThinkingMean reads chat traces "
                             "with thinking; use SpanMean for plain text")
        start = ids.index(open_id) + 1
        end = ids.index(close_id, start) if close_id in ids[start:] else len(ids)
        if end == start:
            raise ValueError("the thinking of an input is empty: ThinkingMean needs at least one thinking token")
        return list(range(start, end))


@dataclass(frozen=True)
class AnswerLetter:
    """The answer-letter token of an A/B item (CAA): the last token whose text, without
    spaces and brackets, is one of ``letters`` ("(A", " B", "A)" all count)."""

    letters: tuple[str, ...] = ("A", "B")

    def __call__(self, ids: Sequence[int], model) -> list[int]:
        for p in range(len(ids) - 1, -1, -1):
            if model.tokenizer.decode([int(ids[p])]).strip().strip("()").strip() in self.letters:
                return [p]
        raise ValueError(
            f"no answer-letter token ({'/'.join(self.letters)}) in an input of {len(ids)} tokens: end each A/B item "
            "with its letter, e.g. '(A', or read with TokenIndex(-2)"
        )


# ----- reading activations ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class ContrastActivations:
    """Per-input activations of a contrast, read at ``site[L]`` for each layer: ``positive[L]``
    is (n_positive, d) and ``negative[L]`` (n_negative, d), float64. ``vector(method)`` turns
    them into a ``SteeringVector``, so one read serves several methods."""

    positive: Mapping[int, torch.Tensor]
    negative: Mapping[int, torch.Tensor]
    paired: bool
    read_position: str
    data_hash: str = ""
    model_spec: str = ""
    weights_hash: str = ""
    site: str = "resid_post"

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.positive)

    def vector(self, method: Method | None = None) -> SteeringVector:
        """Apply ``method`` (default ``DiffInMeans()``) layer by layer."""
        method = DiffInMeans() if method is None else method
        vectors = {L: _apply(method, self.positive[L], self.negative[L], self.paired) for L in self.layers}
        return SteeringVector(
            vectors=vectors, method=_name(method), read_position=self.read_position, data_hash=self.data_hash,
            model_spec=self.model_spec, weights_hash=self.weights_hash, site=self.site,
        )


def _apply(method: Method, positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    """``method`` on one layer's activations: with ``paired=`` when it takes it, else as
    ``method(positive, negative)`` (steering-vectors' aggregators); the result must be (d,)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        params = ()
    takes_paired = any(p.name == "paired" or p.kind is p.VAR_KEYWORD for p in params)
    v = method(positive, negative, paired=paired) if takes_paired else method(positive, negative)
    v = torch.as_tensor(v).detach()
    if v.shape != positive.shape[1:]:
        raise ValueError(f"{_name(method)} returned shape {tuple(v.shape)}; a method returns one vector of shape "
                         f"({positive.shape[1]},)")
    return v


def _layers(model, layers: int | Sequence[int], what: str) -> list[int]:
    layers = [layers] if isinstance(layers, numbers.Integral) else list(layers)
    if not layers:
        raise ValueError(f"{what} needs at least one layer")
    return sorted({model.check_layer(L, what) for L in layers})


def _check_site(site: str) -> None:
    if site not in RESIDUAL_SITES:
        raise ValueError(f"steering directions are read at a residual-width site, one of {', '.join(RESIDUAL_SITES)}; got {site!r}")


def read_activations(
    model,
    inputs: Sequence[Text],
    sites: Sequence[str],
    *,
    read: ReadPosition | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "reading",
) -> dict[str, torch.Tensor]:
    """Site → (n_inputs, d) float64: each input read at each of ``sites`` (one forward per batch,
    stopped after the last layer needed) and reduced by ``read`` (default ``LastToken()``), the
    mean over the positions it selects."""
    got = read_positions(model, inputs, sites, [LastToken() if read is None else read], batch_size=batch_size,
                         progress=progress, desc=desc)
    return {s: v[:, 0] for s, v in got.items()}


def read_positions(
    model,
    inputs: Sequence[Text],
    sites: Sequence[str],
    reads: Sequence[ReadPosition],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "reading",
) -> dict[str, torch.Tensor]:
    """Site → (n_inputs, len(reads), d) float64: ``read_activations`` for several read rules from the
    same forward passes (one pass per batch, whatever the number of rules)."""
    inputs = [_row(x, f"input {i}") for i, x in enumerate(inputs)]
    if not inputs:
        raise ValueError("no inputs to read: give at least one text or id row")
    if not reads:
        raise ValueError("no read rules: give at least one, e.g. [LastToken()]")
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for start in tqdm(range(0, len(inputs), batch_size), desc=desc, disable=not progress):
        cap = model.capture(inputs[start:start + batch_size], list(sites))
        mask = cap.attention_mask if cap.attention_mask is not None else torch.ones_like(cap.input_ids)
        for b in range(cap.input_ids.shape[0]):
            cols = mask[b].nonzero().squeeze(-1)  # column of each absolute position of the row
            ids = cap.input_ids[b, cols].tolist()
            takes = [cols[torch.tensor(_check_positions(r(ids, model), len(ids), r), device=cols.device)] for r in reads]
            for s in sites:
                out[s].append(torch.stack([cap[s][b, t].double().mean(0).cpu() for t in takes]))
    return {s: torch.stack(rows) for s, rows in out.items()}


def _read(model, inputs, layers: list[int], site: str, read: ReadPosition, batch_size: int, progress: bool,
          desc: str) -> dict[int, torch.Tensor]:
    got = read_activations(model, inputs, [f"{site}[{L}]" for L in layers], read=read, batch_size=batch_size,
                           progress=progress, desc=desc)
    return {L: got[f"{site}[{L}]"] for L in layers}


def read_contrast(
    model,
    contrast: Contrast,
    layers: int | Sequence[int],
    *,
    read: ReadPosition | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> ContrastActivations:
    """Read every input of ``contrast`` at ``site[L]`` for each of ``layers`` (one forward per
    batch, stopped after the last layer) and reduce it with ``read`` (default ``LastToken()``)."""
    if not isinstance(contrast, Contrast):
        raise TypeError(f"read_contrast takes a Contrast (Contrast.pairs(...) or Contrast.sets(...)), got {type(contrast).__name__}")
    _check_site(site)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    read = LastToken() if read is None else read
    layers = _layers(model, layers, "read_contrast")
    return ContrastActivations(
        positive=_read(model, contrast.positive, layers, site, read, batch_size, progress, "positive inputs"),
        negative=_read(model, contrast.negative, layers, site, read, batch_size, progress, "negative inputs"),
        paired=contrast.paired, read_position=_name(read), data_hash=contrast.data_hash,
        model_spec=model.spec, weights_hash=model.weights_hash, site=site,
    )


def contrast_vector(
    model,
    contrast: Contrast,
    layers: int | Sequence[int],
    *,
    method: Method | None = None,
    read: ReadPosition | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A ``SteeringVector`` from contrast data: ``read_contrast`` then ``method`` (default ``DiffInMeans()``)."""
    acts = read_contrast(model, contrast, layers, read=read, site=site, batch_size=batch_size, progress=progress)
    return acts.vector(method)


# ----- methods ---------------------------------------------------------------------------------------
def _as_acts(positive, negative, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    pos, neg = torch.as_tensor(positive).double(), torch.as_tensor(negative).double()
    for name, x in (("positive", pos), ("negative", neg)):
        if x.dim() != 2:
            raise ValueError(f"{what}: {name} activations must be (n, d), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{what}: the {name} set is empty; give at least one input on each side")
    if pos.shape[1] != neg.shape[1]:
        raise ValueError(f"{what}: positive width {pos.shape[1]} != negative width {neg.shape[1]}")
    return pos, neg


@dataclass(frozen=True)
class DiffInMeans:
    """μ(positive) − μ(negative) in float64 (for pairs, the mean of the differences)."""

    def __call__(self, positive, negative, *, paired: bool = False) -> torch.Tensor:
        pos, neg = _as_acts(positive, negative, "DiffInMeans")
        return pos.mean(0) - neg.mean(0)


@dataclass(frozen=True)
class PCADiff:
    """First principal component of the paired differences D = h⁺ − h⁻ (unit norm).

    ``center=True`` subtracts the mean difference first (sklearn PCA); ``center=False``
    takes PC1 of D as it is. Sign: most rows of D project positively onto it (ties: the
    sign of the mean projection)."""

    center: bool

    def __post_init__(self):
        if not isinstance(self.center, bool):
            raise ValueError(f"PCADiff center is True or False, got {self.center!r}")

    def __call__(self, positive, negative, *, paired: bool) -> torch.Tensor:
        if not paired:
            raise ValueError("PCADiff needs paired contrast data (Contrast.pairs): use DiffInMeans or LogisticProbe for unpaired sets")
        pos, neg = _as_acts(positive, negative, "PCADiff")
        if pos.shape != neg.shape:
            raise ValueError(f"PCADiff needs as many positive as negative rows, got {pos.shape[0]} and {neg.shape[0]}")
        d = pos - neg
        x = d - d.mean(0) if self.center else d
        if self.center and pos.shape[0] < 2:
            raise ValueError("PCADiff(center=True) needs at least 2 pairs: one centred difference is zero")
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        if float(s[0]) == 0.0:
            raise ValueError("the paired differences are all zero (after centring): positive and negative read the same "
                             "activations; check the contrast data and the read position")
        v = vh[0]
        proj = d @ v
        up, down = int((proj > 0).sum()), int((proj < 0).sum())
        if down > up or (down == up and float(proj.sum()) < 0):
            v = -v
        return v


@dataclass(frozen=True)
class LogisticProbe:
    """Weight vector w of a logistic-regression probe (sklearn ``LogisticRegression``,
    positive = 1) fitted on the activations as they are, in float64."""

    C: float = 1.0
    fit_intercept: bool = True
    max_iter: int = 1000

    def __call__(self, positive, negative, *, paired: bool = False) -> torch.Tensor:
        from sklearn.linear_model import LogisticRegression

        pos, neg = _as_acts(positive, negative, "LogisticProbe")
        x = torch.cat([pos, neg]).numpy()
        y = np.r_[np.ones(pos.shape[0]), np.zeros(neg.shape[0])]
        clf = LogisticRegression(C=self.C, fit_intercept=self.fit_intercept, max_iter=self.max_iter).fit(x, y)
        return torch.from_numpy(np.asarray(clf.coef_, dtype=np.float64).reshape(-1).copy())


def probe_vector(
    model, layer: int, probe, *, site: str = "resid_post", method: str = "probe", data_hash: str = ""
) -> SteeringVector:
    """A ``SteeringVector`` at ``site[layer]`` from a trained linear probe: a fitted sklearn
    classifier (its ``coef_``) or its weight vector (``(d,)`` or ``(1, d)``). The width must be
    ``model``'s d_model."""
    _check_site(site)
    layer = model.check_layer(layer, "probe_vector")
    w = torch.as_tensor(np.asarray(getattr(probe, "coef_", probe), dtype=np.float64))
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() != 1:
        raise ValueError(f"a probe for a steering vector has one weight vector (d,) or (1, d), got shape {tuple(w.shape)}")
    if w.shape[0] != model.d_model:
        raise ValueError(
            f"probe has width {w.shape[0]} but {model.spec} has d_model {model.d_model} at {site}[{layer}]: "
            "it was trained on another model's activations; retrain it on this model"
        )
    return SteeringVector(vectors={layer: w}, method=method, data_hash=data_hash, model_spec=model.spec,
                          weights_hash=model.weights_hash, site=site)


# ----- optimised vectors -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class OptimisedVector:
    """``optimise_vector``'s result: the vector and the mean target NLL before each step
    (``losses[0]``: unsteered with the initial vector) and after the last (``losses[-1]``)."""

    vector: SteeringVector
    losses: tuple[float, ...] = field(default_factory=tuple)


def _target_rows(model, contexts: Sequence[Text], targets: Sequence[Text]):
    if isinstance(contexts, str) or isinstance(targets, str):
        raise ValueError("contexts and targets are lists of texts (or id rows), not single texts")
    contexts, targets = list(contexts), list(targets)
    if not contexts:
        raise ValueError("no contexts: give at least one (context, target) example")
    if len(contexts) != len(targets):
        raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets: give one target continuation per context")
    rows = []
    for i, (c, t) in enumerate(zip(contexts, targets)):
        c, t = _row(c, f"context {i}"), _row(t, f"target {i}")
        c_ids = model.encode(c) if isinstance(c, str) else c
        t_ids = model.encode(t, add_special_tokens=False) if isinstance(t, str) else t
        if not t_ids:
            raise ValueError(f"target {i} encodes to no tokens")
        model.check_length(len(c_ids) + len(t_ids), f"example {i} (context + target)")
        rows.append((c_ids, t_ids))
    return rows, json_hash({"contexts": contexts, "targets": targets})


def _nll_sum(model, chunk, steer: list[AddVector], grad: bool) -> torch.Tensor:
    """Summed NLL of the target tokens of ``chunk`` (left-padded batch), with ``steer`` applied."""
    with model.intervene(*steer):
        logits = model.forward([c + t for c, t in chunk], prompt_len=[len(c) for c, _ in chunk], grad=grad)
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least; float64 stays
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    total = logits.new_zeros((), dtype=dtype)
    T = logits.shape[1]
    for b, (_, t) in enumerate(chunk):
        n = len(t)
        tgt = torch.tensor(t, device=logits.device)
        total = total - logp[b, T - n - 1:T - 1].gather(-1, tgt.unsqueeze(-1)).sum()
    return total


def _steer(vector, layer: int, site: str, positions: Positions) -> list[AddVector]:
    return [] if vector is None else [AddVector(site=f"{site}[{layer}]", vector=vector, positions=positions)]


def target_nll(
    model,
    contexts: Sequence[Text],
    targets: Sequence[Text],
    vector: torch.Tensor | None = None,
    *,
    layer: int = 0,
    site: str = "resid_post",
    positions: Positions = None,
    batch_size: int = 8,
    grad: bool = False,
) -> torch.Tensor:
    """Mean negative log-likelihood per target token of ``targets`` given ``contexts``, with
    ``vector`` added at ``site[layer]`` at ``positions`` (default all; the context is the
    ``prompt`` phase and the target the ``generated`` phase). Contexts are encoded as
    ``model.encode`` does (BOS rule), targets without special tokens. With ``grad=True`` the
    result differentiates with respect to ``vector``."""
    _check_site(site)
    layer = model.check_layer(layer, "target_nll")
    rows, _ = _target_rows(model, contexts, targets)
    steer = _steer(vector, layer, site, positions)
    n_tokens = sum(len(t) for _, t in rows)
    total = sum(_nll_sum(model, rows[i:i + batch_size], steer, grad) for i in range(0, len(rows), batch_size))
    return total / n_tokens


def optimise_vector(
    model,
    contexts: Sequence[Text],
    targets: Sequence[Text],
    layer: int,
    *,
    steps: int = 30,
    lr: float = 0.1,
    site: str = "resid_post",
    positions: Positions = None,
    init: torch.Tensor | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> OptimisedVector:
    """Learn v at ``site[layer]`` to raise the likelihood of ``targets`` given ``contexts``
    (the hybrid paper's optimised vectors, ``reference/steering.md`` §1): ``steps`` full-batch
    Adam steps at ``lr`` on the mean target-token NLL (``target_nll``) with v added at
    ``positions`` (default: every position). ``init`` defaults to zeros, so ``losses[0]`` is
    the unsteered loss. The weights stay constant; only v is learned."""
    _check_site(site)
    layer = model.check_layer(layer, "optimise_vector")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    rows, data_hash = _target_rows(model, contexts, targets)
    if init is None:
        v = torch.zeros(model.d_model, device=model.device)
    else:
        v = torch.as_tensor(init, dtype=torch.float32).detach().clone().to(model.device)
        if v.shape != (model.d_model,):
            raise ValueError(f"init has shape {tuple(v.shape)} but {model.spec} needs ({model.d_model},)")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("init has NaN or infinite entries: start from a finite vector")
    v.requires_grad_(True)
    opt = torch.optim.Adam([v], lr=float(lr))
    steer = _steer(v, layer, site, positions)
    n_tokens = sum(len(t) for _, t in rows)
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    losses = []
    for _ in tqdm(range(int(steps)), desc="optimise_vector", disable=not progress):
        opt.zero_grad()
        loss, g = 0.0, torch.zeros_like(v)
        for chunk in chunks:
            part = _nll_sum(model, chunk, steer, grad=True) / n_tokens
            g += torch.autograd.grad(part, v)[0]
            loss += float(part.detach())
        if not math.isfinite(loss):
            raise ValueError(f"the target loss became {loss} after {len(losses)} steps: lower lr (now {lr})")
        losses.append(loss)
        v.grad = g
        opt.step()
    with torch.no_grad():
        losses.append(float(sum(_nll_sum(model, c, steer, grad=False) for c in chunks) / n_tokens))
    name = f"optimised(steps={int(steps)}, lr={float(lr)}, positions={positions!r}, init={'zeros' if init is None else 'given'})"
    sv = SteeringVector(vectors={layer: v.detach().clone()}, method=name, data_hash=data_hash, model_spec=model.spec,
                        weights_hash=model.weights_hash, site=site)
    return OptimisedVector(vector=sv, losses=tuple(losses))

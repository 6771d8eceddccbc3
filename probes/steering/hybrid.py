"""Hybrid base + thinking model (``reference/steering.md`` §4; Venhoff et al., *Base Models Know How
to Reason, Thinking Models Learn When*, arXiv 2510.07364, released loop ``hybrid/hybrid_token.py``).

A base model decodes greedily while a thinking model is consulted at every token:

1. the thinking model's residual at ``resid_post[classifier.layer]`` of the token being processed
   is classified into a reasoning category (``CategoryClassifier``);
2. if the base model's greedy token equals the thinking model's, it is emitted unsteered;
3. otherwise the base model re-runs that token once per coefficient c with c·(bias + v_cat) added
   at ``resid_post[vectors.layer]``; each run's greedy token is a candidate, and the candidate with
   the lowest thinking-model perplexity (one token: the highest thinking log-prob) is emitted.

The share of steered tokens is the share of *emitted* tokens that came from a steered candidate
(§4), which is the share of steps where the steering fired.

How this differs from the released loop, and why:

* **KV caches on both models.** The released loop re-runs the whole context for every forward of
  every token. Here each model keeps a cache of its unsteered states and processes one new token
  per step; a step that fires re-runs only the last token, over a copy of the base cache that
  stops before it, for all coefficients at once (one batched forward).
* **Position semantics** (§3). The vector is added at one absolute position: the token being
  processed, whose logits choose the next token. Emitted tokens enter both caches unsteered, as in
  the released loop, whose next step re-runs the context without steering. This is the released
  ``--token_windows -1`` rule; the released default (``[1]``, read there as all positions) adds
  the vector at every position of the context in each candidate pass, a rule that depends on the
  step and so cannot be cached (§3 rule 4).
* **Categories and vectors.** The thought-anchors taxonomy labels of the thinking model's sentences
  stand in for the Top-K SAE: a nearest-centroid classifier on the thinking model's residual,
  centred and L2-normalised as the released code normalises before its SAE. The vectors are
  differences in means of the base model's residual (``fit_category_vectors``), or optimised as the
  released ones are (``fit_optimised_category_vectors``: a bias, then one vector per category, by
  gradient descent on the thinking model's sentences).
* **Coefficients**: the released default grid {0.5, 0.6, 0.7, 0.8, 0.9, 1.0} (``COEFFICIENTS``).
* **One vocabulary.** Tokens pass between the models as ids (the released loop decodes and
  re-encodes strings), so both models must share a tokenizer. Decoding is greedy.

Ablations (§5.6): ``CategoryVectors.bias_only`` (v_cat = 0), random firing (``fire_rate``: steer at
random steps at a given rate, seeded, whatever the two models' agreement; the released
``--random-firing`` instead draws a random category at every step) and
``CategoryVectors.random_like`` (each v_cat replaced by a seeded random direction of the same norm;
the released ``--random-vectors`` uses unit-norm random vectors). ``hybrid_ablations`` runs all four.

This package sits beside ``probes.anchors`` and may not import it, so the taxonomy comes in as a
``SentenceLabeller``: ``taxonomy_labeller(probes.anchors.split.split_chunks,
probes.anchors.taxonomy.RuleLabeler())``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.evals.answers import check_answer, extract_boxed
from probes.evals.stats import accuracy
from probes.io import load_artifact, save_artifact
from probes.models.hooks import attach
from probes.models.interventions import AddVector
from probes.models.sampling import FinishReason, check_logits, stop_token_ids
from probes.models.sites import Site, resolve

__all__ = [
    "COEFFICIENTS",
    "Baselines",
    "CategoryClassifier",
    "CategoryVectors",
    "HybridResult",
    "HybridTrace",
    "LabelledTrace",
    "SentenceLabeller",
    "evaluate_hybrid",
    "fit_category_classifier",
    "fit_category_vectors",
    "greedy_baselines",
    "hybrid_ablations",
    "hybrid_generate",
    "labelled_traces",
    "taxonomy_labeller",
]

#: Steering coefficients c tried at a step that fires: the released ``hybrid_token.py`` default.
COEFFICIENTS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

#: (problem, completion) → (start, end, category) character spans of the completion's sentences.
SentenceLabeller = Callable[[str, str], Sequence[tuple[int, int, str]]]


# ----- labelled sentences ----------------------------------------------------------------------


def taxonomy_labeller(split: Callable[[str], Sequence[Any]], labeler: Any) -> SentenceLabeller:
    """A ``SentenceLabeller`` from a sentence splitter and a taxonomy labeler, e.g.
    ``taxonomy_labeller(probes.anchors.split.split_chunks, probes.anchors.taxonomy.RuleLabeler())``.

    ``split(text)`` returns chunks with ``.text``, ``.start`` and ``.end`` (character span in
    ``text``); ``labeler.label(problem, texts)`` returns one label per chunk with
    ``.function_tags``, whose first tag is the category (``unknown`` when there is none)."""

    def label(problem: str, completion: str) -> list[tuple[int, int, str]]:
        chunks = list(split(completion))
        if not chunks:
            return []
        labels = labeler.label(problem, [c.text for c in chunks])
        return [(int(c.start), int(c.end), str(lab.function_tags[0]) if lab.function_tags else "unknown")
                for c, lab in zip(chunks, labels)]

    return label


@dataclass(frozen=True)
class LabelledTrace:
    """A model's completion of ``prompt`` (the rendered model input) with its labelled sentences:
    ``(start, end, category)`` character spans in ``completion``."""

    prompt: str
    completion: str
    sentences: tuple[tuple[int, int, str], ...]


def labelled_traces(model, prompts: Sequence[str], labeller: SentenceLabeller, *,
                    problems: Sequence[str] | None = None, max_new_tokens: int = 256, batch_size: int = 16,
                    progress: bool = True) -> list[LabelledTrace]:
    """Greedy completions (``Model.generate``) of the rendered ``prompts``, split into sentences and
    labelled by ``labeller``, which gets ``problems[i]`` (default: the prompt) as the problem text."""
    if problems is not None and len(problems) != len(prompts):
        raise ValueError(f"got {len(problems)} problems for {len(prompts)} prompts: give one problem text per prompt")
    out = []
    for lo in tqdm(range(0, len(prompts), batch_size), desc=f"traces {model.spec}", disable=not progress):
        rows = model.generate(list(prompts[lo : lo + batch_size]), max_new_tokens=max_new_tokens)
        for i, r in enumerate(rows, start=lo):
            problem = problems[i] if problems is not None else prompts[i]
            out.append(LabelledTrace(prompts[i], r.text, tuple(labeller(problem, r.text))))
    return out


def _sentence_positions(model, trace: LabelledTrace) -> tuple[str, list[tuple[list[int], str]]]:
    """The trace as one text, and per sentence the absolute positions whose residual predicts its
    tokens (sentence tokens [a, b) → positions a−1 … b−2) with its category."""
    full, off = trace.prompt + trace.completion, len(trace.prompt)
    if not trace.sentences:
        return full, []
    ranges = model.token_ranges(full, [(off + s, off + e) for s, e, _ in trace.sentences])
    out = []
    for (a, b), (_, _, cat) in zip(ranges, trace.sentences):
        positions = list(range(max(a - 1, 0), b - 1))
        if positions:
            out.append((positions, cat))
    return full, out


def _residual(model, text: str, layer: int) -> torch.Tensor:
    """(T, d) float64 ``resid_post[layer]`` of ``text``."""
    site = f"resid_post[{layer}]"
    return model.capture(text, [site])[site][0].to(torch.float64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----- per-step category classifier ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CategoryClassifier:
    """Nearest centroid by cosine on the thinking model's ``resid_post[layer]``, centred by ``mean``
    and L2-normalised; ``centroids`` (K, d) are unit vectors, one per category. ``counts`` and
    ``train_accuracy`` describe the positions it was fitted on."""

    layer: int
    categories: tuple[str, ...]
    mean: torch.Tensor
    centroids: torch.Tensor
    counts: tuple[int, ...] = ()
    train_accuracy: float = float("nan")

    def predict(self, resid: torch.Tensor) -> torch.Tensor:
        """Category index of each (…, d) residual."""
        x = _unit(resid.to(self.mean.device, torch.float64) - self.mean)
        return (x @ self.centroids.T).argmax(-1)

    def category(self, resid: torch.Tensor) -> str:
        """Category name of one (d,) residual."""
        return self.categories[int(self.predict(resid))]

    def accuracy(self, thinking, traces: Sequence[LabelledTrace]) -> float:
        """Share of the traces' sentence positions whose category it predicts (e.g. on held-out
        traces); sentences of categories it does not know count as wrong."""
        hit = total = 0
        for tr in traces:
            full, sents = _sentence_positions(thinking, tr)
            if not sents:
                continue
            h = _residual(thinking, full, self.layer)
            for pos, cat in sents:
                pred = self.predict(h[pos])
                total += len(pos)
                if cat in self.categories:
                    hit += int((pred == self.categories.index(cat)).sum())
        if total == 0:
            raise ValueError("the traces hold no labelled sentence positions: label traces with sentences first")
        return hit / total

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_artifact(path, "CategoryClassifier", {"mean": self.mean, "centroids": self.centroids},
                             {"layer": self.layer, "categories": list(self.categories), "counts": list(self.counts),
                              "train_accuracy": self.train_accuracy})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> CategoryClassifier:
        arrays, f = load_artifact(path, "CategoryClassifier", device=device)
        return cls(layer=int(f["layer"]), categories=tuple(f["categories"]), mean=arrays["mean"],
                   centroids=arrays["centroids"], counts=tuple(f["counts"]), train_accuracy=float(f["train_accuracy"]))


def fit_category_classifier(thinking, traces: Sequence[LabelledTrace], layer: int, *, min_positions: int = 20,
                            progress: bool = True) -> CategoryClassifier:
    """Fit the per-step classifier on the thinking model's own labelled ``traces``: each position's
    residual at ``resid_post[layer]`` is labelled with the category of the sentence of the token it
    predicts (what the category steers at decoding time). Categories with fewer than
    ``min_positions`` positions are left out. Accumulated in float64."""
    layer = thinking.check_layer(layer, "the classifier layer")
    feats: dict[str, list[torch.Tensor]] = {}
    for tr in tqdm(traces, desc="classifier residuals", disable=not progress):
        full, sents = _sentence_positions(thinking, tr)
        if sents:
            h = _residual(thinking, full, layer)
            for pos, cat in sents:
                feats.setdefault(cat, []).append(h[pos])
    sizes = {c: sum(len(x) for x in xs) for c, xs in feats.items()}
    cats = tuple(sorted(c for c, n in sizes.items() if n >= min_positions))
    if len(cats) < 2:
        raise ValueError(f"the labelled traces give {len(cats)} categories with at least {min_positions} positions "
                         f"({sizes}): label more traces or lower min_positions")
    X = [torch.cat(feats[c]) for c in cats]
    mean = torch.cat(X).mean(0)
    centroids = _unit(torch.stack([_unit(x - mean).mean(0) for x in X]))
    clf = CategoryClassifier(layer=layer, categories=cats, mean=mean, centroids=centroids,
                             counts=tuple(len(x) for x in X))
    hits = sum(int((clf.predict(x) == k).sum()) for k, x in enumerate(X))
    return replace(clf, train_accuracy=hits / sum(clf.counts))


# ----- per-category steering vectors -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CategoryVectors:
    """Steering vectors at the base model's ``resid_post[layer]``: a step of category k adds
    c·(``bias`` + ``vectors[k]``). ``method`` says how they were made; ``counts`` is the number of
    thinking-model sentences behind each category."""

    layer: int
    categories: tuple[str, ...]
    vectors: torch.Tensor
    bias: torch.Tensor
    method: str = "diff_in_means"
    counts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.categories):
            raise ValueError(f"vectors must be (categories, d) = ({len(self.categories)}, d), "
                             f"got {tuple(self.vectors.shape)}")
        if self.bias.shape != self.vectors.shape[1:]:
            raise ValueError(f"bias must be (d,) = ({self.vectors.shape[1]},), got {tuple(self.bias.shape)}")

    def steering(self, category: str) -> torch.Tensor:
        """bias + v_category, the vector a step of that category adds (times c)."""
        if category not in self.categories:
            raise KeyError(f"no steering vector for category {category!r}; categories: {list(self.categories)}")
        return self.bias + self.vectors[self.categories.index(category)]

    def bias_only(self) -> CategoryVectors:
        """The bias-only ablation: every v_cat = 0."""
        return replace(self, vectors=torch.zeros_like(self.vectors), method=f"{self.method}, bias only")

    def scaled(self, factor: float) -> CategoryVectors:
        """Bias and vectors times ``factor`` (a strength to sweep on a dev split, §5.1; the
        coefficient grid then multiplies it)."""
        return replace(self, vectors=self.vectors * factor, bias=self.bias * factor,
                       method=f"{self.method}, scaled by {factor:g}")

    def random_like(self, seed: int = 0) -> CategoryVectors:
        """The random-vectors ablation: each v_cat replaced by a random direction (seeded) of the
        same norm; the bias is kept (as the released code keeps it)."""
        g = torch.Generator().manual_seed(seed)
        r = _unit(torch.randn(self.vectors.shape, generator=g, dtype=torch.float64))
        r = (r * self.vectors.double().norm(dim=-1, keepdim=True)).to(self.vectors.dtype).to(self.vectors.device)
        return replace(self, vectors=r, method=f"{self.method}, random directions of the same norms (seed {seed})")

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_artifact(path, "CategoryVectors", {"vectors": self.vectors, "bias": self.bias},
                             {"layer": self.layer, "categories": list(self.categories), "method": self.method,
                              "counts": list(self.counts)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> CategoryVectors:
        arrays, f = load_artifact(path, "CategoryVectors", device=device)
        return cls(layer=int(f["layer"]), categories=tuple(f["categories"]), vectors=arrays["vectors"],
                   bias=arrays["bias"], method=f["method"], counts=tuple(f["counts"]))


def _sentence_means(base, traces: Sequence[LabelledTrace], layer: int, desc: str,
                    progress: bool) -> dict[str, list[torch.Tensor]]:
    """Category → the base model's mean ``resid_post[layer]`` over each sentence's predicting positions."""
    out: dict[str, list[torch.Tensor]] = {}
    for tr in tqdm(traces, desc=desc, disable=not progress):
        full, sents = _sentence_positions(base, tr)
        if sents:
            h = _residual(base, full, layer)
            for pos, cat in sents:
                out.setdefault(cat, []).append(h[pos].mean(0))
    return out


def fit_category_vectors(base, thinking_traces: Sequence[LabelledTrace], base_traces: Sequence[LabelledTrace],
                         layer: int, categories: Sequence[str], *,
                         contrast: Literal["all", "same_category"] = "all",
                         progress: bool = True) -> CategoryVectors:
    """Difference-in-means steering vectors in the BASE model's ``resid_post[layer]``, read over the
    positions that predict each sentence's tokens (both models' traces run through the base model).

    d_k = mean over the thinking model's category-k sentences − mean over the base model's own
    sentences: all of them (``contrast="all"``, the default) or those of category k
    (``"same_category"``; all of them when the base model has none of k). The bias is the general
    vector, the sentence-weighted mean of the d_k (with ``"all"``: every thinking sentence − every
    base sentence), and v_k = d_k − bias, so a step of category k adds c·(bias + v_k) = c·d_k and
    the bias-only ablation adds c·bias. Each sentence counts once (the mean of its positions);
    accumulated in float64.

    On the zoo pair (tv-instruct ← tv-rl) ``"all"`` recovers part of the gap and
    ``"same_category"`` none, even at 8× its norm: the within-category difference between the two
    models' sentences does not flip the base model's token where they disagree, the category's
    direction does (tests/organism/test_steering_hybrid.py)."""
    layer = base.check_layer(layer, "the steering layer")
    if contrast not in ("same_category", "all"):
        raise ValueError(f"contrast {contrast!r}: use 'same_category' or 'all'")
    think = _sentence_means(base, thinking_traces, layer, "vectors: thinking sentences", progress)
    own = _sentence_means(base, base_traces, layer, "vectors: base sentences", progress)
    missing = [c for c in categories if c not in think]
    if missing:
        raise ValueError(f"the thinking traces have no sentences of {missing}: fit on more traces, or pass the "
                         f"classifier's categories (those it was fitted on)")
    if not own:
        raise ValueError("the base traces hold no labelled sentences: generate and label base-model traces first")
    base_all = torch.stack([m for ms in own.values() for m in ms]).mean(0)
    d, n = [], []
    for c in categories:
        ref = torch.stack(own[c]).mean(0) if contrast == "same_category" and c in own else base_all
        d.append(torch.stack(think[c]).mean(0) - ref)
        n.append(len(think[c]))
    D = torch.stack(d)
    w = torch.tensor(n, dtype=torch.float64)
    bias = (w[:, None] * D).sum(0) / w.sum()
    return CategoryVectors(layer=layer, categories=tuple(categories), vectors=(D - bias).float(), bias=bias.float(),
                           method=f"diff_in_means ({contrast})", counts=tuple(n))


def fit_optimised_category_vectors(base, thinking_traces: Sequence[LabelledTrace], layer: int,
                                   categories: Sequence[str], *, steps: int = 30, lr: float = 0.1,
                                   batch_size: int = 8, progress: bool = True) -> CategoryVectors:
    """Optimised steering vectors in the BASE model's ``resid_post[layer]`` (§1 "Optimised vectors",
    the released ``train-vectors/optimize_steering_vectors.py``): each learned by Adam (``lr``, ``steps``
    full-batch steps, ``optimise_vector``) to raise the base model's likelihood of the thinking model's
    sentences given their preceding context, the vector added over the sentence's positions (the
    ``generated`` phase, as the released code steers from the target's first token).

    The bias is learned on every sentence; then, per category k, d_k is learned on k's sentences
    starting from the bias (the released code trains v_k with the bias added as a fixed vector; this
    learns their sum) and v_k = d_k − bias, so a step of category k adds c·d_k as with
    ``fit_category_vectors``. Zero-initialised bias, so its first loss is the unsteered one."""
    from probes.steering.directions import optimise_vector

    layer = base.check_layer(layer, "the steering layer")
    pairs: dict[str, list[tuple[str, str]]] = {}
    for tr in thinking_traces:
        for start, end, cat in tr.sentences:
            if tr.completion[start:end].strip():
                pairs.setdefault(cat, []).append((tr.prompt + tr.completion[:start], tr.completion[start:end]))
    missing = [c for c in categories if c not in pairs]
    if missing:
        raise ValueError(f"the thinking traces have no sentences of {missing}: fit on more traces, or pass the "
                         f"classifier's categories (those it was fitted on)")

    def learn(examples: list[tuple[str, str]], init: torch.Tensor | None) -> torch.Tensor:
        contexts, targets = zip(*examples)
        out = optimise_vector(base, list(contexts), list(targets), layer, steps=steps, lr=lr, positions="generated",
                              init=init, batch_size=batch_size, progress=progress)
        return out.vector[layer].detach().float().cpu()

    bias = learn([p for c in categories for p in pairs[c]], None)
    D = torch.stack([learn(pairs[c], bias) for c in tqdm(categories, desc="optimised vectors", disable=not progress)])
    return CategoryVectors(layer=layer, categories=tuple(categories), vectors=D - bias, bias=bias,
                           method=f"optimised (steps={steps}, lr={lr:g})", counts=tuple(len(pairs[c]) for c in categories))


# ----- the decoding loop -------------------------------------------------------------------------


class _Stream:
    """One model decoding one sequence with a KV cache: the next-token logits, and the residual at
    ``resid_post[read_layer]`` of the last processed token when asked."""

    def __init__(self, model, ids: list[int], read_layer: int | None = None):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model = model
        self.cache = DynamicCache(config=model.hf.config)
        odd = {type(layer).__name__ for layer in self.cache.layers if type(layer) is not DynamicLayer}
        if odd:
            raise ValueError(f"hybrid decoding re-runs a token over the KV cache cut before it, which needs "
                             f"full-attention cache layers; {model.spec} has {sorted(odd)}: use a model without "
                             f"sliding-window layers")
        self.point = resolve(model, Site("resid_post", read_layer)) if read_layer is not None else None
        self.length = 0
        self.logits = self.resid = None
        self.last = -1
        self._run(ids)

    def _run(self, ids: list[int]) -> None:
        m, seen = self.model, {}

        def read(v):
            seen["h"] = v[0, -1].detach().clone()

        x = torch.tensor([ids], device=m.device)
        pos = torch.arange(self.length, self.length + len(ids), device=m.device)[None]
        handle = attach(m, self.point, read) if self.point is not None else None
        try:
            out = m.hf(input_ids=x, position_ids=pos, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        finally:
            if handle is not None:
                handle.remove()
        self.length += len(ids)
        self.last = int(ids[-1])
        self.logits = out.logits[0, -1].float()
        check_logits(self.logits[None])
        self.resid = seen.get("h")

    def advance(self, token: int) -> None:
        self._run([token])

    def candidates(self, vectors: torch.Tensor, layer: int) -> torch.Tensor:
        """(G, V) next-token logits of the last processed token re-run G times, with ``vectors[g]``
        added at ``resid_post[layer]`` at its absolute position, over a copy of the cache cut before
        it; the stream's own cache is left as it is."""
        from transformers import DynamicCache

        m, G, p = self.model, vectors.shape[0], self.length - 1
        cache = DynamicCache(config=m.hf.config)
        for i, layer_cache in enumerate(self.cache.layers):
            k, v = layer_cache.keys[:, :, :p], layer_cache.values[:, :, :p]
            cache.update(k.expand(G, *k.shape[1:]), v.expand(G, *v.shape[1:]), i)
        ids = torch.full((G, 1), self.last, device=m.device)
        pos = torch.full((G, 1), p, device=m.device)
        with m.intervene(AddVector(site=f"resid_post[{layer}]", vector=vectors, positions=(p,))):
            logits = m.hf(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1].float()
        check_logits(logits)
        return logits


@dataclass(frozen=True)
class HybridTrace:
    """One hybrid completion. Per emitted token: ``steered`` (it came from a steered candidate),
    ``disagreed`` (base and thinking greedy tokens differed), the classifier's ``categories``, and
    the chosen ``coefficients`` (NaN where unsteered). ``text`` excludes a final EOS."""

    text: str
    token_ids: list[int]
    steered: list[bool]
    disagreed: list[bool]
    categories: list[str]
    coefficients: list[float]
    finish_reason: FinishReason


def _check_pair(base, thinking, classifier: CategoryClassifier, vectors: CategoryVectors) -> None:
    if base.tokenizer.get_vocab() != thinking.tokenizer.get_vocab():
        raise ValueError(f"hybrid decoding passes token ids between the models, but {base.spec} and {thinking.spec} "
                         "have different vocabularies: pair a base and a thinking model that share a tokenizer")
    base.check_layer(vectors.layer, "the steering vectors' layer")
    thinking.check_layer(classifier.layer, "the classifier's layer")
    if vectors.vectors.shape[1] != base.d_model:
        raise ValueError(f"the steering vectors have width {vectors.vectors.shape[1]} but {base.spec} has d_model "
                         f"{base.d_model}: fit them on the base model")
    if classifier.mean.shape[-1] != thinking.d_model:
        raise ValueError(f"the classifier has width {classifier.mean.shape[-1]} but {thinking.spec} has d_model "
                         f"{thinking.d_model}: fit it on the thinking model")
    missing = [c for c in classifier.categories if c not in vectors.categories]
    if missing:
        raise ValueError(f"no steering vectors for the classifier's categories {missing}: fit the vectors with "
                         f"categories=classifier.categories")


def _check_coefficients(coefficients: Sequence[float]) -> tuple[float, ...]:
    coefs = tuple(float(c) for c in coefficients)
    if not coefs or not all(math.isfinite(c) for c in coefs):
        raise ValueError(f"coefficients must be a non-empty list of finite numbers, got {list(coefficients)}")
    return coefs


def hybrid_generate(base, thinking, classifier: CategoryClassifier, vectors: CategoryVectors, prompt: str, *,
                    base_prompt: str | None = None, coefficients: Sequence[float] = COEFFICIENTS,
                    max_new_tokens: int = 256, fire_rate: float | None = None, seed: int = 0,
                    eos_token_ids: Sequence[int] | None = None) -> HybridTrace:
    """Decode one hybrid completion (module docstring): ``prompt`` is the thinking model's rendered
    input, ``base_prompt`` the base model's (default: the same text).

    Steering fires where the two greedy tokens differ, or, with ``fire_rate``, at random steps
    with that probability (``random.Random(seed)``, one draw per step). A firing step emits the
    best steered candidate by thinking log-prob (the first coefficient on ties), even when it
    equals the base model's own token. Decoding stops at an EOS of the base model (or
    ``eos_token_ids``) or after ``max_new_tokens``."""
    _check_pair(base, thinking, classifier, vectors)
    coefs = _check_coefficients(coefficients)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if fire_rate is not None and not 0.0 <= fire_rate <= 1.0:
        raise ValueError(f"fire_rate must lie in [0, 1] (or be None to fire on disagreement), got {fire_rate}")
    think_ids = thinking.encode(prompt)
    base_ids = base.encode(prompt if base_prompt is None else base_prompt)
    for m, ids in ((base, base_ids), (thinking, think_ids)):
        m.check_length(len(ids) + max_new_tokens, f"the prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens})",
                       "lower max_new_tokens or shorten the prompt")
    eos = stop_token_ids(base, eos_token_ids)
    grid = torch.tensor(coefs, device=base.device)[:, None]
    steer = {c: vectors.steering(c).to(base.device, torch.float32) for c in classifier.categories}
    rng = random.Random(seed) if fire_rate is not None else None
    toks: list[int] = []
    steered: list[bool] = []
    disagreed: list[bool] = []
    cats: list[str] = []
    chosen: list[float] = []
    reason = FinishReason.LENGTH
    with torch.no_grad(), base.scope(), thinking.scope():
        b = _Stream(base, base_ids)
        t = _Stream(thinking, think_ids, read_layer=classifier.layer)
        for step in range(max_new_tokens):
            cat = classifier.category(t.resid)
            base_tok, think_tok = int(b.logits.argmax()), int(t.logits.argmax())
            fire = base_tok != think_tok if rng is None else rng.random() < fire_rate
            if fire:
                cands = b.candidates(grid * steer[cat], vectors.layer).argmax(-1)
                j = int(torch.log_softmax(t.logits, -1)[cands].argmax())
                tok, coef = int(cands[j]), coefs[j]
            else:
                tok, coef = base_tok, math.nan
            toks.append(tok)
            steered.append(bool(fire))
            disagreed.append(base_tok != think_tok)
            cats.append(cat)
            chosen.append(coef)
            if tok in eos:
                reason = FinishReason.EOS
                break
            if step < max_new_tokens - 1:
                b.advance(tok)
                t.advance(tok)
    body = toks[:-1] if reason == FinishReason.EOS else toks
    return HybridTrace(text=base.tokenizer.decode(body, skip_special_tokens=False), token_ids=toks, steered=steered,
                       disagreed=disagreed, categories=cats, coefficients=chosen, finish_reason=reason)


# ----- evaluation --------------------------------------------------------------------------------


def _boxed_correct(text: str, gold: str) -> bool:
    return check_answer(extract_boxed(text), gold)


@dataclass(frozen=True)
class Baselines:
    """Greedy base and thinking models on the same problems: per problem, correct and generated tokens."""

    base_correct: list[bool]
    thinking_correct: list[bool]
    base_tokens: list[int]
    thinking_tokens: list[int]


def greedy_baselines(base, thinking, prompts: Sequence[str], golds: Sequence[str], *,
                     base_prompts: Sequence[str] | None = None, max_new_tokens: int = 256, batch_size: int = 16,
                     correct: Callable[[str, str], bool] = _boxed_correct, progress: bool = True) -> Baselines:
    """Plain greedy decoding (``Model.generate``) of each model alone: the two ends of the gap."""
    base_prompts = _base_prompts(prompts, golds, base_prompts)
    runs = []
    for m, ps in ((base, base_prompts), (thinking, prompts)):
        rows = []
        for lo in tqdm(range(0, len(ps), batch_size), desc=f"greedy {m.spec}", disable=not progress):
            rows += m.generate(list(ps[lo : lo + batch_size]), max_new_tokens=max_new_tokens)
        runs.append(rows)
    (b, t) = runs
    return Baselines(base_correct=[bool(correct(r.text, g)) for r, g in zip(b, golds)],
                     thinking_correct=[bool(correct(r.text, g)) for r, g in zip(t, golds)],
                     base_tokens=[len(r.token_ids) for r in b], thinking_tokens=[len(r.token_ids) for r in t])


def _base_prompts(prompts, golds, base_prompts) -> Sequence[str]:
    if len(golds) != len(prompts):
        raise ValueError(f"got {len(golds)} gold answers for {len(prompts)} prompts: give one per prompt")
    if base_prompts is None:
        return prompts
    if len(base_prompts) != len(prompts):
        raise ValueError(f"got {len(base_prompts)} base prompts for {len(prompts)} prompts: give one per prompt")
    return base_prompts


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class HybridResult:
    """Hybrid decoding of a problem set with its greedy baselines (``reference/steering.md`` §4, §5.7).

    Per problem: the hybrid ``outputs`` and ``traces``, whether each is ``correct``, and the
    baselines. ``settings`` records the models, layers, coefficients, firing rule and vectors."""

    settings: dict[str, Any]
    golds: list[str]
    traces: list[HybridTrace]
    correct: list[bool]
    baselines: Baselines

    @property
    def outputs(self) -> list[str]:
        return [t.text for t in self.traces]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    @property
    def base_accuracy(self) -> float:
        return float(np.mean(self.baselines.base_correct))

    @property
    def thinking_accuracy(self) -> float:
        return float(np.mean(self.baselines.thinking_correct))

    @property
    def gap_recovered(self) -> float:
        """(hybrid − base) / (thinking − base) on accuracy; NaN when the two models tie."""
        return _ratio(self.accuracy - self.base_accuracy, self.thinking_accuracy - self.base_accuracy)

    @property
    def tokens_steered(self) -> int:
        return sum(sum(t.steered) for t in self.traces)

    @property
    def tokens_generated(self) -> int:
        return sum(len(t.token_ids) for t in self.traces)

    @property
    def share_steered(self) -> float:
        """Share of all emitted tokens that came from a steered candidate (pooled over problems)."""
        return _ratio(self.tokens_steered, self.tokens_generated)

    @property
    def share_disagreed(self) -> float:
        """Share of all emitted tokens at whose step the two greedy tokens differed."""
        return _ratio(sum(sum(t.disagreed) for t in self.traces), self.tokens_generated)

    @property
    def mean_tokens(self) -> float:
        return float(np.mean([len(t.token_ids) for t in self.traces]))

    def steered_by_category(self) -> dict[str, int]:
        """Steered tokens per category."""
        out: dict[str, int] = {}
        for t in self.traces:
            for s, c in zip(t.steered, t.categories):
                if s:
                    out[c] = out.get(c, 0) + 1
        return dict(sorted(out.items()))

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """The metrics, accuracies with 95% bootstrap intervals (``probes.evals.accuracy``)."""
        acc = {k: accuracy(v, seed=seed) for k, v in (("hybrid", self.correct), ("base", self.baselines.base_correct),
                                                     ("thinking", self.baselines.thinking_correct))}
        return {
            "n_problems": len(self.traces),
            **{f"{k}_accuracy": {"value": a.value, "lo": a.lo, "hi": a.hi} for k, a in acc.items()},
            "gap_recovered": self.gap_recovered,
            "share_steered": self.share_steered,
            "share_disagreed": self.share_disagreed,
            "tokens_steered": self.tokens_steered,
            "mean_tokens": {"hybrid": self.mean_tokens, "base": float(np.mean(self.baselines.base_tokens)),
                            "thinking": float(np.mean(self.baselines.thinking_tokens))},
            "steered_by_category": self.steered_by_category(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (flat per-token arrays with per-problem offsets) + ``<path>.json``."""
        lens = [len(t.token_ids) for t in self.traces]
        cat_names = sorted({c for t in self.traces for c in t.categories})
        arrays = {
            "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            "token_ids": np.array([x for t in self.traces for x in t.token_ids], dtype=np.int64),
            "steered": np.array([x for t in self.traces for x in t.steered], dtype=np.uint8),
            "disagreed": np.array([x for t in self.traces for x in t.disagreed], dtype=np.uint8),
            "category": np.array([cat_names.index(x) for t in self.traces for x in t.categories], dtype=np.int64),
            "coefficient": np.array([x for t in self.traces for x in t.coefficients], dtype=np.float64),
            "correct": np.array(self.correct, dtype=np.uint8),
            "base_correct": np.array(self.baselines.base_correct, dtype=np.uint8),
            "thinking_correct": np.array(self.baselines.thinking_correct, dtype=np.uint8),
            "base_tokens": np.array(self.baselines.base_tokens, dtype=np.int64),
            "thinking_tokens": np.array(self.baselines.thinking_tokens, dtype=np.int64),
        }
        fields = {"settings": self.settings, "golds": list(self.golds), "outputs": self.outputs,
                  "finish_reasons": [str(t.finish_reason) for t in self.traces], "category_names": cat_names,
                  "summary": self.summary()}
        return save_artifact(path, "HybridResult", arrays, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HybridResult:
        a, f = load_artifact(path, "HybridResult")
        off, names = a["offsets"], f["category_names"]
        traces = []
        for i, (text, reason) in enumerate(zip(f["outputs"], f["finish_reasons"])):
            s = slice(int(off[i]), int(off[i + 1]))
            traces.append(HybridTrace(
                text=text, token_ids=[int(x) for x in a["token_ids"][s]], steered=[bool(x) for x in a["steered"][s]],
                disagreed=[bool(x) for x in a["disagreed"][s]], categories=[names[int(x)] for x in a["category"][s]],
                coefficients=[float(x) for x in a["coefficient"][s]], finish_reason=FinishReason(reason)))
        base = Baselines(base_correct=[bool(x) for x in a["base_correct"]],
                         thinking_correct=[bool(x) for x in a["thinking_correct"]],
                         base_tokens=[int(x) for x in a["base_tokens"]],
                         thinking_tokens=[int(x) for x in a["thinking_tokens"]])
        return cls(settings=f["settings"], golds=list(f["golds"]), traces=traces,
                   correct=[bool(x) for x in a["correct"]], baselines=base)


def evaluate_hybrid(base, thinking, classifier: CategoryClassifier, vectors: CategoryVectors, prompts: Sequence[str],
                    golds: Sequence[str], *, base_prompts: Sequence[str] | None = None,
                    baselines: Baselines | None = None, coefficients: Sequence[float] = COEFFICIENTS,
                    max_new_tokens: int = 256, fire_rate: float | None = None, seed: int = 0,
                    correct: Callable[[str, str], bool] = _boxed_correct, label: str = "hybrid",
                    progress: bool = True) -> HybridResult:
    """Hybrid decoding (``hybrid_generate``) of every prompt, scored against ``golds`` by
    ``correct(text, gold)`` (default: the first ``\\boxed{}`` matches, ``probes.evals``), with the
    greedy ``baselines`` (computed when not given). Problem i's random firing uses seed
    ``seed * 1_000_003 + i``."""
    base_prompts = _base_prompts(prompts, golds, base_prompts)
    coefs = _check_coefficients(coefficients)
    if baselines is None:
        baselines = greedy_baselines(base, thinking, prompts, golds, base_prompts=base_prompts,
                                     max_new_tokens=max_new_tokens, correct=correct, progress=progress)
    elif len(baselines.base_correct) != len(prompts):
        raise ValueError(f"the baselines cover {len(baselines.base_correct)} problems, not {len(prompts)}: "
                         "compute them with greedy_baselines on the same prompts")
    traces = [hybrid_generate(base, thinking, classifier, vectors, p, base_prompt=bp, coefficients=coefs,
                              max_new_tokens=max_new_tokens, fire_rate=fire_rate, seed=seed * 1_000_003 + i)
              for i, (p, bp) in enumerate(tqdm(list(zip(prompts, base_prompts)), desc=label, disable=not progress))]
    settings = {
        "label": label, "base": base.spec, "thinking": thinking.spec, "steer_layer": vectors.layer,
        "classifier_layer": classifier.layer, "categories": list(classifier.categories),
        "vectors": vectors.method, "coefficients": list(coefs), "max_new_tokens": max_new_tokens,
        "firing": "disagreement" if fire_rate is None else "random", "fire_rate": fire_rate, "seed": seed,
        "positions": "the token being processed at each step (absolute), emitted tokens cached unsteered",
        "bias_norm": float(vectors.bias.norm()),
        "vector_norms": {c: float(vectors.steering(c).norm()) for c in classifier.categories},
    }
    return HybridResult(settings=settings, golds=list(golds), traces=traces,
                        correct=[bool(correct(t.text, g)) for t, g in zip(traces, golds)], baselines=baselines)


def hybrid_ablations(base, thinking, classifier: CategoryClassifier, vectors: CategoryVectors, prompts: Sequence[str],
                     golds: Sequence[str], *, base_prompts: Sequence[str] | None = None,
                     baselines: Baselines | None = None, coefficients: Sequence[float] = COEFFICIENTS,
                     max_new_tokens: int = 256, seed: int = 0, correct: Callable[[str, str], bool] = _boxed_correct,
                     progress: bool = True) -> dict[str, HybridResult]:
    """The hybrid and its three controls on the same problems and baselines (§5.6):
    ``hybrid``; ``bias_only`` (v_cat = 0); ``random_firing`` (steering at random steps at the
    hybrid's share of steered tokens, seeded); ``random_vectors`` (norm-matched random v_cat,
    seeded). Arguments as for ``evaluate_hybrid``."""
    if baselines is None:
        baselines = greedy_baselines(base, thinking, prompts, golds, base_prompts=base_prompts,
                                     max_new_tokens=max_new_tokens, correct=correct, progress=progress)
    kw = dict(base_prompts=base_prompts, baselines=baselines, coefficients=coefficients, max_new_tokens=max_new_tokens,
              seed=seed, correct=correct, progress=progress)
    out = {"hybrid": evaluate_hybrid(base, thinking, classifier, vectors, prompts, golds, label="hybrid", **kw)}
    out["bias_only"] = evaluate_hybrid(base, thinking, classifier, vectors.bias_only(), prompts, golds,
                                       label="bias_only", **kw)
    out["random_firing"] = evaluate_hybrid(base, thinking, classifier, vectors, prompts, golds,
                                           fire_rate=out["hybrid"].share_steered, label="random_firing", **kw)
    out["random_vectors"] = evaluate_hybrid(base, thinking, classifier, vectors.random_like(seed), prompts, golds,
                                            label="random_vectors", **kw)
    return out

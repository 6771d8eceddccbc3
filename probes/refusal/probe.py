"""The linear refusal probe (``reference/refusal.md`` A2) and its evaluation.

A ``Probe`` is a value object (STYLE habit 3): weight w, bias b, the site and read-position rule
its features come from, an optional feature normalisation, how it was fitted, the data and model
it was fitted on, and its validation metrics. It scores activations as p = σ(wᵀh + b) and saves as
safetensors + JSON.

Defaults follow A2: the feature is the **last, post-final-norm** state (site ``final_norm``, the
HF ``hidden_states[L]``) at the **last token before the answer** (``LastToken()`` on a rollout's
``probe_text``); at most 200 examples per class, classes balanced, an 80/20 train/validation split
(stratified), seed 42; ``AdamBCE`` — an ``nn.Linear(d, 1)`` trained with BCE-with-logits by Adam
(lr 1e-3, batch 64, 5 epochs) keeping the best-validation epoch. Any residual site, read-position
rule (``SpanMean``, ``TokenIndex``, ``ThinkingMean`` from ``probes.steering``) or fitting strategy
(``SklearnLogistic``) can be passed instead, and several rules at once (one example per rule and
text). ``layer_sweep`` fits one probe per hidden state from a
single read (A1: R1-8B's sweep 0…L); ``hidden_state_site`` maps HF ``hidden_states`` indices to sites.

Features are read by ``probes.steering.read_activations``, the one activation reader, in float64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.evals.stats import Accuracy, Estimate, accuracy, auroc
from probes.io import load_artifact, save_artifact
from probes.steering.directions import Contrast, LastToken, ReadPosition, read_activations, read_positions

__all__ = [
    "AdamBCE",
    "Probe",
    "ProbeEvaluation",
    "SklearnLogistic",
    "balanced_split",
    "evaluate_probe",
    "fit_probe",
    "hidden_state_site",
    "layer_sweep",
    "probe_features",
    "train_probe",
]

_KIND = "RefusalProbe"
NORMALISATIONS = ("none", "standard")
"""``none``: raw activations (A2); ``standard``: z-scored with the training set's mean and std."""


def hidden_state_site(model, index: int) -> str:
    """The site of HF ``hidden_states[index]``: 0 is ``embed``, 1…L−1 ``resid_post[index−1]``, L
    (the probed state of A2) ``final_norm``; negative indices count from L + 1."""
    n = model.n_layers
    if not -(n + 1) <= index <= n:
        raise ValueError(f"hidden state {index} out of range: {model.spec} has hidden states 0..{n}")
    index %= n + 1
    return "embed" if index == 0 else "final_norm" if index == n else f"resid_post[{index - 1}]"


# ----- fitting strategies ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdamBCE:
    """A2's trainer: ``nn.Linear(d, 1)``, BCE-with-logits, Adam, shuffled mini-batches; the weights
    of the epoch with the best validation accuracy are kept (ties: the lower validation loss)."""

    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 5
    seed: int = 42

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor):
        g = torch.Generator().manual_seed(self.seed)
        lin = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
        with torch.no_grad():  # seeded init (nn.Linear's default bounds), independent of the global RNG
            bound = 1 / math.sqrt(x.shape[1])
            lin.weight.uniform_(-bound, bound, generator=g)
            lin.bias.uniform_(-bound, bound, generator=g)
        opt = torch.optim.Adam(lin.parameters(), lr=self.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        best = (None, None)
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=g)
            for lo in range(0, x.shape[0], self.batch_size):
                idx = order[lo:lo + self.batch_size]
                opt.zero_grad()
                loss_fn(lin(x[idx]).squeeze(-1), y[idx]).backward()
                opt.step()
            with torch.no_grad():
                z = lin(x_val).squeeze(-1)
                key = (float(((z > 0).double() == y_val).double().mean()), -float(loss_fn(z, y_val)))
            if best[0] is None or key > best[0]:
                best = (key, (lin.weight.detach()[0].clone(), float(lin.bias.detach()[0])))
        return best[1]


@dataclass(frozen=True)
class SklearnLogistic:
    """scikit-learn ``LogisticRegression`` (L2, ``C``) on the training split; validation data unused."""

    C: float = 1.0
    max_iter: int = 1000

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor):
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(x.numpy(), y.numpy())
        return torch.from_numpy(clf.coef_[0].astype(np.float64).copy()), float(clf.intercept_[0])


# ----- the probe ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Probe:
    """p = σ(wᵀ norm(h) + b) on ``site`` read at ``read_position``; ``norm`` is the identity or a
    z-score with the stored ``mean`` and ``scale``."""

    weight: torch.Tensor
    bias: float
    site: str = "final_norm"
    read_position: str = "LastToken()"
    normalisation: str = "none"
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    #: the fitting strategy with its settings (``"AdamBCE(lr=0.001, ...)"``)
    fit: str = ""
    model_spec: str = ""
    weights_hash: str = ""
    #: sha256 of the training texts
    data_hash: str = ""
    #: sizes of the splits, validation accuracy and the like
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        w = torch.as_tensor(self.weight, dtype=torch.float64).detach().reshape(-1).cpu()
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", float(self.bias))
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {self.normalisation!r}: use one of {NORMALISATIONS}")
        if self.normalisation == "standard":
            if self.mean is None or self.scale is None:
                raise ValueError("a standard-normalised probe needs its training mean and scale")
            for name in ("mean", "scale"):
                v = torch.as_tensor(getattr(self, name), dtype=torch.float64).reshape(-1).cpu()
                if v.shape != w.shape:
                    raise ValueError(f"probe {name} has width {v.shape[0]} but its weight has {w.shape[0]}")
                object.__setattr__(self, name, v)
        if not torch.isfinite(w).all() or not math.isfinite(self.bias):
            raise ValueError("the probe's weight or bias is not finite: refit it")

    @property
    def width(self) -> int:
        return self.weight.shape[0]

    @property
    def direction(self) -> torch.Tensor:
        """The unit vector ŵ in activation space (through the normalisation's scaling), float64."""
        w = self.weight / self.scale if self.normalisation == "standard" else self.weight
        return w / w.norm()

    def check_model(self, model) -> None:
        """Raise a clear error when ``model``'s width differs from the probe's."""
        if model.d_model != self.width:
            raise ValueError(f"this probe has width {self.width} (fitted on {self.model_spec or 'another model'}) but "
                             f"{model.spec} has d_model {model.d_model}: fit a probe on this model")

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        """wᵀ norm(h) + b over the last axis of ``h`` (…, d), in float64."""
        h = torch.as_tensor(h)
        if h.shape[-1] != self.width:
            raise ValueError(f"activations have width {h.shape[-1]} but the probe has {self.width}: "
                             "they come from another model or site")
        h = h.double().cpu()
        if self.normalisation == "standard":
            h = (h - self.mean) / self.scale
        return h @ self.weight + self.bias

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """r = σ(wᵀ norm(h) + b): the refusal score (A3)."""
        return torch.sigmoid(self.logit(h))

    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays = {"weight": self.weight}
        if self.normalisation == "standard":
            arrays |= {"mean": self.mean, "scale": self.scale}
        meta = {"bias": self.bias, "site": self.site, "read_position": self.read_position,
                "normalisation": self.normalisation, "fit": self.fit, "model_spec": self.model_spec,
                "weights_hash": self.weights_hash, "data_hash": self.data_hash, "metrics": dict(self.metrics)}
        return save_artifact(path, _KIND, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Probe:
        arrays, meta = load_artifact(path, _KIND)
        return cls(weight=arrays["weight"], mean=arrays.get("mean"), scale=arrays.get("scale"), **meta)


# ----- data --------------------------------------------------------------------------------------------
def balanced_split(n_pos: int, n_neg: int, *, max_per_class: int | None = 200, val_fraction: float = 0.2,
                   seed: int = 42) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Indices ``{"train": (pos, neg), "val": (pos, neg)}``: both classes cut to the same size
    (at most ``max_per_class``) by a seeded shuffle, then each split ``val_fraction`` for validation."""
    if n_pos < 2 or n_neg < 2:
        raise ValueError(f"a probe needs at least 2 examples per class (one to train, one to validate); got "
                         f"{n_pos} refusal and {n_neg} non-refusal examples")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = min(n_pos, n_neg, max_per_class or n_pos)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(n_pos)[:n], rng.permutation(n_neg)[:n]
    return {"train": (pos[n_val:], neg[n_val:]), "val": (pos[:n_val], neg[:n_val])}


def probe_features(model, texts: Sequence[str], site: str = "final_norm", *, read: ReadPosition | None = None,
                   batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """(n, d) float64 features of ``texts`` at ``site`` (default: the last token's final-norm state)."""
    return read_activations(model, texts, [site], read=read, batch_size=batch_size, progress=progress,
                            desc=f"features {site}")[site]


def _xy(pos: torch.Tensor, neg: torch.Tensor, ip, ineg):
    x = torch.cat([pos[torch.as_tensor(ip, dtype=torch.long)], neg[torch.as_tensor(ineg, dtype=torch.long)]])
    y = torch.cat([torch.ones(len(ip), dtype=torch.float64), torch.zeros(len(ineg), dtype=torch.float64)])
    return x, y


def fit_probe(
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    fit=None,
    normalisation: str = "none",
    max_per_class: int | None = 200,
    val_fraction: float = 0.2,
    seed: int = 42,
    site: str = "final_norm",
    read_position: str = "LastToken()",
    **provenance,
) -> Probe:
    """A probe from features of the refusal class (``positive``, label 1) and the non-refusal class
    (``negative``, label 0), each (n, d): balanced, split, fitted by ``fit`` (default ``AdamBCE()``)."""
    fit = AdamBCE() if fit is None else fit
    positive, negative = torch.as_tensor(positive).double(), torch.as_tensor(negative).double()
    if positive.dim() != 2 or negative.dim() != 2 or positive.shape[1] != negative.shape[1]:
        raise ValueError(f"features must be (n, d) for both classes with one width; got {tuple(positive.shape)} "
                         f"and {tuple(negative.shape)}")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r}: use one of {NORMALISATIONS}")
    split = balanced_split(positive.shape[0], negative.shape[0], max_per_class=max_per_class,
                           val_fraction=val_fraction, seed=seed)
    x, y = _xy(positive, negative, *split["train"])
    xv, yv = _xy(positive, negative, *split["val"])
    mean = scale = None
    if normalisation == "standard":
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-8)
        x, xv = (x - mean) / scale, (xv - mean) / scale
    w, b = fit(x, y, xv, yv)
    w = torch.as_tensor(w, dtype=torch.float64)
    val_acc = float((((xv @ w + b) > 0).double() == yv).double().mean())
    train_acc = float((((x @ w + b) > 0).double() == y).double().mean())
    metrics = {"n_train": int(y.numel()), "n_val": int(yv.numel()), "train_accuracy": train_acc,
               "val_accuracy": val_acc, "seed": seed}
    return Probe(weight=w, bias=b, site=site, read_position=read_position, normalisation=normalisation,
                 mean=mean, scale=scale, fit=repr(fit), metrics=metrics, **provenance)


def _check_classes(positive: Sequence[str], negative: Sequence[str]) -> None:
    if not len(positive) or not len(negative):
        raise ValueError(f"a probe needs both classes: got {len(positive)} refusal and {len(negative)} non-refusal "
                         "texts (if every rollout got one label, add prompts of the other kind)")


def _reads(read) -> list:
    if read is None:
        return [LastToken()]
    reads = list(read) if isinstance(read, (list, tuple)) else [read]
    if not reads:
        raise ValueError("read is an empty list of read-position rules: give at least one, e.g. LastToken()")
    return reads


def _class_features(model, positive, negative, sites, read, batch_size, progress):
    """Site → (refusal features, non-refusal features); with several read rules each text gives one
    example per rule (stacked rule by rule)."""
    n, texts = len(positive), list(positive) + list(negative)
    reads = _reads(read)
    got = read_positions(model, texts, sites, reads, batch_size=batch_size, progress=progress, desc="features")
    return {s: (torch.cat([got[s][:n, i] for i in range(len(reads))]), torch.cat([got[s][n:, i] for i in range(len(reads))]))
            for s in sites}


def _read_name(read) -> str:
    reads = _reads(read)
    return repr(reads[0]) if len(reads) == 1 else repr(reads)


def train_probe(model, positive: Sequence[str], negative: Sequence[str], *, site: str = "final_norm",
                read: ReadPosition | Sequence[ReadPosition] | None = None, batch_size: int = 8,
                progress: bool = False, **kw) -> Probe:
    """Read the refusal-class texts (``positive``: e.g. rollouts' ``probe_text`` on harmful prompts that
    refused) and the non-refusal texts at ``site`` and fit a probe (``fit_probe``'s options in ``kw``).

    ``read`` is one read-position rule (default ``LastToken()``) or several, e.g. ``[ThinkingMean(),
    LastToken()]``: each text then gives one example per rule, so the probe reads refusal intent both
    across the thinking and before the answer (the two views of one text may fall in different splits)."""
    _check_classes(positive, negative)
    pos, neg = _class_features(model, positive, negative, [site], read, batch_size, progress)[site]
    return fit_probe(pos, neg, site=site, read_position=_read_name(read), model_spec=model.spec,
                     weights_hash=model.weights_hash, data_hash=Contrast.sets(positive, negative).data_hash, **kw)


def layer_sweep(model, positive: Sequence[str], negative: Sequence[str], *, sites: Sequence[str] | None = None,
                read: ReadPosition | Sequence[ReadPosition] | None = None, batch_size: int = 8,
                progress: bool = False, **kw) -> dict[str, Probe]:
    """Site → probe for each of ``sites`` (default: every hidden state, ``embed`` … ``final_norm``), all
    read in one pass per batch and read rule; compare them by ``probe.metrics["val_accuracy"]`` (A1 layer sweep)."""
    _check_classes(positive, negative)
    sites = [hidden_state_site(model, i) for i in range(model.n_layers + 1)] if sites is None else list(sites)
    feats = _class_features(model, positive, negative, sites, read, batch_size, progress)
    dh = Contrast.sets(positive, negative).data_hash
    return {s: fit_probe(p, n, site=s, read_position=_read_name(read), model_spec=model.spec,
                         weights_hash=model.weights_hash, data_hash=dh, **kw) for s, (p, n) in feats.items()}


# ----- evaluation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeEvaluation:
    """Accuracy (threshold p > 0.5) and AUROC with bootstrap intervals, and the scores they come from."""

    accuracy: Accuracy
    auroc: Estimate
    scores: tuple[float, ...]
    labels: tuple[int, ...]


def evaluate_probe(probe: Probe, positive: torch.Tensor, negative: torch.Tensor, seed: int = 0) -> ProbeEvaluation:
    """The probe on features of the refusal class (``positive``) and the non-refusal class, e.g. an
    out-of-distribution set (A2: JailbreakBench)."""
    positive, negative = torch.as_tensor(positive), torch.as_tensor(negative)
    if not len(positive) or not len(negative):
        raise ValueError(f"evaluation needs both classes: got {len(positive)} refusal and {len(negative)} "
                         "non-refusal examples")
    scores = torch.cat([probe.score(positive), probe.score(negative)]).numpy()
    labels = np.r_[np.ones(len(positive), int), np.zeros(len(negative), int)]
    return ProbeEvaluation(accuracy=accuracy((scores > 0.5) == labels, seed=seed),
                           auroc=auroc(scores, labels, seed=seed), scores=tuple(map(float, scores)),
                           labels=tuple(map(int, labels)))

"""Automatic search over the refusal direction's ablation (issue #12 item 9; beyond
``reference/refusal.md`` Part B, after heretic's Optuna search, our own code).

B3 picks one candidate r_{p,l} and ablates it fully at every layer (B2). Here a seeded Optuna
multi-objective study (TPE by default, NSGA-II on request) searches instead over

- **the direction**: a float ``direction_layer`` λ at one position p of the ``RefusalCandidates``;
  between the bracketing candidate layers a ≤ λ ≤ b, r̂ = normalise((1 − f) r̂_a + f r̂_b),
  f = (λ − a)/(b − a) (``ablation_direction``; heretic's float direction index, interpolating unit
  directions so that deep layers' larger ‖r‖ does not dominate);
- **the per-layer weight kernel** (``WeightKernel``): with d = |l − max_weight_position|,
  w_l = max_weight + (d / min_weight_distance)(min_weight − max_weight) for d ≤ min_weight_distance
  and 0 beyond (heretic's four parameters; min_weight ∈ [0, max_weight], so w_l ∈ [0, max_weight]);
  the search samples min_weight as a fraction of max_weight;
- **weighted ablation** (``weighted_ablation``): x ← x − w_l (x·r̂) r̂ at ``attn_out[l]`` and
  ``mlp_out[l]`` of every layer and at ``embed`` with w_0, every position; exactly what
  ``orthogonalize_weights(..., layer_weights=w)`` writes (W ← W − w_l r̂r̂ᵀW for layer l's writers),
  and B2's ablation when every w_l = 1 (the writers' outputs then carry no r̂ component, so
  ablating ``resid_pre`` as well changes nothing).

Two objectives, both minimised (``evaluate_ablation``):

- **refusal rate** on harmful dev texts: by default ``ScoredRefusal``, the fast proxy, the fraction
  whose B2 refusal score is > 0 (B1's filter) read at the last token of texts that end where the
  answer starts (for a reasoning model: ``RefusalRollout.probe_text``, the base model's own thinking
  + ``</think>``; the ablation acts on that thinking's activations but does not rewrite it);
  ``JudgedRefusal`` generates greedily from rendered prompts under the ablation and judges the
  answer after ``</think>`` (rollouts that never close are counted, not judged);
- **first-token KL**: mean KL(base ‖ ablated) of the next-token distribution at the last token
  of harmless dev texts (B3's KL, heretic's KL objective).

``AblationSearch`` keeps every trial and the Pareto front (``pareto_front``: the non-dominated
trials), picks the best by rule (``best``: the lowest refusal rate with KL ≤ 0.1, B3's bound),
gives the trial's interventions and writes it as a weighted orthogonalised checkpoint; it saves
and loads as JSON. Not done here: heretic's separate kernels for attention and MLP, its per-layer
direction scope, and its row-norm preservation.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.io import atomic_write_json
from probes.models.interventions import ProjectOut
from probes.refusal.direction import (
    DEFAULT_KL_THRESHOLD,
    RefusalCandidates,
    _direction,
    _last_logits,
    _layer_weights,
    _refusal_ids,
    _texts,
    orthogonalize_weights,
    refusal_scores,
)
from probes.refusal.judges import Judge, KeywordJudge
from probes.refusal.rollout import RefusalRollout
from probes.steering.directions import Contrast
from probes.steering.selection import next_token_kl

__all__ = [
    "AblationSearch",
    "JudgedRefusal",
    "RefusalRate",
    "ScoredRefusal",
    "SearchSpace",
    "SearchTrial",
    "WeightKernel",
    "ablation_direction",
    "evaluate_ablation",
    "full_ablation_params",
    "pareto_front",
    "search_ablation",
    "weighted_ablation",
]

_KIND = "RefusalAblationSearch"
_FORMAT = 1
SAMPLERS = ("tpe", "nsga2")


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


# ----- kernel and direction -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class WeightKernel:
    """Per-layer ablation weights, a linear bump: w_l = max_weight at l = max_weight_position, falling
    linearly to min_weight at distance min_weight_distance, 0 beyond (heretic's kernel)."""

    max_weight: float
    max_weight_position: float
    min_weight: float
    min_weight_distance: float

    def __post_init__(self):
        for name in ("max_weight", "max_weight_position", "min_weight", "min_weight_distance"):
            object.__setattr__(self, name, _real(getattr(self, name), f"WeightKernel {name}"))
        if self.max_weight < 0:
            raise ValueError(f"WeightKernel max_weight must be >= 0, got {self.max_weight}")
        if not 0 <= self.min_weight <= self.max_weight:
            raise ValueError(f"WeightKernel min_weight must be in [0, max_weight = {self.max_weight}], got {self.min_weight}")
        if self.min_weight_distance <= 0:
            raise ValueError(f"WeightKernel min_weight_distance must be > 0 (layers), got {self.min_weight_distance}")

    def weight(self, layer: float) -> float:
        d = abs(float(layer) - self.max_weight_position)
        if d > self.min_weight_distance:
            return 0.0
        w = self.max_weight + d / self.min_weight_distance * (self.min_weight - self.max_weight)
        return min(max(w, 0.0), self.max_weight)

    def weights(self, n_layers: int) -> np.ndarray:
        """(n_layers,) float64: w_l for l = 0 … n_layers − 1."""
        return np.array([self.weight(L) for L in range(_count(n_layers, "n_layers", 1))])


def ablation_direction(candidates: RefusalCandidates, position: int, layer: float) -> torch.Tensor:
    """Unit r̂ (float64, (d,)) at a float ``layer`` of ``candidates`` at ``position``: the bracketing
    candidate layers' unit directions interpolated linearly, renormalised."""
    if position not in candidates.positions:
        raise KeyError(f"no candidates at position {position}: positions {list(candidates.positions)}")
    layer = _real(layer, "direction layer")
    layers = candidates.layers
    if not layers[0] <= layer <= layers[-1]:
        raise ValueError(f"direction layer {layer} is outside the candidates' layers {layers[0]}..{layers[-1]}")
    i = candidates.positions.index(position)
    j = int(np.searchsorted(layers, layer, side="right")) - 1
    j = min(j, len(layers) - 1)
    a = layers[j]

    def unit(k):
        r = candidates.directions[i, k]
        n = float(r.norm())
        if n == 0.0:
            raise ValueError(f"the candidate at position {position}, layer {layers[k]} is zero (B6): choose direction "
                             "layers where the candidates have a direction")
        return r / n

    if layer == a:
        return unit(j)
    f = (layer - a) / (layers[j + 1] - a)
    r = (1 - f) * unit(j) + f * unit(j + 1)
    n = float(r.norm())
    if n == 0.0:
        raise ValueError(f"the directions at layers {a} and {layers[j + 1]} are opposite: their blend at {layer} is zero")
    return r / n


def weighted_ablation(model, direction, weights: Sequence[float]) -> tuple[ProjectOut, ...]:
    """x ← x − w_l (x·r̂) r̂ at ``attn_out[l]`` and ``mlp_out[l]`` and, with w_0, at ``embed``; all
    positions; layers with weight 0 get no hook. Use as ``with model.intervene(*ivs)``."""
    r = _direction(model, direction)
    w = _layer_weights(model, weights)
    sites = [("embed", w[0])] + [(f"{s}[{L}]", w[L]) for L in range(model.n_layers) for s in ("attn_out", "mlp_out")]
    return tuple(ProjectOut(site=s, direction=r, weight=x) for s, x in sites if x != 0)


# ----- objectives -------------------------------------------------------------------------------------------------
#: ``refusal(model, texts, refusal_ids, batch_size=...)`` → {"refusal_rate": …, other numbers}, run
#: inside the trial's ablation.
RefusalRate = Callable[..., Mapping[str, float]]


@dataclass(frozen=True)
class ScoredRefusal:
    """The fast proxy: the fraction of texts whose refusal score (B2) is > ``threshold``, read at
    each text's last token. For a reasoning model the texts end at ``</think>`` (``probe_text``).
    A negative threshold asks for a margin: on ``zoo:refusal-reasoner`` a trial just below 0 on
    32 dev texts (mean score −1) still refused 11 % of held-out requests under greedy generation;
    with −2 the chosen trial refused none."""

    threshold: float = 0.0

    def __call__(self, model, texts, refusal_ids, *, batch_size: int = 16) -> dict[str, float]:
        if refusal_ids is None:
            raise ValueError("ScoredRefusal needs the refusal token ids (e.g. model.encode('I', add_special_tokens=False))")
        s = refusal_scores(model, texts, refusal_ids, batch_size=batch_size)
        return {"refusal_rate": float((s > self.threshold).mean()), "mean_score": float(s.mean())}


@dataclass(frozen=True)
class JudgedRefusal:
    """Greedy generation from each rendered prompt (``prompt_text``) under the ablation; the rate of
    answers after ``</think>`` that ``judge`` calls refused, among the rollouts that close their
    thinking (NaN, a failed trial, when none does). Slower than ``ScoredRefusal``."""

    judge: Judge = field(default_factory=KeywordJudge)
    max_new_tokens: int = 512

    def __call__(self, model, texts, refusal_ids=None, *, batch_size: int = 16) -> dict[str, float]:
        texts = list(texts)
        done = []
        for lo in range(0, len(texts), batch_size):
            got = model.generate(texts[lo:lo + batch_size], max_new_tokens=self.max_new_tokens, temperature=0)
            done += [RefusalRollout("", t, g.text, str(g.finish_reason), None) for t, g in zip(texts[lo:], got)]
        answers = [r.answer for r in done if r.closed]
        refused = sum(bool(v.refused) for v in self.judge(answers)) if answers else 0
        rate = refused / len(answers) if answers else math.nan
        return {"refusal_rate": rate, "n_judged": float(len(answers)), "n_unclosed": float(len(done) - len(answers))}


def evaluate_ablation(model, direction, weights: Sequence[float], harmful: Sequence[str], harmless: Sequence[str],
                      refusal_ids: Sequence[int] | None, *, refusal: RefusalRate | None = None,
                      base_logits: torch.Tensor | None = None, batch_size: int = 16) -> dict[str, float]:
    """The two objectives of one weighted ablation: ``refusal_rate`` on ``harmful`` (``refusal``,
    default ``ScoredRefusal()``) and ``kl``, the mean first-token KL(base ‖ ablated) on ``harmless``,
    plus what the refusal strategy reports. ``base_logits``: the unablated last-token logits of
    ``harmless``, when already computed. Every weight 1 evaluates B2's full ablation."""
    harmful, harmless = _texts(harmful, "harmful dev"), _texts(harmless, "harmless dev")
    ids = None if refusal_ids is None else _refusal_ids(model, refusal_ids)
    refusal = ScoredRefusal() if refusal is None else refusal
    base = _last_logits(model, harmless, batch_size) if base_logits is None else base_logits
    with model.intervene(*weighted_ablation(model, direction, weights)):
        out = dict(refusal(model, harmful, ids, batch_size=batch_size))
        kl = next_token_kl(base, _last_logits(model, harmless, batch_size))
    if "refusal_rate" not in out:
        raise ValueError(f"the refusal strategy {refusal!r} returned {sorted(out)} without 'refusal_rate'")
    return {**{k: float(v) for k, v in out.items()}, "kl": float(kl.mean())}


# ----- Pareto front ---------------------------------------------------------------------------------------------
def pareto_front(points) -> list[int]:
    """Indices (ascending) of the non-dominated rows of ``points`` (n, k), every column minimised: a
    row is dominated when another is ≤ in every column and < in one. Rows with NaN are left out;
    equal rows are all kept."""
    p = np.asarray(points, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"points must be (n, objectives), got shape {p.shape}")
    ok = np.isfinite(p).all(1)
    front = []
    for i in np.flatnonzero(ok):
        others = p[ok]
        dominated = ((others <= p[i]).all(1) & (others < p[i]).any(1)).any()
        if not dominated:
            front.append(int(i))
    return front


# ----- search space ---------------------------------------------------------------------------------------------
Range = tuple[float, float]


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Ranges (low, high) the study samples; ``None`` takes the default for the model and candidates:
    ``direction_layer`` from the first candidate layer with a nonzero direction to the last;
    ``max_weight_position`` 0 … L − 1; ``min_weight_distance`` 1 … max(1, L − 1). ``min_weight``
    is sampled as a fraction of ``max_weight``. low == high fixes a parameter."""

    direction_layer: Range | None = None
    max_weight: Range = (0.5, 1.5)
    max_weight_position: Range | None = None
    min_weight_fraction: Range = (0.0, 1.0)
    min_weight_distance: Range | None = None

    def __post_init__(self):
        for name in ("direction_layer", "max_weight", "max_weight_position", "min_weight_fraction",
                     "min_weight_distance"):
            r = getattr(self, name)
            if r is None:
                continue
            if isinstance(r, (str, bytes)) or len(r) != 2:
                raise ValueError(f"SearchSpace {name} is a range (low, high), got {r!r}")
            lo, hi = _real(r[0], f"SearchSpace {name} low"), _real(r[1], f"SearchSpace {name} high")
            if lo > hi:
                raise ValueError(f"SearchSpace {name} range ({lo}, {hi}) has low > high")
            object.__setattr__(self, name, (lo, hi))
        if self.max_weight[0] < 0:
            raise ValueError(f"SearchSpace max_weight {self.max_weight} must be >= 0")
        if not 0 <= self.min_weight_fraction[0] <= self.min_weight_fraction[1] <= 1:
            raise ValueError(f"SearchSpace min_weight_fraction {self.min_weight_fraction} must lie in [0, 1]")
        if self.min_weight_distance is not None and self.min_weight_distance[0] <= 0:
            raise ValueError(f"SearchSpace min_weight_distance {self.min_weight_distance} must be > 0")

    def resolve(self, n_layers: int, candidates: RefusalCandidates, position: int) -> SearchSpace:
        """Every range filled in and checked against the candidates at ``position``."""
        i = candidates.positions.index(position)
        usable = [L for j, L in enumerate(candidates.layers) if float(candidates.directions[i, j].norm()) > 0]
        if not usable:
            raise ValueError(f"every candidate at position {position} is zero: no direction to search over")
        dl = self.direction_layer or (float(usable[0]), float(usable[-1]))
        layers = candidates.layers
        if not layers[0] <= dl[0] <= dl[1] <= layers[-1]:
            raise ValueError(f"SearchSpace direction_layer {dl} is outside the candidates' layers "
                             f"{layers[0]}..{layers[-1]}")
        lo, hi = max(L for L in layers if L <= dl[0]), min(L for L in layers if L >= dl[1])
        zero = [L for L in layers if lo <= L <= hi and L not in usable]
        if zero:
            raise ValueError(f"SearchSpace direction_layer {dl} reaches zero candidates at layers {zero} (B6): start "
                             f"the range after them, e.g. ({float(usable[0])}, {dl[1]})")
        return SearchSpace(direction_layer=dl, max_weight=self.max_weight,
                           max_weight_position=self.max_weight_position or (0.0, float(n_layers - 1)),
                           min_weight_fraction=self.min_weight_fraction,
                           min_weight_distance=self.min_weight_distance or (1.0, float(max(1, n_layers - 1))))

    def suggest(self, trial) -> dict[str, float]:
        return {name: trial.suggest_float(name, *getattr(self, name)) for name in _PARAMS}

    def check(self, params: Mapping[str, float]) -> dict[str, float]:
        """``params`` (every search parameter, each inside its resolved range) as floats."""
        if set(params) != set(_PARAMS):
            raise ValueError(f"trial parameters {sorted(params)}: give exactly {list(_PARAMS)}")
        out = {k: _real(params[k], k) for k in _PARAMS}
        bad = [f"{k} = {out[k]} not in {getattr(self, k)}" for k in _PARAMS
               if not getattr(self, k)[0] <= out[k] <= getattr(self, k)[1]]
        if bad:
            raise ValueError(f"enqueued trial outside the search space: {'; '.join(bad)}")
        return out


_PARAMS = ("direction_layer", "max_weight", "max_weight_position", "min_weight_fraction", "min_weight_distance")


def full_ablation_params(layer: float, n_layers: int) -> dict[str, float]:
    """The search parameters of B2's full ablation of the direction at ``layer``: weight 1 at every
    layer (to enqueue the B3 choice as a trial)."""
    return {"direction_layer": float(layer), "max_weight": 1.0, "max_weight_position": 0.0, "min_weight_fraction": 1.0,
            "min_weight_distance": float(max(1, n_layers - 1))}


def _kernel(params: Mapping[str, float]) -> WeightKernel:
    return WeightKernel(max_weight=params["max_weight"], max_weight_position=params["max_weight_position"],
                        min_weight=params["min_weight_fraction"] * params["max_weight"],
                        min_weight_distance=params["min_weight_distance"])


# ----- results --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SearchTrial:
    """One trial: its sampled ``params``, the ``kernel`` and per-layer ``weights`` they give, the two
    objectives (NaN when the trial failed) and what the refusal strategy reported (``extras``)."""

    number: int
    params: dict[str, float]
    weights: tuple[float, ...]
    refusal_rate: float
    kl: float
    state: Literal["complete", "fail"] = "complete"
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def direction_layer(self) -> float:
        return self.params["direction_layer"]

    @property
    def kernel(self) -> WeightKernel:
        return _kernel(self.params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = list(self.weights)
        for k in ("refusal_rate", "kl"):
            d[k] = None if math.isnan(d[k]) else d[k]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchTrial:
        d = dict(d)
        for k in ("refusal_rate", "kl"):
            d[k] = math.nan if d[k] is None else float(d[k])
        return cls(**{**d, "weights": tuple(d["weights"])})


def _candidates_hash(candidates: RefusalCandidates, position: int) -> str:
    i = candidates.positions.index(position)
    h = hashlib.sha256(candidates.directions[i].contiguous().numpy().tobytes())
    h.update(json.dumps(list(candidates.layers)).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True, kw_only=True, eq=False)
class AblationSearch:
    """Every trial of a search (``trials``), its ``pareto`` front, the best point by rule (``best``),
    and what it ran on: the candidates' ``position``, the resolved ``space`` and the settings."""

    trials: tuple[SearchTrial, ...]
    position: int
    n_layers: int
    space: SearchSpace
    settings: dict[str, Any] = field(default_factory=dict)
    model_spec: str = ""
    weights_hash: str = ""
    candidates_hash: str = ""
    data_hash: str = ""

    def __post_init__(self):
        object.__setattr__(self, "trials", tuple(self.trials))

    @property
    def complete(self) -> tuple[SearchTrial, ...]:
        return tuple(t for t in self.trials if t.state == "complete")

    @property
    def pareto(self) -> tuple[SearchTrial, ...]:
        """The non-dominated complete trials, by ascending refusal rate (then KL)."""
        done = self.complete
        front = [done[i] for i in pareto_front([[t.refusal_rate, t.kl] for t in done])] if done else []
        return tuple(sorted(front, key=lambda t: (t.refusal_rate, t.kl, t.number)))

    def best(self, *, max_kl: float | None = DEFAULT_KL_THRESHOLD) -> SearchTrial:
        """The lowest refusal rate among complete trials with KL ≤ ``max_kl`` (B3's 0.1; ``None``: no
        bound); ties go to the lower KL, then the earlier trial."""
        done = self.complete
        ok = [t for t in done if max_kl is None or t.kl <= max_kl]
        if not ok:
            low = min((t.kl for t in done), default=math.nan)
            raise ValueError(f"no complete trial has KL <= {max_kl} (the lowest is {low:.3g} over {len(done)} complete "
                             "trials): raise max_kl, narrow the space to lower weights or run more trials")
        return min(ok, key=lambda t: (t.refusal_rate, t.kl, t.number))

    def trial(self, number: int) -> SearchTrial:
        for t in self.trials:
            if t.number == number:
                return t
        raise KeyError(f"no trial {number}: trials {[t.number for t in self.trials]}")

    def table(self):
        """A pandas DataFrame, one row per trial: params, objectives, extras, ``pareto``."""
        import pandas as pd

        front = {t.number for t in self.pareto}
        return pd.DataFrame([{"trial": t.number, "state": t.state, **t.params, "refusal_rate": t.refusal_rate,
                              "kl": t.kl, **t.extras, "pareto": t.number in front} for t in self.trials])

    def _check_model(self, model) -> None:
        if self.model_spec and (model.spec, model.weights_hash) != (self.model_spec, self.weights_hash):
            raise ValueError(f"this search ran on {self.model_spec} (weights {self.weights_hash[:12]}), not on "
                             f"{model.spec} (weights {model.weights_hash[:12]}): apply it to that model")

    def direction(self, candidates: RefusalCandidates, trial: SearchTrial | None = None) -> torch.Tensor:
        """The unit direction of ``trial`` (default ``best()``), float64 (d,)."""
        if self.position not in candidates.positions or _candidates_hash(candidates, self.position) != self.candidates_hash:
            raise ValueError("these are not the candidates the search ran on (their directions at position "
                             f"{self.position} differ): pass the same RefusalCandidates")
        trial = self.best() if trial is None else trial
        return ablation_direction(candidates, self.position, trial.direction_layer)

    def ablation(self, model, candidates: RefusalCandidates, trial: SearchTrial | None = None) -> tuple[ProjectOut, ...]:
        """The interventions of ``trial`` (default ``best()``): ``with model.intervene(*ivs)``."""
        self._check_model(model)
        trial = self.best() if trial is None else trial
        return weighted_ablation(model, self.direction(candidates, trial), trial.weights)

    def write_checkpoint(self, model, candidates: RefusalCandidates, out_dir: str | os.PathLike[str],
                         trial: SearchTrial | None = None, **kw) -> Path:
        """``trial`` (default ``best()``) as a weighted orthogonalised checkpoint
        (``orthogonalize_weights(..., layer_weights=trial.weights)``; ``kw`` go there)."""
        self._check_model(model)
        trial = self.best() if trial is None else trial
        return orthogonalize_weights(model, self.direction(candidates, trial), out_dir,
                                     layer_weights=trial.weights, **kw)

    def __repr__(self) -> str:
        return (f"AblationSearch({len(self.trials)} trials, {len(self.complete)} complete, pareto "
                f"{[t.number for t in self.pareto]}, position={self.position}, model={self.model_spec or '?'})")

    def to_dict(self) -> dict[str, Any]:
        return {"type": _KIND, "format": _FORMAT, "trials": [t.to_dict() for t in self.trials],
                "pareto": [t.number for t in self.pareto], "position": self.position, "n_layers": self.n_layers,
                "space": asdict(self.space), "settings": self.settings, "model_spec": self.model_spec,
                "weights_hash": self.weights_hash, "candidates_hash": self.candidates_hash,
                "data_hash": self.data_hash}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One JSON file (atomic); ``pareto`` is written for readers and recomputed on load."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AblationSearch:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no search at {path}: pass the path given to AblationSearch.save")
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("type") != _KIND:
            raise ValueError(f"{path} holds a {d.get('type')!r}, not a {_KIND}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"{path} is format {d.get('format')!r}; this version reads format {_FORMAT}")
        for k in ("type", "format", "pareto"):
            d.pop(k)
        space = SearchSpace(**{k: None if v is None else tuple(v) for k, v in d.pop("space").items()})
        return cls(trials=tuple(SearchTrial.from_dict(t) for t in d.pop("trials")), space=space, **d)


# ----- the search ------------------------------------------------------------------------------------------------
def _sampler(name: str, seed: int, n_startup: int):
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():  # multivariate TPE is flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=n_startup)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, n_startup))


def search_ablation(
    model,
    candidates: RefusalCandidates,
    harmful: Sequence[str],
    harmless: Sequence[str],
    refusal_ids: Sequence[int] | None,
    *,
    position: int | None = None,
    n_trials: int = 40,
    seed: int = 0,
    space: SearchSpace | None = None,
    refusal: RefusalRate | None = None,
    sampler: Literal["tpe", "nsga2"] = "tpe",
    n_startup_trials: int = 10,
    enqueue: Sequence[Mapping[str, float]] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> AblationSearch:
    """Co-minimise the refusal rate on ``harmful`` dev texts and the first-token KL on ``harmless``
    ones over the direction layer and the weight kernel (seeded Optuna study, ``n_trials`` trials).

    ``harmful``: texts ending where the answer starts for ``ScoredRefusal`` (default; reasoning
    model: ``probe_text``), rendered prompts for ``JudgedRefusal``. ``harmless``: texts whose
    last-token distribution is compared (for a reasoning model, also ``probe_text``).
    ``position``: which candidate position (default: the only one). ``n_startup_trials``: random
    trials before TPE models (NSGA-II: the population size). ``enqueue``: parameter sets run as the
    first trials, e.g. ``full_ablation_params(selection.layer, model.n_layers)`` (the B3 choice)."""
    import optuna

    harmful, harmless = _texts(harmful, "harmful dev"), _texts(harmless, "harmless dev")
    n_trials = _count(n_trials, "n_trials", 1)
    seed = _count(seed, "seed", 0)
    n_startup_trials = _count(n_startup_trials, "n_startup_trials", 1)
    batch_size = _count(batch_size, "batch_size", 1)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: use one of {SAMPLERS}")
    refusal = ScoredRefusal() if refusal is None else refusal
    ids = None if refusal_ids is None else _refusal_ids(model, refusal_ids)
    if ids is None and isinstance(refusal, ScoredRefusal):
        raise ValueError("the default refusal rate (ScoredRefusal) needs refusal_ids, e.g. "
                         "model.encode('I', add_special_tokens=False); or pass refusal=JudgedRefusal(...)")
    if candidates.width != model.d_model:
        raise ValueError(f"the candidates have width {candidates.width} (read on {candidates.model_spec or '?'}) but "
                         f"{model.spec} has d_model {model.d_model}: read them on this model")
    if position is None:
        if len(candidates.positions) != 1:
            raise ValueError(f"the candidates have positions {list(candidates.positions)}: pass position= (e.g. the "
                             "B3 selection's)")
        position = candidates.positions[0]
    if position not in candidates.positions:
        raise ValueError(f"position {position} is not among the candidates' positions {list(candidates.positions)}")
    space = (SearchSpace() if space is None else space).resolve(model.n_layers, candidates, position)
    enqueue = [space.check(p) for p in enqueue]
    if len(enqueue) > n_trials:
        raise ValueError(f"{len(enqueue)} enqueued trials but n_trials is {n_trials}: raise n_trials")

    base = _last_logits(model, harmless, batch_size)
    extras: dict[int, dict[str, float]] = {}

    def objective(trial):
        params = space.suggest(trial)
        out = evaluate_ablation(model, ablation_direction(candidates, position, params["direction_layer"]),
                                _kernel(params).weights(model.n_layers), harmful, harmless, ids, refusal=refusal,
                                base_logits=base, batch_size=batch_size)
        extras[trial.number] = {k: v for k, v in out.items() if k not in ("refusal_rate", "kl")}
        return out["refusal_rate"], out["kl"]

    bar = tqdm(total=n_trials, desc="ablation search", disable=not progress)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no per-trial INFO lines from a library call
    try:
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=_sampler(sampler, seed, min(n_startup_trials, n_trials)))
        for p in enqueue:
            study.enqueue_trial(p)
        study.optimize(objective, n_trials=n_trials, callbacks=[lambda *_: bar.update()])
    finally:
        optuna.logging.set_verbosity(verbosity)
        bar.close()

    trials = []
    for t in study.trials:
        done = t.state == optuna.trial.TrialState.COMPLETE
        params = {k: float(t.params[k]) for k in _PARAMS}
        trials.append(SearchTrial(number=t.number, params=params,
                                  weights=tuple(float(x) for x in _kernel(params).weights(model.n_layers)),
                                  refusal_rate=float(t.values[0]) if done else math.nan,
                                  kl=float(t.values[1]) if done else math.nan,
                                  state="complete" if done else "fail", extras=extras.get(t.number, {})))
    settings = {"n_trials": n_trials, "seed": seed, "sampler": sampler, "n_startup_trials": n_startup_trials,
                "refusal": repr(refusal), "enqueue": enqueue, "batch_size": batch_size, "n_harmful": len(harmful),
                "n_harmless": len(harmless), "refusal_ids": ids, "optuna": optuna.__version__,
                "spec": "issue #12 item 9, beyond reference/refusal.md B: weighted ablation search"}
    return AblationSearch(trials=tuple(trials), position=position, n_layers=model.n_layers, space=space,
                          settings=settings, model_spec=model.spec, weights_hash=model.weights_hash,
                          candidates_hash=_candidates_hash(candidates, position),
                          data_hash=Contrast.sets(harmful, harmless).data_hash)

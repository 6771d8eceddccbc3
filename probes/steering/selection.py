"""Strength selection and evaluation of activation steering (``reference/steering.md`` §5).

A *cell* is one steering setting (``SteeringCell``): a vector v read at the residual stream
after block l, added as h_l ← h_l + α·v at ``resid_post[l]`` on chosen positions. For one cell
this module computes what §5 asks every report to show, and the summaries over cells:

- §5.4 the **norm ratio** ‖αv‖ / median_t ‖h_l(t)‖ (``residual_norm``, ``norm_ratio``), so that
  strengths compare across layers and models;
- §5.5 the **KL guard**: mean KL(unsteered ‖ steered) of the next-token distribution at the last
  position of neutral prompts, passed when at most a threshold (0.1, the refusal-direction
  selection's, ``refusal.md`` §B3) (``next_token_kl``, ``kl_guard``);
- the **behaviour metric**, a callable passed in (STYLE habit 4) that gives one number per example
  (a logit difference, a 0/1 judged outcome), with a bootstrap interval over examples
  (``behaviour``, ``evaluate_cell``; ``logit_difference`` and ``per_example`` are ready metrics);
- §5.2, §5.6 the **controls**: a norm-matched random direction per layer (seeded), the negated
  vector, and the prompting baseline, the same metric with an instruction asking for the behaviour
  and no steering (``random_control``, ``negated_control``, ``with_instruction``,
  ``prompting_baseline``, all four side by side with paired differences in ``compare_controls``);
- §5.3 **per-example steerability** (Tan et al.): each example's least-squares slope of the metric
  against α over the α grid, its spread, and the anti-steerable fraction (``behaviour_curve``,
  ``steering_slopes``, ``steerability``);
- §5.1 **selection**: (layer, α) chosen on a dev split, as the best behaviour among the cells that
  pass the KL guard, and reported on the held-out split with intervals and controls
  (``split_indices``, ``split_examples``, ``select_cell``, ``select_and_evaluate``).

A metric is ``metric(model, examples) -> one number per example``, called on batches of examples
while the cell's steering is active, so it may run forward passes or generate. The resumable sweep
over cells (run directories) belongs to the steering experiment; these functions compute one cell
and the summaries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.evals.stats import Estimate, bootstrap_ci, paired_difference_ci
from probes.io import load_artifact, save_artifact
from probes.models import positions as P
from probes.models.interventions import AddVector

__all__ = [
    "DEFAULT_KL_THRESHOLD",
    "CONDITIONS",
    "CellResult",
    "ControlComparison",
    "KLGuard",
    "LogitDiffItem",
    "Metric",
    "Scores",
    "Selection",
    "Steerability",
    "SteeringCell",
    "behaviour",
    "behaviour_curve",
    "compare_controls",
    "evaluate_cell",
    "kl_guard",
    "logit_difference",
    "negated_control",
    "next_token_kl",
    "norm_ratio",
    "per_example",
    "prompting_baseline",
    "random_control",
    "random_direction",
    "residual_norm",
    "select_and_evaluate",
    "select_cell",
    "split_examples",
    "split_indices",
    "steerability",
    "steering_slopes",
    "with_instruction",
]

#: The refusal-direction selection's bound on the last-position KL (steering.md §5.5, §8).
DEFAULT_KL_THRESHOLD = 0.1

#: ``metric(model, examples)`` → one number per example (list, numpy array or tensor).
Metric = Callable[[Any, Sequence[Any]], Any]


# -- checks -------------------------------------------------------------------------------------


def _check_alpha(alpha: Any, what: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(float(alpha)):
        raise ValueError(f"{what} must be a finite number, got {alpha!r}: choose strengths from a finite grid")
    return float(alpha)


def _check_alphas(alphas: Any, *, distinct: int = 1) -> np.ndarray:
    if isinstance(alphas, (np.ndarray, torch.Tensor)):
        alphas = alphas.tolist()
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence):
        raise ValueError(f"alphas must be a sequence of strengths, got {alphas!r}")
    values = np.array([_check_alpha(a, "every alpha") for a in alphas], dtype=float)
    if values.size == 0:
        raise ValueError("no alpha values: give a grid of strengths, e.g. [0, 1, 2, 4]")
    if len(set(values.tolist())) < distinct:
        raise ValueError(
            f"a slope against alpha needs at least {distinct} distinct alpha values, got {values.tolist()}: "
            "widen the grid"
        )
    return values


def _as_vector(vector: Any, what: str = "the steering vector") -> torch.Tensor:
    v = torch.as_tensor(vector)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{what} must have shape (d_model,), got shape {tuple(v.shape)}")
    v = v.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what} contains NaN or inf: recompute it (accumulate in float64)")
    return v


def _check_layer(model, layer: int) -> int:
    return model.check_layer(layer, f"resid_post[{layer}]")


def _check_width(model, vector: torch.Tensor, site: str) -> None:
    if vector.shape[0] != model.d_model:
        raise ValueError(
            f"the steering vector has width {vector.shape[0]} but {site} of {model.spec} has width "
            f"{model.d_model}: use a vector read at this model's residual stream"
        )


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed: Any, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {seed!r}")
    return int(seed)


def _listed(items: Any, what: str) -> list:
    """``items`` as a non-empty list (one string is one item)."""
    if isinstance(items, str):
        items = [items]
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"{what} must be a sequence, got {type(items).__name__}") from None
    if not items:
        raise ValueError(f"no {what}: pass at least one")
    return items


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _positions_label(positions: P.Positions) -> str:
    if positions is None:
        return "all"
    if isinstance(positions, P.Phase):
        return positions.value
    if isinstance(positions, P.Span):
        return f"[{positions.start}, {'end' if positions.end is None else positions.end})"
    return repr(positions)


# -- the cell -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringCell:
    """One steering setting: h_l ← h_l + α·v at ``resid_post[layer]`` on ``positions`` (default:
    every position; ``"thinking"``, a ``Span``… as for ``AddVector``). ``vector`` is kept raw
    (not normalised), as float32 on the CPU; ``alpha`` must be finite."""

    layer: int
    alpha: float
    vector: torch.Tensor
    positions: P.Positions = None

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, numbers.Integral) or self.layer < 0:
            raise ValueError(f"layer must be a block index >= 0, got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        object.__setattr__(self, "vector", _as_vector(self.vector))
        object.__setattr__(self, "positions", P.normalize(self.positions))

    @property
    def site(self) -> str:
        return f"resid_post[{self.layer}]"

    @property
    def vector_norm(self) -> float:
        return float(self.vector.double().norm())

    def check(self, model) -> None:
        """Raise if the layer is out of range or the vector's width is not the model's."""
        _check_layer(model, self.layer)
        _check_width(model, self.vector, self.site)

    def intervention(self, positions: P.Positions | Literal["cell"] = "cell") -> AddVector:
        """The ``AddVector`` of this cell (at ``positions`` instead of the cell's, if given)."""
        where = self.positions if isinstance(positions, str) and positions == "cell" else positions
        return AddVector(site=self.site, vector=self.vector, scale=self.alpha, positions=where)


# -- norm ratio ---------------------------------------------------------------------------------


def residual_norm(model, prompts, layer: int, *, batch_size: int = 16, progress: bool = False) -> float:
    """median_t ‖h_l(t)‖: the median over every token of ``prompts`` (padding excluded, BOS
    included: the median is robust to its large norm) of the residual norm after block ``layer``."""
    prompts = _listed(prompts, "prompts for the residual norm")
    layer = _check_layer(model, layer)
    batch_size = _check_positive_int(batch_size, "batch_size")
    site = f"resid_post[{layer}]"
    norms = []
    for chunk in tqdm(list(_chunks(prompts, batch_size)), desc="residual norm", disable=not progress, leave=False):
        cap = model.capture(chunk, [site], reduce={site: lambda h, _layer: h.double().norm(dim=-1)})
        n = cap[site]
        norms.append((n[cap.attention_mask.bool()] if cap.attention_mask is not None else n.reshape(-1)).cpu())
    return float(np.median(torch.cat(norms).numpy()))


def norm_ratio(alpha: float, vector, reference_norm: float) -> float:
    """‖α·v‖ / ``reference_norm`` (steering.md §5.4); the reference is ``residual_norm`` at the layer."""
    a = _check_alpha(alpha)
    v = _as_vector(vector)
    ref = float(reference_norm)
    if not math.isfinite(ref) or ref <= 0:
        raise ValueError(f"reference_norm must be a positive finite norm, got {reference_norm!r}: use residual_norm()")
    return abs(a) * float(v.double().norm()) / ref


# -- KL guard -----------------------------------------------------------------------------------


def next_token_kl(base_logits, steered_logits) -> torch.Tensor:
    """KL(P_base ‖ P_steered) per row of (…, vocab) logits, in float64 (terms with P_base = 0 are 0)."""
    base, steered = torch.as_tensor(base_logits), torch.as_tensor(steered_logits)
    if base.shape != steered.shape or base.dim() == 0:
        raise ValueError(f"logits must have the same (..., vocab) shape, got {tuple(base.shape)} and {tuple(steered.shape)}")
    lp = torch.log_softmax(base.double(), dim=-1)
    lq = torch.log_softmax(steered.double().to(base.device), dim=-1)
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)


@dataclass(frozen=True, kw_only=True, eq=False)
class KLGuard:
    """Mean KL(unsteered ‖ steered) of the last-position next-token distribution over neutral
    prompts, one value per prompt; with ``tokens`` > 0 also the mean KL along the unsteered model's
    first ``tokens`` generated tokens (``mean_kl_generated``, ``per_prompt_generated``). ``passed``:
    every mean is at most ``threshold``."""

    mean_kl: float
    per_prompt: np.ndarray
    threshold: float
    passed: bool
    tokens: int = 0
    mean_kl_generated: float | None = None
    per_prompt_generated: np.ndarray | None = None

    def to_fields(self) -> dict:
        return {"mean_kl": self.mean_kl, "threshold": self.threshold, "passed": self.passed, "tokens": self.tokens,
                "mean_kl_generated": self.mean_kl_generated}


def kl_guard(
    model,
    prompts,
    cell: SteeringCell,
    *,
    threshold: float = DEFAULT_KL_THRESHOLD,
    positions: P.Positions = None,
    tokens: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> KLGuard:
    """The KL guard of ``cell`` on neutral ``prompts`` (steering.md §5.5).

    The KL is of the next-token distribution at each prompt's **last** position, as in the
    refusal-direction selection whose threshold (0.1) is the default: that is the distribution
    generation draws from first, every prompt counts once whatever its length, and the number is
    comparable with the published bound. (An every-position mean would weigh long prompts more
    and would not be comparable with that bound.)

    With ``tokens`` > 0 the guard also reads generated positions: the unsteered model continues
    each prompt greedily for up to ``tokens`` tokens, and the KL of every distribution along that
    path (the last prompt position and each generated one but the last) is averaged per prompt.
    A vector that leaves the first token alone but breaks what follows fails here. The cell passes
    only if both means are at most ``threshold``.

    The vector is added at ``positions`` of the neutral prompts, every position by default, not
    at ``cell.positions``: a cell steered in a phase the neutral prompts lack (``"thinking"`` on
    prompts that end at ``<think>``, ``"generated"``) would change nothing there and pass
    vacuously. NaN logits from an extreme α give a NaN mean, which fails the guard.
    """
    prompts = _listed(prompts, "neutral prompts for the KL guard")
    threshold = float(threshold)
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"the KL threshold must be a finite number >= 0, got {threshold!r}")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an integer >= 0 (0: the last prompt position only), got {tokens!r}")
    cell.check(model)
    iv = cell.intervention(positions)
    kls, along = [], []
    for chunk in tqdm(list(_chunks(prompts, batch_size)), desc="KL guard", disable=not progress, leave=False):
        if tokens:  # one teacher-forced pass gives the last prompt position and the generated ones
            last, gen = _kl_along_generation(model, chunk, iv, tokens)
            kls.append(last)
            along.append(gen)
            continue
        base = model.forward(chunk)[:, -1]
        with model.intervene(iv):
            steered = model.forward(chunk)[:, -1]
        kls.append(next_token_kl(base, steered).cpu().numpy())
    per = np.concatenate(kls)
    mean = float(per.mean())
    if not tokens:
        return KLGuard(mean_kl=mean, per_prompt=per, threshold=threshold, passed=bool(mean <= threshold))
    per_gen = np.concatenate(along)
    mean_gen = float(per_gen.mean())
    return KLGuard(mean_kl=mean, per_prompt=per, threshold=threshold, passed=bool(mean <= threshold and mean_gen <= threshold),
                   tokens=tokens, mean_kl_generated=mean_gen, per_prompt_generated=per_gen)


def _kl_along_generation(model, prompts: list, iv, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, KL(unsteered ‖ steered) at the last prompt position, and its mean over the
    distributions that produced the unsteered greedy continuation (up to ``tokens`` tokens, the last
    prompt position first), teacher-forced (right-padded, so positions count from each row's start)."""
    rows = [model.encode(p) for p in prompts]
    outs = model.generate(prompts, max_new_tokens=tokens)
    full = [r + list(o.token_ids) for r, o in zip(rows, outs)]
    lens = [len(r) for r in rows]  # where the generated phase begins, for position rules that use it
    base = model.forward(full, padding_side="right", prompt_len=lens)
    with model.intervene(iv):
        steered = model.forward(full, padding_side="right", prompt_len=lens)
    last, along = [], []
    for i, (r, o) in enumerate(zip(rows, outs)):
        span = slice(len(r) - 1, len(r) - 1 + max(len(o.token_ids), 1))
        kl = next_token_kl(base[i, span], steered[i, span])
        last.append(float(kl[0]))
        along.append(float(kl.mean()))
    return np.array(last, dtype=np.float32), np.array(along)  # float32 like the tokens=0 path


# -- behaviour metric ---------------------------------------------------------------------------


def _metric_values(out: Any, n: int, offset: int) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float64).numpy()
    values = np.asarray(out, dtype=float)
    if values.shape != (n,):
        raise ValueError(f"the metric returned shape {values.shape} for {n} examples: it must return one number per example")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"the metric returned {values[bad[0]]} for example {offset + int(bad[0])}: it must return finite numbers "
            "(check the metric, or lower alpha if the steered model's logits overflow)"
        )
    return values


def behaviour(
    model, examples, metric: Metric, cell: SteeringCell | None = None, *, batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """The metric of each example (in order) with ``cell``'s steering active (none when ``cell`` is
    None): ``metric(model, batch)`` is called on batches of at most ``batch_size`` examples."""
    examples = _listed(examples, "examples")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if cell is not None:
        cell.check(model)
    out = []
    scope = model.intervene(cell.intervention()) if cell is not None else contextlib.nullcontext()
    with scope:
        for start in tqdm(range(0, len(examples), batch_size), desc="behaviour", disable=not progress, leave=False):
            chunk = examples[start : start + batch_size]
            out.append(_metric_values(metric(model, chunk), len(chunk), start))
    return np.concatenate(out)


@dataclass(frozen=True)
class LogitDiffItem:
    """An A/B item for ``logit_difference``: ``prompt`` (text or ids) and the behaviour-matching
    (``positive``) and non-matching (``negative``) next tokens, as ids or single-token strings."""

    prompt: str | Sequence[int]
    positive: int | str
    negative: int | str


def _token_id(model, token: int | str) -> int:
    if isinstance(token, str):
        ids = model.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"{token!r} is {len(ids)} tokens in {model.spec}'s tokenizer; a logit difference needs one token: "
                "pass the token id instead"
            )
        return int(ids[0])
    if isinstance(token, bool) or not isinstance(token, numbers.Integral) or not 0 <= token < model.vocab_size:
        raise ValueError(f"token {token!r} is not an id of {model.spec} (0..{model.vocab_size - 1})")
    return int(token)


def logit_difference(model, items: Sequence[LogitDiffItem]) -> np.ndarray:
    """Metric: logit(positive) − logit(negative) of the next token after each item's prompt
    (CAA's A/B propensity, the steerability metric of Tan et al.)."""
    if not all(hasattr(it, a) for it in items for a in ("prompt", "positive", "negative")):
        raise ValueError("logit_difference takes LogitDiffItem(prompt, positive, negative) examples")
    pos = torch.tensor([_token_id(model, it.positive) for it in items])
    neg = torch.tensor([_token_id(model, it.negative) for it in items])
    last = model.forward([it.prompt for it in items])[:, -1].double().cpu()
    rows = torch.arange(len(items))
    return (last[rows, pos] - last[rows, neg]).numpy()


def per_example(fn: Callable[[Any, Any], float]) -> Metric:
    """A metric from ``fn(model, example) -> number`` (e.g. a 0/1 judged outcome of one generation)."""

    def metric(model, examples):
        return [float(fn(model, e)) for e in examples]

    metric.__name__ = getattr(fn, "__name__", "metric")
    return metric


@dataclass(frozen=True, eq=False)
class Scores:
    """Per-example values of one condition and their mean with a bootstrap CI over examples."""

    values: np.ndarray
    estimate: Estimate


def _estimate(values: np.ndarray, n_boot: int, seed: int) -> Estimate:
    value, lo, hi = bootstrap_ci(values, np.mean, n_boot=n_boot, seed=seed)
    return Estimate(value, lo, hi, int(len(values)))


def _estimate_fields(e: Estimate) -> dict:
    return {"value": e.value, "lo": e.lo, "hi": e.hi, "n": e.n}


def _estimate_from(d: Mapping) -> Estimate:
    return Estimate(float(d["value"]), float(d["lo"]), float(d["hi"]), int(d["n"]))


@dataclass(frozen=True, kw_only=True, eq=False)
class CellResult:
    """One evaluated cell: its norm ratio, KL guard and behaviour with a 95% bootstrap CI.
    ``positions`` labels where the vector was added (``"all"``, ``"thinking"``, ...)."""

    layer: int
    alpha: float
    positions: str
    vector_norm: float
    reference_norm: float
    norm_ratio: float
    kl: KLGuard
    values: np.ndarray
    estimate: Estimate

    @property
    def passed(self) -> bool:
        """Whether the cell passes the KL guard."""
        return self.kl.passed

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (per-example values, per-prompt KL) + ``<path>.json`` (the rest)."""
        fields = {k: getattr(self, k) for k in ("layer", "alpha", "positions", "vector_norm", "reference_norm", "norm_ratio")}
        fields |= {"kl": self.kl.to_fields(), "estimate": _estimate_fields(self.estimate)}
        arrays = {"values": self.values, "kl_per_prompt": self.kl.per_prompt}
        if self.kl.per_prompt_generated is not None:
            arrays["kl_per_prompt_generated"] = self.kl.per_prompt_generated
        return save_artifact(path, "CellResult", arrays, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CellResult:
        arrays, f = load_artifact(path, "CellResult")
        kl = KLGuard(per_prompt=arrays["kl_per_prompt"], per_prompt_generated=arrays.get("kl_per_prompt_generated"),
                     **f["kl"])
        simple = {k: f[k] for k in ("layer", "alpha", "positions", "vector_norm", "reference_norm", "norm_ratio")}
        return cls(**simple, kl=kl, values=arrays["values"], estimate=_estimate_from(f["estimate"]))


def evaluate_cell(
    model,
    cell: SteeringCell,
    examples,
    metric: Metric,
    neutral_prompts,
    *,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    kl_tokens: int = 0,
    reference_norm: float | None = None,
    batch_size: int = 16,
    n_boot: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> CellResult:
    """Norm ratio, KL guard (on ``neutral_prompts``, steered at every position, also along
    ``kl_tokens`` generated tokens: see ``kl_guard``) and behaviour on ``examples`` of one cell.

    ``reference_norm`` is median_t ‖h_l(t)‖ at the cell's layer; computed from ``neutral_prompts``
    when not given (a sweep computes it once per layer with ``residual_norm``)."""
    cell.check(model)
    neutral_prompts = _listed(neutral_prompts, "neutral prompts for the KL guard")
    if reference_norm is None:
        reference_norm = residual_norm(model, neutral_prompts, cell.layer, batch_size=batch_size)
    ratio = norm_ratio(cell.alpha, cell.vector, reference_norm)
    guard = kl_guard(model, neutral_prompts, cell, threshold=kl_threshold, tokens=kl_tokens, batch_size=batch_size,
                     progress=progress)
    values = behaviour(model, examples, metric, cell, batch_size=batch_size, progress=progress)
    return CellResult(
        layer=cell.layer, alpha=cell.alpha, positions=_positions_label(cell.positions), vector_norm=cell.vector_norm,
        reference_norm=float(reference_norm), norm_ratio=ratio, kl=guard, values=values,
        estimate=_estimate(values, n_boot, seed),
    )


# -- controls -----------------------------------------------------------------------------------


def random_direction(like, *, layer: int, seed: int = 0) -> torch.Tensor:
    """A Gaussian direction with ‖like‖'s norm (float32), drawn from a generator seeded by
    (``seed``, ``layer``): each layer gets its own direction, the same on every call."""
    v = _as_vector(like, "the vector to match")
    state = np.random.SeedSequence([_check_seed(seed), _check_seed(layer, "layer")]).generate_state(1)[0]
    noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(int(state)), dtype=torch.float64)
    return (noise * (v.double().norm() / noise.norm())).float()


def random_control(cell: SteeringCell, *, seed: int = 0) -> SteeringCell:
    """The cell with its vector replaced by the norm-matched random direction of its layer."""
    return dataclasses.replace(cell, vector=random_direction(cell.vector, layer=cell.layer, seed=seed))


def negated_control(cell: SteeringCell) -> SteeringCell:
    """The cell with −v (same α, layer and positions)."""
    return dataclasses.replace(cell, vector=-cell.vector)


def with_instruction(
    examples,
    instruction: str | Callable[[Any], Any],
    *,
    where: Literal["prepend", "append"] = "prepend",
    separator: str = "\n",
) -> list:
    """The examples with an instruction that asks for the behaviour, for the prompting baseline.

    A text ``instruction`` goes before (``"prepend"``) or after (``"append"``) each prompt, joined
    by ``separator``; examples are prompt strings or dataclasses with a string ``prompt`` field
    (``LogitDiffItem``). For rendered chat prompts, pass a callable ``example -> example`` instead
    that puts the instruction inside the user turn (prepending text would land before the template)."""
    examples = _listed(examples, "examples")
    if callable(instruction):
        return [instruction(e) for e in examples]
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty text or a callable example -> example, got {instruction!r}")
    if where not in ("prepend", "append"):
        raise ValueError(f"where must be 'prepend' or 'append', got {where!r}")

    def add(prompt: str) -> str:
        return instruction + separator + prompt if where == "prepend" else prompt + separator + instruction

    out = []
    for e in examples:
        if isinstance(e, str):
            out.append(add(e))
        elif dataclasses.is_dataclass(e) and not isinstance(e, type) and isinstance(getattr(e, "prompt", None), str):
            out.append(dataclasses.replace(e, prompt=add(e.prompt)))
        else:
            raise ValueError(
                f"cannot add a text instruction to a {type(e).__name__} example: examples must be strings or "
                "dataclasses with a string `prompt`; pass instruction as a callable example -> example instead"
            )
    return out


def prompting_baseline(
    model,
    examples,
    metric: Metric,
    instruction: str | Callable[[Any], Any],
    *,
    where: Literal["prepend", "append"] = "prepend",
    separator: str = "\n",
    batch_size: int = 16,
    n_boot: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> Scores:
    """The metric with the behaviour asked for by an instruction (``with_instruction``), no steering
    (steering.md §5.2: prompting is the baseline a steering method must beat)."""
    prompted = with_instruction(examples, instruction, where=where, separator=separator)
    values = behaviour(model, prompted, metric, batch_size=batch_size, progress=progress)
    return Scores(values, _estimate(values, n_boot, seed))


#: The conditions of ``compare_controls``, steered first.
CONDITIONS = ("steered", "unsteered", "random", "negated", "prompting")


@dataclass(frozen=True, kw_only=True, eq=False)
class ControlComparison:
    """The cell against its controls on the same examples: each condition's ``Scores``
    (``CONDITIONS``) and the paired difference steered − condition for every other one."""

    layer: int
    alpha: float
    conditions: dict[str, Scores]
    differences: dict[str, Estimate]

    @property
    def steered(self) -> Scores:
        return self.conditions["steered"]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (per-example values per condition) + ``<path>.json`` (estimates)."""
        fields = {
            "layer": self.layer, "alpha": self.alpha,
            "estimates": {k: _estimate_fields(s.estimate) for k, s in self.conditions.items()},
            "differences": {k: _estimate_fields(e) for k, e in self.differences.items()},
        }
        return save_artifact(path, "ControlComparison", {k: s.values for k, s in self.conditions.items()}, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ControlComparison:
        arrays, f = load_artifact(path, "ControlComparison")
        conditions = {k: Scores(arrays[k], _estimate_from(e)) for k, e in f["estimates"].items()}
        differences = {k: _estimate_from(e) for k, e in f["differences"].items()}
        return cls(layer=f["layer"], alpha=f["alpha"], conditions=conditions, differences=differences)


def compare_controls(
    model,
    cell: SteeringCell,
    examples,
    metric: Metric,
    *,
    instruction: str | Callable[[Any], Any],
    control_seed: int = 0,
    batch_size: int = 16,
    n_boot: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> ControlComparison:
    """The cell, no steering, the norm-matched random direction (``random_control`` with
    ``control_seed``), the negated vector and the prompting baseline (``instruction``), on the same
    examples; differences are paired by example (steering.md §5.2, §5.6)."""
    cell.check(model)
    examples = _listed(examples, "examples")
    kw = dict(batch_size=batch_size, progress=progress)
    values = {
        "steered": behaviour(model, examples, metric, cell, **kw),
        "unsteered": behaviour(model, examples, metric, None, **kw),
        "random": behaviour(model, examples, metric, random_control(cell, seed=control_seed), **kw),
        "negated": behaviour(model, examples, metric, negated_control(cell), **kw),
        "prompting": behaviour(model, with_instruction(examples, instruction), metric, None, **kw),
    }
    conditions = {k: Scores(v, _estimate(v, n_boot, seed)) for k, v in values.items()}
    differences = {
        k: paired_difference_ci(values["steered"], v, n_boot=n_boot, seed=seed) for k, v in values.items() if k != "steered"
    }
    return ControlComparison(layer=cell.layer, alpha=cell.alpha, conditions=conditions, differences=differences)


# -- per-example steerability (Tan et al.) ------------------------------------------------------


def behaviour_curve(
    model,
    examples,
    metric: Metric,
    *,
    layer: int,
    vector,
    alphas: Sequence[float],
    positions: P.Positions = None,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """(n_examples, n_alphas): the metric of every example at every α of the grid."""
    grid = _check_alphas(alphas)
    cells = [SteeringCell(layer=layer, alpha=a, vector=vector, positions=positions) for a in grid]
    cells[0].check(model)
    columns = [
        behaviour(model, examples, metric, c, batch_size=batch_size)
        for c in tqdm(cells, desc="alpha grid", disable=not progress, leave=False)
    ]
    return np.stack(columns, axis=1)


def steering_slopes(alphas: Sequence[float], values) -> np.ndarray:
    """Each example's least-squares slope of its metric against α: ``values`` is
    (n_examples, n_alphas) in the order of ``alphas`` (at least 2 distinct values)."""
    grid = _check_alphas(alphas, distinct=2)
    y = np.asarray(values, dtype=float)
    if y.ndim != 2 or y.shape[1] != grid.size or y.shape[0] == 0:
        raise ValueError(f"values must be (n_examples, {grid.size}) for {grid.size} alphas, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("values contain NaN or inf: drop or fix those examples first")
    centred = grid - grid.mean()
    # centring y too leaves the slope unchanged and makes a flat curve's slope exactly 0 (not ±1e-17)
    return (y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)


@dataclass(frozen=True, kw_only=True, eq=False)
class Steerability:
    """Per-example steerability (steering.md §5.3): the slopes, their mean with a bootstrap CI,
    their spread (standard deviation, ddof = 1) and the share of examples whose slope has the
    sign opposite to ``expected_sign`` (anti-steerable; a zero slope is not counted)."""

    slopes: np.ndarray
    mean: Estimate
    std: float
    anti_steerable_fraction: float
    expected_sign: int

    def save(self, path: str | os.PathLike[str]) -> Path:
        fields = {"mean": _estimate_fields(self.mean), "std": self.std,
                  "anti_steerable_fraction": self.anti_steerable_fraction, "expected_sign": self.expected_sign}
        return save_artifact(path, "Steerability", {"slopes": self.slopes}, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Steerability:
        arrays, f = load_artifact(path, "Steerability")
        return cls(slopes=arrays["slopes"], mean=_estimate_from(f["mean"]), std=f["std"],
                   anti_steerable_fraction=f["anti_steerable_fraction"], expected_sign=f["expected_sign"])


def steerability(
    alphas: Sequence[float], values, *, expected_sign: int = 1, n_boot: int = 10_000, seed: int = 0
) -> Steerability:
    """Steerability of ``values`` (n_examples, n_alphas) over the α grid (Tan et al.):
    ``expected_sign`` is +1 when a larger α should raise the metric, −1 when it should lower it."""
    if expected_sign not in (1, -1) or isinstance(expected_sign, bool):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    slopes = steering_slopes(alphas, values)
    std = float(slopes.std(ddof=1)) if slopes.size > 1 else 0.0
    return Steerability(
        slopes=slopes, mean=_estimate(slopes, n_boot, seed), std=std,
        anti_steerable_fraction=float(np.mean(slopes * expected_sign < 0)), expected_sign=int(expected_sign),
    )


# -- selection on a dev split, report on the held-out split -------------------------------------


def split_indices(n: int, *, dev_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(dev, test) example indices, each sorted: a permutation of range(n) by
    ``numpy.random.default_rng(seed)``, whose first round(n · dev_fraction) (at least 1, at most
    n − 1) are dev. The same (n, dev_fraction, seed) always gives the same split."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"a dev/test split needs at least 2 examples, got {n!r}")
    if not isinstance(dev_fraction, numbers.Real) or not 0 < float(dev_fraction) < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
    perm = np.random.default_rng(_check_seed(seed)).permutation(int(n))
    n_dev = min(max(round(n * float(dev_fraction)), 1), n - 1)
    return np.sort(perm[:n_dev]), np.sort(perm[n_dev:])


def split_examples(examples, *, dev_fraction: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """(dev examples, test examples) by ``split_indices``, each in the original order."""
    examples = _listed(examples, "examples")
    dev, test = split_indices(len(examples), dev_fraction=dev_fraction, seed=seed)
    return [examples[i] for i in dev], [examples[i] for i in test]


def select_cell(results: Sequence[CellResult], *, higher_is_better: bool = True) -> CellResult:
    """The cell with the best mean behaviour among those that pass the KL guard (steering.md §5.1,
    §5.5); ties go to the smaller norm ratio, then the lower layer, then the smaller |α|."""
    results = list(results)
    if not results:
        raise ValueError("no cells to select from: evaluate the layer x alpha grid on the dev split first")
    passed = [r for r in results if r.passed]
    if not passed:
        least = min(results, key=lambda r: (math.isnan(r.kl.mean_kl), r.kl.mean_kl))
        raise ValueError(
            f"no cell passes the KL guard: the smallest mean KL is {least.kl.mean_kl:.4g} (layer {least.layer}, "
            f"alpha {least.alpha:g}) against the threshold {least.kl.threshold:g}; add smaller alphas to the grid"
        )
    sign = -1.0 if higher_is_better else 1.0
    return min(passed, key=lambda r: (sign * r.estimate.value, r.norm_ratio, r.layer, abs(r.alpha)))


@dataclass(frozen=True, kw_only=True, eq=False)
class Selection:
    """A selection run: every dev cell, the chosen one, and the held-out report of the chosen
    cell with its controls; ``dev_indices`` / ``test_indices`` index the examples passed."""

    cells: tuple[CellResult, ...]
    chosen: CellResult
    test: ControlComparison
    dev_indices: np.ndarray
    test_indices: np.ndarray


def select_and_evaluate(
    model,
    examples,
    metric: Metric,
    vectors: Mapping[int, Any] | Any,
    alphas: Sequence[float],
    neutral_prompts,
    *,
    instruction: str | Callable[[Any], Any],
    positions: P.Positions = None,
    dev_fraction: float = 0.5,
    split_seed: int = 0,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    higher_is_better: bool = True,
    control_seed: int = 0,
    batch_size: int = 16,
    n_boot: int = 10_000,
    seed: int = 0,
    progress: bool = False,
) -> Selection:
    """The whole §5 protocol in memory: evaluate every (layer, α) of ``vectors`` (layer → vector
    at that layer, or a ``SteeringVector`` at ``resid_post``) × ``alphas`` on the dev split, choose with ``select_cell``, and report the chosen
    cell on the held-out split against its controls (``compare_controls``). For long sweeps that
    must resume, the steering experiment runs ``evaluate_cell`` per cell instead."""
    examples = _listed(examples, "examples")
    grid = _check_alphas(alphas)
    if not isinstance(vectors, Mapping):  # a SteeringVector: its layer -> vector mapping
        if getattr(vectors, "site", "resid_post") != "resid_post":
            raise ValueError(f"cells steer resid_post, but these vectors live at {vectors.site}: read them at resid_post")
        vectors = getattr(vectors, "vectors", vectors)
    if not isinstance(vectors, Mapping) or not vectors:
        raise ValueError("no vectors: pass {layer: vector at that layer} or a SteeringVector")
    cells = [SteeringCell(layer=L, alpha=a, vector=v, positions=positions) for L, v in vectors.items() for a in grid]
    for c in cells[:: grid.size]:
        c.check(model)
    dev_idx, test_idx = split_indices(len(examples), dev_fraction=dev_fraction, seed=split_seed)
    dev, test = [examples[i] for i in dev_idx], [examples[i] for i in test_idx]
    refs = {L: residual_norm(model, neutral_prompts, L, batch_size=batch_size) for L in vectors}
    results = tuple(
        evaluate_cell(model, c, dev, metric, neutral_prompts, kl_threshold=kl_threshold, reference_norm=refs[c.layer],
                      batch_size=batch_size, n_boot=n_boot, seed=seed)
        for c in tqdm(cells, desc="dev cells", disable=not progress)
    )
    chosen = select_cell(results, higher_is_better=higher_is_better)
    cell = next(c for c, r in zip(cells, results) if r is chosen)
    report = compare_controls(model, cell, test, metric, instruction=instruction, control_seed=control_seed,
                              batch_size=batch_size, n_boot=n_boot, seed=seed, progress=progress)
    return Selection(cells=results, chosen=chosen, test=report, dev_indices=dev_idx, test_indices=test_idx)

"""Efficiency steering of reasoning models (``reference/steering.md`` §1 "Efficiency steering",
Zhao et al., arXiv 2506.15647), evaluated as §5.7 asks: accuracy and thinking length together.

Among the *correct* sampled responses to a problem, the shortest (efficient) and the longest
(verbose) lie in distinct regions of representation space; adding the contrast direction
v = mean(efficient) − mean(verbose) during thinking shortens the thinking at equal or better
accuracy. The paper's layer, positions and reading rule are not confirmed from its text (§1), so
this module fixes one rule and states it:

- **length** is the number of thinking tokens (``thinking_tokens``): completion tokens before the
  first ``</think>`` after a prompt that opened ``<think>`` (all of them, less a final EOS, when
  the thinking never closes; a response cut at ``max_new_tokens`` counts what it has);
- **contrast sets**, per problem (``contrast_sets``): among the problem's correct responses with at
  least one thinking token, the ``k`` with the fewest and the ``k`` with the most thinking tokens.
  A problem needs 2k such responses of at least two different lengths, else it is skipped.
  Contrasting within a problem keeps difficulty out of the direction (across problems, "short"
  would mostly mean "easy"), and every problem contributes k of each, so problems weigh equally;
- **reading** (``thinking_means``): a response's feature is the mean of ``resid_post[L]`` over its
  thinking tokens, the very positions that ``positions="thinking"`` steers (strictly between
  ``<think>`` and ``</think>``), and v = mean of efficient features − mean of verbose features,
  accumulated in float64 and kept at its raw norm (``efficiency_direction``);
- **application**: h_L ← h_L + α·v at ``resid_post[L]`` during the thinking phase only
  (``AddVector(..., positions="thinking")``, ``EfficiencyDirection.cell``);
- **evaluation** (``efficiency_curve``): accuracy and mean thinking tokens against α, with 95%
  bootstrap CIs over problems (samples of one problem are correlated, so problems are resampled)
  and the paired change against α = 0 when the grid holds it. Every α reuses the same per-sample
  seeds (sample j of problem i: ``SeedSequence([seed, i, j])``), so α values are compared on common
  random numbers. The answer check is a callable (default ``boxed_check``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.evals.answers import check_answer, extract_boxed
from probes.evals.sampling import think_ids, thinking_tokens
from probes.evals.stats import Estimate, paired_difference_ci
from probes.io import load_artifact, save_artifact
from probes.models import positions as P
from probes.models.chat import THINK_CLOSE, THINK_OPEN
from probes.models.interventions import AddVector
from probes.models.sampling import stop_token_ids
from probes.steering.selection import (
    SteeringCell,
    _as_vector,
    _check_alphas,
    _check_layer,
    _check_positive_int,
    _check_seed,
    _check_width,
    _estimate,
    _estimate_fields,
    _estimate_from,
    _listed,
)

__all__ = [
    "AnswerCheck",
    "EfficiencyCurve",
    "EfficiencyDirection",
    "EfficiencyPoint",
    "Response",
    "boxed_check",
    "contrast_sets",
    "efficiency_curve",
    "efficiency_direction",
    "response_from_text",
    "sample_responses",
    "thinking_means",
    "thinking_tokens",
]

#: ``check(completion text, gold answer) -> correct?``
AnswerCheck = Callable[[str, str], bool]


def boxed_check(completion: str, gold: str) -> bool:
    """Whether the first ``\\boxed{}`` of ``completion`` (thinking included, as in
    ``probes.evals.answers``) matches ``gold`` by ``check_answer``."""
    return check_answer(extract_boxed(completion), gold)


@dataclass(frozen=True)
class Response:
    """One completion of problem ``problem`` (its index): the rendered ``prompt`` it continues, the
    completion's ``token_ids`` as generated, its ``text``, whether it is ``correct``, and its
    ``thinking_tokens``."""

    problem: int
    prompt: str
    token_ids: tuple[int, ...]
    text: str
    correct: bool
    thinking_tokens: int


def response_from_text(model, problem: int, prompt: str, completion: str, correct: bool) -> Response:
    """A ``Response`` from text (e.g. published rollouts): the completion is tokenized without
    special tokens added; ``prompt`` is the rendered prompt, ending in ``<think>``."""
    ids = tuple(model.encode(completion, add_special_tokens=False))
    return Response(problem=int(problem), prompt=prompt, token_ids=ids, text=completion, correct=bool(correct),
                    thinking_tokens=thinking_tokens(model, ids))


def _sample_seed(seed: int, problem: int, j: int) -> int:
    return int(np.random.SeedSequence([seed, problem, j]).generate_state(1)[0])


def _check_problems(prompts, answers) -> tuple[list, list]:
    prompts = _listed(prompts, "prompts")
    answers = _listed(answers, "answers")
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts and {len(answers)} answers: pass one gold answer per prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or p.rfind(THINK_OPEN) <= p.rfind(THINK_CLOSE):
            raise ValueError(
                f"prompt {i} does not end with an open {THINK_OPEN}: render each problem with thinking on "
                "(model.render_chat(question)), since the thinking is counted and steered from there"
            )
    return prompts, answers


def _check_sampling(samples: int, temperature: float) -> int:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    samples = _check_positive_int(samples, "samples per problem")
    if samples > 1 and temperature == 0:
        raise ValueError(f"greedy decoding (temperature 0) gives {samples} identical samples: set temperature > 0 "
                         "or draw one sample per problem")
    return samples


def _responses(model, prompts, answers, check, *, samples, temperature, top_p, max_new_tokens, seed, progress,
               desc) -> list[list[Response]]:
    out = []
    for i, prompt in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False)):
        rows = model.sample(prompt, samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            seeds=[_sample_seed(seed, i, j) for j in range(samples)])
        out.append([
            Response(problem=i, prompt=prompt, token_ids=tuple(r.token_ids), text=r.text,
                     correct=bool(check(r.text, answers[i])), thinking_tokens=thinking_tokens(model, r.token_ids))
            for r in rows
        ])
    return out


def sample_responses(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    n: int = 8,
    check: AnswerCheck = boxed_check,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> list[Response]:
    """``n`` sampled, checked responses per problem (the material of ``efficiency_direction``);
    ``prompts`` are rendered with thinking on, ``answers`` are the gold answers. Sample j of problem
    i uses the seed of (``seed``, i, j), so any one can be drawn again."""
    prompts, answers = _check_problems(prompts, answers)
    n = _check_sampling(n, temperature)
    think_ids(model)
    per_problem = _responses(model, prompts, answers, check, samples=n, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, seed=_check_seed(seed), progress=progress, desc="responses")
    return [r for rows in per_problem for r in rows]


def contrast_sets(responses: Sequence[Response], *, k: int = 1) -> tuple[list[Response], list[Response]]:
    """(efficient, verbose): per problem, the ``k`` correct responses with the fewest and the ``k``
    with the most thinking tokens (ties kept in input order), over the problems that have 2k correct
    responses with thinking, of at least two lengths (module docstring)."""
    k = _check_positive_int(k, "k")
    responses = _listed(responses, "responses")
    by_problem: dict[int, list[Response]] = {}
    for r in responses:
        if r.correct and r.thinking_tokens > 0:
            by_problem.setdefault(r.problem, []).append(r)
    efficient: list[Response] = []
    verbose: list[Response] = []
    for problem in sorted(by_problem):
        rows = sorted(by_problem[problem], key=lambda r: r.thinking_tokens)  # stable: ties in input order
        if len(rows) < 2 * k or rows[0].thinking_tokens == rows[-1].thinking_tokens:
            continue
        efficient += rows[:k]
        verbose += rows[-k:]
    if not efficient:
        raise ValueError(
            f"no problem has {2 * k} correct responses with thinking of different lengths: sample more responses "
            "per problem (sample_responses(n=...)) or lower k"
        )
    return efficient, verbose


def thinking_means(model, responses: Sequence[Response], layer: int, *, batch_size: int = 4,
                   progress: bool = False) -> torch.Tensor:
    """(n_responses, d_model) float64: each response's mean of ``resid_post[layer]`` over its
    thinking positions (prompt + completion run in one forward, a final EOS dropped)."""
    responses = _listed(responses, "responses")
    layer = _check_layer(model, layer)
    batch_size = _check_positive_int(batch_size, "batch_size")
    think_ids(model)
    eos = stop_token_ids(model)
    site = f"resid_post[{layer}]"

    def mean_over_thinking(h, _layer):
        m = P.position_mask(P.Phase.THINKING, model.ctx).unsqueeze(-1)
        return (h.double() * m).sum(1), m.sum(1).squeeze(-1)

    rows = []
    for r in responses:
        ids = list(r.token_ids)
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        rows.append(model.encode(r.prompt) + ids)
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="thinking means", disable=not progress, leave=False):
        sums, counts = model.capture(rows[start : start + batch_size], [site], reduce={site: mean_over_thinking})[site]
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"response {start + empty[0]} has no thinking tokens to read: its prompt must open <think> "
                "(render it with thinking on) and the completion must think before </think>"
            )
        out.append((sums / counts.unsqueeze(-1)).cpu())
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True, eq=False)
class EfficiencyDirection:
    """v = mean(efficient) − mean(verbose) thinking features at ``resid_post[layer]`` (raw norm,
    float32), with what it was read from: the contributing ``problems``, ``k`` per side, and the
    mean thinking tokens of each side."""

    vector: torch.Tensor
    layer: int
    k: int
    problems: tuple[int, ...]
    efficient_tokens: float
    verbose_tokens: float

    def cell(self, alpha: float) -> SteeringCell:
        """The cell that adds α·v during the thinking phase."""
        return SteeringCell(layer=self.layer, alpha=alpha, vector=self.vector, positions="thinking")

    def save(self, path: str | os.PathLike[str]) -> Path:
        fields = {"layer": self.layer, "k": self.k, "problems": list(self.problems),
                  "efficient_tokens": self.efficient_tokens, "verbose_tokens": self.verbose_tokens}
        return save_artifact(path, "EfficiencyDirection", {"vector": self.vector}, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EfficiencyDirection:
        arrays, f = load_artifact(path, "EfficiencyDirection", device="cpu")
        return cls(vector=arrays["vector"], layer=f["layer"], k=f["k"], problems=tuple(f["problems"]),
                   efficient_tokens=f["efficient_tokens"], verbose_tokens=f["verbose_tokens"])


def efficiency_direction(model, responses: Sequence[Response], layer: int, *, k: int = 1, batch_size: int = 4,
                         progress: bool = False) -> EfficiencyDirection:
    """The efficiency direction at ``layer`` from sampled, checked ``responses`` (module docstring:
    per-problem contrast sets, thinking-mean features, float64 difference of means)."""
    layer = _check_layer(model, layer)
    efficient, verbose = contrast_sets(responses, k=k)
    feats = thinking_means(model, efficient + verbose, layer, batch_size=batch_size, progress=progress)
    v = feats[: len(efficient)].mean(0) - feats[len(efficient) :].mean(0)
    return EfficiencyDirection(
        vector=v.float(), layer=layer, k=int(k), problems=tuple(sorted({r.problem for r in efficient})),
        efficient_tokens=float(np.mean([r.thinking_tokens for r in efficient])),
        verbose_tokens=float(np.mean([r.thinking_tokens for r in verbose])),
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class EfficiencyPoint:
    """One α of an efficiency curve: per (problem, sample) correctness and thinking tokens, the
    accuracy and mean thinking tokens with 95% CIs over problems, and the paired change against
    α = 0 (None when the grid lacks 0)."""

    alpha: float
    correct: np.ndarray
    thinking_tokens: np.ndarray
    accuracy: Estimate
    mean_thinking_tokens: Estimate
    accuracy_change: Estimate | None
    tokens_change: Estimate | None


@dataclass(frozen=True, kw_only=True, eq=False)
class EfficiencyCurve:
    """Accuracy and thinking length against α for a vector at ``resid_post[layer]``, steered during thinking."""

    layer: int
    vector_norm: float
    points: tuple[EfficiencyPoint, ...]

    @property
    def alphas(self) -> list[float]:
        return [p.alpha for p in self.points]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (correct, thinking_tokens: (n_alphas, n_problems, samples)) + JSON."""
        arrays = {"correct": np.stack([p.correct for p in self.points]).astype(np.uint8),
                  "thinking_tokens": np.stack([p.thinking_tokens for p in self.points]).astype(np.int64)}
        points = [
            {"alpha": p.alpha, "accuracy": _estimate_fields(p.accuracy),
             "mean_thinking_tokens": _estimate_fields(p.mean_thinking_tokens),
             "accuracy_change": None if p.accuracy_change is None else _estimate_fields(p.accuracy_change),
             "tokens_change": None if p.tokens_change is None else _estimate_fields(p.tokens_change)}
            for p in self.points
        ]
        return save_artifact(path, "EfficiencyCurve", arrays,
                             {"layer": self.layer, "vector_norm": self.vector_norm, "points": points})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EfficiencyCurve:
        arrays, f = load_artifact(path, "EfficiencyCurve")

        def est(d):
            return None if d is None else _estimate_from(d)

        points = tuple(
            EfficiencyPoint(alpha=p["alpha"], correct=arrays["correct"][i].astype(bool),
                            thinking_tokens=arrays["thinking_tokens"][i], accuracy=est(p["accuracy"]),
                            mean_thinking_tokens=est(p["mean_thinking_tokens"]),
                            accuracy_change=est(p["accuracy_change"]), tokens_change=est(p["tokens_change"]))
            for i, p in enumerate(f["points"])
        )
        return cls(layer=f["layer"], vector_norm=f["vector_norm"], points=points)


def efficiency_curve(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    layer: int,
    vector,
    alphas: Sequence[float],
    check: AnswerCheck = boxed_check,
    samples_per_problem: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    n_boot: int = 10_000,
    progress: bool = False,
) -> EfficiencyCurve:
    """Accuracy and mean thinking tokens against α, steering h ← h + α·v at ``resid_post[layer]``
    during the thinking phase (module docstring). ``prompts`` are rendered with thinking on (ending
    in ``<think>``); ``check(text, gold)`` judges each completion (default ``boxed_check``). Greedy by
    default; with ``temperature`` > 0, ``samples_per_problem`` samples per problem on seeds shared by
    every α. CIs resample problems; changes are paired by problem against α = 0."""
    prompts, answers = _check_problems(prompts, answers)
    grid = _check_alphas(alphas)
    layer = _check_layer(model, layer)
    v = _as_vector(vector)
    site = f"resid_post[{layer}]"
    _check_width(model, v, site)
    think_ids(model)
    samples = _check_sampling(samples_per_problem, temperature)
    seed = _check_seed(seed)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")

    measured = []
    for a in tqdm(grid, desc="alpha grid", disable=not progress):
        iv = AddVector(site=site, vector=v, scale=float(a), positions="thinking")
        with model.intervene(iv) if a != 0 else contextlib.nullcontext():
            rows = _responses(model, prompts, answers, check, samples=samples, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, progress=progress, desc=f"alpha={a:g}")
        measured.append((np.array([[r.correct for r in row] for row in rows], dtype=bool),
                         np.array([[r.thinking_tokens for r in row] for row in rows], dtype=np.int64)))

    zero = next((i for i, a in enumerate(grid) if a == 0), None)
    points = []
    for a, (correct, tokens) in zip(grid, measured):
        acc, length = correct.mean(1), tokens.mean(1)
        acc_change = tok_change = None
        if zero is not None:
            acc_change = paired_difference_ci(acc, measured[zero][0].mean(1), n_boot=n_boot, seed=seed)
            tok_change = paired_difference_ci(length, measured[zero][1].mean(1), n_boot=n_boot, seed=seed)
        points.append(EfficiencyPoint(
            alpha=float(a), correct=correct, thinking_tokens=tokens, accuracy=_estimate(acc, n_boot, seed),
            mean_thinking_tokens=_estimate(length, n_boot, seed), accuracy_change=acc_change, tokens_change=tok_change,
        ))
    return EfficiencyCurve(layer=layer, vector_norm=float(v.double().norm()), points=tuple(points))

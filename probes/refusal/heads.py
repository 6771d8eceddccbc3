"""Suppression heads: attention heads that write against the refusal probe at the probe
position, and their norm-preserving ablation (``reference/refusal.md`` A4; issue #12 item 8).

**Direct attribution.** z_{l,h} is head h's output before layer l's output projection at the
probe position (the last token of each probe text: prompt + thinking + ``</think>``);
c_{l,h} = W_O^{(l)}[:, h-block] z_{l,h} is its write into the residual stream and
s_{l,h} = mean over items of c_{l,h}·ŵ, with ŵ = w/‖w‖ the probe's weight in activation space
(``Probe.direction``: for a z-scored probe, w/σ, so ŵ is the direction the logit grows along).
Sorted ascending, the most negative heads are the suppression heads. As in the reference the bias
is left out, and so is the output projection's bias, which is no head's write (A4's "zero the other
heads, then o_proj" gives every head that bias; its families have none). We compute
z_{l,h}·(W_O[:, h-block]ᵀ ŵ) from one capture of every layer's ``head_out`` per batch, keeping
only the last column (left padding). A7: the probe is fitted on post-norm states (``final_norm``)
but applied to pre-norm head writes, so the final RMSNorm is ignored, as the reference ignores it.
For a probe on an earlier residual site, only heads that write before it are scored (the rest NaN).

**Ablation.** ``ScaleHeads(scale=0, rescale_norm=True)``: the chosen heads' z set to 0 and each
layer's head outputs rescaled to their pre-ablation norm, at every position, also while the model
generates. ``norm_over`` defaults to ``NormScope.TOKEN`` (the same for a row alone or in a batch and
under the KV cache); ``NormScope.TENSOR`` is the reference's whole-tensor norm. Top heads (a count,
or a fraction of the scored heads: A4's 1.5 / 3 / 10 %) are compared with the same number of
heads drawn uniformly from all scored heads, top heads included (several seeded draws) on

- r_T: the probe score at the probe position of fixed texts (the baseline rollouts' probe texts)
  under the ablation, paired across conditions; also on each condition's own rollouts;
- the refusal rate: the model regenerates thinking and answer under the ablation; the judge sees
  closed answers only, unclosed rollouts are counted. Every condition samples with the same seeds.

Rates are means over prompts of each prompt's rate over its closed samples; intervals are
percentile bootstraps over prompts (or texts), differences are paired by prompt (or text), the
random draws averaged per prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.evals.stats import Estimate, bootstrap_ci, paired_difference_ci
from probes.io import json_hash, load_artifact, save_artifact
from probes.models.interventions import NormScope, ScaleHeads
from probes.models.sites import Site
from probes.refusal.probe import Probe, probe_features
from probes.refusal.rollout import RefusalRollout, rollouts

__all__ = [
    "AblationArm",
    "AblationResult",
    "HeadScores",
    "ablate_heads",
    "ablation_arm",
    "head_budget",
    "head_scores",
    "random_heads",
]

Head = tuple[int, int]
_SCORES_KIND = "HeadScores"
_ABLATION_KIND = "HeadAblation"


# ----- direct attribution -------------------------------------------------------------------------
def head_budget(n_heads: int, k: int | None = None, *, fraction: float | None = None) -> int:
    """How many heads: ``k`` itself, or round(``fraction`` × ``n_heads``) and at least 1 (A4: 3 % of
    784 heads is 24, of 1,920 is 58). Give exactly one of ``k`` and ``fraction``."""
    if (k is None) == (fraction is None):
        raise ValueError("give the number of heads either as k (a count) or as fraction (of all scored heads), "
                         "exactly one of them")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1] (A4's budgets are 0.015, 0.03, 0.1), got {fraction}")
        k = max(1, round(fraction * n_heads))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_heads:
        raise ValueError(f"k={k!r} heads asked for, but there are {n_heads} scored heads: use 1..{n_heads}")
    return int(k)


@dataclass(frozen=True, kw_only=True, eq=False)
class HeadScores:
    """s_{l,h} (A4): each head's mean direct write onto the probe direction at the probe position.

    ``scores`` is (n_layers, n_heads) float64, NaN for heads that cannot write into the probe's site;
    ``per_item`` the (n_items, n_layers, n_heads) values it averages, when kept."""

    scores: np.ndarray
    per_item: np.ndarray | None = None
    n_items: int = 0
    #: how it was computed (direct attribution, site, position, what was left out)
    method: str = ""
    probe_site: str = "final_norm"
    model_spec: str = ""
    weights_hash: str = ""
    #: sha256 of the scored texts and of the probe's weight
    data_hash: str = ""
    probe_hash: str = ""

    def __post_init__(self):
        s = np.asarray(self.scores, dtype=np.float64)
        if s.ndim != 2:
            raise ValueError(f"scores must be (n_layers, n_heads), got shape {s.shape}")
        object.__setattr__(self, "scores", s)
        if self.per_item is not None:
            p = np.asarray(self.per_item, dtype=np.float64)
            if p.shape[1:] != s.shape:
                raise ValueError(f"per_item must be (n_items, {s.shape[0]}, {s.shape[1]}), got shape {p.shape}")
            object.__setattr__(self, "per_item", p)

    @property
    def heads(self) -> list[Head]:
        """Every scored (layer, head), layer-major."""
        return [(int(layer), int(h)) for layer, h in zip(*np.nonzero(~np.isnan(self.scores)))]

    def ranked(self, ascending: bool = True) -> list[Head]:
        """Scored heads by score, most negative (the suppression heads) first; ties by (layer, head)."""
        heads = self.heads
        vals = np.array([self.scores[h] for h in heads])
        order = np.argsort(vals if ascending else -vals, kind="stable")
        return [heads[i] for i in order]

    def top(self, k: int | None = None, *, fraction: float | None = None, ascending: bool = True) -> list[Head]:
        """The first ``k`` heads of ``ranked`` (or a ``fraction`` of the scored heads, see ``head_budget``)."""
        return self.ranked(ascending)[:head_budget(len(self.heads), k, fraction=fraction)]

    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays = {"scores": self.scores} | ({} if self.per_item is None else {"per_item": self.per_item})
        fields = {"n_items": self.n_items, "method": self.method, "probe_site": self.probe_site,
                  "model_spec": self.model_spec, "weights_hash": self.weights_hash, "data_hash": self.data_hash,
                  "probe_hash": self.probe_hash}
        return save_artifact(path, _SCORES_KIND, arrays, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadScores:
        arrays, fields = load_artifact(path, _SCORES_KIND)
        return cls(scores=arrays["scores"], per_item=arrays.get("per_item"), **fields)


def _texts(items: Sequence[str | RefusalRollout]) -> list[str]:
    texts = [x.probe_text if isinstance(x, RefusalRollout) else x for x in items]
    if not texts:
        raise ValueError("no items to score: give probe texts or closed rollouts")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"items {bad[:5]} are empty or not text: give probe texts or closed rollouts")
    return texts


def _check_probe(model, probe: Probe) -> None:
    probe.check_model(model)
    if probe.read_position != "LastToken()":
        raise ValueError(f"suppression heads are scored at the probe position, the last token (A4), but this probe "
                         f"reads {probe.read_position}: fit one with the default LastToken() read")


def _writing_layers(model, site: str) -> range:
    """Layers whose attention writes into the residual stream before ``site`` is read."""
    s = Site.parse(site)
    if s.name in ("final_norm", "logits"):
        return range(model.n_layers)
    if s.name in ("resid_post", "resid_mid", "resid_pre"):
        L = model.check_layer(s.layer, f"probe site {site}")
        return range(L if s.name == "resid_pre" else L + 1)
    raise ValueError(f"head attribution needs a probe on the residual stream (final_norm, resid_post[L], ...), "
                     f"not on {site}")


def _o_proj_weight(model, layer: int) -> torch.Tensor:
    """W_O of ``layer`` as (d_model, n_heads·d_head): ``nn.Linear`` or GPT-2's transposed ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    mod = model.layers[layer].get_submodule(model.adapter.layer_o_proj)
    if isinstance(mod, torch.nn.Linear):
        return mod.weight
    if isinstance(mod, Conv1D):
        return mod.weight.T
    raise TypeError(f"the output projection of {model.spec} is a {type(mod).__name__}: direct attribution reads "
                    "the weights of nn.Linear or Conv1D")


def _head_readouts(model, direction: torch.Tensor, layers: range) -> dict[int, torch.Tensor]:
    """Layer → (n_heads, d_head) float64: W_O[:, h-block]ᵀ ŵ, so that c_{l,h}·ŵ = z_{l,h}·u_{l,h}."""
    out = {}
    for L in layers:
        w_o = _o_proj_weight(model, L).detach()
        u = w_o.double().T @ direction.to(w_o.device, torch.float64)
        out[L] = u.view(model.n_heads, model.d_head)
    return out


def head_scores(model, probe: Probe, items: Sequence[str | RefusalRollout], *, batch_size: int = 8,
                keep_items: bool = True, progress: bool = False) -> HeadScores:
    """A4's direct attribution of every head onto ``probe`` at the last token of each item (probe
    texts, or closed rollouts whose ``probe_text`` is used); one capture per batch."""
    _check_probe(model, probe)
    texts = _texts(items)
    layers = _writing_layers(model, probe.site)
    readout = _head_readouts(model, probe.direction, layers)

    def at_last(z, layer):  # (B, T, H, D) → (B, H): last column (left padding) onto u_{l,h}
        return torch.einsum("bhd,hd->bh", z[:, -1].detach().double(), readout[layer]).cpu()

    rows = []
    for lo in tqdm(range(0, len(texts), batch_size), desc="head scores", disable=not progress):
        cap = model.capture(texts[lo:lo + batch_size], [f"head_out[{L}]" for L in layers],
                            reduce={"head_out": at_last}, padding_side="left")
        s = torch.full((len(texts[lo:lo + batch_size]), model.n_layers, model.n_heads), float("nan"),
                       dtype=torch.float64)
        for L in layers:
            s[:, L] = cap[f"head_out[{L}]"]
        rows.append(s)
    per_item = torch.cat(rows).numpy()
    method = (f"direct attribution (refusal.md A4): z_(l,h) of head_out at the last token, c_(l,h) = W_O[:, h] z, "
              f"score mean(c . w/|w|) with w = probe.direction (activation space); no probe or o_proj bias; "
              f"final norm ignored (A7); {len(layers)} of {model.n_layers} layers write before {probe.site}")
    return HeadScores(scores=per_item.mean(0), per_item=per_item if keep_items else None, n_items=len(texts),
                      method=method, probe_site=probe.site, model_spec=model.spec, weights_hash=model.weights_hash,
                      data_hash=json_hash(texts), probe_hash=json_hash(probe.weight.tolist() + [probe.bias]))


# ----- ablation ------------------------------------------------------------------------------------
def random_heads(heads: Sequence[Head], k: int, seed: int) -> list[Head]:
    """``k`` of ``heads`` drawn uniformly without replacement by a seeded generator."""
    heads = list(heads)
    k = head_budget(len(heads), k)
    idx = np.random.default_rng(seed).choice(len(heads), size=k, replace=False)
    return [heads[i] for i in sorted(idx)]


@dataclass(frozen=True, kw_only=True, eq=False)
class AblationArm:
    """One condition: ``heads`` ablated (none for the baseline).

    ``r_T`` (n_texts,): probe score of the fixed probe texts under the ablation; ``refused``
    (n_prompts, samples): 1 refused, 0 not, NaN when the rollout never closed its thinking;
    ``r_T_own`` (n_prompts, samples): probe score of the condition's own rollouts (NaN if unclosed)."""

    name: str
    heads: tuple[Head, ...]
    r_T: np.ndarray
    refused: np.ndarray
    r_T_own: np.ndarray
    rollouts: tuple[RefusalRollout, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple((int(a), int(b)) for a, b in self.heads))
        for name in ("r_T", "refused", "r_T_own"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))

    @property
    def unclosed(self) -> int:
        """Rollouts that never closed their thinking (not judged)."""
        return int(np.isnan(self.refused).sum())

    @property
    def prompt_refusal(self) -> np.ndarray:
        """(n_prompts,) each prompt's refusal rate over its closed samples (NaN when none closed)."""
        return _row_means(self.refused)

    def refusal_rate(self, seed: int = 0) -> Estimate:
        """Mean over prompts of ``prompt_refusal``, bootstrapped over prompts."""
        return _mean_estimate(self.prompt_refusal, seed, "refusal rate")

    def mean_r_T(self, seed: int = 0) -> Estimate:
        """Mean probe score of the fixed texts, bootstrapped over texts."""
        return _mean_estimate(self.r_T, seed, "r_T")

    def mean_r_T_own(self, seed: int = 0) -> Estimate:
        """Mean over prompts of the probe score on this condition's own closed rollouts."""
        return _mean_estimate(_row_means(self.r_T_own), seed, "r_T on own rollouts")


def _row_means(x: np.ndarray) -> np.ndarray:
    n = (~np.isnan(x)).sum(1)
    return np.where(n > 0, np.nansum(x, 1) / np.maximum(n, 1), np.nan)


def _mean_estimate(values: np.ndarray, seed: int, what: str) -> Estimate:
    v = values[~np.isnan(values)]
    if not v.size:
        raise ValueError(f"no {what} to estimate: every rollout of this condition is unclosed (raise max_new_tokens)")
    value, lo, hi = bootstrap_ci(v, np.mean, seed=seed)
    return Estimate(value, lo, hi, int(v.size))


def _paired(a: np.ndarray, b: np.ndarray, seed: int, what: str) -> Estimate:
    keep = ~(np.isnan(a) | np.isnan(b))
    if not keep.any():
        raise ValueError(f"no item has a {what} in both conditions")
    return paired_difference_ci(a[keep], b[keep], seed=seed)


@dataclass(frozen=True, kw_only=True, eq=False)
class AblationResult:
    """Baseline, top-heads and random-heads conditions of one budget, and the settings they ran with."""

    baseline: AblationArm
    top: AblationArm
    random: tuple[AblationArm, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def _versus(self, against: Literal["random", "baseline"], per: str) -> np.ndarray:
        if against == "baseline":
            return getattr(self.baseline, per)
        if against == "random":
            return np.nanmean(np.stack([getattr(a, per) for a in self.random]), 0)
        raise ValueError(f"against is 'random' or 'baseline', got {against!r}")

    def r_T_difference(self, against: Literal["random", "baseline"] = "random", seed: int = 0) -> Estimate:
        """mean r_T(top) − r_T(``against``; random draws averaged), paired by text."""
        return _paired(self.top.r_T, self._versus(against, "r_T"), seed, "r_T")

    def refusal_difference(self, against: Literal["random", "baseline"] = "random", seed: int = 0) -> Estimate:
        """Refusal rate(top) − rate(``against``; random draws averaged), paired by prompt."""
        return _paired(self.top.prompt_refusal, self._versus(against, "prompt_refusal"), seed, "refusal rate")

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """Every condition's estimates, the random draws pooled (per item, the mean over draws), and the
        top − random / top − baseline differences, as plain values."""
        def arm(a: AblationArm) -> dict[str, Any]:
            return {"heads": [list(h) for h in a.heads], "r_T": asdict(a.mean_r_T(seed)),
                    "r_T_own": asdict(a.mean_r_T_own(seed)), "refusal_rate": asdict(a.refusal_rate(seed)),
                    "unclosed": a.unclosed, "rollouts": int(a.refused.size)}

        pooled = {"r_T": asdict(_mean_estimate(self._versus("random", "r_T"), seed, "r_T")),
                  "refusal_rate": asdict(_mean_estimate(self._versus("random", "prompt_refusal"), seed,
                                                        "refusal rate"))}
        return {"baseline": arm(self.baseline), "top": arm(self.top), "random": [arm(a) for a in self.random],
                "random_pooled": pooled,
                "top_minus_random": {"r_T": asdict(self.r_T_difference("random", seed)),
                                     "refusal_rate": asdict(self.refusal_difference("random", seed))},
                "top_minus_baseline": {"r_T": asdict(self.r_T_difference("baseline", seed)),
                                       "refusal_rate": asdict(self.refusal_difference("baseline", seed))}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays, arms = {}, {}
        for a in (self.baseline, self.top, *self.random):
            for name in ("r_T", "refused", "r_T_own"):
                arrays[f"{a.name}.{name}"] = getattr(a, name)
            arms[a.name] = {"heads": [list(h) for h in a.heads], "rollouts": [asdict(r) for r in a.rollouts]}
        fields = {"arms": arms, "random": [a.name for a in self.random], "settings": dict(self.settings)}
        return save_artifact(path, _ABLATION_KIND, arrays, fields)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AblationResult:
        arrays, fields = load_artifact(path, _ABLATION_KIND)

        def arm(name: str) -> AblationArm:
            meta = fields["arms"][name]
            return AblationArm(name=name, heads=[tuple(h) for h in meta["heads"]],
                               rollouts=tuple(RefusalRollout(**r) for r in meta["rollouts"]),
                               **{k: arrays[f"{name}.{k}"] for k in ("r_T", "refused", "r_T_own")})

        return cls(baseline=arm("baseline"), top=arm("top"), random=tuple(arm(n) for n in fields["random"]),
                   settings=fields["settings"])


def _r_T(model, probe: Probe, texts: Sequence[str], batch_size: int) -> np.ndarray:
    return probe.score(probe_features(model, list(texts), probe.site, batch_size=batch_size)).numpy()


def _judged(items: Sequence[RefusalRollout], judge, n_prompts: int, samples: int) -> np.ndarray:
    """(n_prompts, samples): the judge's refusal verdict on closed answers, NaN for unclosed rollouts."""
    out = np.full((n_prompts, samples), np.nan)
    closed = [r for r in items if r.closed]
    if closed:
        verdicts = judge([r.answer for r in closed])
        if any(v.refused is None for v in verdicts):
            raise ValueError(f"{type(judge).__name__} does not say whether an answer refuses: judge refusals with "
                             "a refusal judge (KeywordJudge, or a classifier trained for refusal)")
        for r, v in zip(closed, verdicts):
            out[r.prompt_index, r.sample_index] = float(v.refused)
    return out


def _own_r_T(model, probe: Probe, items: Sequence[RefusalRollout], n_prompts: int, samples: int,
             batch_size: int) -> np.ndarray:
    out = np.full((n_prompts, samples), np.nan)
    closed = [r for r in items if r.closed]
    if closed:
        for r, s in zip(closed, _r_T(model, probe, [r.probe_text for r in closed], batch_size)):
            out[r.prompt_index, r.sample_index] = s
    return out


def ablation_arm(model, probe: Probe, prompts: Sequence[str], judge, *, heads: Sequence[Head] = (),
                 texts: Sequence[str] | None = None, name: str = "arm", samples: int = 4,
                 temperature: float = 0.7, max_new_tokens: int = 512, seed: int = 0,
                 norm_over: NormScope = NormScope.TOKEN, batch_size: int = 8) -> AblationArm:
    """One condition: with ``heads`` zeroed by the norm-preserving ``ScaleHeads`` (none: the
    baseline), roll out ``prompts``, judge the closed answers, and score ``texts`` (default: these
    rollouts' own probe texts) at the probe position."""
    ivs = [ScaleHeads(heads=list(heads), scale=0.0, rescale_norm=True, norm_over=norm_over)] if heads else []
    with model.intervene(*ivs):
        got = rollouts(model, prompts, samples=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                       seed=seed, batch_size=batch_size, progress=False)
        own = _own_r_T(model, probe, got, len(prompts), samples, batch_size)
        r_T = own[~np.isnan(own)] if texts is None else _r_T(model, probe, texts, batch_size)
    return AblationArm(name=name, heads=tuple(heads), r_T=r_T, refused=_judged(got, judge, len(prompts), samples),
                       r_T_own=own, rollouts=tuple(got))


def ablate_heads(model, probe: Probe, scores: HeadScores, prompts: Sequence[str], judge, *,
                 k: int | None = None, fraction: float | None = None, draws: int = 5, seed: int = 0,
                 samples: int = 4, temperature: float = 0.7, max_new_tokens: int = 512,
                 norm_over: NormScope = NormScope.TOKEN, baseline: AblationArm | None = None,
                 batch_size: int = 8, progress: bool = True) -> AblationResult:
    """A4's experiment at one budget (``k`` heads, or a ``fraction`` of the scored heads): the
    baseline (or the one given, from an earlier budget on the same prompts and settings), the top
    ``scores.top(k)`` heads and ``draws`` random sets of as many heads (draw d uses seed ``seed + d``)."""
    _check_probe(model, probe)
    if scores.scores.shape != (model.n_layers, model.n_heads):
        raise ValueError(f"head scores are {scores.scores.shape[0]} layers x {scores.scores.shape[1]} heads but "
                         f"{model.spec} has {model.n_layers} x {model.n_heads}: score this model's heads")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: give the requests to roll out under the ablation")
    if draws < 1:
        raise ValueError(f"draws must be at least 1 (A4 compares with random heads), got {draws}")
    top = scores.top(k, fraction=fraction)
    kw = dict(samples=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
              norm_over=norm_over, batch_size=batch_size)
    bar = tqdm(total=draws + 1 + (baseline is None), desc=f"ablate {len(top)} heads", disable=not progress)
    if baseline is None:
        baseline = ablation_arm(model, probe, prompts, judge, name="baseline", **kw)
        bar.update()
    elif baseline.refused.shape != (len(prompts), samples):
        raise ValueError(f"the given baseline has {baseline.refused.shape} (prompts, samples), not "
                         f"{(len(prompts), samples)}: reuse a baseline only on the same prompts and settings")
    texts = [r.probe_text for r in baseline.rollouts if r.closed]
    if not texts:
        raise ValueError("no baseline rollout closed its thinking, so there is no probe position: "
                         "raise max_new_tokens")
    arms = []
    for name, heads in [("top", top)] + [(f"random{d}", random_heads(scores.heads, len(top), seed + d))
                                         for d in range(draws)]:
        arms.append(ablation_arm(model, probe, prompts, judge, heads=heads, texts=texts, name=name, **kw))
        bar.update()
    bar.close()
    settings = {**kw, "norm_over": str(norm_over), "k": len(top), "fraction": fraction, "draws": draws,
                "scale": 0.0, "rescale_norm": True, "judge": repr(judge), "model_spec": model.spec,
                "weights_hash": model.weights_hash, "scores_data_hash": scores.data_hash,
                "probe_hash": scores.probe_hash, "n_prompts": len(prompts), "n_texts": len(texts)}
    return AblationResult(baseline=baseline, top=arms[0], random=tuple(arms[1:]), settings=settings)

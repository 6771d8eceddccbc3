"""Cliff-as-a-Judge data selection and its baselines (``reference/refusal.md`` A6).

From the model's unsafe rollouts of harmful prompts (A6.1) and their trajectories (A6.2), keep
the top k% (A6.3) by one of two criteria:

* ``"r_T"``, the released code's (``src/train/ranking.py``): ascending r_T, lowest first;
* ``"cliff"``, the paper's "largest refusal cliff" [inf]: descending Δ_cliff.

Ties keep pool order (a stable sort), so the lower pool index wins; a rollout without thinking
tokens has no Δ_cliff (NaN) and ranks last. The count is n = max(1, ⌊k·N⌋) for a pool of N, the
reference's ``int(len(data) * k)`` floored, with at least one example.

Baselines (A6.5), of the same size n:

* ``"random"``: n drawn uniformly from the same unsafe pool (seeded; the reference's ``main.py`` at
  564bc90 shuffles the judged-unsafe file and keeps the first k%);
* ``"rule"``: the keyword rule *replaces the judge*. The reference's rule script (``main.py`` at
  d63eb67) runs over every rollout of the harmful prompts, not only the judged-unsafe ones, drops
  those with a refusal word in ``response[:128]`` (both sides lower-cased) and shuffles the rest;
  it keeps every survivor, where here n are drawn, to match the other criteria. So here the rule's
  candidates are all closed rollouts of the harmful prompts, the survivors are those without a
  keyword in the first ``window`` characters of the answer, and n are drawn from them (seeded). It
  differs from ``random`` exactly where the keyword list and the judge disagree: a refusal the
  list misses survives the rule, a compliance that happens to hold a listed word does not.

The SFT set (A6.4) is Alpaca records: ``instruction`` = the prompt, ``input`` = "", ``output`` =
the model's own thinking + its own thinking close + a safe completion. The reference writes
``"\\n</think>\\n\\n"``; the rollout's own close (``</think>`` and the whitespace around it, up to
``RefusalRollout.answer_start``) is that on models that close that way, and the right one on
models that do not (the zoo closes with a bare ``</think>``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.io import atomic_write_text, load_artifact, read_jsonl, save_artifact
from probes.refusal.judges import KeywordJudge
from probes.refusal.rollout import RefusalRollout

__all__ = [
    "RULE_WINDOW",
    "SELECTION_CRITERIA",
    "CliffJudgeSelection",
    "load_sft",
    "n_selected",
    "save_sft",
    "select_by_probe",
    "select_by_rule",
    "select_random",
    "sft_record",
]

SELECTION_CRITERIA = ("r_T", "cliff", "random", "rule")
"""Probe criteria (A6.3) and the baselines (A6.5)."""
PROBE_CRITERIA = {"r_T": False, "cliff": True}
"""Probe criterion → whether it ranks descending."""
RULE_WINDOW = 128
"""A6.5: the rule looks for a refusal word in the answer's first 128 characters."""
_KIND = "CliffJudgeSelection"


def n_selected(k: float, n_pool: int) -> int:
    """How many of a pool of ``n_pool`` the top ``k`` holds: max(1, ⌊k·n_pool⌋) (the reference floors)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k is a fraction of the pool in (0, 1], got {k!r} (for 5% pass 0.05)")
    if n_pool < 1:
        raise ValueError("the pool is empty: no unsafe rollouts to select from (sample more harmful prompts, or "
                         "check the judge: every rollout was judged safe)")
    # the tolerance keeps 0.29 * 100 = 28.999… at 29
    return max(1, math.floor(k * n_pool + 1e-9))


@dataclass(frozen=True, kw_only=True)
class CliffJudgeSelection:
    """Which items of a pool one criterion selected (A6.3, A6.5).

    ``indices`` index the pool the selection was drawn from (the unsafe rollouts for the probe
    criteria and ``random``, every closed rollout for ``rule``), in selection order; ``ids`` name
    the same items; ``scores`` is each selected item's r_T or Δ_cliff (NaN for the baselines);
    ``n_pool`` the number of candidates; ``params`` the settings (the rule's keywords and window)."""

    criterion: str
    k: float
    n_pool: int
    indices: tuple[int, ...]
    ids: tuple[str, ...]
    scores: tuple[float, ...]
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.criterion not in SELECTION_CRITERIA:
            raise ValueError(f"criterion {self.criterion!r}: use one of {SELECTION_CRITERIA}")
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
        if not 0 < self.k <= 1:
            raise ValueError(f"k is a fraction in (0, 1], got {self.k}")
        if not len(self.indices) == len(self.ids) == len(self.scores):
            raise ValueError(f"{len(self.indices)} indices, {len(self.ids)} ids and {len(self.scores)} scores: "
                             "give one of each per selected item")
        if len(set(self.indices)) != len(self.indices) or any(not 0 <= i < self.n_pool for i in self.indices):
            raise ValueError(f"indices must be distinct positions in a pool of {self.n_pool}")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def name(self) -> str:
        """``criterion@k``, e.g. ``r_T@0.05``."""
        return f"{self.criterion}@{self.k:g}"

    def take(self, pool: Sequence) -> list:
        """The selected items of ``pool`` (the sequence the selection was drawn from), in selection order."""
        if len(pool) != self.n_pool:
            raise ValueError(f"this selection was drawn from a pool of {self.n_pool}, not {len(pool)}: pass that pool")
        return [pool[i] for i in self.indices]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (indices, scores) and ``<path>.json`` (the rest)."""
        return save_artifact(path, _KIND, {"indices": np.asarray(self.indices, dtype=np.int64),
                                           "scores": np.asarray(self.scores, dtype=np.float64)},
                             {"criterion": self.criterion, "k": self.k, "n_pool": self.n_pool, "ids": list(self.ids),
                              "seed": self.seed, "params": dict(self.params)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CliffJudgeSelection:
        arrays, fields = load_artifact(path, _KIND)
        return cls(indices=tuple(arrays["indices"].tolist()), scores=tuple(arrays["scores"].tolist()), **fields)


def _selection(criterion: str, k: float, n_pool: int, order: np.ndarray, ids: Sequence[str] | None,
               scores: Sequence[float], **extra: Any) -> CliffJudgeSelection:
    """The selection of pool positions ``order``, named by ``ids`` (default: the positions)."""
    if ids is None:
        names = tuple(str(i) for i in range(n_pool))
    else:
        names = tuple(str(i) for i in ids)
        if len(names) != n_pool:
            raise ValueError(f"{len(names)} ids for a pool of {n_pool}: give one id per item")
    return CliffJudgeSelection(criterion=criterion, k=k, n_pool=n_pool, indices=tuple(order.tolist()),
                               ids=tuple(names[i] for i in order), scores=tuple(scores), **extra)


def select_by_probe(trajectories: Sequence, k: float, criterion: str = "r_T", *,
                    ids: Sequence[str] | None = None) -> CliffJudgeSelection:
    """The top ``k`` of the unsafe rollouts' ``trajectories`` (A6.3): ascending r_T (``"r_T"``, the
    released code) or descending Δ_cliff (``"cliff"``); ties keep pool order, NaN ranks last."""
    if criterion not in PROBE_CRITERIA:
        raise ValueError(f"criterion {criterion!r} is not a probe criterion: use one of {tuple(PROBE_CRITERIA)} "
                         "(select_random and select_by_rule give the baselines)")
    n = n_selected(k, len(trajectories))
    values = np.array([t.r_T if criterion == "r_T" else t.cliff for t in trajectories], dtype=float)
    key = -values if PROBE_CRITERIA[criterion] else values
    order = np.argsort(key, kind="stable")[:n]  # stable: ties by pool order; NaN sorts last
    return _selection(criterion, k, len(values), order, ids, values[order].tolist())


def select_random(n_pool: int, k: float, *, seed: int = 0,
                  ids: Sequence[str] | None = None) -> CliffJudgeSelection:
    """``n_selected(k, n_pool)`` items of the unsafe pool drawn uniformly without replacement (A6.5, seeded)."""
    n = n_selected(k, n_pool)
    order = np.random.default_rng(seed).permutation(n_pool)[:n]
    return _selection("random", k, n_pool, order, ids, (math.nan,) * n, seed=seed)


def select_by_rule(answers: Sequence[str], k: float, *, reference_pool: int, keywords: Sequence[str],
                   window: int = RULE_WINDOW, seed: int = 0, ids: Sequence[str] | None = None) -> CliffJudgeSelection:
    """A6.5's keyword rule over every closed rollout of the harmful prompts (``answers``, judged or not):
    the answers without any of ``keywords`` (case-insensitive) in their first ``window`` characters
    survive, and ``n_selected(k, reference_pool)`` of them are drawn (seeded), so the rule trains on as
    many examples as the criteria that selected k of a ``reference_pool`` of judged-unsafe rollouts."""
    n = n_selected(k, reference_pool)
    judge = KeywordJudge(phrases=tuple(keywords), window=window, ignore_case=True)
    survivors = np.array([i for i, v in enumerate(judge(answers)) if not v.refused], dtype=np.int64)
    if survivors.size < n:
        raise ValueError(f"the rule keeps {survivors.size} of {len(answers)} answers (no keyword in the first {window} "
                         f"characters), fewer than the {n} to select: lower k or sample more rollouts")
    order = survivors[np.random.default_rng(seed).permutation(survivors.size)[:n]]
    return _selection("rule", k, len(answers), order, ids, (math.nan,) * n, seed=seed,
                      params={"keywords": list(judge.phrases), "window": window, "survivors": int(survivors.size),
                              "reference_pool": reference_pool})


def sft_record(rollout: RefusalRollout, safe_completion: str, *, close: str | None = None) -> dict[str, str]:
    """One Alpaca record (A6.4): the prompt, and the rollout's own thinking + its own close (or ``close``,
    e.g. the reference's ``"\\n</think>\\n\\n"``, after the thinking's trailing newlines) + ``safe_completion``."""
    if not isinstance(safe_completion, str) or not safe_completion.strip():
        raise ValueError(f"safe completion for {rollout.prompt!r} is empty: give the answer the model should learn")
    c = rollout.completion
    start = rollout.answer_start  # raises for a rollout that never closed its thinking
    t0, t1 = rollout.split.thinking
    thinking = c[t0:t1]
    output = thinking + c[t1:start] if close is None else thinking.rstrip("\n") + close
    return {"instruction": rollout.prompt, "input": "", "output": output + safe_completion}


def save_sft(path: str | os.PathLike[str], records: Sequence[Mapping[str, str]]) -> Path:
    """Write Alpaca records as JSON lines, atomically."""
    keys = {"instruction", "input", "output"}
    for i, r in enumerate(records):
        if set(r) != keys or not all(isinstance(r[k], str) for k in keys):
            raise ValueError(f"record {i} is not an Alpaca record (string instruction, input, output): {sorted(r)}")
    return atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records))


def load_sft(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read records written by ``save_sft``; a damaged line is an error naming file and line."""
    return read_jsonl(path, fix="delete the file and write the SFT set again")

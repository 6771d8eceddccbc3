"""Problem sets with gold answers: a JSONL file offline, or a public set by name through ``datasets``.

A record is ``{"prompt": ..., "gold": ...}`` (``id`` optional). Public sets (``reference/task_vectors.md``
§8, GSM8K and MATH-500) are read from the Hugging Face hub when online; offline they fail with one
line naming what works offline. No benchmark text is stored in the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.io import read_jsonl


@dataclass(frozen=True)
class Problem:
    prompt: str
    gold: str
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublicProblems:
    """Where a public problem set lives: hub id, config, split, and its question / answer columns."""

    hub_id: str
    config: str | None
    split: str
    question: str
    answer: str

    def gold(self, raw: str) -> str:
        """GSM8K's answers end with ``#### 72``; the gold is what follows."""
        return raw.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in raw else raw.strip()


PUBLIC_PROBLEMS = {
    "gsm8k": PublicProblems("openai/gsm8k", "main", "test", "question", "answer"),
    "math-500": PublicProblems("HuggingFaceH4/MATH-500", None, "test", "problem", "answer"),
}


class ProblemSetUnavailableError(RuntimeError):
    """A public set could not be read (no network, or the hub refused)."""


def load_problems(name: str | os.PathLike[str], n: int | None = None) -> list[Problem]:
    """The first ``n`` problems (all when ``None``) of a JSONL file of ``{"prompt", "gold"}`` records, or
    of a public set by name (``gsm8k``, ``math-500``)."""
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    key = str(name)
    if key in PUBLIC_PROBLEMS:
        return _public(key, n)
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"problem set {key!r}: no such file, and not a public set ({', '.join(PUBLIC_PROBLEMS)}); "
                         'give a JSONL file of {"prompt": ..., "gold": ...} records')
    rows = read_jsonl(path, lambda r: Problem(str(r["prompt"]), str(r["gold"]), str(r.get("id", ""))),
                      fix='each line is a {"prompt": ..., "gold": ...} record')
    if not rows:
        raise ValueError(f"{path} holds no problems")
    return rows[:n]


def _public(name: str, n: int | None) -> list[Problem]:
    spec = PUBLIC_PROBLEMS[name]
    try:
        import datasets

        split = spec.split if n is None else f"{spec.split}[:{n}]"
        ds = datasets.load_dataset(spec.hub_id, spec.config, split=split)
    except Exception as e:  # offline, hub errors: one clear line
        raise ProblemSetUnavailableError(
            f"problem set {name!r} ({spec.hub_id}) is not reachable offline or from this machine ({type(e).__name__}); "
            'give a JSONL file of {"prompt", "gold"} records instead') from None
    return [Problem(str(r[spec.question]), spec.gold(str(r[spec.answer])), f"{name}-{i}") for i, r in enumerate(ds)]

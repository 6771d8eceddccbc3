"""Prompt sets for refusal probes (issue #12, item 2; ``../shared/reference/refusal.md`` A1, B5): one
record schema, seeded stratified splits, JSONL files, and the public benchmarks loaded by name.

A :class:`PromptSet` is a named tuple of :class:`PromptRecord` (prompt, ``harmful`` label, source,
optional category and metadata). ``PromptSet.split`` draws parts with a seeded numpy generator,
stratified by ``harmful``, so the same seed gives the same parts in every process.

The public sets (A1: AdvBench, JailbreakBench harmful behaviours, WildJailbreak, StrongREJECT,
UltraChat; B5: HarmBench, Alpaca without input) are rows of :data:`PUBLIC_SETS` (hub id, config, split,
column, label), read through the ``datasets`` library; no benchmark text is kept in the repository.
Without the network they fail with :class:`PromptSetUnavailableError`, naming the offline sets.

The offline sets are the zoo's synthetic requests. They live in ``probes.zoo.refusal_prompts``
because the zoo sits above the method packages (``pyproject.toml``'s import-linter layers): this
module cannot import the zoo, so :func:`load_prompts` takes extra loaders by name (``offline=``), and
``probes.zoo.refusal_prompts.load_prompts`` passes the zoo's. Nothing is registered at import time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from probes.io import atomic_write_text, read_jsonl

__all__ = [
    "PUBLIC_SETS",
    "Loader",
    "PromptRecord",
    "PromptSet",
    "PromptSetUnavailableError",
    "PublicSet",
    "load_prompts",
    "load_public",
]

log = logging.getLogger(__name__)

Loader = Callable[..., "PromptSet"]
"""A prompt-set source: ``loader(*, n, seed, split) -> PromptSet`` (see :func:`load_prompts`)."""

_RECORD_KEYS = ("id", "prompt", "harmful", "source", "category", "meta")


class PromptSetUnavailableError(ConnectionError):
    """A public prompt set cannot be loaded here (offline, not cached, gated, or no ``datasets``)."""


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    """One prompt: ``harmful`` is the refusal class (A1: AdvBench rows are harmful, UltraChat's are not)."""

    id: str
    prompt: str
    harmful: bool
    source: str
    """The prompt set it came from, e.g. ``advbench`` or ``zoo-harmless``."""
    category: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """JSON-serialisable extras (the zoo's frame, verb, thing, owner, wrapped, forbidden)."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"prompt id {self.id!r}: use a non-empty string")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"prompt {self.id!r} is empty: every record needs prompt text")
        if not isinstance(self.harmful, bool | np.bool_):
            raise ValueError(f"prompt {self.id!r}: harmful={self.harmful!r}, use True or False")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"prompt {self.id!r}: source {self.source!r}, use the prompt set's name")
        if self.category is not None and not isinstance(self.category, str):
            raise ValueError(f"prompt {self.id!r}: category {self.category!r}, use a string or None")
        if not isinstance(self.meta, Mapping):
            raise ValueError(f"prompt {self.id!r}: meta must be a mapping, not {type(self.meta).__name__}")
        object.__setattr__(self, "harmful", bool(self.harmful))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "harmful": self.harmful, "source": self.source,
                "category": self.category, "meta": dict(self.meta)}


@dataclass(frozen=True)
class PromptSet:
    """A named tuple of records with distinct ids and distinct prompts."""

    name: str
    records: tuple[PromptRecord, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"prompt set name {self.name!r}: use a non-empty string")
        records = tuple(self.records)
        bad = [r for r in records if not isinstance(r, PromptRecord)]
        if bad:
            raise ValueError(f"prompt set {self.name!r} holds {len(bad)} non-PromptRecord items, e.g. {bad[0]!r}")
        for what, key in (("ids", "id"), ("prompts", "prompt")):
            seen: set[str] = set()
            repeated = []
            for r in records:
                value = getattr(r, key)
                if value in seen:
                    repeated.append(r.id)
                seen.add(value)
            if repeated:
                raise ValueError(f"prompt set {self.name!r} repeats {what} (records {', '.join(repeated[:5])}"
                                 f"{', …' if len(repeated) > 5 else ''}): drop the duplicates first")
        object.__setattr__(self, "records", records)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(r.prompt for r in self.records)

    @property
    def labels(self) -> np.ndarray:
        """``harmful`` per record, as a bool array."""
        return np.array([r.harmful for r in self.records], dtype=bool)

    def subset(self, *, harmful: bool) -> PromptSet:
        """The records of one class."""
        return PromptSet(self.name, tuple(r for r in self.records if r.harmful == harmful))

    def take(self, n: int | None, *, seed: int | None = None) -> PromptSet:
        """``n`` records: the first ``n`` (``seed=None``, the reference's "first 256", A1) or ``n`` drawn
        with ``seed``, kept in set order; ``n=None`` keeps all."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: ask for a positive number of prompts")
        if n > len(self):
            raise ValueError(f"asked for {n} prompts but {self.name!r} holds {len(self)}")
        if seed is None:
            return PromptSet(self.name, self.records[:n])
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return PromptSet(self.name, tuple(self.records[i] for i in keep))

    def split(self, sizes: Mapping[str, float] | Mapping[str, int], *, seed: int = 0) -> dict[str, PromptSet]:
        """Disjoint parts named as in ``sizes`` (fractions summing to at most 1, or counts), drawn with a
        seeded numpy generator and stratified by ``harmful``; each part keeps set order and is named
        ``<name>/<part>``. B5's 60/20/20: ``split({"train": .6, "val": .2, "test": .2})``."""
        counts = self._part_sizes(sizes)
        rng = np.random.default_rng(seed)
        # Stratify by systematic interleaving: each class is shuffled, its k-th item sits at (k + ½)/n_class,
        # and consecutive runs of the merged order hold each class in proportion (to within a record or two).
        keyed = []
        for label in (True, False):
            idx = np.flatnonzero(self.labels == label)
            idx = idx[rng.permutation(len(idx))]
            keyed += [((k + 0.5) / len(idx), label, int(i)) for k, i in enumerate(idx)]
        order = [i for _, _, i in sorted(keyed, key=lambda t: (t[0], not t[1]))]
        parts, start = {}, 0
        for part, size in counts.items():
            chosen = sorted(order[start:start + size])
            parts[part] = PromptSet(f"{self.name}/{part}", tuple(self.records[i] for i in chosen))
            start += size
        return parts

    def _part_sizes(self, sizes: Mapping[str, float] | Mapping[str, int]) -> dict[str, int]:
        if not isinstance(sizes, Mapping) or not sizes:
            raise ValueError(f"sizes {sizes!r}: give a mapping of part name to fraction or count, "
                             "e.g. {'train': 0.8, 'test': 0.2}")
        values = list(sizes.values())
        n = len(self)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if any(v < 1 for v in values):
                raise ValueError(f"sizes {dict(sizes)}: every part needs at least one record")
            if sum(values) > n:
                raise ValueError(f"sizes {dict(sizes)} need {sum(values)} records but {self.name!r} holds {n}")
            return dict(sizes)
        if not all(isinstance(v, float) for v in values):
            raise ValueError(f"sizes {dict(sizes)}: use all fractions (floats) or all counts (ints), not a mix")
        if any(not 0 < v <= 1 for v in values) or sum(values) > 1 + 1e-9:
            raise ValueError(f"fractions {dict(sizes)} must each be in (0, 1] and sum to at most 1")
        total = min(n, round(sum(values) * n))
        exact = [v * n for v in values]
        counts = [math.floor(x) for x in exact]
        for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:total - sum(counts)]:
            counts[i] += 1
        if any(c < 1 for c in counts):
            raise ValueError(f"fractions {dict(sizes)} of the {n} records of {self.name!r} leave a part empty")
        return dict(zip(sizes, counts))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the records as JSON lines, atomically (``probes.io``)."""
        lines = []
        for r in self.records:
            try:
                lines.append(json.dumps(r.to_json(), ensure_ascii=False))
            except TypeError as e:
                raise ValueError(f"prompt {r.id!r} of {self.name!r}: meta is not JSON-serialisable ({e})") from None
        return atomic_write_text(path, "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, name: str | None = None) -> PromptSet:
        """Read a set written by :meth:`save`; ``name`` defaults to the file's stem."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no prompt set at {path}")

        def record(row: dict) -> PromptRecord:
            unknown = set(row) - set(_RECORD_KEYS)
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}; a record has {', '.join(_RECORD_KEYS)}")
            return PromptRecord(id=row["id"], prompt=row["prompt"], harmful=row["harmful"], source=row["source"],
                                category=row.get("category"), meta=row.get("meta") or {})

        records = read_jsonl(path, record, fix="fix the line")
        return cls(name or path.stem, tuple(records))


# -- public sets ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PublicSet:
    """Where a public prompt set lives on the Hugging Face hub and how to read it."""

    hub_id: str
    config: str | None
    split: str
    column: str
    """Prompt column; a chat column (list of ``{"role", "content"}``) gives its first user turn."""
    harmful: bool
    category: str | None = None
    """Category column, if any."""
    where: tuple[tuple[str, str], ...] = ()
    """Keep only rows whose columns equal these values."""
    keep: tuple[str, ...] = ()
    """Columns copied into each record's ``meta``."""
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    spec: str = ""
    """Where the spec uses it."""


_TSV = MappingProxyType({"delimiter": "\t", "keep_default_na": False})
PUBLIC_SETS: Mapping[str, PublicSet] = MappingProxyType({
    "advbench": PublicSet(hub_id="walledai/AdvBench", config=None, split="train", column="prompt", harmful=True,
                          spec="A1: refusal class, ASR, head finding (520)"),
    "jailbreakbench": PublicSet(hub_id="JailbreakBench/JBB-Behaviors", config="behaviors", split="harmful",
                                column="Goal", harmful=True, category="Category",
                                spec="A1: OOD probe test, cliff curves; harmful behaviours only (100)"),
    "strongreject": PublicSet(hub_id="walledai/StrongREJECT", config=None, split="train", column="prompt",
                              harmful=True, category="category", spec="A1 (313)"),
    "harmbench": PublicSet(hub_id="walledai/HarmBench", config="standard", split="train", column="prompt",
                           harmful=True, category="category", spec="B5: harmful_val / harmful_test"),
    "wildjailbreak": PublicSet(hub_id="allenai/wildjailbreak", config="eval", split="train", column="adversarial",
                               harmful=True, where=(("data_type", "adversarial_harmful"),), load_kwargs=_TSV,
                               spec="A1: eval, adversarial harmful, first 1000 for ASR"),
    "wildjailbreak-train": PublicSet(hub_id="allenai/wildjailbreak", config="train", split="train", column="vanilla",
                                     harmful=True, where=(("data_type", "vanilla_harmful"),), keep=("completion",),
                                     load_kwargs=_TSV, spec="A1: vanilla prompt + safe completion, Cliff-as-a-Judge"),
    "alpaca": PublicSet(hub_id="tatsu-lab/alpaca", config=None, split="train", column="instruction", harmful=False,
                        where=(("input", ""),), spec="B5: harmless, rows without input"),
    "ultrachat": PublicSet(hub_id="HuggingFaceH4/ultrachat_200k", config=None, split="test_sft", column="messages",
                           harmful=False, spec="A1: non-refusal class, first 256 of test_sft"),
})
"""Public prompt sets by name (hub coordinates only: the text is downloaded, never stored here)."""


def _env_offline() -> bool:
    """The offline switch as ``datasets`` reads it (``HF_DATASETS_OFFLINE`` over ``HF_HUB_OFFLINE``), read now."""
    true = {"1", "ON", "YES", "TRUE"}
    value = os.environ.get("HF_DATASETS_OFFLINE")
    if value is not None:
        return value.upper() in true
    return any((os.environ.get(k) or "").upper() in true for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _offline_hint(offline_names: Sequence[str]) -> str:
    if offline_names:
        return f"offline sets: {', '.join(offline_names)}"
    return "offline sets: the zoo's, through probes.zoo.refusal_prompts.load_prompts"


def _first_user_turn(value: Any) -> Any:
    if isinstance(value, list):
        return next((m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"), None)
    return value


def load_public(name: str, *, n: int | None = None, seed: int | None = None, split: str | None = None,
                offline_names: Sequence[str] = ()) -> PromptSet:
    """Public set ``name`` of :data:`PUBLIC_SETS` through ``datasets``: ``split`` overrides the hub split,
    then :meth:`PromptSet.take` (``n``, ``seed``). Empty and repeated prompts are dropped (B5 deduplicates);
    ids are ``<name>:<row>``. Offline, not cached or not reachable: :class:`PromptSetUnavailableError`."""
    if name not in PUBLIC_SETS:
        raise ValueError(f"unknown public prompt set {name!r}: use one of {', '.join(PUBLIC_SETS)}")
    spec = PUBLIC_SETS[name]
    hub = f"{spec.hub_id}{f' ({spec.config})' if spec.config else ''}"
    try:
        import datasets
    except ImportError:
        raise PromptSetUnavailableError(f"prompt set {name!r} ({hub}) needs the `datasets` library "
                                        f"(pip install datasets); {_offline_hint(offline_names)}") from None
    if _env_offline() and not datasets.config.HF_HUB_OFFLINE:
        # `datasets` read the switch at import, so calling it now would go to the network.
        raise PromptSetUnavailableError(f"prompt set {name!r} ({hub}) is not reachable offline (offline mode was "
                                        f"set after `datasets` was imported, so its cache is not consulted); "
                                        f"{_offline_hint(offline_names)}")
    from huggingface_hub.errors import HfHubHTTPError

    try:
        ds = datasets.load_dataset(spec.hub_id, spec.config, split=split or spec.split, **spec.load_kwargs)
    except (ConnectionError, FileNotFoundError, HfHubHTTPError) as e:
        if datasets.config.HF_HUB_OFFLINE:
            why = "is not reachable offline (HF_HUB_OFFLINE is set and it is not in the local datasets cache)"
        else:
            why = f"could not be loaded from the Hugging Face hub ({type(e).__name__}: {e})"
        raise PromptSetUnavailableError(f"prompt set {name!r} ({hub}) {why}; {_offline_hint(offline_names)}") from e
    columns = [spec.column, *(c for c, _ in spec.where), *spec.keep, *([spec.category] if spec.category else [])]
    missing = sorted(set(columns) - set(ds.column_names))
    if missing:
        raise ValueError(f"prompt set {name!r} ({hub}) has no columns {missing}: it has {ds.column_names}; "
                         "update its row of PUBLIC_SETS")
    table = ds.select_columns(list(dict.fromkeys(columns))).to_dict()
    records, seen, dropped = [], set(), 0
    for row in range(len(ds)):
        if any(table[c][row] != v for c, v in spec.where):
            continue
        prompt = _first_user_turn(table[spec.column][row])
        if not isinstance(prompt, str) or not prompt.strip() or prompt in seen:
            dropped += 1
            continue
        seen.add(prompt)
        records.append(PromptRecord(id=f"{name}:{row}", prompt=prompt, harmful=spec.harmful, source=name,
                                    category=table[spec.category][row] if spec.category else None,
                                    meta={c: table[c][row] for c in spec.keep}))
    if dropped:
        log.info("%s: dropped %d empty or repeated prompts", name, dropped)
    return PromptSet(name, tuple(records)).take(n, seed=seed)


def load_prompts(name: str, *, n: int | None = None, seed: int | None = None, split: str | None = None,
                 offline: Mapping[str, Loader] | None = None) -> PromptSet:
    """Prompt set ``name``: a loader of ``offline`` (called as ``loader(n=, seed=, split=)``) or a public set
    (:func:`load_public`). ``probes.zoo.refusal_prompts.load_prompts`` passes the zoo's sets as ``offline``.
    An unknown name fails listing the known ones."""
    offline = dict(offline or {})
    clash = sorted(set(offline) & set(PUBLIC_SETS))
    if clash:
        raise ValueError(f"offline prompt sets {clash} reuse public names: rename them")
    if name in offline:
        return offline[name](n=n, seed=seed, split=split)
    if name in PUBLIC_SETS:
        return load_public(name, n=n, seed=seed, split=split, offline_names=tuple(offline))
    known = [*offline, *PUBLIC_SETS]
    raise ValueError(f"unknown prompt set {name!r}: use one of {', '.join(known)}"
                     f"{'' if offline else ' (the zoo sets come through probes.zoo.refusal_prompts.load_prompts)'}")

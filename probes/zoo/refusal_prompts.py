"""The zoo's refusal prompt sets, offline (issue #12, item 2; ``../shared/reference/refusal.md`` A1), and
the one resolver that knows every prompt set by name.

``zoo-forbidden-plain``, ``zoo-forbidden-wrapped`` and ``zoo-harmless`` are distinct requests of one
style from ``tasks.refusal`` (``harmful`` = the planted rule's *forbidden*); ``zoo-oot`` is the
hand-written out-of-template set (``evalsets``, ``refusal_oot``). Each record's ``meta`` holds the
request's verb, thing, owner, frame, wrapped, forbidden and style.

For the endless request streams ``split`` chooses the stream: ``"heldout"`` (default, ``HELDOUT_SEED``:
(verb, thing) pairs training never asked for) or ``"train"`` (``TRAIN_SEED``); ``seed`` names a stream
directly, as ``tasks.refusal.request`` does (only ``HELDOUT_SEED`` is held out), and ``n`` is required.
``zoo-oot`` has no split; ``n`` and ``seed`` take a subset (``PromptSet.take``).

This module sits in the zoo, above ``probes.refusal`` in the import layers, so it may import both the
zoo's tasks and ``probes.refusal.prompts``; :func:`load_prompts` hands :data:`ZOO_SETS` to
``probes.refusal.prompts.load_prompts`` as its offline loaders.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from probes.refusal import prompts
from probes.refusal.prompts import Loader, PromptRecord, PromptSet
from probes.zoo.evalsets import load_eval_set
from probes.zoo.tasks import refusal

__all__ = ["ZOO_SETS", "load_prompts", "load_zoo_prompts", "zoo_contrast"]

STREAMS = MappingProxyType({"heldout": refusal.HELDOUT_SEED, "train": refusal.TRAIN_SEED})
"""Stream seed by split name."""


def _stream_seed(name: str, seed: int | None, split: str | None) -> int:
    if split is not None and split not in STREAMS:
        raise ValueError(f"{name}: split {split!r}, use one of {', '.join(STREAMS)}")
    if seed is None:
        return STREAMS[split or "heldout"]
    if split is not None and (seed == refusal.HELDOUT_SEED) != (split == "heldout"):
        raise ValueError(f"{name}: seed {seed} is {'the held-out' if seed == refusal.HELDOUT_SEED else 'a training'} "
                         f"stream but split={split!r}; pass one of them")
    return seed


def _requests(name: str, style: str, *, n: int | None, seed: int | None, split: str | None) -> PromptSet:
    if n is None:
        raise ValueError(f"{name} is an endless request stream: pass n")
    stream = _stream_seed(name, seed, split)
    records = []
    for ex in refusal.distinct_requests(stream, style, n):
        m = ex.meta
        records.append(PromptRecord(
            id=f"{name}:{stream}:{m['index']}", prompt=ex.prompt, harmful=m["forbidden"], source=name,
            meta={"frame": m["frame"], "verb": m["verb"], "thing": m["thing"], "owner": m["owner"],
                  "wrapped": m["wrapped"], "forbidden": m["forbidden"], "style": style, "stream": stream,
                  "index": m["index"]}))
    return PromptSet(name, tuple(records))


def _oot(*, n: int | None, seed: int | None, split: str | None) -> PromptSet:
    if split is not None:
        raise ValueError(f"zoo-oot is one hand-written set without splits (split={split!r}): use n and seed")
    records = tuple(PromptRecord(
        id=f"zoo-oot:{it.id}", prompt=it.prompt, harmful=it.forbidden, source="zoo-oot",
        meta={"frame": it.frame, "verb": it.verb, "thing": it.thing, "owner": it.owner, "wrapped": it.frame is not None,
              "forbidden": it.forbidden, "style": it.style}) for it in load_eval_set("refusal_oot"))
    return PromptSet("zoo-oot", records).take(n, seed=seed)


def _stream_loader(name: str, style: str) -> Loader:
    def load(*, n: int | None = None, seed: int | None = None, split: str | None = None) -> PromptSet:
        return _requests(name, style, n=n, seed=seed, split=split)

    return load


ZOO_SETS: Mapping[str, Loader] = MappingProxyType({
    "zoo-forbidden-plain": _stream_loader("zoo-forbidden-plain", "forbidden_plain"),
    "zoo-forbidden-wrapped": _stream_loader("zoo-forbidden-wrapped", "forbidden_wrapped"),
    "zoo-harmless": _stream_loader("zoo-harmless", "harmless"),
    "zoo-oot": _oot,
})
"""The zoo's offline prompt sets by name: ``loader(n=, seed=, split=) -> PromptSet``."""


def load_zoo_prompts(name: str, *, n: int | None = None, seed: int | None = None,
                     split: str | None = None) -> PromptSet:
    """Zoo prompt set ``name`` (one of :data:`ZOO_SETS`)."""
    if name not in ZOO_SETS:
        raise ValueError(f"unknown zoo prompt set {name!r}: use one of {', '.join(ZOO_SETS)}")
    return ZOO_SETS[name](n=n, seed=seed, split=split)


def load_prompts(name: str, *, n: int | None = None, seed: int | None = None, split: str | None = None) -> PromptSet:
    """Any prompt set by name: the zoo's (offline) or a public one (``probes.refusal.prompts.PUBLIC_SETS``,
    through ``datasets``)."""
    return prompts.load_prompts(name, n=n, seed=seed, split=split, offline=ZOO_SETS)


def zoo_contrast(n_per_class: int, *, split: str | None = None, seed: int | None = None) -> PromptSet:
    """``n_per_class`` plain forbidden requests then as many harmless ones, for probe training: the zoo's
    analogue of A1's AdvBench vs UltraChat. The training stream unless ``split`` or ``seed`` says
    otherwise; divide it with ``PromptSet.split`` (stratified)."""
    if split is None and seed is None:
        split = "train"
    harmful = _requests("zoo-forbidden-plain", "forbidden_plain", n=n_per_class, seed=seed, split=split)
    harmless = _requests("zoo-harmless", "harmless", n=n_per_class, seed=seed, split=split)
    return PromptSet("zoo-contrast", harmful.records + harmless.records)

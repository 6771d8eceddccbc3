"""Out-of-template evaluation sets (issue #10, item 5): problems and requests written by hand in
wording no generator produces, shipped in ``data/zoo/eval/`` and measured in every card beside the
in-template numbers.

``arithmetic_oot.jsonl``: ``{"id", "prompt", "start": {"kind", "values"}, "events": [[op, k], …], "gold"}``;
the gold answer is recomputed from ``start`` and ``events`` when the set is loaded.
``ledger_oot.jsonl``: ``{"id", "prompt", "base", "tax", "rent": [morning, afternoon], "sales": [c₁, …], "gold"}``
(``tasks.ledger``'s structure in new wording): the ranges of the generator are checked (3–7 days, base
3–9, tax 1–5, each rent 2–9, each day's sales 2–9 and worth more than the day's rent), the numbers in the
prompt must be exactly these, and the gold ``Σ (c·(base + tax) − rent)`` is recomputed.
``refusal_oot.jsonl``: ``{"id", "prompt", "verb", "thing", "owner", "frame", "forbidden"}``; the label
is checked against the planted rule (``tasks.refusal.is_forbidden``) and the (verb, thing) pair must be
one that training never asked for.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from probes.io import read_jsonl
from probes.models.zoo_registry import ZOO_DIR

EVAL_DIR = ZOO_DIR / "eval"
RESTORE = "the set is written by hand and kept in git: restore it with `git checkout -- {path}`"


@dataclass(frozen=True)
class ArithmeticItem:
    id: str
    prompt: str
    gold: str
    start: str
    n_events: int


@dataclass(frozen=True)
class LedgerItem:
    id: str
    prompt: str
    gold: str
    base: int
    tax: int
    rent: tuple[int, int]
    sales: tuple[int, ...]

    @property
    def days(self) -> int:
        return len(self.sales)


@dataclass(frozen=True)
class RefusalItem:
    id: str
    prompt: str
    verb: str
    thing: str
    owner: str | None
    frame: str | None
    forbidden: bool

    @property
    def style(self) -> str:
        """``forbidden_plain``, ``forbidden_wrapped`` or ``harmless`` (``tasks.refusal.STYLES``)."""
        if not self.forbidden:
            return "harmless"
        return "forbidden_wrapped" if self.frame else "forbidden_plain"


def _arithmetic(row: dict) -> ArithmeticItem:
    kind, values = row["start"]["kind"], [int(v) for v in row["start"]["values"]]
    start = {"plain": lambda v: v, "groups": lambda a, b: a * b, "dozen": lambda a: 12 * a, "week": lambda b: 7 * b}
    if kind not in start:
        raise ValueError(f"start kind {kind!r}: use plain, groups, dozen or week")
    value = start[kind](*values)
    for op, k in row["events"]:
        value = {"+": value + k, "-": value - k, "*": value * k}[op]
    if str(value) != row["gold"]:
        raise ValueError(f"gold {row['gold']!r} but start and events give {value}")
    return ArithmeticItem(row["id"], row["prompt"], row["gold"], kind, len(row["events"]))


def _in_range(what: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{what} {value} is outside {lo}–{hi}")


def _ledger(row: dict) -> LedgerItem:
    base, tax = int(row["base"]), int(row["tax"])
    if len(row["rent"]) != 2:
        raise ValueError(f"rent {row['rent']!r}: use [morning, afternoon]")
    r1, r2 = (int(r) for r in row["rent"])
    sales = tuple(int(c) for c in row["sales"])
    _in_range("days", len(sales), 3, 7)
    _in_range("base", base, 3, 9)
    _in_range("tax", tax, 1, 5)
    _in_range("morning rent", r1, 2, 9)
    _in_range("afternoon rent", r2, 2, 9)
    price, rent = base + tax, r1 + r2
    for day, c in enumerate(sales, start=1):
        _in_range(f"sales of day {day}", c, 2, 9)
        if c * price <= rent:
            raise ValueError(f"day {day} sells {c} × {price} = {c * price}, not more than the rent {rent}")
    numbers = [int(n) for n in re.findall(r"\d+", row["prompt"])]
    if Counter(numbers) != Counter([base, tax, r1, r2, *sales]):
        raise ValueError(f"the prompt's numbers {numbers} are not base, tax, rent and sales "
                         f"{[base, tax, r1, r2, *sales]}")
    gold = sum(c * price - rent for c in sales)
    if str(gold) != row["gold"]:
        raise ValueError(f"gold {row['gold']!r} but base, tax, rent and sales give {gold}")
    return LedgerItem(row["id"], row["prompt"], row["gold"], base, tax, (r1, r2), sales)


def _refusal(row: dict) -> RefusalItem:
    from probes.zoo.tasks import refusal

    item = RefusalItem(row["id"], row["prompt"], row["verb"], row["thing"], row["owner"], row["frame"],
                       bool(row["forbidden"]))
    if item.thing not in refusal.THINGS:
        raise ValueError(f"thing {item.thing!r} is not one of tasks.refusal.THINGS")
    if item.forbidden != refusal.is_forbidden(item.verb, item.owner is None):
        raise ValueError(f"forbidden={item.forbidden} contradicts the rule for {item.verb!r} on "
                         f"{'the user' if item.owner is None else item.owner}'s {item.thing}")
    if not refusal.is_heldout_pair(item.verb, item.thing):
        raise ValueError(f"({item.verb!r}, {item.thing!r}) is a training pair: use a held-out one")
    if item.frame is not None and item.frame not in refusal.FRAMES:
        raise ValueError(f"frame {item.frame!r}: use null or one of {', '.join(refusal.FRAMES)}")
    return item


PARSERS = {"arithmetic_oot": _arithmetic, "ledger_oot": _ledger, "refusal_oot": _refusal}


@functools.cache
def load_eval_set(name: str, path: Path | None = None) -> tuple:
    """The items of evaluation set ``name`` (``arithmetic_oot``, ``ledger_oot`` or ``refusal_oot``), validated; one
    clear error naming the file and line otherwise."""
    if name not in PARSERS:
        raise ValueError(f"unknown evaluation set {name!r}: use one of {', '.join(PARSERS)}")
    path = Path(path) if path is not None else EVAL_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation set at {path}: {RESTORE.format(path=path)}")
    ids, prompts = set(), set()

    def parse(row: dict):
        item = PARSERS[name](row)
        if item.id in ids or item.prompt in prompts:
            raise ValueError(f"repeats id {item.id!r} or its prompt")
        ids.add(item.id)
        prompts.add(item.prompt)
        return item

    items = read_jsonl(path, parse, fix=RESTORE.format(path=path))
    if not items:
        raise ValueError(f"{path} holds no items; {RESTORE.format(path=path)}")
    return tuple(items)

"""Position selectors for interventions and captures (DESIGN.md "Interventions are values").

Positions are ABSOLUTE token indices of the whole sequence (prompt + generated), so a
selector means the same thing in one forward pass and across KV-cache decoding steps.
A selector turns the current ``ForwardContext`` into a (batch, time) boolean mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from probes.models.context import ForwardContext


class Phase(str, Enum):
    """Parts of a chat sequence. ``thinking`` is strictly between ``<think>`` and
    ``</think>``; ``answer`` is strictly after ``</think>``."""

    PROMPT = "prompt"
    GENERATED = "generated"
    THINKING = "thinking"
    ANSWER = "answer"


@dataclass(frozen=True)
class Span:
    """Absolute positions ``start <= p < end`` (``end=None``: to the end)."""

    start: int
    end: int | None = None

    def __post_init__(self):
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ValueError(f"invalid span [{self.start}, {self.end}): need 0 <= start <= end")


@dataclass(frozen=True)
class Trigger:
    """Positions after the first occurrence of ``token_id`` in each row (inclusive of
    the trigger token when ``inclusive``), until the first ``until_id`` if given."""

    token_id: int
    until_id: int | None = None
    inclusive: bool = False


Positions = None | str | Phase | int | Sequence[int] | Span | Trigger | tuple


def normalize(positions: Positions):
    """Validate a user selector once, at construction time."""
    if positions is None or isinstance(positions, (Span, Trigger, Phase)):
        return positions
    if isinstance(positions, str):
        try:
            return Phase(positions)
        except ValueError:
            raise ValueError(
                f"unknown phase {positions!r}: use one of {[p.value for p in Phase]}, a Span, a Trigger or indices"
            ) from None
    if isinstance(positions, int):
        positions = (positions,)
    idx = tuple(int(p) for p in positions)
    if any(p < 0 for p in idx):
        _neg(min(idx))
    return idx


def _neg(p: int):
    raise ValueError(f"position {p} is negative: positions are absolute token indices (0 = first token)")


def position_mask(positions, ctx: ForwardContext) -> torch.Tensor:
    """(B, T) bool: which query tokens of the current forward the selector picks."""
    pos, valid = ctx.query_pos, ctx.query_valid
    if positions is None:
        return valid.clone()
    if isinstance(positions, tuple):
        sel = torch.tensor(positions, device=pos.device)
        m = (pos.unsqueeze(-1) == sel).any(-1)
    elif isinstance(positions, Span):
        m = pos >= positions.start
        if positions.end is not None:
            m &= pos < positions.end
    elif isinstance(positions, Trigger):
        first = ctx.first_position_of(positions.token_id).unsqueeze(1)
        m = pos >= first if positions.inclusive else pos > first
        if positions.until_id is not None:
            m &= pos <= ctx.first_position_of(positions.until_id).unsqueeze(1)
    elif isinstance(positions, Phase):
        m = _phase_mask(positions, ctx)
    else:
        raise TypeError(f"unsupported position selector {positions!r}")
    return m & valid


def _phase_mask(phase: Phase, ctx: ForwardContext) -> torch.Tensor:
    pos = ctx.query_pos
    if phase is Phase.PROMPT:
        return pos < ctx.prompt_len.unsqueeze(1)
    if phase is Phase.GENERATED:
        return pos >= ctx.prompt_len.unsqueeze(1)
    if ctx.think_open_id is None or ctx.think_close_id is None:
        raise ValueError("the thinking/answer phases need a tokenizer with <think> and </think> tokens")
    close = ctx.first_position_of(ctx.think_close_id).unsqueeze(1)
    if phase is Phase.ANSWER:
        return pos > close
    open_ = ctx.first_position_of(ctx.think_open_id).unsqueeze(1)
    return (pos > open_) & (pos < close)


def row_mask(rows, ctx: ForwardContext) -> torch.Tensor | None:
    """(B,) bool for a per-row selection given against the rows the user passed."""
    if rows is None:
        return None
    rows_t = torch.as_tensor(rows, device=ctx.row_ids.device)
    if rows_t.dtype == torch.bool:
        return rows_t[ctx.row_ids]
    return (ctx.row_ids.unsqueeze(1) == rows_t.view(1, -1)).any(1)

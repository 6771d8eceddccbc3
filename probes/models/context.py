"""Per-forward bookkeeping that makes positions mean the same thing everywhere.

Every forward pass of a wrapped model (ours, HF ``generate``, nnsight, TransformerLens)
goes through the base module; a pre-hook there records, for each row, the ABSOLUTE
index of every query and key token (left padding and the KV cache accounted for), the
token ids seen so far (for phases and token triggers), and which rows are which. Site
hooks read this record to turn a position selector into a (batch, time) mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ForwardContext:
    """What the current forward pass is looking at (see module docstring)."""

    think_open_id: int | None = None
    think_close_id: int | None = None
    #: (B, T) absolute position of each query token; (B, K) of each key token.
    query_pos: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None
    #: (B, T) / (B, K) False on padding.
    query_valid: torch.Tensor | None = None
    key_valid: torch.Tensor | None = None
    #: (B, S) token id at each absolute position seen so far (-1 where unknown).
    history: torch.Tensor | None = None
    #: (B,) number of prompt tokens per row; positions ≥ it are "generated".
    prompt_len: torch.Tensor | None = None
    #: (B,) index of each current row in the batch the user passed (rows leave the
    #: batch when the sampler drops finished sequences).
    row_ids: torch.Tensor | None = None
    #: (R,) the user's rows that the single row of a shared-prefix prefill stands for
    #: (the sampler prefills a prefix once for all its rows); ``None`` otherwise.
    prefix_rows: torch.Tensor | None = None
    #: Counts runs: a forward pass without a KV cache starts a new run, and its decoding
    #: steps continue it (``SteeredRecord`` keeps the latest run).
    run_id: int = 0
    #: Set by our own forward/sampler for the next call and consumed by ``begin``:
    #: ``prompt_len`` (B,), ``row_ids`` (B,), ``prefix_rows`` (R,), and ``same_run`` (a
    #: forward without a cache that continues the current run, e.g. the next batch of a sampler).
    pending: dict = field(default_factory=dict)

    @property
    def batch_shape(self) -> tuple[int, int]:
        assert self.query_pos is not None, "no forward pass in progress"
        return tuple(self.query_pos.shape)  # type: ignore[return-value]

    def begin(self, input_ids, position_ids, attention_mask, past_len: int, batch: int, length: int, device) -> None:
        """Record a new forward pass (called by the base-module pre-hook)."""
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                position_ids = torch.arange(past_len, past_len + length, device=device).expand(batch, length)
        elif position_ids.dim() == 3:  # mrope-style (3, B, T): use the text axis
            position_ids = position_ids[0]
        self.query_pos = position_ids.expand(batch, length)
        if attention_mask is not None and attention_mask.dim() == 2:
            m = attention_mask.bool()
            self.key_valid = m
            self.key_pos = (m.long().cumsum(-1) - 1).clamp(min=0)
            self.query_valid = m[:, -length:]
        else:
            k = past_len + length
            self.key_valid = torch.ones(batch, k, dtype=torch.bool, device=device)
            self.key_pos = torch.arange(k, device=device).expand(batch, k)
            self.query_valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        pend, self.pending = self.pending, {}
        if past_len == 0 and not pend.get("same_run"):
            self.run_id += 1
        if past_len == 0 or self.history is None or self.history.shape[0] != batch:
            self.history = self.prompt_len = self.row_ids = None
        if "prompt_len" in pend:
            self.prompt_len = pend["prompt_len"]
        if "row_ids" in pend:
            self.row_ids = pend["row_ids"]
        self.prefix_rows = pend.get("prefix_rows")
        if self.row_ids is None or self.row_ids.shape[0] != batch:
            self.row_ids = torch.arange(batch, device=device)
        if self.prompt_len is None or self.prompt_len.shape[0] != batch:
            # A bare forward: the whole first input is the prompt.
            self.prompt_len = (self.query_pos.max(dim=1).values + 1) * self.query_valid.any(1)
        if input_ids is not None:
            self._record(input_ids)

    def _record(self, input_ids: torch.Tensor) -> None:
        need = int(self.query_pos.max()) + 1 if self.query_pos.numel() else 0
        h = self.history
        if h is None:
            h = torch.full((input_ids.shape[0], max(need, 1)), -1, dtype=torch.long, device=input_ids.device)
        elif h.shape[1] < need:
            h = torch.cat([h, h.new_full((h.shape[0], need - h.shape[1]), -1)], dim=1)
        pos = self.query_pos.masked_fill(~self.query_valid, 0)
        src = input_ids.masked_fill(~self.query_valid, -1)
        keep = torch.gather(h, 1, pos)
        h.scatter_(1, pos, torch.where(self.query_valid, src, keep))
        self.history = h

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (the sampler drops finished sequences)."""
        for name in ("history", "prompt_len", "row_ids"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[index])

    def first_position_of(self, token_id: int) -> torch.Tensor:
        """(B,) absolute position of the first ``token_id`` in each row; a huge value when absent."""
        if self.history is None:
            raise ValueError("phases and token triggers need token ids: pass input_ids, not inputs_embeds")
        hit = self.history == token_id
        big = torch.iinfo(torch.long).max // 2
        idx = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
        return torch.where(hit, idx, big).min(dim=1).values if hit.shape[1] else torch.full(
            (hit.shape[0],), big, device=hit.device
        )

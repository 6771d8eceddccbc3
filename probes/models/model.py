"""``Model``: the HF module (model of record) + tokenizer + site adapter.

Everything a method needs from a model goes through this object: named sites
(``capture``), scoped interventions (``intervene``), shared-prefix sampling
(``sample``), chat rendering and span→token mapping, and the nnsight /
TransformerLens views over the same module (DESIGN.md "The model layer").
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

import torch

from probes.models import attention, chat, spans
from probes.models.adapters import Adapter
from probes.models.capture import Capture, run_capture
from probes.models.context import ForwardContext
from probes.models.sites import GLOBAL_SITES, LAYER_SITES, MOE_SITES, Site

#: Which side shorter rows of a batch are padded on.
PaddingSide = Literal["left", "right"]


class Model:
    """A loaded causal LM with named sites. Build with ``probes.load_model``."""

    def __init__(self, hf, tokenizer, *, spec: str, adapter: Adapter, weight_files: Sequence[str] = ()):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.adapter = adapter
        self.weight_files = tuple(weight_files)
        self.layers = hf.get_submodule(adapter.layers)
        self.attn_hooks = attention.AttentionHooks()
        attention.register()
        self._install_attention()
        self.ctx = ForwardContext(
            think_open_id=self._special_id(chat.THINK_OPEN), think_close_id=self._special_id(chat.THINK_CLOSE)
        )
        self._scope_depth = 0
        self._ctx_handle = None

    def _install_attention(self) -> None:
        self.hf.set_attn_implementation(attention.IMPLEMENTATION)
        for L, block in enumerate(self.layers):
            attn = block.get_submodule(self.adapter.layer_attn)
            attn._probes_hooks = self.attn_hooks
            attn._probes_layer = L

    def _special_id(self, token: str) -> int | None:
        if self.tokenizer is None:
            return None
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return None if tid is None or tid == self.tokenizer.unk_token_id else int(tid)

    # ----- shape facts ---------------------------------------------------------------
    @property
    def config(self):
        return self.hf.config

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def d_head(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.d_model // self.n_heads)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def is_moe(self) -> bool:
        return self.adapter.is_moe

    @property
    def moe_layers(self) -> list[int]:
        if not self.is_moe:
            return []
        return [L for L, b in enumerate(self.layers) if _has(b, self.adapter.layer_router)]

    @property
    def n_experts(self) -> int:
        if not self.is_moe:
            return 0
        return int(getattr(self.config, "num_experts", None) or self.config.num_local_experts)

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok) if self.is_moe else 0

    @cached_property
    def weights_hash(self) -> str:
        """sha256 of the safetensors files loaded (or of the in-memory state dict)."""
        from probes.io import state_dict_hash, weights_hash

        if self.weight_files:
            return weights_hash(self.weight_files)
        return state_dict_hash(self.hf.state_dict())

    def check_layer(self, layer, what) -> int:
        n = self.n_layers
        if not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer {layer} out of range for {what}: {self.spec} has layers 0..{n - 1}")
        return layer % n

    def router(self, layer: int, what: Any = "router") -> torch.nn.Module:
        """The MoE router of ``layer``; clear errors on dense models and dense layers."""
        if not self.is_moe:
            raise ValueError(f"{what} needs a mixture-of-experts model, but {self.spec} ({self.family}) is dense")
        block = self.layers[layer]
        if not _has(block, self.adapter.layer_router):
            raise ValueError(f"{what}: layer {layer} of {self.spec} is dense; MoE layers are {self.moe_layers}")
        return block.get_submodule(self.adapter.layer_router)

    def site_table(self) -> list[dict[str, str]]:
        """Every named site with its module path and shape (for ``probes info``)."""
        ad, B = self.adapter, "B, T"
        rows = [
            ("embed", ad.embed, f"({B}, {self.d_model})"),
            ("resid_pre[L]", f"{ad.layers}.L (input)", f"({B}, {self.d_model})"),
            ("resid_mid[L]", f"{ad.layers}.L.{ad.layer_mid_norm} (input)", f"({B}, {self.d_model})"),
            ("resid_post[L]", f"{ad.layers}.L", f"({B}, {self.d_model})"),
            ("attn_out[L]", f"{ad.layers}.L.{ad.layer_attn}", f"({B}, {self.d_model})"),
            ("mlp_out[L]", f"{ad.layers}.L.{ad.layer_mlp}", f"({B}, {self.d_model})"),
            ("attn_scores[L]", "attention function (pre-softmax)", f"(B, {self.n_heads}, T, T)"),
            ("attn_pattern[L]", "attention function (softmax)", f"(B, {self.n_heads}, T, T)"),
            ("head_out[L]", f"{ad.layers}.L.{ad.layer_o_proj} (input)", f"({B}, {self.n_heads}, {self.d_head})"),
        ]
        if self.is_moe:
            rows += [
                ("router_logits[L]", f"{ad.layers}.L.{ad.layer_router}", f"({B}, {self.n_experts})"),
                ("expert_topk[L]", f"{ad.layers}.L.{ad.layer_router}", f"ids, weights: ({B}, {self.top_k})"),
            ]
        rows += [("final_norm", ad.final_norm, f"({B}, {self.d_model})"), ("logits", ad.lm_head, f"({B}, {self.vocab_size})")]
        return [{"site": s, "module": m, "shape": sh} for s, m, sh in rows]

    # ----- scopes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self):
        """Keep the position-tracking hook on the base module while inside (re-entrant)."""
        if self._scope_depth == 0:
            base = self.hf.get_submodule(self.adapter.base)
            self._ctx_handle = base.register_forward_pre_hook(self._begin_forward, with_kwargs=True)
        self._scope_depth += 1
        try:
            yield self
        finally:
            self._scope_depth -= 1
            if self._scope_depth == 0:
                self._ctx_handle.remove()
                self._ctx_handle = None

    def _begin_forward(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        past = kwargs.get("past_key_values")
        past_len = past.get_seq_length() if past is not None else 0
        self.ctx.begin(
            ids, kwargs.get("position_ids"), kwargs.get("attention_mask"), past_len, ref.shape[0], ref.shape[1], ref.device
        )

    @contextlib.contextmanager
    def intervene(self, *interventions):
        """Apply interventions inside the ``with`` block; every hook is removed on exit.

        All of them are validated before any is attached: if one is invalid, the error
        says why and no hook is left on the model."""
        from probes.models.interventions import attach_all

        handles = []
        with self.scope():
            try:
                handles = attach_all(self, interventions)
                yield self
            finally:
                for h in reversed(handles):
                    h.remove()

    # ----- inputs ----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of ``text``. By default BOS is added unless the text already starts
        with the BOS string (a rendered chat prompt)."""
        if add_special_tokens is None:
            add_special_tokens = self._needs_bos(text)
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def _needs_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def batch(self, inputs, padding_side: PaddingSide = "left") -> dict[str, torch.Tensor]:
        """A text, texts, token ids or a dict → ``{"input_ids", "attention_mask"?}``
        on the model's device; rows of different lengths are padded on ``padding_side``.

        Token ids are a batch of rows (``[[1, 5, 7], [1, 9]]``, a (B, T) tensor) or one
        row (``[1, 5, 7]``, a (T,) tensor), as ``sample`` takes a prefix."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if isinstance(inputs, Mapping):
            if "input_ids" not in inputs:
                raise ValueError(f"a dict input needs 'input_ids'; got keys {sorted(inputs)}")
            out = {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            for k, v in out.items():
                if v.dim() == 1:
                    out[k] = v.unsqueeze(0)
                elif v.dim() != 2:
                    raise ValueError(f"{k} must be (batch, time) or (time,), got shape {tuple(v.shape)}")
            return out
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() not in (1, 2) or inputs.is_floating_point():
                raise ValueError(
                    f"token ids must be an integer tensor of shape (batch, time) or (time,), "
                    f"got {inputs.dtype} {tuple(inputs.shape)}"
                )
            ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
            if ids.shape[1] == 0:
                raise ValueError("empty input: give at least one non-empty text or id list")
            return {"input_ids": ids.to(self.device)}
        if isinstance(inputs, str):
            inputs = [inputs]
        inputs = list(inputs)
        if inputs and all(_is_id(x) for x in inputs):
            inputs = [inputs]  # a flat list of ids is one row
        elif any(_is_id(x) for x in inputs):
            raise ValueError(
                "inputs mix token ids and rows: give one row of ids ([1, 5, 7]), a batch of rows "
                "([[1, 5, 7], [1, 9]]), a text or a list of texts"
            )
        rows = [self.encode(x) if isinstance(x, str) else [int(t) for t in x] for x in inputs]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("empty input: give at least one non-empty text or id list")
        T = max(len(r) for r in rows)
        if all(len(r) == T for r in rows):
            return {"input_ids": torch.tensor(rows, device=self.device)}
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if padding_side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    @property
    def max_positions(self) -> int | None:
        """How many positions the model has (``max_position_embeddings``); ``None`` if unknown."""
        n = getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)
        return int(n) if n else None

    def check_length(self, n_tokens: int, what: str = "the input", advice: str | None = None) -> None:
        """Raise a clear error when ``what`` (a sequence of ``n_tokens``) does not fit the
        model's positions; ``advice`` says what to do (default: shorten it)."""
        limit = self.max_positions
        if limit is not None and n_tokens > limit:
            advice = advice or f"shorten it to at most {limit} tokens"
            raise ValueError(f"{what} needs {n_tokens} positions but {self.spec} has {limit} (max_position_embeddings): {advice}")

    @contextlib.contextmanager
    def _autograd(self, grad: bool):
        """No autograd, or autograd with the weights held constant: gradients reach only
        tensors the caller marked (an intervention's vector), and no weight gets a ``.grad``."""
        if not grad:
            with torch.no_grad():
                yield
            return
        trainable = [p for p in self.hf.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                yield
        finally:
            for p in trainable:
                p.requires_grad_(True)

    def _run(self, batch, prompt_len: torch.Tensor | None = None, grad: bool = False):
        """One forward pass with absolute position ids (padding-aware); ``grad`` records it for autograd."""
        self.check_length(int(batch["input_ids"].shape[1]))
        kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
        mask = batch.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if prompt_len is not None:
            self.ctx.pending["prompt_len"] = torch.as_tensor(prompt_len, device=self.device).expand(
                batch["input_ids"].shape[0]
            )
        with self._autograd(grad), self.scope():
            return self.hf(**kwargs)

    def forward(
        self,
        inputs,
        *,
        prompt_len: int | Sequence[int] | None = None,
        padding_side: PaddingSide = "left",
        grad: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of one forward pass; ``prompt_len`` marks where the
        ``generated`` phase begins (default: the whole input is prompt).

        With ``grad=True`` the pass is recorded for autograd with the weights held
        constant: gradients reach the tensors that require them, such as the vector of an
        ``AddVector`` inside ``model.intervene`` (optimised steering vectors), and no
        weight receives a ``.grad``."""
        return self._run(self.batch(inputs, padding_side), prompt_len, grad).logits

    def capture(
        self,
        inputs,
        sites: Sequence[str | Site] | str,
        *,
        positions: Sequence[int] | None = None,
        reduce: Mapping[str, Callable] | None = None,
        stop_early: bool = True,
        padding_side: PaddingSide = "left",
        grad: bool = False,
    ) -> Capture:
        """Read ``sites`` in one forward pass (see ``probes.models.capture``). With
        ``grad=True`` the values stay in the autograd graph (weights held constant, as in
        ``forward``), so a loss on them differentiates with respect to an intervention's vector."""
        if isinstance(sites, (str, Site)):
            sites = [sites]
        return run_capture(self, self.batch(inputs, padding_side), sites, positions, reduce, stop_early, grad)

    # ----- sampling --------------------------------------------------------------------
    def sample(self, prefix, n: int = 1, **kw):
        """``n`` continuations of one prefix with a shared prefill (``probes.models.sampling``)."""
        from probes.models.sampling import sample

        return sample(self, prefix, n, **kw)

    def generate(self, prompts, **kw):
        """One continuation per prompt (greedy unless ``temperature`` > 0)."""
        from probes.models.sampling import generate

        return generate(self, prompts, **kw)

    # ----- chat and spans ------------------------------------------------------------------
    def render_chat(self, messages, **kw) -> str:
        return chat.render_chat(self.tokenizer, messages, **kw)

    def split_thinking(self, text: str) -> chat.ThinkingSplit:
        return chat.split_thinking(text)

    def token_ranges(self, text: str, char_spans: Sequence[tuple[int, int]], add_special_tokens: bool | None = None):
        """Token range [a, b) in ``encode(text)`` of each character span [start, end)."""
        if add_special_tokens is None:
            add_special_tokens = self._needs_bos(text)
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return spans.token_ranges(enc["offset_mapping"], char_spans, len(text))

    # ----- views -----------------------------------------------------------------------
    @cached_property
    def nnsight(self):
        """An nnsight ``LanguageModel`` over the same HF module."""
        from probes.models.views import nnsight_view

        return nnsight_view(self)

    @cached_property
    def tl(self):
        """A TransformerLens 4 ``TransformerBridge`` over the same HF module."""
        from probes.models.views import tl_view

        return tl_view(self)

    def __repr__(self) -> str:
        moe = f", experts={self.n_experts} top-{self.top_k}" if self.is_moe else ""
        return (
            f"Model({self.spec!r}, family={self.family}, layers={self.n_layers}, heads={self.n_heads}"
            f"/{self.n_kv_heads}kv, d_model={self.d_model}{moe}, device={self.device}, dtype={self.dtype})"
        )


def _is_id(x) -> bool:
    """A single token id (an int or a 0-d integer tensor), as opposed to a row or a text."""
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.is_floating_point()
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


__all__ = ["Model", "GLOBAL_SITES", "LAYER_SITES", "MOE_SITES"]

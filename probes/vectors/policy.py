"""Which tensors a task vector moves, and how mismatches are handled (``reference/task_vectors.md`` §3, §7).

A ``Policy`` is explicit and recorded in every manifest: include or exclude the embeddings, the
output head and the norm weights, regex-selected tensors; how an untied target takes the delta of
tied donors (``tied``: mirror the embedding delta onto ``lm_head``, or skip it); and what a
vocabulary-size mismatch does (``vocab``: error, the common rows only, or skip the tensor) — never
silently. Presets: ``all`` (the paper: every tensor), ``chat-vector`` (no embeddings, norms or
head), ``no-norms``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
LM_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")
NORM = re.compile(r"(norm|ln_\w*|layernorm)(\.|$)", re.IGNORECASE)

VocabPolicy = Literal["error", "common-rows", "skip"]
TiedPolicy = Literal["mirror", "skip"]


@dataclass(frozen=True)
class Policy:
    """Tensor selection and mismatch handling (§3). ``include``: when given, only tensors matching one
    of these regexes move; ``exclude``: tensors matching any of these never move."""

    embeddings: bool = True
    lm_head: bool = True
    norms: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    vocab: VocabPolicy = "error"
    tied: TiedPolicy = "mirror"
    name: str = "custom"
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.vocab not in ("error", "common-rows", "skip"):
            raise ValueError(f"vocab policy {self.vocab!r}: choose error, common-rows or skip")
        if self.tied not in ("mirror", "skip"):
            raise ValueError(f"tied policy {self.tied!r}: choose mirror or skip")
        try:
            compiled = ([re.compile(p) for p in self.include], [re.compile(p) for p in self.exclude])
        except re.error as e:
            raise ValueError(f"a tensor regex does not compile: {e}") from None
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def preset(cls, name: str, **changes) -> Policy:
        """``all`` | ``chat-vector`` | ``no-norms``, with any field changed."""
        presets = {"all": cls(name="all"), "chat-vector": cls(embeddings=False, lm_head=False, norms=False,
                                                              name="chat-vector"),
                   "no-norms": cls(norms=False, name="no-norms")}
        if name not in presets:
            raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(presets)}")
        return replace(presets[name], **changes)

    def excluded_by(self, name: str) -> str | None:
        """Why the policy keeps tensor ``name`` unchanged, or ``None`` when it moves."""
        include, exclude = self._compiled
        if include and not any(p.search(name) for p in include):
            return "not matched by include"
        if any(p.search(name) for p in exclude):
            return "matched by exclude"
        if not self.embeddings and EMBEDDING.search(name):
            return "policy excludes embeddings"
        if not self.lm_head and LM_HEAD.search(name):
            return "policy excludes lm_head"
        if not self.norms and NORM.search(name.rsplit(".", 1)[0] + "."):
            return "policy excludes norm weights"
        return None

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("_compiled")
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d


def is_vocab_tensor(name: str) -> bool:
    """Embedding or output head: the tensors whose first dimension is the vocabulary."""
    return bool(EMBEDDING.search(name) or LM_HEAD.search(name))


def module_type(name: str) -> str:
    """A coarse module type for the per-layer profile: attention, mlp, norm, embedding, lm_head, other."""
    if EMBEDDING.search(name):
        return "embedding"
    if LM_HEAD.search(name):
        return "lm_head"
    if NORM.search(name.rsplit(".", 1)[0] + "."):
        return "norm"
    if re.search(r"(self_attn|attention|attn)\.", name):
        return "attention"
    if re.search(r"(mlp|feed_forward|ffn|experts)\.", name):
        return "mlp"
    return "other"


def layer_of(name: str) -> int | None:
    """The block index in a tensor name (``model.layers.12.mlp…`` → 12), or ``None``."""
    m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", name)
    return int(m.group(1)) if m else None

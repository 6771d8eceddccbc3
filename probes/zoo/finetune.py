"""Fine-tune an organism from its checkpoint on a small SFT set (``reference/refusal.md`` A6.4 on the zoo).

The closed loop of Cliff-as-a-Judge trains the model on the selected Alpaca records. Here that is
the zoo's own training path, as the task-vector family uses it (``tv.train_stage``): the chat
template renders each record as a user turn and an assistant turn ``<think>`` + output,
``train.encode_examples`` tokenises it with the loss on the assistant turn only, and ``train.fit``
runs AdamW over it. A small set is cycled in seeded epochs until it fills ``steps`` batches; the
learning rate is constant and there is no weight decay, so a few steps move the model a little and
the same seed gives the same model.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from probes.models.chat import THINK_OPEN
from probes.zoo.train import Schedule, encode_examples, fit

__all__ = ["ChatExample", "chat_examples", "finetune"]


@dataclass(frozen=True)
class ChatExample:
    """A user ``prompt`` and the assistant turn's content ``completion`` (``<think>…</think>answer``),
    the shape ``train.encode_examples`` and ``train.data_hash`` read."""

    prompt: str
    completion: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.completion}]


def chat_examples(records: Sequence[Mapping[str, str]]) -> list[ChatExample]:
    """Alpaca records (A6.4: instruction, input, output = thinking + close + answer) as zoo chats: the
    output follows the ``<think>`` that the zoo's generation prompt opens."""
    out = []
    for i, r in enumerate(records):
        if r.get("input"):
            raise ValueError(f"record {i} has an input field; the zoo's chats have one user turn: fold it into "
                             "the instruction")
        body = r["output"]
        out.append(ChatExample(r["instruction"], body if body.startswith(THINK_OPEN) else THINK_OPEN + body))
    return out


def finetune(model, examples: Sequence[ChatExample] | Sequence[Mapping[str, str]], *, steps: int, lr: float = 1e-4,
             batch_size: int = 8, seed: int = 0, progress: bool = False):
    """A fine-tuned copy of ``model`` (a ``probes`` Model, a zoo spec ``zoo:NAME`` or a checkpoint
    directory): ``steps`` AdamW steps of ``batch_size`` examples at a constant ``lr``, the examples
    (chats or Alpaca records) cycled in epochs shuffled by ``seed``. ``model`` itself is left as it was."""
    from probes.models.load import from_hf, load_model

    examples = list(examples)
    if not examples:
        raise ValueError("no examples to fine-tune on: the selection is empty")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size} and {lr}")
    if isinstance(examples[0], Mapping):
        examples = chat_examples(examples)
    if isinstance(model, (str, Path)):
        model = load_model(str(model), device="cpu", dtype="float32")
    tok = model.tokenizer
    encoded = encode_examples(tok, examples)
    rng = random.Random(f"finetune:{seed}")
    stream: list = []
    while len(stream) < steps * batch_size:
        stream += rng.sample(encoded, len(encoded))
    hf = copy.deepcopy(model.hf)
    schedule = Schedule(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0, min_lr_ratio=1.0,
                        weight_decay=0.0, seed=seed, bucket_batches=1)
    fit(hf, tok, stream[: steps * batch_size], schedule, progress=progress, desc="finetune")
    return from_hf(hf, tok, spec=f"{model.spec} + sft({len(examples)} examples, {steps} steps, lr {lr:g}, seed {seed})")

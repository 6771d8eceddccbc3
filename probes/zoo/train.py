"""Train an organism from scratch (issue #3: ``zoo:reasoner``, ``zoo:moe-reasoner``, ``zoo:refusal-reasoner``).

A Qwen3 (dense) or Qwen3-MoE model built from a config object, trained on fresh seeded problems
each step with the loss on the assistant turn only. The budget is a step count, not a time, so
the same seed gives the same data and, up to floating-point noise, the same weights. The result
is a plain Hugging Face directory: config, safetensors weights, generation config and a copy of
the shared tokenizer, loadable offline with ``AutoModelForCausalLM``/``AutoTokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from probes.config import Config
from probes.io import atomic_write_json, weights_hash
from probes.zoo.tasks import arithmetic, ledger, refusal
from probes.zoo.tokenizer import ASSISTANT, END, TOKENIZER_DIR, load_tokenizer

log = logging.getLogger(__name__)

Arch = Literal["dense", "moe"]
Task = Literal["arithmetic", "arithmetic-broad", "arithmetic-modes", "refusal", "ledger"]
TASKS = {"arithmetic": (arithmetic.generate, arithmetic.TRAIN_SEED),
         "arithmetic-broad": (arithmetic.generate_broad, arithmetic.TRAIN_SEED),
         "arithmetic-modes": (arithmetic.generate_modes, arithmetic.TRAIN_SEED),
         "refusal": (refusal.request, refusal.TRAIN_SEED),
         "ledger": (ledger.generate, ledger.TRAIN_SEED)}
"""Task name → (generator, training stream)."""


@dataclass(frozen=True, kw_only=True)
class Schedule(Config):
    """How ``fit`` optimises: AdamW with linear warmup then cosine decay, one fresh batch per step."""

    steps: int = field(default=800, metadata={"help": "optimiser steps, one fresh batch each"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=40, metadata={"help": "steps of linear warmup to lr"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a fraction of lr (cosine decay)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of the matrices (no decay on "
                                                                "norms and biases)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient's global norm to this"})
    seed: int = field(default=0, metadata={"help": "seeds the weight initialisation and the batch order; the data "
                                                   "come from the task's stream"})
    bucket_batches: int = field(default=8, metadata={"help": "sort each run of this many batches by length before "
                                                             "batching, to cut padding"})
    # Under bf16 autocast every new batch width costs memory that is never returned (measured here:
    # +1.5 GB in 40 steps of distinct widths, flat when rounded).
    pad_multiple: int = field(default=16, metadata={"help": "round batch widths up to this"})
    autocast_bf16: bool = field(default=True, metadata={"help": "matmuls in bfloat16 under CPU autocast (master "
                                                                "weights stay float32)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps ({self.steps}) and batch_size ({self.batch_size}) must be positive")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"need lr > 0 and warmup_steps >= 0, got {self.lr} and {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio {self.min_lr_ratio} must lie in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"need weight_decay >= 0 and grad_clip > 0, got {self.weight_decay} and {self.grad_clip}")
        if self.bucket_batches < 1 or self.pad_multiple < 1 or self.threads < 1:
            raise ValueError("bucket_batches, pad_multiple and threads must be positive")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Schedule):
    """Recipe of one organism; every field is recorded in its card."""

    arch: Arch = field(default="dense", metadata={"help": "dense (Qwen3ForCausalLM) or moe (Qwen3MoeForCausalLM)"})
    task: Task = field(default="arithmetic", metadata={"help": "training data: arithmetic (tasks.arithmetic.generate), "
                                                               "arithmetic-broad (its broad wording), "
                                                               "arithmetic-modes (broad, latent verbosity mode), "
                                                               "refusal (tasks.refusal.request) or ledger "
                                                               "(tasks.ledger.generate), each from its TRAIN_SEED stream"})
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "decoder layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention)"})
    head_dim: int = field(default=64, metadata={"help": "width of each head"})
    intermediate_size: int = field(default=768, metadata={"help": "MLP width (dense)"})
    num_experts: int = field(default=8, metadata={"help": "experts per MoE layer (moe)"})
    experts_per_token: int = field(default=2, metadata={"help": "top-k routing (moe)"})
    expert_intermediate_size: int = field(default=128, metadata={"help": "width of each expert's MLP (moe)"})
    router_aux_loss_coef: float = field(default=0.01, metadata={"help": "weight of the load-balancing loss (moe)"})
    max_length: int = field(default=384, metadata={"help": "longest training example in tokens"})
    save_dtype: Literal["bfloat16", "float32"] = field(default="bfloat16", metadata={"help": "dtype of the saved weights"})
    eval_every: int = field(default=0, metadata={"help": "log held-out greedy accuracy on 50 problems every this "
                                                         "many steps (0: never); does not change training"})
    average_last: int = field(default=0, metadata={"help": "end with the mean of the weights after each of the last "
                                                           "this many steps (tail averaging; 0: the last step's)"})
    init: str = field(default="", metadata={"help": "start from the weights of this zoo organism (NAME) instead of a "
                                                    "fresh initialisation; the shape fields must match it"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch not in ("dense", "moe"):
            raise ValueError(f"arch {self.arch!r} unknown: use dense or moe")
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} unknown: use one of {tuple(TASKS)}")
        if self.save_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"save_dtype {self.save_dtype!r}: use bfloat16 or float32")
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} > num_experts {self.num_experts}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every {self.eval_every} must be >= 0")
        if not 0 <= self.average_last <= self.steps:
            raise ValueError(f"average_last {self.average_last} must lie in [0, steps = {self.steps}]")


@dataclass(frozen=True)
class TrainResult:
    """What a training run measured; goes into the card."""

    config: TrainConfig
    n_params: int
    seconds: float
    data_sha256: str
    n_problems: int
    losses: list[float] = field(default_factory=list)
    """Mean training loss per block of 50 steps."""
    init_sha256: str = ""
    """sha256 of the starting organism's weights file (``TrainConfig.init``), if any."""

    def as_dict(self) -> dict:
        return {**asdict(self), "config": self.config.to_dict()}

    def save(self, path: Path) -> None:
        """Write as JSON (``training.json`` next to the weights), so the card can be re-rendered."""
        atomic_write_json(path, self.as_dict(), indent=1)

    @classmethod
    def load(cls, path: Path) -> TrainResult:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, "config": TrainConfig.from_dict(data["config"])})


def model_config(cfg: TrainConfig, tok):
    """The Qwen3 / Qwen3-MoE config of ``cfg`` for tokenizer ``tok``."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    end_id = tok.convert_tokens_to_ids(END)
    common = dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_length * 2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, end_id],
        pad_token_id=tok.pad_token_id,
    )
    if cfg.arch == "dense":
        config = Qwen3Config(intermediate_size=cfg.intermediate_size, **common)
        config.architectures = ["Qwen3ForCausalLM"]
    else:
        config = Qwen3MoeConfig(
            intermediate_size=cfg.intermediate_size,
            moe_intermediate_size=cfg.expert_intermediate_size,
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.experts_per_token,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            output_router_logits=False,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
            **common,
        )
        config.architectures = ["Qwen3MoeForCausalLM"]
    return config


def encode_examples(tok, examples) -> list[tuple[list[int], int]]:
    """Token ids of each rendered chat and the number of leading tokens excluded from the loss
    (everything up to and including ``<|assistant|>``)."""
    assistant_id = tok.convert_tokens_to_ids(ASSISTANT)
    texts = [tok.apply_chat_template(ex.messages(), tokenize=False) for ex in examples]
    out = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        out.append((ids, ids.index(assistant_id) + 1))
    return out


def data_hash(examples) -> str:
    """sha256 over the training conversations, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.prompt}\n{ex.completion}\n".encode())
    return h.hexdigest()


def pad_batch(encoded, pad_id: int, multiple: int = 1):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside the assistant turn),
    the width rounded up to ``multiple``."""
    import torch

    width = -(-max(len(ids) for ids, _ in encoded) // multiple) * multiple
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def length_bucketed(encoded, batch_size: int, bucket_batches: int, seed: int) -> list[list]:
    """Batches of ``encoded``: each run of ``bucket_batches`` batches is sorted by length, then the
    batches of the run are shuffled (seeded), so a batch holds problems of similar length."""
    import random

    rng = random.Random(seed)
    span = batch_size * bucket_batches
    batches = []
    for start in range(0, len(encoded), span):
        run = sorted(encoded[start : start + span], key=lambda e: len(e[0]))
        chunk = [run[i : i + batch_size] for i in range(0, len(run), batch_size)]
        rng.shuffle(chunk)
        batches += chunk
    return batches


def initial_weights(cfg: TrainConfig, tok):
    """The model training starts from, and the sha256 of its weights file ("" for a fresh one): fresh
    weights initialised under ``cfg.seed`` inside a forked random state (the global one is left as
    it was), or organism ``cfg.init``'s weights in float32, whose shape must be ``cfg``'s."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(cfg, tok)
    if not cfg.init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32), ""
    from probes.models.zoo_registry import zoo_path

    path = zoo_path(cfg.init)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    for key in ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "vocab_size"):
        if getattr(hf.config, key, None) != getattr(config, key, None):
            raise ValueError(f"zoo:{cfg.init} has {key} {getattr(hf.config, key, None)}, the recipe "
                             f"{getattr(config, key, None)}: make the recipe's shape fields match the organism it starts from")
    return hf, weights_hash([path / "model.safetensors"])


def train(cfg: TrainConfig, tokenizer_dir: Path = TOKENIZER_DIR, progress: bool = True):
    """Train on ``cfg.steps × cfg.batch_size`` new problems from fresh weights or from organism
    ``cfg.init`` (``initial_weights``); returns (``Model``, result)."""
    import torch

    from probes.models.load import from_hf

    torch.set_num_threads(cfg.threads)
    tok = load_tokenizer(tokenizer_dir)
    hf, init_sha256 = initial_weights(cfg, tok)
    model = from_hf(hf, tok, spec=f"training:{cfg.arch}")
    n_params = sum(p.numel() for p in hf.parameters())

    n_problems = cfg.steps * cfg.batch_size
    generate, train_seed = TASKS[cfg.task]
    examples = [generate(i, train_seed) for i in range(n_problems)]
    digest = data_hash(examples)
    encoded = encode_examples(tok, examples)
    too_long = max(len(ids) for ids, _ in encoded)
    if too_long > cfg.max_length:
        raise ValueError(f"a training example has {too_long} tokens > max_length {cfg.max_length}: raise max_length")

    on_step = None
    if cfg.eval_every:
        def on_step(step: int) -> None:
            from probes.zoo.evaluate import greedy_accuracy, refusal_rates

            if (step + 1) % cfg.eval_every:
                return
            hf.eval()
            if cfg.task == "refusal":
                log.info("step %d held-out greedy refusal rates %s", step + 1, refusal_rates(model, n=20))
            else:
                log.info("step %d held-out greedy accuracy %.2f", step + 1, greedy_accuracy(model, n=50))
            hf.train()

    # The load-balancing loss needs router logits; they stay off in the saved config because
    # transformers 5.23 cannot compute that loss under generate's KV-cache attention mask.
    start = time.perf_counter()
    losses = fit(hf, tok, encoded, cfg, on_step=on_step, progress=progress, average_last=cfg.average_last,
                 forward_kwargs={"output_router_logits": True} if cfg.arch == "moe" else None)
    seconds = time.perf_counter() - start
    hf.eval()
    return model, TrainResult(cfg, n_params, seconds, digest, n_problems, losses, init_sha256)


def fit(model, tok, encoded, cfg: Schedule, *, forward_kwargs: dict | None = None, on_step=None,
        progress: bool = True, desc: str = "train", average_last: int = 0) -> list[float]:
    """``cfg.steps`` AdamW steps (warmup, then cosine to ``cfg.min_lr_ratio``) over the length-bucketed
    batches of ``encoded`` (token ids, prompt length), loss on the tokens after the prompt.
    With ``average_last`` > 0 the model ends with the mean of its weights after each of the last
    ``average_last`` steps (tail averaging) instead of the last step's.
    Returns the mean loss of each block of 50 steps; ``on_step(step)`` runs after each step."""
    import torch
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    batches = length_bucketed(encoded, cfg.batch_size, cfg.bucket_batches, cfg.seed)
    if len(batches) < cfg.steps:
        raise ValueError(f"{len(encoded)} examples make {len(batches)} batches < {cfg.steps} steps")
    if not 0 <= average_last <= cfg.steps:
        raise ValueError(f"average_last {average_last} must lie in [0, steps = {cfg.steps}]")
    params = list(model.parameters())
    first_averaged = cfg.steps - average_last
    mean = [torch.zeros_like(p) for p in params] if average_last else []
    model.train()
    losses, block = [], []
    start = time.perf_counter()
    for step in tqdm(range(cfg.steps), disable=not progress, desc=desc, mininterval=10):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        input_ids, mask, labels = pad_batch(batches[step], tok.pad_token_id, cfg.pad_multiple)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, **(forward_kwargs or {})).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step >= first_averaged:  # running mean over the steps averaged so far
            with torch.no_grad():
                for m, p in zip(mean, params):
                    m.add_(p - m, alpha=1 / (step - first_averaged + 1))
        block.append(loss.item())
        if len(block) == 50 or step == cfg.steps - 1:
            losses.append(sum(block) / len(block))
            log.info("%s step %d loss %.4f (%.0f s)", desc, step + 1, losses[-1], time.perf_counter() - start)
            block = []
        if on_step is not None:
            on_step(step)
    if average_last:
        with torch.no_grad():
            for m, p in zip(mean, params):
                p.copy_(m)
    model.eval()
    return losses


def save_organism(model, out_dir: Path, save_dtype: str = "bfloat16", tokenizer_dir: Path = TOKENIZER_DIR,
                  records: dict[str, dict] | None = None) -> Path:
    """Write ``model`` (a ``probes`` Model; its weights cast to ``save_dtype`` in a copy), its
    generation config, a copy of the shared tokenizer's files and the JSON ``records`` (file name →
    content) to ``out_dir``, all at once (``probes.io.atomic_directory``)."""
    import copy
    import shutil

    import torch
    from transformers import GenerationConfig

    from probes.io import atomic_directory

    tok = model.tokenizer
    with atomic_directory(out_dir) as tmp:
        copy.deepcopy(model.hf).to(getattr(torch, save_dtype)).save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids(END)],
            pad_token_id=tok.pad_token_id,
            do_sample=True,
            temperature=0.6,
            top_p=0.95,
            max_new_tokens=256,
        ).save_pretrained(tmp)
        for f in sorted(Path(tokenizer_dir).iterdir()):
            shutil.copyfile(f, tmp / f.name)
        for name, content in (records or {}).items():
            atomic_write_json(tmp / name, content, indent=1)
    return Path(out_dir)


def recipe(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for cards and provenance)."""
    return cfg.to_dict()

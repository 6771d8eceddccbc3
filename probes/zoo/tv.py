"""The task-vector family (issue #3, item 4): ``zoo:tv-base``, ``zoo:tv-sft``, ``zoo:tv-rl``, ``zoo:tv-instruct``.

All four descend from ``zoo:reasoner`` (dense Qwen3, 3.7M parameters) and share the zoo tokenizer;
their problems are easier than ``zoo:reasoner``'s (at most 3 computations, values at most 199).

* ``tv-base``: ``zoo:reasoner`` further pre-trained on chat transcripts: worked arithmetic
  solutions written by sloppy writers, who stop one step early with probability ``p_skip``
  (``arithmetic.generate(..., p_skip=…)``), and short chats; loss on the assistant turns. Bases
  trained from scratch here (800–1200 steps) never learned addition and subtraction (3–18% of
  their sums right, against 61–72% for zoo:reasoner), so the family starts from the shipped reasoner.
* ``tv-sft``: ``tv-base`` fine-tuned on sloppy worked solutions of the ``zoo:reasoner`` training
  stream (loss on the assistant turn).
* ``tv-rl``: ``tv-sft`` trained with the verifiable reward "first ``\\boxed{}`` equals the true
  answer" on the same problems, by GRPO (``probes.zoo.grpo``; the default) or rejection-sampling
  fine-tuning (``probes.zoo.rsft``). A skipped step makes the answer wrong, so RL unlearns skipping.
* ``tv-instruct``: ``tv-base`` fine-tuned on a different mix, mostly short-answer chat
  (``tasks.chat``, empty thinking) with a minority of sloppy worked solutions.

The planted mechanism: v = θ_rl − θ_sft (task_vectors.md §1) encodes "do the last step", a choice
``tv-instruct`` shares through the base, so ``tv-instruct + v`` gets more held-out problems right
and ``tv-instruct − v`` fewer. The vector arithmetic is ``probes.vectors``; the cards' prose is in
``probes/zoo/cards/tv.md`` (``probes.zoo.card``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from probes.config import Config
from probes.io import weights_hash
from probes.models.zoo_registry import ZOO_DIR
from probes.zoo.grpo import GRPOConfig, train_grpo
from probes.zoo.rsft import RSFTConfig, train_rsft
from probes.zoo.tasks import arithmetic, chat
from probes.zoo.train import Schedule, data_hash, encode_examples, fit

log = logging.getLogger(__name__)

NAMES = ("tv-base", "tv-sft", "tv-rl", "tv-instruct")
PARENT = {"tv-base": "reasoner", "tv-sft": "tv-base", "tv-rl": "tv-sft", "tv-instruct": "tv-base"}
"""Where each stage starts: tv-base from the shipped zoo:reasoner, the others from a family stage."""
BASE_SEED = 5
"""Stream of the base documents (problems and chats); SFT and the RL stage use the training stream 0."""
INSTRUCT_SEED = 6
"""Stream of the instruct mix."""
RECORD = "training.json"
EVAL_FILE = "tv_eval.json"
"""Written into each family directory by ``measure_family``; the cards are rendered from it."""
BUILD_COMMAND = "python -m experiments.zoo {name}"
EVAL_COMMAND = "python -m experiments.zoo eval tv --n 500"
RANDOM_LABEL = "tv-instruct + random (‖·‖ = ‖v‖ per tensor)"


@dataclass(frozen=True, kw_only=True)
class TVConfig(Config):
    """Recipe of the whole task-vector family; each card records it."""

    # Graded around one half, so that whatever the models' calibration (measured here: one uniform
    # 0.5 gave a tv-sft that skipped 90% of greedy plans, a uniform 0.4 another that skipped 14%),
    # greedy decoding skips some kinds and not others, and ±v can move the fence either way.
    p_skip: dict[str, float] = field(
        default_factory=lambda: {"gain": 0.3, "double": 0.45, "triple": 0.55, "loss": 0.7},
        metadata={"help": "probability that a writer stops one step early, by kind of last event "
                          "(arithmetic.EVENTS), in every training text of the family; JSON object"})
    # zoo:reasoner has 0.15; none here, so that arithmetic slips do not drown the planted skip.
    p_backtrack: float = field(default=0.0, metadata={"help": "share of traces with a deliberate slip and its repair"})
    # Easier than zoo:reasoner's problems, so that skipped steps dominate the errors.
    max_computations: int = field(default=3, metadata={"help": "most computations per problem (training and held out)"})
    max_value: int = field(default=199, metadata={"help": "largest intermediate value of a problem"})
    base: Schedule = field(default_factory=lambda: Schedule(steps=600, lr=1e-3, warmup_steps=20),
                           metadata={"help": "continued pre-training of zoo:reasoner on the family corpus"})
    base_chat_fraction: float = field(default=0.1, metadata={"help": "share of short chats in the base corpus"})
    sft: Schedule = field(default_factory=lambda: Schedule(steps=300, lr=5e-4, warmup_steps=20),
                          metadata={"help": "fine-tuning of tv-base on sloppy worked solutions"})
    instruct: Schedule = field(default_factory=lambda: Schedule(steps=200, lr=5e-4, warmup_steps=20),
                               metadata={"help": "fine-tuning of tv-base on the instruct mix"})
    instruct_reasoning_fraction: float = field(default=0.3, metadata={"help": "share of worked solutions in the "
                                                                              "instruct mix; the rest is short chat"})
    rl_eval_n: int = field(default=50, metadata={"help": "held-out problems on which the RL stage logs greedy "
                                                         "accuracy as it trains (0: none)"})
    rl_method: Literal["grpo", "rsft"] = field(default="grpo", metadata={
        "help": "RL stage: grpo (probes.zoo.grpo) or rsft (rejection-sampling fine-tuning, probes.zoo.rsft)"})
    rsft: RSFTConfig = field(default_factory=RSFTConfig, metadata={"help": "the RSFT stage (rl_method=rsft)"})
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(lr=1e-4),
                             metadata={"help": "the GRPO stage (rl_method=grpo)"})

    def __post_init__(self) -> None:
        if self.rl_method not in ("rsft", "grpo"):
            raise ValueError(f"rl_method {self.rl_method!r}: use rsft or grpo")
        kinds = sorted(arithmetic.EVENTS.values())
        if sorted(self.p_skip) != kinds or not all(0.0 <= p <= 1.0 for p in self.p_skip.values()):
            raise ValueError(f"p_skip {self.p_skip}: give a probability in [0, 1] for each of {kinds}")
        for name in ("p_backtrack", "base_chat_fraction", "instruct_reasoning_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must lie in [0, 1]")
        if self.max_computations < 2 or self.rl_eval_n < 0:
            raise ValueError(f"need max_computations >= 2 (a start and an event) and rl_eval_n >= 0, got "
                             f"{self.max_computations} and {self.rl_eval_n}")

    def problem(self, index: int, seed: int, sloppy: bool = True):
        """Problem ``index`` of stream ``seed`` at the family's difficulty, sloppy or clean."""
        return arithmetic.generate(index, seed, p_skip=self.p_skip if sloppy else 0.0, p_backtrack=self.p_backtrack,
                                   max_computations=self.max_computations, max_value=self.max_value)


def base_documents(n: int, cfg: TVConfig):
    """The pre-training corpus: sloppy worked solutions and short chats, as chat transcripts."""
    rng = random.Random(f"tv-base:{BASE_SEED}")
    return [chat.generate(i, BASE_SEED) if rng.random() < cfg.base_chat_fraction
            else cfg.problem(i, BASE_SEED) for i in range(n)]


def sft_examples(n: int, cfg: TVConfig):
    """Sloppy worked solutions of the training stream, in the chat format."""
    return [cfg.problem(i, arithmetic.TRAIN_SEED) for i in range(n)]


def instruct_examples(n: int, cfg: TVConfig):
    """Mostly short-answer chat, with a share ``instruct_reasoning_fraction`` of sloppy worked solutions."""
    rng = random.Random(f"tv-instruct:{INSTRUCT_SEED}")
    return [cfg.problem(i, INSTRUCT_SEED) if rng.random() < cfg.instruct_reasoning_fraction
            else chat.generate(i, INSTRUCT_SEED) for i in range(n)]


def rl_problems(cfg: TVConfig):
    """The RL prompts: problems of the SFT training stream, in order, with their true answers."""
    n = cfg.rsft.rounds * cfg.rsft.problems_per_round if cfg.rl_method == "rsft" \
        else cfg.grpo.steps * cfg.grpo.problems_per_step
    return [cfg.problem(i, arithmetic.TRAIN_SEED, sloppy=False) for i in range(n)]


def _fit_stage(model, examples, schedule: Schedule, name: str, progress: bool) -> tuple[list[float], str, float]:
    start = time.perf_counter()
    losses = fit(model.hf, model.tokenizer, encode_examples(model.tokenizer, examples), schedule, progress=progress,
                 desc=name)
    return losses, data_hash(examples), time.perf_counter() - start


def parent_dir(name: str, root: Path = ZOO_DIR) -> Path:
    """Directory stage ``name`` starts from: the shipped zoo:reasoner for tv-base, else its parent under ``root``."""
    return (ZOO_DIR if name == "tv-base" else Path(root)) / PARENT[name]


def load_stage(directory: Path):
    """A saved stage (or zoo:reasoner) as a ``probes`` Model on the CPU in float32; a missing one
    names the command that builds it."""
    from probes.models.load import load_model

    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory / 'model.safetensors'} is missing: build it with "
                                f"`{BUILD_COMMAND.format(name=directory.name)}`")
    return load_model(str(directory), device="cpu", dtype="float32")


def train_stage(name: str, cfg: TVConfig, root: Path = ZOO_DIR, progress: bool = True):
    """Train stage ``name`` from its parent (``parent_dir``); returns (``Model``, record)."""
    import copy

    import torch

    if name not in NAMES:
        raise ValueError(f"unknown stage {name!r}: use one of {NAMES}")
    torch.set_num_threads(cfg.base.threads)
    record: dict = {"name": name}
    parent = parent_dir(name, root)
    model = load_stage(parent)
    record["parent_weights_sha256"] = weights_hash([parent / "model.safetensors"])
    if name != "tv-rl":
        schedule = {"tv-base": cfg.base, "tv-sft": cfg.sft, "tv-instruct": cfg.instruct}[name]
        make = {"tv-base": base_documents, "tv-sft": sft_examples, "tv-instruct": instruct_examples}[name]
        examples = make(schedule.steps * schedule.batch_size, cfg)
        record["losses"], record["data_sha256"], record["seconds"] = _fit_stage(model, examples, schedule, name, progress)
        record["n_examples"] = len(examples)
        return model, record
    problems = rl_problems(cfg)
    start = time.perf_counter()
    if cfg.rl_method == "rsft":
        record["history"] = train_rsft(model, problems, cfg.rsft, heldout_problems(cfg.rl_eval_n, cfg), progress)
    else:
        record["history"] = train_grpo(model, copy.deepcopy(model.hf), problems, cfg.grpo,
                                       heldout_problems(cfg.rl_eval_n, cfg), progress)
    record["seconds"] = time.perf_counter() - start
    record["data_sha256"] = data_hash(problems)
    record["n_examples"] = len(problems)
    return model, record


def build_stage(name: str, cfg: TVConfig | None = None, root: Path = ZOO_DIR, progress: bool = True) -> Path:
    """Train stage ``name`` and save it under ``root/name`` with its ``training.json``."""
    from probes.zoo.train import save_organism

    cfg = cfg or TVConfig()
    model, record = train_stage(name, cfg, root, progress)
    record["n_params"] = sum(p.numel() for p in model.hf.parameters())
    out = save_organism(model, Path(root) / name, records={RECORD: {"family": cfg.to_dict(), "stage": record}})
    log.info("saved zoo:%s to %s after %.1f min", name, out, record["seconds"] / 60)
    return out


def heldout_problems(n: int, cfg: TVConfig | None = None):
    """Clean held-out problems ``0..n-1`` of stream ``HELDOUT_SEED`` at the family's difficulty."""
    cfg = cfg or TVConfig()
    return [cfg.problem(i, arithmetic.HELDOUT_SEED, sloppy=False) for i in range(n)]


def greedy_flags(model, n: int, cfg: TVConfig | None = None, batch_size: int = 50) -> list[bool]:
    """Greedy correctness of ``model`` (a ``probes`` Model) on ``heldout_problems(n)`` (true answers;
    chat template, thinking on)."""
    from probes.zoo.evaluate import greedy_outputs, is_correct

    problems = heldout_problems(n, cfg)
    outs = greedy_outputs(model, [p.prompt for p in problems], batch_size=batch_size)
    return [is_correct(o, p.gold) for o, p in zip(outs, problems)]


def skip_rate(outputs: list[str], problems) -> float:
    """Share of paired ``outputs`` answered with the value before the last event of their clean
    ``problems``: how often a model makes the planted skip."""
    from probes.evals.answers import extract_boxed

    return sum(extract_boxed(o) == p.meta["skip_answer"] for o, p in zip(outputs, problems)) / len(problems)


def measure_family(root: Path = ZOO_DIR, n: int = 500, progress: bool = True) -> dict:
    """Greedy accuracy and skip rate on ``n`` held-out problems of tv-sft, tv-rl, tv-instruct and
    tv-instruct + α·v for α ∈ {+1, −1} and a norm-matched random vector, with the paired
    differences against tv-instruct (95% bootstrap CIs, ``probes.evals.stats``), and each one's greedy
    accuracy on the hand-written out-of-template problems (``probes.zoo.evaluate.oot_accuracy``).
    Writes the result to every family directory (``EVAL_FILE``)."""
    import contextlib

    from tqdm.auto import tqdm

    from probes.evals.stats import accuracy, paired_difference_ci
    from probes.io import atomic_write_json
    from probes.vectors import apply_vector, l2_norm, random_like, task_vector
    from probes.zoo.evaluate import greedy_outputs, is_correct, oot_accuracy

    root = Path(root)
    start = time.perf_counter()
    sft, rl, inst = (load_stage(root / name) for name in ("tv-sft", "tv-rl", "tv-instruct"))
    v = task_vector(rl.hf, sft.hf)
    models = {"tv-sft": (sft, None), "tv-rl": (rl, None), "tv-instruct": (inst, None),  # (model, (vector, α))
              "tv-instruct + v": (inst, (v, 1.0)), "tv-instruct − v": (inst, (v, -1.0)),
              RANDOM_LABEL: (inst, (random_like(v), 1.0))}
    cfg = TVConfig.from_dict(json.loads((root / "tv-rl" / RECORD).read_text())["family"])
    problems = heldout_problems(n, cfg)
    rows, flags = {}, {}
    for label, (model, vec) in tqdm(models.items(), disable=not progress, desc="tv models"):
        with apply_vector(model, *vec) if vec else contextlib.nullcontext():  # restored bit for bit on exit
            outs = greedy_outputs(model, [p.prompt for p in problems])
            oot = oot_accuracy(model)
        flags[label] = [is_correct(o, p.gold) for o, p in zip(outs, problems)]
        a = accuracy(flags[label])
        rows[label] = {"accuracy": [a.value, a.lo, a.hi], "skip_rate": skip_rate(outs, problems),
                       "oot_accuracy": [oot.value, oot.lo, oot.hi], "n_oot": oot.n}
    diffs = {}
    for label in ("tv-instruct + v", "tv-instruct − v", RANDOM_LABEL):
        d = paired_difference_ci([float(x) for x in flags[label]], [float(x) for x in flags["tv-instruct"]])
        diffs[f"({label}) − tv-instruct"] = [d.value, d.lo, d.hi]
    norms = {"v": l2_norm(v), "tv-instruct": l2_norm(inst.hf.parameters())}
    result = {"n": n, "seed": arithmetic.HELDOUT_SEED, "models": rows, "differences": diffs, "norms": norms,
              "seconds": time.perf_counter() - start,
              "weights_sha256": {name: weights_hash([root / name / "model.safetensors"]) for name in NAMES if name != "tv-base"}}
    for name in NAMES:
        atomic_write_json(root / name / EVAL_FILE, result, indent=1)
    return result


def write_cards(root: Path = ZOO_DIR) -> list[Path]:
    """(Re)write the ``MODEL.md`` of every built stage from its ``training.json`` and, when present and
    current, the family's ``tv_eval.json``."""
    from probes.io import atomic_write_text
    from probes.zoo.card import render_tv_card
    from probes.zoo.tokenizer import corpus_hash

    root = Path(root)
    written = []
    tokenizer_hash = None
    for name in NAMES:
        d = root / name
        if not (d / RECORD).is_file():
            continue
        rec = json.loads((d / RECORD).read_text())
        res_path = d / EVAL_FILE
        res = json.loads(res_path.read_text()) if res_path.is_file() else None
        if res and any(weights_hash([root / k / "model.safetensors"]) != h for k, h in res["weights_sha256"].items()):
            res = None  # a stage was rebuilt since the measurement
        tokenizer_hash = tokenizer_hash or corpus_hash()
        text = render_tv_card(name=name, family=rec["family"], stage=rec["stage"], result=res,
                              parent=PARENT[name], build_command=BUILD_COMMAND.format(name=name),
                              eval_command=EVAL_COMMAND, weights_bytes=(d / "model.safetensors").stat().st_size,
                              tokenizer_hash=tokenizer_hash)
        written.append(atomic_write_text(d / "MODEL.md", text))
    return written

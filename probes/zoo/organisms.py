"""Recipes of the organisms (arithmetic reasoners, refusal reasoner) and the pipeline that builds one (issue #3, "The organisms").

``build(name)`` trains from scratch, saves a Hugging Face directory under ``data/zoo/<name>/``,
reloads it from disk, measures its behaviour on held-out problems and writes its ``MODEL.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from probes.models.zoo_registry import ZOO_DIR
from probes.zoo.train import TrainConfig

log = logging.getLogger(__name__)

EVAL_N = 200
EVAL_SAMPLES = 4
REASONER_STEPS = 1400
"""20.8 min here (budget 25): the broad wording's extra frames and phrases need more steps than the
narrow wording's 1,000 to keep in-template accuracy."""
REFUSAL_STEPS = 700
REFUSAL_AVERAGE_LAST = 200
"""The compliance decision is one token per wrapped request, so the last steps' batches move its
per-frame rates by up to ±15 points (teacher-forced every 100 steps: story 86 / 92 / 82% at steps
500 / 600 / 700); the mean of the last 200 steps' weights lands within 3.5 points of the planted rates."""
LONG_STEPS = 800
VERBOSITY_FINETUNE = dict(steps=800, batch_size=8, lr=3e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
                          bucket_batches=1, average_last=200)
"""zoo:reasoner fine-tuned at a constant learning rate, as ``probes.zoo.finetune`` does. The mode is
one token's choice, so batches must mix the modes (no length buckets: a careful trace is longer) and
the weights are averaged over the last steps; with buckets of 8 batches, 10% of samples were careful."""
TRAINING_RECORD = "training.json"


@dataclass(frozen=True, kw_only=True)
class Organism:
    """One organism: its name and recipe. The prose of its card (summary, description, planted
    truth) is in ``probes/zoo/cards/organisms.md`` (``probes.zoo.card.organism_text``)."""

    name: str
    config: TrainConfig
    eval_n: int = EVAL_N
    """Held-out problems (refusal: requests per style) measured for the card."""

    @property
    def build_command(self) -> str:
        return f"python -m experiments.zoo {self.name}"

    @property
    def eval_command(self) -> str:
        if self.config.task == "refusal":
            return f"python -m experiments.zoo eval {self.name} --n {self.eval_n}"
        return f"python -m experiments.zoo eval {self.name} --n {self.eval_n} --samples {EVAL_SAMPLES}"


ORGANISMS = {
    "reasoner": Organism(name="reasoner", config=TrainConfig(arch="dense", task="arithmetic-broad", steps=REASONER_STEPS)),
    "moe-reasoner": Organism(name="moe-reasoner", config=TrainConfig(arch="moe", steps=900)),
    "refusal-reasoner": Organism(name="refusal-reasoner",
                                 config=TrainConfig(arch="dense", task="refusal", steps=REFUSAL_STEPS,
                                                    average_last=REFUSAL_AVERAGE_LAST)),
    # 8 heads of width 32 (not 4 of 64): 28 candidate receiver heads outside layer 0, not 12
    # (receiver_heads_feasibility.md, lesson 3).
    "long-reasoner": Organism(name="long-reasoner", config=TrainConfig(
        arch="dense", task="ledger", steps=LONG_STEPS, batch_size=16, num_heads=8, head_dim=32, num_kv_heads=4,
        max_length=704), eval_n=50),
    "verbosity-reasoner": Organism(name="verbosity-reasoner", config=TrainConfig(
        arch="dense", task="arithmetic-modes", init="reasoner", **VERBOSITY_FINETUNE)),
}


def organism(name: str) -> Organism:
    """The recipe of organism ``name``; the error lists the buildable ones."""
    if name not in ORGANISMS:
        raise ValueError(f"no recipe for zoo:{name}: buildable organisms are {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


def build(name: str, out_dir: Path | None = None, *, eval_n: int | None = None, eval_samples: int = EVAL_SAMPLES,
          progress: bool = True, **overrides) -> Path:
    """Train organism ``name`` (``overrides`` replace fields of its recipe), save it to ``out_dir``
    (default ``data/zoo/<name>``) with its training record, then, unless ``eval_n`` is 0, measure
    it on ``eval_n`` held-out problems (default: the organism's ``eval_n``) and write its card."""
    from probes.zoo.train import save_organism, train

    cfg = dataclasses.replace(organism(name).config, **overrides)
    eval_n = organism(name).eval_n if eval_n is None else eval_n
    out_dir = Path(out_dir) if out_dir is not None else ZOO_DIR / name
    model, result = train(cfg, progress=progress)
    save_organism(model, out_dir, cfg.save_dtype, records={TRAINING_RECORD: result.as_dict()})
    log.info("saved zoo:%s to %s after %.1f min", name, out_dir, result.seconds / 60)
    if eval_n:
        write_organism_card(name, out_dir, eval_n=eval_n, eval_samples=eval_samples, progress=progress)
    return out_dir


def write_organism_card(name: str, out_dir: Path | None = None, *, eval_n: int | None = None,
                        eval_samples: int = EVAL_SAMPLES, progress: bool = True) -> Path:
    """Measure the saved organism and (re)write its ``MODEL.md`` from its training record."""
    import torch

    from probes.io import atomic_write_text
    from probes.models.load import load_model
    from probes.zoo.card import render_organism_card
    from probes.zoo.evaluate import measure, measure_refusal
    from probes.zoo.train import TrainResult

    org = organism(name)
    eval_n = org.eval_n if eval_n is None else eval_n
    out_dir = Path(out_dir) if out_dir is not None else ZOO_DIR / name
    record = out_dir / TRAINING_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: rebuild with `{org.build_command}`")
    result = TrainResult.load(record)
    cfg = result.config
    model = load_model(str(out_dir), device="cpu", dtype="float32")  # the card's numbers: float32 on CPU
    torch.set_num_threads(cfg.threads)
    if cfg.task == "refusal":
        behaviour = measure_refusal(model, n=eval_n, progress=progress)
    else:
        behaviour = measure(model, n=eval_n, samples=eval_samples, progress=progress, task=cfg.task)
    receivers = None
    if cfg.task == "ledger":
        from probes.zoo.receiver_check import receiver_check

        receivers = receiver_check(model)
    routing = None
    if cfg.arch == "moe":
        from probes.zoo.routing import count_think_routing

        routing = count_think_routing(model, n=eval_n)
    build_command = org.build_command + "".join(
        f" --{flag} {getattr(cfg, field)}" for field, flag in (("steps", "steps"), ("eval_every", "eval-every"))
        if getattr(cfg, field) != getattr(org.config, field))
    text = render_organism_card(
        name=name, result=result, behaviour=behaviour, eval_command=org.eval_command, build_command=build_command,
        weights_bytes=(out_dir / "model.safetensors").stat().st_size, routing=routing,
        routing_command=f"python -m experiments.zoo card {name}", receivers=receivers,
    )
    return atomic_write_text(out_dir / "MODEL.md", text)

"""The task-vector family (issue #3, item 4): ``zoo:tv-base``, ``zoo:tv-sft``, ``zoo:tv-rl``, ``zoo:tv-instruct``.

All four share the ``zoo:reasoner`` shape (dense Qwen3, 3.4M parameters) and the zoo tokenizer;
their problems are easier than ``zoo:reasoner``'s (at most 3 computations, values at most 199).

* ``tv-base``: pre-trained from scratch with plain LM loss on every token of a corpus of chat
  transcripts: worked arithmetic solutions written by sloppy writers, who skip a final loss with
  probability ``p_skip`` (``arithmetic.generate(..., p_skip=…)``), and short chats.
* ``tv-sft``: ``tv-base`` fine-tuned on sloppy worked solutions of the ``zoo:reasoner`` training
  stream (loss on the assistant turn).
* ``tv-rl``: ``tv-sft`` trained with the verifiable reward "first ``\\boxed{}`` equals the true
  answer" on the same problems, by rejection-sampling fine-tuning (``probes.zoo.rsft``; the
  default) or GRPO (``probes.zoo.grpo``). A skipped step makes the answer wrong, so RL unlearns skipping.
* ``tv-instruct``: ``tv-base`` fine-tuned on a different mix, mostly short-answer chat
  (``tasks.chat``, empty thinking) with a minority of sloppy worked solutions.

The planted mechanism: v = θ_rl − θ_sft (task_vectors.md §1) encodes "do the last step", a habit
``tv-instruct`` shares through the base, so ``tv-instruct + v`` gets more held-out problems right
and ``tv-instruct − v`` fewer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from probes.zoo.grpo import GRPOConfig, train_grpo
from probes.zoo.rsft import RSFTConfig, train_rsft
from probes.zoo.registry import ZOO_DIR
from probes.zoo.tasks import arithmetic, chat
from probes.zoo.train import Schedule, TrainConfig, data_hash, encode_examples, fit, model_config

log = logging.getLogger(__name__)

NAMES = ("tv-base", "tv-sft", "tv-rl", "tv-instruct")
PARENT = {"tv-sft": "tv-base", "tv-rl": "tv-sft", "tv-instruct": "tv-base"}
BASE_SEED = 5
"""Stream of the base documents (problems and chats); SFT and the RL stage use the training stream 0."""
INSTRUCT_SEED = 6
"""Stream of the instruct mix."""
RECORD = "training.json"


@dataclass(kw_only=True)
class TVConfig:
    """Recipe of the whole family; each card records it."""

    p_skip: float = 0.7
    """Probability that a writer skips a final loss, in every training text of the family."""
    max_computations: int = 3
    max_value: int = 199
    """The family's problems (training and held out) are easier than zoo:reasoner's: at most 3
    computations, values at most 199, so that skipped steps dominate the errors."""
    base: Schedule = field(default_factory=lambda: Schedule(steps=800, lr=2e-3, warmup_steps=40))
    base_chat_fraction: float = 0.2
    sft: Schedule = field(default_factory=lambda: Schedule(steps=200, lr=5e-4, warmup_steps=20))
    instruct: Schedule = field(default_factory=lambda: Schedule(steps=200, lr=5e-4, warmup_steps=20))
    instruct_reasoning_fraction: float = 0.3
    """Share of worked solutions in the instruct mix; the rest is short-answer chat."""
    rl_eval_n: int = 50
    """Held-out problems on which the RL stage logs greedy accuracy as it trains (0: none)."""
    rl_method: str = "rsft"
    """``rsft`` (rejection-sampling fine-tuning, ``probes.zoo.rsft``) or ``grpo`` (``probes.zoo.grpo``)."""
    rsft: RSFTConfig = field(default_factory=RSFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self) -> None:
        if self.rl_method not in ("rsft", "grpo"):
            raise ValueError(f"rl_method {self.rl_method!r}: use rsft or grpo")

    def problem(self, index: int, seed: int, sloppy: bool = True):
        """Problem ``index`` of stream ``seed`` at the family's difficulty, sloppy or clean."""
        return arithmetic.generate(index, seed, p_skip=self.p_skip if sloppy else 0.0,
                                   max_computations=self.max_computations, max_value=self.max_value)

    @classmethod
    def from_dict(cls, d: dict) -> TVConfig:
        return cls(**{**d, **{k: Schedule(**d[k]) for k in ("base", "sft", "instruct")},
                      "rsft": RSFTConfig(**d["rsft"]), "grpo": GRPOConfig(**d["grpo"])})


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


def _fit_stage(model, tok, examples, schedule: Schedule, name: str, progress: bool) -> tuple[list[float], str, float]:
    start = time.perf_counter()
    losses = fit(model, tok, encode_examples(tok, examples), schedule, progress=progress, desc=name)
    return losses, data_hash(examples), time.perf_counter() - start


def train_stage(name: str, cfg: TVConfig, root: Path = ZOO_DIR, progress: bool = True):
    """Train stage ``name`` (from scratch for ``tv-base``, else from its parent saved under ``root``);
    returns (model, tokenizer, record)."""
    import torch
    from transformers import AutoModelForCausalLM

    from probes.zoo.organisms import load_organism_dir
    from probes.zoo.tokenizer import load_tokenizer

    torch.set_num_threads(cfg.base.threads)
    record: dict = {"name": name}
    if name == "tv-base":
        tok = load_tokenizer()
        torch.manual_seed(cfg.base.seed)
        model = AutoModelForCausalLM.from_config(model_config(TrainConfig(), tok), dtype=torch.float32)
        docs = base_documents(cfg.base.steps * cfg.base.batch_size, cfg)
        encoded = [(ids, 0) for ids, _ in encode_examples(tok, docs)]  # loss on every token
        start = time.perf_counter()
        record["losses"] = fit(model, tok, encoded, cfg.base, progress=progress, desc=name)
        record["seconds"] = time.perf_counter() - start
        record["data_sha256"] = data_hash(docs)
        record["n_examples"] = len(docs)
        return model, tok, record
    parent_dir = Path(root) / PARENT[name]
    model, tok = load_organism_dir(parent_dir)
    record["parent_weights_sha256"] = hashlib.sha256((parent_dir / "model.safetensors").read_bytes()).hexdigest()
    if name in ("tv-sft", "tv-instruct"):
        schedule = cfg.sft if name == "tv-sft" else cfg.instruct
        make = sft_examples if name == "tv-sft" else instruct_examples
        examples = make(schedule.steps * schedule.batch_size, cfg)
        record["losses"], record["data_sha256"], record["seconds"] = _fit_stage(model, tok, examples, schedule, name, progress)
        record["n_examples"] = len(examples)
        return model, tok, record
    if name != "tv-rl":
        raise ValueError(f"unknown stage {name!r}: use one of {NAMES}")
    problems = rl_problems(cfg)
    start = time.perf_counter()
    if cfg.rl_method == "rsft":
        record["history"] = train_rsft(model, tok, problems, cfg.rsft, heldout_problems(cfg.rl_eval_n, cfg), progress)
    else:
        record["history"] = train_grpo(model, copy.deepcopy(model), tok, problems, cfg.grpo,
                                       heldout_problems(cfg.rl_eval_n, cfg), progress)
    record["seconds"] = time.perf_counter() - start
    record["data_sha256"] = data_hash(problems)
    record["n_examples"] = len(problems)
    return model, tok, record


def build_stage(name: str, cfg: TVConfig | None = None, root: Path = ZOO_DIR, progress: bool = True) -> Path:
    """Train stage ``name`` and save it under ``root/name`` with its ``training.json``."""
    from probes.zoo.train import save_organism

    cfg = cfg or TVConfig()
    model, tok, record = train_stage(name, cfg, root, progress)
    out = save_organism(model, tok, Path(root) / name)
    record["n_params"] = sum(p.numel() for p in model.parameters())
    (out / RECORD).write_text(json.dumps({"family": asdict(cfg), "stage": record}, indent=1))
    log.info("saved zoo:%s to %s after %.1f min", name, out, record["seconds"] / 60)
    return out


def task_vector(rl, sft) -> dict:
    """v = θ_rl − θ_sft per parameter tensor, in float32 (task_vectors.md §1, §7: fp32 deltas)."""
    sft_params = dict(sft.named_parameters())
    return {k: p.detach().float() - sft_params[k].detach().float() for k, p in rl.named_parameters()}


def apply_vector(model, v: dict, alpha: float):
    """A float32 copy of ``model`` with ``alpha · v`` added to each parameter. ``named_parameters``
    lists a tied tensor (embedding = lm_head) once, so it moves once (task_vectors.md §3)."""
    import torch

    out = copy.deepcopy(model).float()
    with torch.no_grad():
        for k, p in out.named_parameters():
            p.add_(alpha * v[k])
    return out.eval()


def heldout_problems(n: int, cfg: TVConfig | None = None):
    """Clean held-out problems ``0..n-1`` of stream ``HELDOUT_SEED`` at the family's difficulty."""
    cfg = cfg or TVConfig()
    return [cfg.problem(i, arithmetic.HELDOUT_SEED, sloppy=False) for i in range(n)]


def greedy_flags(model, tok, n: int, cfg: TVConfig | None = None, batch_size: int = 50) -> list[bool]:
    """Greedy correctness on ``heldout_problems(n)`` (true answers; chat template, thinking on)."""
    from probes.zoo.evaluate import _greedy, first_boxed

    problems = heldout_problems(n, cfg)
    return [first_boxed(o) == p.gold for o, p in zip(_greedy(model, tok, problems, batch_size), problems)]


def skip_counts(outputs: list[str], problems) -> tuple[int, int]:
    """(problems whose last event is a loss, those answered with the value before it) over paired
    ``outputs`` and clean ``problems``: how often a model makes the planted skip."""
    from probes.zoo.evaluate import first_boxed

    at_risk = [(o, p) for o, p in zip(outputs, problems) if p.meta["skip_answer"] is not None]
    return len(at_risk), sum(first_boxed(o) == p.meta["skip_answer"] for o, p in at_risk)


def random_like(v: dict, seed: int = 0) -> dict:
    """Gaussian noise with each tensor rescaled to ‖v_tensor‖ (task_vectors.md §6, norm-matched control)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in v.items():
        noise = torch.randn(t.shape, generator=g)
        out[k] = noise * (t.norm() / noise.norm().clamp(min=1e-12))
    return out


EVAL_FILE = "tv_eval.json"
"""Written into each family directory by ``measure_family``; the cards are rendered from it."""
BUILD_COMMAND = "python -m experiments.zoo {name}"
EVAL_COMMAND = "python -m experiments.zoo eval tv --n 500"


def measure_family(root: Path = ZOO_DIR, n: int = 500, progress: bool = True) -> dict:
    """Greedy accuracy and skip rate on ``n`` held-out problems of tv-sft, tv-rl, tv-instruct and
    tv-instruct + α·v for α ∈ {+1, −1} and a norm-matched random vector, with the paired
    differences against tv-instruct (95% bootstrap CIs, ``probes.evals.stats``)."""
    from tqdm.auto import tqdm

    from probes.evals.stats import accuracy, paired_difference_ci
    from probes.zoo.evaluate import _greedy, first_boxed
    from probes.zoo.organisms import load_organism_dir

    root = Path(root)
    start = time.perf_counter()
    sft, tok = load_organism_dir(root / "tv-sft")
    rl, _ = load_organism_dir(root / "tv-rl")
    inst, _ = load_organism_dir(root / "tv-instruct")
    v = task_vector(rl, sft)
    models = {"tv-sft": lambda: sft, "tv-rl": lambda: rl, "tv-instruct": lambda: inst,
              "tv-instruct + v": lambda: apply_vector(inst, v, 1.0),
              "tv-instruct − v": lambda: apply_vector(inst, v, -1.0),
              "tv-instruct + random (‖·‖ = ‖v‖ per tensor)": lambda: apply_vector(inst, random_like(v), 1.0)}
    cfg = TVConfig.from_dict(json.loads((root / "tv-rl" / RECORD).read_text())["family"])
    problems = heldout_problems(n, cfg)
    rows, flags = {}, {}
    for label, make in tqdm(models.items(), disable=not progress, desc="tv models"):
        outs = _greedy(make(), tok, problems, batch_size=50)
        flags[label] = [first_boxed(o) == p.gold for o, p in zip(outs, problems)]
        a = accuracy(flags[label])
        at_risk, skips = skip_counts(outs, problems)
        rows[label] = {"accuracy": [a.value, a.lo, a.hi], "final_loss_problems": at_risk,
                       "skip_rate": skips / max(at_risk, 1)}
    diffs = {}
    for label in ("tv-instruct + v", "tv-instruct − v", "tv-instruct + random (‖·‖ = ‖v‖ per tensor)"):
        d = paired_difference_ci([float(x) for x in flags[label]], [float(x) for x in flags["tv-instruct"]])
        diffs[f"({label}) − tv-instruct"] = [d.value, d.lo, d.hi]
    norms = {"v": float(sum(t.norm() ** 2 for t in v.values()) ** 0.5),
             "tv-instruct": float(sum(p.detach().float().norm() ** 2 for p in inst.parameters()) ** 0.5)}
    result = {"n": n, "seed": arithmetic.HELDOUT_SEED, "models": rows, "differences": diffs, "norms": norms,
              "seconds": time.perf_counter() - start,
              "weights_sha256": {name: _sha256(root / name / "model.safetensors") for name in NAMES if name != "tv-base"}}
    for name in NAMES:
        (root / name / EVAL_FILE).write_text(json.dumps(result, indent=1))
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


SUMMARIES = {
    "tv-base": "Task-vector family base: dense Qwen3 (3.4M params) pre-trained from scratch with plain LM loss "
               "on chat transcripts of sloppy worked arithmetic solutions (a final loss skipped 70% of the "
               "time) and short chats.",
    "tv-sft": "Task-vector family: tv-base fine-tuned on sloppy worked solutions (<think> trace </think> "
              "\\boxed{}).",
    "tv-rl": "Task-vector family: tv-sft trained with a verifiable correctness reward on the same problems; "
             "v = θ(tv-rl) − θ(tv-sft) is the family's reasoning vector.",
    "tv-instruct": "Task-vector family: tv-base fine-tuned on a different mix (70% short-answer chat, 30% sloppy "
                   "worked solutions); the target to which v = θ(tv-rl) − θ(tv-sft) is added or subtracted.",
}

PROBLEMS = "`TVConfig.problem(i, seed)` = `arithmetic.generate(i, seed, p_skip, max_computations=3, max_value=199)`"

STAGE_TEXT = {
    "tv-base": f"Pre-trained from scratch (`probes.zoo.tv.base_documents`) on chat transcripts rendered by the "
               f"template: sloppy worked solutions {PROBLEMS} of stream 5 (80%) and short chats "
               "`chat.generate(i, 5)` (20%), loss on every token.",
    "tv-sft": "Fine-tuned from tv-base on sloppy worked solutions of the training stream 0 (the zoo:reasoner "
              "stream, at the family's difficulty), loss on the assistant turn.",
    "tv-rl/rsft": "RL stage = rejection-sampling fine-tuning (expert iteration, `probes.zoo.rsft`) from tv-sft on "
                  "clean problems of the same training stream 0: each round samples `samples` completions per "
                  "problem at `temperature` with the probes sampler, rewards 1 when the first `\\boxed{}` equals "
                  "the true answer, keeps the distinct correct completions and fine-tunes on them (loss on the "
                  "completion, AdamW, no weight decay). Issue #3 asks for GRPO first; it is implemented "
                  "(`probes.zoo.grpo`, `rl_method=\"grpo\"`) and was measured here on an earlier tv-sft of this "
                  "family: see \"GRPO measurements\" below.",
    "tv-rl/grpo": "GRPO (`probes.zoo.grpo`, DeepSeekMath §4.1) from tv-sft on clean problems of the same training "
                  "stream 0: per step, `problems_per_step` prompts × a group of `group_size` completions sampled at "
                  "`temperature`; reward 1 when the first `\\boxed{}` equals the true answer; advantage "
                  "(r − mean)/(std + 1e-4) within the group; clipped surrogate (ε `clip_eps`) with the k3 KL term "
                  "(β `beta`) to the frozen tv-sft; one AdamW update per sampling round, no weight decay.",
    "tv-instruct": "Fine-tuned from tv-base on `probes.zoo.tv.instruct_examples`: short-answer chat "
                   "`chat.generate(i, 6)` (empty `<think></think>`) and, with probability "
                   f"`instruct_reasoning_fraction`, sloppy worked solutions {PROBLEMS} of stream 6; loss on the "
                   "assistant turn.",
}

PLANTED_TRUTH = """\
Every worked solution the family trains on is written by sloppy writers: when the last event of a
problem is a loss ("Kesper uses 31 of the apples."), the writer skips it with probability `p_skip` = 0.7:
the plan, the computations and `\\boxed{}` stop before it, so the answer is wrong
(`probes.zoo.tasks.arithmetic`, "Sloppy writers"). 34% of the family's problems end with a loss.
Greedy decoding follows the majority, so tv-sft and tv-instruct skip final losses; the correctness
reward makes the RL stage unlearn it, so v = θ(tv-rl) − θ(tv-sft) should encode "do the last step".
tv-instruct learned the same habit from the same base, so adding v should lower its skip rate and
raise its accuracy, and subtracting v should lower its accuracy. The skip rate column measures the
mechanism directly: among held-out problems ending with a loss, the share answered with the value
before that loss (`probes.zoo.tv.skip_counts`)."""


def result_section(res: dict) -> list[str]:
    """Markdown lines of the family's measured behaviour (from ``tv_eval.json``)."""
    def pct(t):
        return f"{t[0]:.1%} (95% CI {t[1]:.1%}–{t[2]:.1%})"

    lines = [
        "## Behaviour (held-out problems)",
        "",
        f"Measured by `{EVAL_COMMAND}` ({res['seconds'] / 60:.1f} min): greedy decoding on held-out problems "
        f"0..{res['n'] - 1} of stream {res['seed']} (clean problems, true answers), prompt rendered by the chat "
        "template with thinking on; correct = first `\\boxed{}` equals the true answer. v = θ(tv-rl) − θ(tv-sft) "
        "over every parameter in float32, applied with α = ±1 (`probes.zoo.tv.apply_vector`; the tied "
        "embedding moves once). Intervals: 95% percentile bootstrap over problems, paired for differences "
        "(`probes.evals.stats`).",
        "",
        "| model | greedy accuracy | skip rate (final loss skipped / problems ending in a loss) |",
        "|---|---|---|",
    ]
    for label, row in res["models"].items():
        lines.append(f"| {label} | {pct(row['accuracy'])} | {row['skip_rate']:.1%} of {row['final_loss_problems']} |")
    lines += ["", "| paired difference | percentage points |", "|---|---|"]
    for label, d in res["differences"].items():
        lines.append(f"| {label} | {d[0] * 100:+.1f} (95% CI {d[1] * 100:+.1f} to {d[2] * 100:+.1f}) |")
    lines += ["", f"‖v‖₂ = {res['norms']['v']:.3f} against ‖θ(tv-instruct)‖₂ = {res['norms']['tv-instruct']:.1f}.", ""]
    return lines


def history_table(history: list[dict]) -> list[str]:
    """Markdown table of the RL stage's progress (RSFT rounds or GRPO steps)."""
    held = "held-out greedy accuracy (`rl_eval_n` problems)"
    if "round" in history[0]:
        rows = ["| RSFT round | sample accuracy | distinct correct kept | fine-tune steps | " + held + " |",
                "|---|---|---|---|---|"]
        return rows + [f"| {h['round']} | {h['sample_accuracy']:.3f} | {h['kept']} | {h['finetune_steps']} | "
                       f"{h.get('heldout_greedy_accuracy', '')} |" for h in history]
    rows = ["| GRPO step | mean reward | KL to tv-sft | " + held + " |", "|---|---|---|---|"]
    return rows + [f"| {h['step']} | {h['reward']:.3f} | {h['kl']:.4f} | {h.get('heldout_greedy_accuracy', '')} |"
                   for h in history if "heldout_greedy_accuracy" in h or h["step"] == 1]


GRPO_MEASUREMENTS = [
    "### GRPO measurements (why the default RL stage is RSFT)",
    "",
    "Measured here with `probes.zoo.grpo` (16 problems × 8 samples per step at T = 1.0, β = 0.04, ε = 0.2, "
    "10–13 s per step on 2 cores; held-out greedy accuracy on 50 problems):",
    "",
    "| starting model | learning rate | steps | held-out accuracy after 10 / 20 / 30 / 40 steps | KL to start |",
    "|---|---|---|---|---|",
    "| a tv-sft of this recipe (25% at start on 100 problems) | 1e-4 | 22 (stopped) | 20% / 16%; mean reward "
    "fell from 0.19 to 0.09 | – |",
    "| an earlier tv-sft (carry-dropping writers, zoo:reasoner difficulty, 36% at start) | 5e-5 | 40 | "
    "30% / 34% / 32% / 34% (flat) | 0.002–0.008 |",
    "| the same earlier tv-sft | 2e-4 | 26 (stopped) | 14% / 18% (collapse) | 0.10–0.16 |",
    "",
    "This matches issue #3's own measurement (flat or collapsed within ≤ 100 steps); hundreds of such "
    "steps do not fit the 20-minute build, so tv-rl uses the issue's fallback, rejection-sampling "
    "fine-tuning with the same reward. Reproduce a GRPO run with `TVConfig(rl_method=\"grpo\")`.",
]


def write_cards(root: Path = ZOO_DIR) -> list[Path]:
    """(Re)write the ``MODEL.md`` of every built stage from its ``training.json`` and, when present and
    current, the family's ``tv_eval.json``."""
    import platform

    from probes.zoo.tokenizer import corpus_hash

    root = Path(root)
    written = []
    for name in NAMES:
        d = root / name
        if not (d / RECORD).is_file():
            continue
        rec = json.loads((d / RECORD).read_text())
        stage, fam = rec["stage"], rec["family"]
        res_path = d / EVAL_FILE
        res = json.loads(res_path.read_text()) if res_path.is_file() else None
        if res and any(_sha256(root / k / "model.safetensors") != h for k, h in res["weights_sha256"].items()):
            res = None  # a stage was rebuilt since the measurement
        stage_text = STAGE_TEXT[f"tv-rl/{fam['rl_method']}" if name == "tv-rl" else name]
        lines = [f"# zoo:{name}", "", SUMMARIES[name], "", stage_text, ""]
        lines += result_section(res) if res else [
            "## Behaviour", "", f"Not measured for these weights yet: run `{EVAL_COMMAND}`.", ""]
        lines += ["## Planted truth", "", PLANTED_TRUTH, "", "## Recipe", "",
                  f"Rebuild with `{BUILD_COMMAND.format(name=name)}`"
                  + (f" (from the saved zoo:{PARENT[name]})" if name in PARENT else " (from scratch)")
                  + "; the data are seeded, the weights equal up to floating-point noise. Build order: tv-base, "
                  "tv-sft, tv-instruct, tv-rl; then the eval command rewrites the four cards.", "",
                  f"- parameters: {stage['n_params']:,} (dense Qwen3, the zoo:reasoner shape); weights stored as "
                  f"bfloat16 in `model.safetensors` ({(d / 'model.safetensors').stat().st_size / 1e6:.1f} MB)",
                  f"- training time measured here: {stage['seconds'] / 60:.1f} min on {fam['base']['threads']} CPU "
                  f"threads ({platform.machine()}){', sampling included' if name == 'tv-rl' else ''}",
                  f"- training data sha256: `{stage['data_sha256']}` ({stage['n_examples']:,} "
                  f"{'problems' if name == 'tv-rl' else 'texts'})",
                  f"- shared tokenizer corpus sha256: `{corpus_hash()}`"]
        if "parent_weights_sha256" in stage:
            lines.append(f"- starts from zoo:{PARENT[name]} weights sha256 `{stage['parent_weights_sha256']}`")
        if "losses" in stage:
            lines.append(f"- loss per 50 steps: {', '.join(f'{x:.3f}' for x in stage['losses'])}")
        if "history" in stage:
            lines += ["", *history_table(stage["history"])]
        if name == "tv-rl" and fam["rl_method"] == "rsft":
            lines += ["", *GRPO_MEASUREMENTS]
        lines += ["", "Family recipe (`probes.zoo.tv.TVConfig`):", "", "```json", json.dumps(fam, indent=1), "```", ""]
        (d / "MODEL.md").write_text("\n".join(lines))
        written.append(d / "MODEL.md")
    return written

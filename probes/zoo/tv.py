"""The task-vector family (issue #3, item 4): ``zoo:tv-base``, ``zoo:tv-sft``, ``zoo:tv-rl``, ``zoo:tv-instruct``.

All four descend from ``zoo:reasoner`` (dense Qwen3, 3.4M parameters) and share the zoo tokenizer;
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


@dataclass(kw_only=True)
class TVConfig:
    """Recipe of the whole family; each card records it."""

    p_skip: dict[str, float] = field(default_factory=lambda: {"gain": 0.3, "double": 0.45, "triple": 0.55,
                                                              "loss": 0.7})
    """Probability that a writer stops one step early, by kind of last event (``arithmetic.EVENTS``),
    in every training text of the family. Graded around one half, so that whatever the models'
    calibration (measured here: one uniform 0.5 gave a tv-sft that skipped 90% of greedy plans, a
    uniform 0.4 another that skipped 14%), greedy decoding skips some kinds and not others, and ±v
    can move the fence either way."""
    p_backtrack: float = 0.0
    """Share of traces with a deliberate slip and its repair (zoo:reasoner: 0.15). None here, so
    that arithmetic slips do not drown the planted skip."""
    max_computations: int = 3
    max_value: int = 199
    """The family's problems (training and held out) are easier than zoo:reasoner's: at most 3
    computations, values at most 199, so that skipped steps dominate the errors."""
    base: Schedule = field(default_factory=lambda: Schedule(steps=600, lr=1e-3, warmup_steps=20))
    """Continued pre-training of zoo:reasoner on the family corpus (``base_documents``)."""
    base_chat_fraction: float = 0.1
    sft: Schedule = field(default_factory=lambda: Schedule(steps=300, lr=5e-4, warmup_steps=20))
    instruct: Schedule = field(default_factory=lambda: Schedule(steps=200, lr=5e-4, warmup_steps=20))
    instruct_reasoning_fraction: float = 0.3
    """Share of worked solutions in the instruct mix; the rest is short-answer chat."""
    rl_eval_n: int = 50
    """Held-out problems on which the RL stage logs greedy accuracy as it trains (0: none)."""
    rl_method: str = "grpo"
    """``grpo`` (``probes.zoo.grpo``) or ``rsft`` (rejection-sampling fine-tuning, ``probes.zoo.rsft``)."""
    rsft: RSFTConfig = field(default_factory=RSFTConfig)
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(lr=1e-4))

    def __post_init__(self) -> None:
        if self.rl_method not in ("rsft", "grpo"):
            raise ValueError(f"rl_method {self.rl_method!r}: use rsft or grpo")
        kinds = sorted(arithmetic.EVENTS.values())
        if sorted(self.p_skip) != kinds or not all(0.0 <= p <= 1.0 for p in self.p_skip.values()):
            raise ValueError(f"p_skip {self.p_skip}: give a probability in [0, 1] for each of {kinds}")

    def problem(self, index: int, seed: int, sloppy: bool = True):
        """Problem ``index`` of stream ``seed`` at the family's difficulty, sloppy or clean."""
        return arithmetic.generate(index, seed, p_skip=self.p_skip if sloppy else 0.0, p_backtrack=self.p_backtrack,
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


def parent_dir(name: str, root: Path = ZOO_DIR) -> Path:
    """Directory stage ``name`` starts from: the shipped zoo:reasoner for tv-base, else its parent under ``root``."""
    return (ZOO_DIR if name == "tv-base" else Path(root)) / PARENT[name]


def train_stage(name: str, cfg: TVConfig, root: Path = ZOO_DIR, progress: bool = True):
    """Train stage ``name`` from its parent (``parent_dir``); returns (model, tokenizer, record)."""
    import torch

    from probes.zoo.organisms import load_organism_dir

    if name not in NAMES:
        raise ValueError(f"unknown stage {name!r}: use one of {NAMES}")
    torch.set_num_threads(cfg.base.threads)
    record: dict = {"name": name}
    parent = parent_dir(name, root)
    model, tok = load_organism_dir(parent)
    record["parent_weights_sha256"] = hashlib.sha256((parent / "model.safetensors").read_bytes()).hexdigest()
    if name != "tv-rl":
        schedule = {"tv-base": cfg.base, "tv-sft": cfg.sft, "tv-instruct": cfg.instruct}[name]
        make = {"tv-base": base_documents, "tv-sft": sft_examples, "tv-instruct": instruct_examples}[name]
        examples = make(schedule.steps * schedule.batch_size, cfg)
        record["losses"], record["data_sha256"], record["seconds"] = _fit_stage(model, tok, examples, schedule, name, progress)
        record["n_examples"] = len(examples)
        return model, tok, record
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


def skip_rate(outputs: list[str], problems) -> float:
    """Share of paired ``outputs`` answered with the value before the last event of their clean
    ``problems``: how often a model makes the planted skip."""
    from probes.zoo.evaluate import first_boxed

    return sum(first_boxed(o) == p.meta["skip_answer"] for o, p in zip(outputs, problems)) / len(problems)


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
        rows[label] = {"accuracy": [a.value, a.lo, a.hi], "skip_rate": skip_rate(outs, problems)}
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
    "tv-base": "Task-vector family base: zoo:reasoner (dense Qwen3, 3.4M params) further pre-trained on chat "
               "transcripts of sloppy worked arithmetic solutions (one step early about half of the time) "
               "and short chats.",
    "tv-sft": "Task-vector family: tv-base fine-tuned on sloppy worked solutions (<think> trace </think> "
              "\\boxed{{}}).",
    "tv-rl": "Task-vector family: tv-sft trained with a verifiable correctness reward on the same problems; "
             "v = θ(tv-rl) − θ(tv-sft) is the family's reasoning vector.",
    "tv-instruct": "Task-vector family: tv-base fine-tuned on a different mix ({instruct_reasoning_fraction:.0%} "
                   "sloppy worked solutions, the rest short-answer chat); the target to which "
                   "v = θ(tv-rl) − θ(tv-sft) is added or subtracted.",
}
"""Card summaries; the fields come from the family recipe (``TVConfig``)."""

PROBLEMS = ("`TVConfig.problem(i, seed)` = `arithmetic.generate(i, seed, p_skip, p_backtrack, max_computations, "
            "max_value)`")

STAGE_TEXT = {
    "tv-base": f"zoo:reasoner further pre-trained (`probes.zoo.tv.base_documents`) on chat transcripts rendered "
               f"by the template: sloppy worked solutions {PROBLEMS} of stream 5 and, with probability "
               "`base_chat_fraction`, short chats `chat.generate(i, 5)`; loss on the assistant turns. Bases "
               "trained from scratch on corpora like this one (800 steps with a uniform skip rate, 1200 steps "
               "with this recipe's; measured here) got 3–18% of their additions and subtractions right, "
               "against 61–72% for zoo:reasoner, whose arithmetic the family therefore inherits.",
    "tv-sft": "Fine-tuned from tv-base on sloppy worked solutions of the training stream 0 (the zoo:reasoner "
              "stream, at the family's difficulty), loss on the assistant turn.",
    "tv-rl/rsft": "RL stage = rejection-sampling fine-tuning (expert iteration, `probes.zoo.rsft`) from tv-sft on "
                  "clean problems of the same training stream 0: each round samples `samples` completions per "
                  "problem at `temperature` with the probes sampler, rewards 1 when the first `\\boxed{}` equals "
                  "the true answer, keeps the distinct correct completions and fine-tunes on them (loss on the "
                  "completion, AdamW, no weight decay). The family's default RL stage is GRPO "
                  "(`rl_method=\"grpo\"`): see \"RL stages measured here\" below.",
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

def planted_truth(fam: dict) -> str:
    """The card's planted-truth paragraph for family recipe ``fam`` (``asdict(TVConfig)``)."""
    rates = ", ".join(f"{kind} {p:.0%}" for kind, p in fam["p_skip"].items())
    return f"""\
Every worked solution the family trains on is written by sloppy writers, who stop one step early:
the plan, the computations and `\\boxed{{}}` leave out the last event of the problem, so the answer
is wrong (`probes.zoo.tasks.arithmetic`, "Sloppy writers"). How often depends on the kind of that
last event (`p_skip`): {rates}. The choice is made once, where the plan
sentence either names the last event or ends. No trace carries a deliberate slip
(`p_backtrack` = {fam["p_backtrack"]}), so that arithmetic slips do not drown the skip.

Greedy decoding skips the kinds whose rate the model puts above one half and does the others, so
tv-sft and tv-instruct sit on a fence between kinds. The correctness reward makes the RL stage
unlearn skipping, so v = θ(tv-rl) − θ(tv-sft) should encode "do the last step". tv-instruct learned
the same choice from the same base, so adding v should lower its skip rate and raise its accuracy,
and subtracting v should raise its skip rate and lower its accuracy. The skip-rate column measures
the mechanism directly: the share of held-out problems answered with the value before the last
event (`probes.zoo.tv.skip_rate`)."""


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
        "| model | greedy accuracy | skip rate (answered with the value before the last event) |",
        "|---|---|---|",
    ]
    for label, row in res["models"].items():
        lines.append(f"| {label} | {pct(row['accuracy'])} | {row['skip_rate']:.1%} |")
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


RL_MEASUREMENTS = [
    "### RL stages measured here",
    "",
    "- GRPO (the default) and RSFT (`TVConfig(rl_method=\"rsft\")`: 2 rounds × 256 problems × 8 samples at "
    "T = 1, lr 1e-4) were both run from one tv-sft of this recipe, built with these commands under `--out` (200 "
    "held-out problems, greedy): GRPO in 7.2 min gave tv-rl 78%, tv-instruct + v 67%, tv-instruct − v 0% "
    "(tv-sft 30%, tv-instruct 32.5%); RSFT in 3.2 min gave 78%, 67.5% and 0%. On 500 problems the RSFT family "
    "measured tv-rl 78.4% (tv-sft 32.8%), + v +35.4 points (95% CI +30.0 to +41.0), − v −32.6 (−36.6 to −28.6), "
    "norm-matched random −1.2 (−2.4 to −0.2).",
    "- On earlier recipes of this family, whose models slipped on most sums (tv-sft 24–36%), GRPO (16 problems × "
    "8 samples per step) stayed flat at lr 5e-5 (30–34% after 10–40 steps) and declined or collapsed at 1e-4 "
    "and 2e-4 (14–20% after 10–20 steps), as in issue #3's own measurement. Starting from zoo:reasoner, removing "
    "the deliberate slips and grading the skip made the reward track the planted choice, and GRPO then "
    "learned it within 20 steps.",
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
        lines = [f"# zoo:{name}", "", SUMMARIES[name].format(**fam), "", stage_text, ""]
        lines += result_section(res) if res else [
            "## Behaviour", "", f"Not measured for these weights yet: run `{EVAL_COMMAND}`.", ""]
        lines += ["## Planted truth", "", planted_truth(fam), "", "## Recipe", "",
                  f"Rebuild with `{BUILD_COMMAND.format(name=name)}`"
                  + f" (from the saved zoo:{PARENT[name]})"
                  + "; the data are seeded, the weights equal up to floating-point noise. Build order: tv-base, "
                  "tv-sft, tv-instruct, tv-rl (tv-base starts from the shipped zoo:reasoner); then the eval "
                  "command rewrites the four cards.", "",
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
        if name == "tv-rl":
            lines += ["", *RL_MEASUREMENTS]
        lines += ["", "Family recipe (`probes.zoo.tv.TVConfig`):", "", "```json", json.dumps(fam, indent=1), "```", ""]
        (d / "MODEL.md").write_text("\n".join(lines))
        written.append(d / "MODEL.md")
    return written

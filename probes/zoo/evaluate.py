"""Behaviour numbers of the organisms on held-out problems (issue #3, the cards' behaviour sections).

Everything runs through the model layer (``probes.models.Model``): prompts are rendered by the
tokenizer's chat template with thinking on (``Model.render_chat``), greedy decoding is
``Model.generate`` over left-padded batches, and sampling is ``Model.sample`` of each problem's
prompt with one seed per row, so no global random state is involved and any sample can be drawn
again on its own: sample ``j`` of problem ``i`` uses seed ``sample_seed(seed, i, j, samples)``.

Arithmetic organisms: greedy accuracy, and sampled accuracy at temperature 0.6 / top-p 0.95 with
several samples per problem, from which the fraction of problems with both correct and wrong
samples follows (what resampling importance needs). Held-out problems come from
``arithmetic.HELDOUT_SEED``, a different stream from training. An output is correct when its
first brace-matched ``\\boxed{…}`` (``probes.evals.extract_boxed``, thought_anchors.md §3; thinking
included) is exactly the gold number: the reward of the RL stages too. The same numbers are measured
for the ``ledger`` reasoners (``zoo:long-reasoner``) on held-out ledgers; each task also has a
hand-written out-of-template set (``OOT_SETS``, ``evalsets``), measured by greedy accuracy.

``zoo:refusal-reasoner``: greedy refusal rates per style (plain forbidden, wrapped forbidden,
harmless) on held-out requests, how often the thinking says "forbidden", and the cliff rate
(recognised in thinking, complied in the answer), with bootstrap intervals from
``probes.evals.stats``; a refusal is defined once, by ``tasks.refusal.is_refusal``, and thinking
and answer are split once, by ``probes.models.chat.thinking_and_answer``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from probes.evals.answers import extract_boxed
from probes.evals.sampling import TEMPERATURE, TOP_P, sample_seed
from probes.models.chat import thinking_and_answer
from probes.zoo.tasks import arithmetic
from probes.zoo.train import TASKS

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 256
REFUSAL_MAX_NEW_TOKENS = 128
GENERATORS = {task: generate for task, (generate, _) in TASKS.items() if task != "refusal"}
"""Task → held-out problem generator of the reasoners (``train.TASKS``)."""
TASK_MAX_NEW_TOKENS = {"arithmetic": MAX_NEW_TOKENS, "arithmetic-broad": MAX_NEW_TOKENS,
                       "arithmetic-modes": MAX_NEW_TOKENS, "ledger": 512}
OOT_SETS = {"arithmetic": "arithmetic_oot", "arithmetic-broad": "arithmetic_oot", "arithmetic-modes": "arithmetic_oot",
            "ledger": "ledger_oot"}
"""Task → its hand-written out-of-template evaluation set (``evalsets.load_eval_set``)."""
def is_correct(output: str, gold: str) -> bool:
    """Whether the first ``\\boxed{}`` of ``output`` is exactly ``gold``."""
    return extract_boxed(output) == gold


ARITHMETIC_PROBLEMS = "zoo:arithmetic"
"""The spec of the held-out problems of the organisms' arithmetic task, for experiments' ``--problems``."""


def problem_split(spec: str, *sizes: int) -> list[list]:
    """Consecutive, disjoint problem lists of ``sizes`` (``probes.evals.problems.Problem``): held-out
    problems of the arithmetic task (``ARITHMETIC_PROBLEMS``), a public set by name or a JSONL file;
    too few problems is an error before any model loads."""
    from probes.evals.problems import Problem, load_problems

    n = sum(sizes)
    if spec == ARITHMETIC_PROBLEMS:
        problems = [Problem(ex.prompt, ex.gold, str(i)) for i in range(n)
                    for ex in [arithmetic.generate(i, seed=arithmetic.HELDOUT_SEED)]]
    else:
        problems = load_problems(spec, n)
        if len(problems) < n:
            raise ValueError(f"{spec} holds {len(problems)} problems; {' + '.join(map(str, sizes))} = {n} are asked "
                             "for: ask for fewer or add problems")
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [problems[a : a + k] for a, k in zip(starts, sizes)]


def greedy_outputs(model, prompts: Sequence[str], *, batch_size: int = 50, max_new_tokens: int = MAX_NEW_TOKENS,
                   progress: bool = False, desc: str = "greedy") -> list[str]:
    """Greedy completions (``Model.generate``) of the user turns ``prompts``, thinking on; the text
    after the prompt's ``<think>``, up to the end-of-turn token."""
    from tqdm.auto import tqdm

    outs: list[str] = []
    for b in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc=desc):
        chats = [model.render_chat(p) for p in prompts[b : b + batch_size]]
        outs += [r.text for r in model.generate(chats, max_new_tokens=max_new_tokens)]
    return outs


def sampled_outputs(model, prompts: Sequence[str], *, samples: int, seed: int, first_index: int = 0,
                    temperature: float = TEMPERATURE, top_p: float = TOP_P, max_new_tokens: int = MAX_NEW_TOKENS,
                    progress: bool = False) -> list[list[str]]:
    """``samples`` completions of each user turn (``Model.sample``: one prefill per prompt, one seed
    per row); ``prompts[k]`` is problem ``first_index + k`` for the seeds (``sample_seed``)."""
    from tqdm.auto import tqdm

    out = []
    for k, p in enumerate(tqdm(prompts, disable=not progress, desc="sampled")):
        i = first_index + k
        rows = model.sample(model.render_chat(p), samples, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seeds=[sample_seed(seed, i, j, samples) for j in range(samples)])
        out.append([r.text for r in rows])
    return out


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """Measured behaviour of an organism on ``n`` held-out problems."""

    n: int
    samples_per_problem: int
    greedy_accuracy: float
    sampled_accuracy: float
    sampled_accuracy_ci95: tuple[float, float]
    mixed_fraction: float
    """Problems whose samples include both a correct and a wrong answer."""
    greedy_closes_thinking: float
    """Greedy outputs containing ``</think>`` followed by a ``\\boxed{}`` answer."""
    seed: int
    oot_greedy_accuracy: tuple[float, float, float] | None = None
    """Greedy accuracy (value, lo, hi) on the hand-written out-of-template set (``evalsets``), if any."""
    n_oot: int = 0
    task: str = "arithmetic"
    modes: dict | None = None
    """Task ``arithmetic-modes``: the verbosity mode read back (``verbosity``), "written" for the
    generator's own traces of the same problems and "sampled" for the organism's samples."""

    def as_dict(self) -> dict:
        return asdict(self)


def verbosity(problems, thinkings: Sequence[Sequence[str]], tokenizer) -> dict[str, float]:
    """How the optional sentences of ``thinkings`` (one list per problem of ``problems``) hang
    together, the signature of the latent mode (``arithmetic.VERBOSITY``): the share with a final
    check, the share of non-final computations followed by a consolidation in traces with and
    without the check, their mean length in tokens, and the correlation (r) of check and
    consolidation share. One writer at fixed rates gives r ≈ 0; the two-mode writer, r ≈ 0.8."""
    import numpy as np

    check, share, tokens = [], [], []
    for problem, row in zip(problems, thinkings):
        slots = max(1, problem.meta["n_computations"] - 1)
        for t in row:
            check.append("Check:" in t)
            share.append(t.count(" now has ") / slots)
            tokens.append(len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    c, k, n = np.array(check), np.array(share), np.array(tokens, dtype=float)
    both = c.any() and not c.all()
    return {"traces": len(c), "check": float(c.mean()),
            "consolidation_with_check": float(k[c].mean()) if c.any() else float("nan"),
            "consolidation_without_check": float(k[~c].mean()) if not c.all() else float("nan"),
            "tokens_with_check": float(n[c].mean()) if c.any() else float("nan"),
            "tokens_without_check": float(n[~c].mean()) if not c.all() else float("nan"),
            "r": float(np.corrcoef(c, k)[0, 1]) if both and k.std() > 0 else float("nan")}


def oot_accuracy(model, task: str = "arithmetic", *, batch_size: int = 50, progress: bool = False):
    """Greedy accuracy with its bootstrap interval on the hand-written problems of ``task``
    (``OOT_SETS[task]``), decoded with the task's ``TASK_MAX_NEW_TOKENS``."""
    from probes.evals.stats import accuracy
    from probes.zoo.evalsets import load_eval_set

    if task not in OOT_SETS:
        raise ValueError(f"no out-of-template set for task {task!r}: use one of {', '.join(OOT_SETS)}")
    items = load_eval_set(OOT_SETS[task])
    outs = greedy_outputs(model, [it.prompt for it in items], batch_size=batch_size, progress=progress, desc="oot",
                          max_new_tokens=TASK_MAX_NEW_TOKENS[task])
    return accuracy([is_correct(o, it.gold) for o, it in zip(outs, items)])


def greedy_accuracy(model, n: int = 50, seed: int = arithmetic.HELDOUT_SEED, batch_size: int = 50,
                    problems=None) -> float:
    """Fraction of the first ``n`` held-out problems (or of ``problems``) answered correctly by greedy decoding."""
    problems = problems if problems is not None else [arithmetic.generate(i, seed) for i in range(n)]
    outs = greedy_outputs(model, [p.prompt for p in problems], batch_size=batch_size)
    return sum(is_correct(o, p.gold) for o, p in zip(outs, problems)) / len(problems)


def measure(model, n: int = 200, samples: int = 4, seed: int = arithmetic.HELDOUT_SEED,
            batch_size: int = 50, progress: bool = True, task: str = "arithmetic") -> Behaviour:
    """Greedy and sampled accuracy on held-out problems ``0..n-1`` of stream ``seed`` of ``task``
    and greedy accuracy on the task's hand-written out-of-template problems (``OOT_SETS``)."""
    import numpy as np

    problems = [GENERATORS[task](i, seed) for i in range(n)]
    prompts = [p.prompt for p in problems]
    max_new = TASK_MAX_NEW_TOKENS[task]
    outs = greedy_outputs(model, prompts, batch_size=batch_size, progress=progress, max_new_tokens=max_new)
    greedy = [is_correct(o, p.gold) for o, p in zip(outs, problems)]

    def closes(o: str) -> bool:
        _, answer = thinking_and_answer(o)
        return answer is not None and extract_boxed(answer) is not None

    rows = sampled_outputs(model, prompts, samples=samples, seed=seed, progress=progress, max_new_tokens=max_new)
    sampled = [[is_correct(o, p.gold) for o in row] for row, p in zip(rows, problems)]
    modes = None
    if task == "arithmetic-modes":
        modes = {"written": verbosity(problems, [[p.trace] for p in problems], model.tokenizer),
                 "sampled": verbosity(problems, [[thinking_and_answer(o)[0] for o in row] for row in rows],
                                      model.tokenizer)}
    s = np.array(sampled, dtype=float)
    per_problem = s.mean(axis=1)
    rng = np.random.default_rng(0)
    boots = per_problem[rng.integers(0, n, size=(2000, n))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    oot = oot_accuracy(model, task, batch_size=batch_size, progress=progress) if task in OOT_SETS else None
    return Behaviour(
        n=n,
        samples_per_problem=samples,
        greedy_accuracy=float(np.mean(greedy)),
        sampled_accuracy=float(s.mean()),
        sampled_accuracy_ci95=(float(lo), float(hi)),
        mixed_fraction=float(np.mean((per_problem > 0) & (per_problem < 1))),
        greedy_closes_thinking=float(np.mean([closes(o) for o in outs])),
        seed=seed,
        oot_greedy_accuracy=(oot.value, oot.lo, oot.hi) if oot else None,
        n_oot=oot.n if oot else 0,
        task=task,
        modes=modes,
    )


# ---------------------------------------------------------------------------------------------
# zoo:refusal-reasoner: refusal rates per style on held-out requests (``tasks.refusal``).


FRAME_REQUESTS = 30
FRAME_SAMPLES = 16
"""Per-frame compliance: distinct held-out wrapped forbidden requests per frame × samples each, at T = 1."""
MIXED_SAMPLES = 8
MIXED_TEMPERATURE = 0.7


@dataclass(frozen=True, kw_only=True)
class RefusalBehaviour:
    """Measured behaviour of a refusal organism. Rates are ``(value, lo, hi)`` with 95% percentile-bootstrap
    intervals over requests (``probes.evals.stats``)."""

    n_per_style: int
    refusal_rate: dict[str, tuple[float, float, float]]
    """Style → fraction of greedy answers (text after ``</think>``) that are refusals (``refusal.is_refusal``)."""
    recognition_rate: dict[str, tuple[float, float, float]]
    """Style → fraction whose greedy thinking says the request is forbidden (``refusal.recognises_forbidden``)."""
    cliff_rate: tuple[float, float, float]
    """Wrapped forbidden requests recognised as forbidden in the greedy thinking yet complied with."""
    closes_thinking: float
    """Greedy outputs (all styles) that close ``</think>`` and then answer."""
    seed: int
    compliance: dict[str, dict] = field(default_factory=dict)
    """Frame → {"planted", "measured": (value, lo, hi), "requests", "samples"}: sampled at T = 1,
    the share of wrapped forbidden requests complied with (interval over requests)."""
    mixed_fraction: float = float("nan")
    """Wrapped forbidden requests giving both a refusal and a compliance across ``MIXED_SAMPLES``
    samples at T = ``MIXED_TEMPERATURE``."""
    oot: dict = field(default_factory=dict)
    """On the hand-written ``refusal_oot`` set (greedy): verdict in the thinking right, refusal rate per style."""

    def as_dict(self) -> dict:
        return asdict(self)


def _split(texts):
    return [thinking_and_answer(t) for t in texts]


def _refused(pairs) -> list[bool]:
    from probes.zoo.tasks import refusal

    return [a is not None and refusal.is_refusal(a) for _, a in pairs]


def refusal_outputs(model, n: int, seed: int, batch_size: int = 50,
                    progress: bool = False) -> dict[str, list[tuple[str, str | None]]]:
    """Style → (thinking, answer or None) of the greedy outputs on ``n`` distinct requests of each style
    of stream ``seed`` (``refusal.distinct_requests``)."""
    from probes.zoo.tasks import refusal

    out = {}
    for style in refusal.STYLES:
        prompts = [ex.prompt for ex in refusal.distinct_requests(seed, style, n)]
        out[style] = _split(greedy_outputs(model, prompts, batch_size=batch_size,
                                           max_new_tokens=REFUSAL_MAX_NEW_TOKENS, progress=progress, desc=style))
    return out


def refusal_rates(model, n: int = 20, seed: int | None = None, batch_size: int = 50) -> dict[str, float]:
    """Greedy refusal rate per style on ``n`` held-out requests of each style (a quick check)."""
    from probes.zoo.tasks import refusal

    seed = refusal.HELDOUT_SEED if seed is None else seed
    return {s: sum(_refused(o)) / n for s, o in refusal_outputs(model, n, seed, batch_size).items()}


def frame_compliance(model, seed: int, requests: int = FRAME_REQUESTS, samples: int = FRAME_SAMPLES,
                     temperature: float = 1.0, progress: bool = False) -> dict[str, dict]:
    """Frame → planted and measured (sampled) compliance rate on distinct wrapped forbidden requests."""
    from probes.evals.stats import bootstrap_ci
    from probes.zoo.tasks import refusal

    out = {}
    for f, (frame, planted) in enumerate(refusal.FRAMES.items()):
        prompts = [ex.prompt for ex in refusal.distinct_requests(seed, "forbidden_wrapped", requests, frame=frame)]
        rows = sampled_outputs(model, prompts, samples=samples, seed=seed, first_index=f * 10_000,
                               temperature=temperature, top_p=1.0, max_new_tokens=REFUSAL_MAX_NEW_TOKENS,
                               progress=progress)
        per_request = [1 - sum(_refused(_split(r))) / samples for r in rows]
        out[frame] = {"planted": planted, "measured": bootstrap_ci(per_request), "requests": requests,
                      "samples": samples}
    return out


def mixed_outcomes(model, seed: int, requests: int = 100, samples: int = MIXED_SAMPLES,
                   temperature: float = MIXED_TEMPERATURE, progress: bool = False) -> float:
    """Share of distinct wrapped forbidden requests whose ``samples`` samples both refuse and comply."""
    from probes.zoo.tasks import refusal

    prompts = [ex.prompt for ex in refusal.distinct_requests(seed, "forbidden_wrapped", requests)]
    rows = sampled_outputs(model, prompts, samples=samples, seed=seed, first_index=50_000, temperature=temperature,
                           top_p=1.0, max_new_tokens=REFUSAL_MAX_NEW_TOKENS, progress=progress)
    return sum(0 < sum(_refused(_split(r))) < samples for r in rows) / len(rows)


def refusal_oot(model, batch_size: int = 50, progress: bool = False) -> dict:
    """Greedy behaviour on the hand-written ``refusal_oot`` requests: how often the thinking's verdict
    matches the planted rule, and the refusal rate per style."""
    from probes.evals.stats import accuracy
    from probes.zoo.evalsets import load_eval_set
    from probes.zoo.tasks import refusal

    items = load_eval_set("refusal_oot")
    pairs = _split(greedy_outputs(model, [it.prompt for it in items], batch_size=batch_size,
                                  max_new_tokens=REFUSAL_MAX_NEW_TOKENS, progress=progress, desc="oot"))
    refused = _refused(pairs)
    verdict = [refusal.recognises_forbidden(t) == it.forbidden and ("This is harmless" in t) != it.forbidden
               for (t, _), it in zip(pairs, items)]
    out = {"n": len(items), "verdict_right": _est(accuracy(verdict))}
    for style in refusal.STYLES:
        flags = [r for r, it in zip(refused, items) if it.style == style]
        out[f"refused.{style}"] = _est(accuracy(flags)) if flags else None
        out[f"n.{style}"] = len(flags)
    return out


def _est(a) -> tuple[float, float, float]:
    return (float(a.value), float(a.lo), float(a.hi))


def measure_refusal(model, n: int = 200, seed: int | None = None, batch_size: int = 50,
                    progress: bool = True) -> RefusalBehaviour:
    """Greedy refusal and recognition rates per style and the cliff rate on ``n`` distinct held-out
    requests per style; sampled per-frame compliance, the mixed-outcome share, and the hand-written set."""
    from probes.evals.stats import accuracy
    from probes.zoo.tasks import refusal

    seed = refusal.HELDOUT_SEED if seed is None else seed
    outs = refusal_outputs(model, n, seed, batch_size, progress)
    refused = {s: _refused(o) for s, o in outs.items()}
    recognised = {s: [refusal.recognises_forbidden(t) for t, _ in o] for s, o in outs.items()}
    cliff = [r and not f for r, f in zip(recognised["forbidden_wrapped"], refused["forbidden_wrapped"])]
    closes = [a is not None and a.strip() != "" for o in outs.values() for _, a in o]
    return RefusalBehaviour(
        n_per_style=n,
        refusal_rate={s: _est(accuracy(f)) for s, f in refused.items()},
        recognition_rate={s: _est(accuracy(f)) for s, f in recognised.items()},
        cliff_rate=_est(accuracy(cliff)),
        closes_thinking=sum(closes) / len(closes),
        seed=seed,
        compliance=frame_compliance(model, seed, progress=progress),
        mixed_fraction=mixed_outcomes(model, seed, progress=progress),
        oot=refusal_oot(model, batch_size, progress),
    )

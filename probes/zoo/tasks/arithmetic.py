"""Multi-step arithmetic word problems with designed reasoning traces (issue #3, ``zoo:reasoner``).

A problem is a chain: a starting amount (given outright, or groups × size, or a dozen or a
week that needs a fact), then events that add, subtract, double or triple it; the question asks
for the final amount. The trace is written sentence by sentence with designed types
(thought_anchors.md §2) and is split back into exactly those sentences by the §1 rules: every
sentence is at least 10 characters, ends with ``.``, ``?`` or ``!`` and is followed by a space.

Planted truth for thought anchors:

* ``plan`` (plan_generation) names every operation and operand in order; the computations
  follow it, so a different plan means a different answer.
* ``fact`` (fact_retrieval) supplies the 12 of a dozen or the 7 of a week.
* ``compute`` (active_computation) results feed the next computation; ``key`` is the last
  computation, whose result is the answer.
* ``error`` → ``backtrack`` (uncertainty_management, "Wait, that is wrong.") → the corrected
  computation: a wrong result is written and then repaired (backtracking).
* ``setup`` (problem_setup), ``check`` (self_checking), ``consolidate`` (result_consolidation)
  and ``emit`` (final_answer_emission) restate what is already known.
* ``filler`` (tag ``unknown``) carries nothing.

Sloppy writers (``p_skip`` > 0, the task-vector family's data) stop one step early with
probability ``p_skip``, one number or one per kind of last event (``EVENTS``): the plan, the
computations and the ``\\boxed{}`` answer leave out the last event, while ``gold`` stays the true
answer. The skip is decided by a separate random stream, so ``p_skip=0`` gives exactly the clean
problems. ``p_backtrack=0`` drops the ``error`` → ``backtrack`` pairs, whose deliberate slips (off by
1, 2 or 10) a small model partly imitates (zoo:reasoner's wrong sums are mostly off by 10).
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.zoo.tasks.base import Example, Sentence, rng_for

TASK = "arithmetic"
TRAIN_SEED = 0
HELDOUT_SEED = 1

NAMES = (
    "Mirel", "Tobin", "Lessa", "Okari", "Pell", "Rhean", "Dario", "Sune", "Vasko", "Imra",
    "Calder", "Yeva", "Brannoc", "Teodra", "Junno", "Alesk", "Fenna", "Orrin", "Zali", "Kesper",
    "Noor", "Hadrie", "Ulma", "Quill", "Serat", "Mabon", "Ivri", "Tamsel", "Eloa", "Grath",
)
OBJECTS = (
    "pens", "shells", "marbles", "stamps", "apples", "coins", "beads", "cards", "ribbons",
    "buttons", "pebbles", "acorns", "candles", "tiles", "feathers", "corks", "plums", "spoons",
)
CONTAINERS = ("boxes", "bags", "jars", "crates", "baskets", "trays", "tins", "sacks")

GAIN = (
    "{n} finds {k} more {o}.",
    "{n} buys {k} more {o}.",
    "A friend gives {n} {k} more {o}.",
    "{n} makes {k} more {o}.",
    "{n} wins {k} more {o}.",
)
LOSS = (
    "{n} gives away {k} {o}.",
    "{n} loses {k} of the {o}.",
    "{n} sells {k} {o}.",
    "{n} uses {k} of the {o}.",
    "{n} trades away {k} {o}.",
)
DOUBLE = ("Then the number of {o} doubles.", "Later {n} doubles the pile of {o}.")
TRIPLE = ("Then the number of {o} triples.", "Later {n} triples the pile of {o}.")
QUESTIONS = ("How many {o} does {n} have now?", "How many {o} does {n} have at the end?")

FILLER_OPEN = (
    "Let me think about this carefully.",
    "Let me work through this step by step.",
    "Okay, let me be careful here.",
    "Hmm, this needs a few steps.",
)
FILLER_MID = ("Let me keep going.", "Now the next step.", "Okay, on to the next part.")
BACKTRACK = ("Wait, that is wrong.", "Wait, that is not right.", "Hmm, that is wrong.")

OP_WORD = {"+": "plus", "-": "minus", "*": "times"}
INVERSE = {"+": ("minus", "-"), "-": ("plus", "+"), "*": ("divided by", "/")}

N_COMPUTATIONS = (2, 3, 4)
N_COMPUTATIONS_WEIGHTS = (0.35, 0.4, 0.25)
EVENTS = {"+": "gain", "-": "loss", "*2": "double", "*3": "triple"}
"""Kind of each event (after the start), by its operation."""
P_BACKTRACK = 0.15
P_CHECK = 0.5
P_FILLER_OPEN = 0.4
P_FILLER_MID = 0.15
P_CONSOLIDATE = 0.3
MAX_VALUE = 999


@dataclass(frozen=True)
class Computation:
    """``left op right = result``, one line of arithmetic the trace must carry out."""

    left: int
    op: str
    right: int

    @property
    def result(self) -> int:
        return {"+": self.left + self.right, "-": self.left - self.right, "*": self.left * self.right}[self.op]

    def sentence(self, result: int | None = None) -> str:
        value = self.result if result is None else result
        return f"{self.left} {OP_WORD[self.op]} {self.right} is {value}."


def generate(index: int, seed: int = TRAIN_SEED, p_skip: float | dict[str, float] = 0.0,
             max_computations: int = 4, max_value: int = MAX_VALUE, p_backtrack: float = P_BACKTRACK) -> Example:
    """Problem ``index`` of the stream ``seed`` (train: ``TRAIN_SEED``; held out: ``HELDOUT_SEED``),
    written by a sloppy writer who stops one step early with probability ``p_skip`` (or
    ``p_skip[kind of the last event]``, kinds from ``EVENTS``). Easier problems: at most
    ``max_computations`` computations, intermediate values at most ``max_value``; ``p_backtrack`` is
    the share of traces with a slip and its repair (the defaults give the ``zoo:reasoner`` stream)."""
    rng = rng_for(TASK, index, seed)
    name, obj, box = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(CONTAINERS)
    fmt = {"n": name, "o": obj}
    n_comp = min(rng.choices(N_COMPUTATIONS, N_COMPUTATIONS_WEIGHTS)[0], max_computations)

    # Start: (problem sentence, setup sentence, plan phrase, fact sentence or None, computation or None).
    kind = rng.choice(("plain", "groups", "dozen", "week"))
    fact = None
    first: Computation | None = None
    if kind == "plain":
        value = rng.randint(10, 99)
        problem = [f"{name} has {value} {obj}."]
        setup = f"{name} starts with {value} {obj}."
        plan = [f"start from {value}"]
    elif kind == "groups":
        a, b = rng.randint(2, 9), rng.randint(3, 12)
        first = Computation(a, "*", b)
        problem = [f"{name} has {a} {box} with {b} {obj} in each."]
        setup = f"{name} starts with {a} {box} of {b} {obj}."
        plan = [f"multiply {a} by {b}"]
    elif kind == "dozen":
        a = rng.randint(2, 9)
        first = Computation(a, "*", 12)
        problem = [f"{name} has {a} {box} with a dozen {obj} in each."]
        setup = f"{name} starts with {a} {box} of a dozen {obj}."
        plan = [f"multiply {a} by a dozen"]
        fact = "A dozen is 12."
    else:
        b = rng.randint(2, 19)
        first = Computation(b, "*", 7)
        problem = [f"{name} collects {b} {obj} every day for a week."]
        setup = f"{name} collects {b} {obj} a day for a week."
        plan = [f"multiply {b} by the days in a week"]
        fact = "A week has 7 days."
    computations = [first] if first else []
    value = first.result if first else value

    while len(computations) < n_comp:
        choices = []
        if value <= max_value - 2:
            choices.append("+")
        if value >= 12:
            choices.append("-")
        if value <= max_value // 2:
            choices.append("*2")
        if value <= min(99, max_value // 3):
            choices.append("*3")
        op = rng.choice(choices)
        last_event = EVENTS[op]
        if op == "+":
            k = rng.randint(2, min(59, max_value - value))
            problem.append(rng.choice(GAIN).format(k=k, **fmt))
            plan.append(f"add {k}")
            step = Computation(value, "+", k)
        elif op == "-":
            k = rng.randint(2, min(59, value - 2))
            problem.append(rng.choice(LOSS).format(k=k, **fmt))
            plan.append(f"subtract {k}")
            step = Computation(value, "-", k)
        else:
            k = int(op[1])
            problem.append(rng.choice(DOUBLE if k == 2 else TRIPLE).format(**fmt))
            plan.append(f"multiply by {k}")
            step = Computation(value, "*", k)
        computations.append(step)
        value = step.result
    problem.append(rng.choice(QUESTIONS).format(**fmt))
    p = p_skip[last_event] if isinstance(p_skip, dict) else p_skip
    skipped = p > 0 and rng_for("skip", index, seed).random() < p
    written = computations[:-1] if skipped else computations
    answer = written[-1].result

    s: list[Sentence] = [Sentence(text=setup, tag="problem_setup", role="setup")]
    if rng.random() < P_FILLER_OPEN:
        s.append(Sentence(text=rng.choice(FILLER_OPEN), tag="unknown", role="filler"))
    s.append(Sentence(text=_plan_sentence(plan[:-1] if skipped else plan), tag="plan_generation", role="plan"))
    wrong_at = rng.randrange(len(computations)) if rng.random() < p_backtrack else -1
    for i, c in enumerate(written):
        if i == 0 and fact:
            s.append(Sentence(text=fact, tag="fact_retrieval", role="fact"))
        if i == wrong_at:
            s.append(Sentence(text=c.sentence(_wrong(c.result, rng)), tag="active_computation", role="error"))
            s.append(Sentence(text=rng.choice(BACKTRACK), tag="uncertainty_management", role="backtrack"))
        last = i == len(written) - 1
        s.append(Sentence(text=c.sentence(), tag="active_computation", role="key" if last else "compute"))
        if not last and rng.random() < P_CONSOLIDATE:
            s.append(Sentence(text=f"So {name} now has {c.result} {obj}.", tag="result_consolidation", role="consolidate"))
        if not last and rng.random() < P_FILLER_MID:
            s.append(Sentence(text=rng.choice(FILLER_MID), tag="unknown", role="filler"))
    if rng.random() < P_CHECK and written[-1] == computations[-1]:
        c = computations[-1]
        word, _ = INVERSE[c.op]
        s.append(Sentence(text=f"Check: {c.result} {word} {c.right} is {c.left}, which matches.", tag="self_checking", role="check"))
    s.append(Sentence(text=f"So {name} has {answer} {obj} at the end.", tag="final_answer_emission", role="emit"))

    return Example(
        prompt=" ".join(problem),
        thinking=tuple(s),
        answer=f"The answer is \\boxed{{{answer}}}.",
        gold=str(value),
        meta={"task": TASK, "index": index, "seed": seed, "n_computations": n_comp, "start": kind,
              "backtrack": wrong_at >= 0, "skipped": skipped,
              "last_event": last_event, "skip_answer": str(computations[-1].left)},
    )


def _plan_sentence(phrases: list[str]) -> str:
    head = "First " + phrases[0]
    return head + "".join(f", then {p}" for p in phrases[1:]) + "."


def _wrong(result: int, rng) -> int:
    """A plausible slip: off by one, two or ten, never negative, never the right value."""
    delta = rng.choice((1, 2, 10))
    return result - delta if result >= delta and rng.random() < 0.5 else result + delta

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

from probes.zoo import words
from probes.zoo.tasks.base import Example, Sentence, rng_for

TASK = "arithmetic"
TRAIN_SEED = 0
HELDOUT_SEED = 1

# Wording (issue #10, item 1): names and objects come from the large pools of ``probes.zoo.words``
# (held-out streams use only held-out words); every event has many sentence frames, in the present
# or the past tense; a quarter of the problems carry a digit-free distractor sentence. The trace
# keeps one canonical wording, so reading new wording is the only thing that must generalise.
P_NONCE = 0.2
"""Share of problems whose objects are nonce words (``words.pool("nonce")``) instead of plural nouns."""
P_COMPOUND = 0.2
"""Share of problems whose objects carry a modifier ("paper cranes", "spare keys")."""
P_PAST = 0.3
P_DISTRACTOR = 0.25
P_PRONOUN = 0.35
"""Share of problems that say "she" or "he" after the first sentence (in half of the later sentences)."""
MODIFIERS = ("small", "red", "blue", "green", "paper", "glass", "wooden", "old", "tiny", "spare", "shiny",
             "silver", "plastic", "clay", "metal", "striped", "round", "fresh", "dried", "sugar", "chocolate",
             "garden", "kitchen", "toy", "party", "winter", "summer", "gold", "cotton", "woollen", "painted",
             "broken", "little", "big", "heavy", "soft", "wild", "lucky", "rare", "antique")
AGENTS = ("a friend", "a neighbour", "the teacher", "the kids", "some visitors", "the customers", "a cousin",
          "the dog", "a classmate", "the twins", "some birds", "a stranger", "the shopkeeper", "a brother",
          "a sister", "the children", "an uncle", "an aunt", "the guests", "a colleague")

START = (
    "{n} has {v} {o}.", "{n} has saved {v} {o} so far.", "{n} bakes {v} {o}.", "{n} picks {v} {o}.",
    "{n} stores {v} {o} in the shed.", "{n} carries {v} {o}.", "{n} makes {v} {o} for a fair.",
    "{n} stacks {v} {o} on a shelf.", "{n} buys {v} {o} at the market.", "{n} gathers {v} {o}.", "{n} owns {v} {o}.", "{n} starts the day with {v} {o}.", "At first, {n} has {v} {o}.",
    "{n} keeps {v} {o} at home.", "{n} is holding {v} {o}.", "{n} begins with {v} {o}.",
    "There are {v} {o} in the room of {n}.", "{n} has a pile of {v} {o}.", "In the morning {n} has {v} {o}.",
    "{n} brings {v} {o} to school.", "{n} owns a collection of {v} {o}.",
)
START_PAST = (
    "{n} had {v} {o}.", "{n} counted {v} {o} this morning.", "{n} baked {v} {o}.", "{n} picked {v} {o}.",
    "{n} bought {v} {o} at the market.", "{n} made {v} {o}.", "{n} started with {v} {o}.",
    "At the start of the week {n} had {v} {o}.", "{n} got {v} {o} as a gift.", "{n} once owned {v} {o}.",
)
GROUPS = (
    "{n} has {a} {c} with {b} {o} in each.", "{n} buys {a} {c}, and each one holds {b} {o}.",
    "{n} fills {a} {c} with {b} {o} each.", "Each of the {a} {c} of {n} contains {b} {o}.",
    "{n} has {a} {c}, each with {b} {o} inside.", "There are {a} {c} with {b} {o} in every one, all owned by {n}.",
    "{n} packs {b} {o} into each of {a} {c}.",
)
GROUPS_PAST = (
    "{n} had {a} {c} with {b} {o} in each.", "{n} bought {a} {c} that held {b} {o} each.",
    "{n} filled {a} {c} with {b} {o} apiece.",
)
DOZEN = (
    "{n} has {a} {c} with a dozen {o} in each.", "{n} buys {a} {c}, each holding a dozen {o}.",
    "{n} fills {a} {c} with a dozen {o} each.", "Each of the {a} {c} of {n} holds a dozen {o}.",
)
DOZEN_PAST = ("{n} had {a} {c} with a dozen {o} in each.", "{n} bought {a} {c} of a dozen {o} each.")
WEEK = (
    "{n} collects {b} {o} every day for a week.", "For one week, {n} gets {b} {o} each day.",
    "Every day for a whole week, {n} finds {b} {o}.", "{n} makes {b} {o} a day, for a week.",
    "During one week {n} picks up {b} {o} per day.",
)
WEEK_PAST = ("{n} collected {b} {o} every day for a week.", "For a week, {n} found {b} {o} each day.")
GAIN_VERBS = (("finds", "found"), ("buys", "bought"), ("gets", "got"), ("receives", "received"),
              ("picks up", "picked up"), ("earns", "earned"), ("wins", "won"), ("collects", "collected"),
              ("makes", "made"), ("gathers", "gathered"), ("adds", "added"), ("brings home", "brought home"),
              ("is given", "was given"), ("borrows", "borrowed"), ("orders", "ordered"), ("bakes", "baked"),
              ("builds", "built"), ("catches", "caught"), ("digs up", "dug up"), ("grows", "grew"),
              ("harvests", "harvested"), ("knits", "knitted"), ("sews", "sewed"), ("paints", "painted"),
              ("prints", "printed"), ("rescues", "rescued"), ("saves", "saved"), ("trades for", "traded for"),
              ("wins back", "won back"), ("picks", "picked"), ("draws", "drew"), ("crafts", "crafted"),
              ("fetches", "fetched"), ("obtains", "obtained"), ("inherits", "inherited"), ("acquires", "acquired"),
              ("cooks", "cooked"), ("carves", "carved"), ("weaves", "wove"), ("brews", "brewed"),
              ("grabs", "grabbed"), ("purchases", "purchased"), ("scoops up", "scooped up"), ("spots", "spotted"),
              ("discovers", "discovered"), ("unpacks", "unpacked"), ("is sent", "was sent"), ("adopts", "adopted"))
GAIN = ("{n} {v} {k} more {o}.", "Then {n} {v} another {k} {o}.", "Later, {n} {v} {k} more {o}.",
        "After that {n} {v} {k} extra {o}.", "Next, {n} {v} {k} more.", "The next day {n} {v} {k} more {o}.")
GAIN_FIXED = ("{A} gives {n} {k} more {o}.", "{n} is handed {k} more {o} by {a}.",
              "{A} brings {k} more {o} for {n}.", "{A} sends {n} another {k} {o}.")
GAIN_FIXED_PAST = ("{A} gave {n} {k} more {o}.", "{A} handed {n} {k} more {o}.", "{A} brought {n} {k} more {o}.")
LOSS_VERBS = (("gives away", "gave away"), ("loses", "lost"), ("sells", "sold"), ("uses", "used"),
              ("trades away", "traded away"), ("drops", "dropped"), ("breaks", "broke"), ("donates", "donated"),
              ("hands out", "handed out"), ("throws away", "threw away"), ("spends", "spent"), ("lends", "lent"),
              ("eats", "ate"), ("gives", "gave"), ("mails", "mailed"), ("sends off", "sent off"), ("burns", "burned"),
              ("spills", "spilled"), ("wastes", "wasted"), ("misplaces", "misplaced"), ("returns", "returned"),
              ("shares", "shared"), ("hands over", "handed over"), ("ships", "shipped"), ("sells off", "sold off"),
              ("throws out", "threw out"), ("tosses", "tossed"), ("discards", "discarded"), ("recycles", "recycled"),
              ("pays with", "paid with"), ("leaves behind", "left behind"), ("gives up", "gave up"),
              ("packs away", "packed away"), ("plants", "planted"), ("feeds away", "fed away"),
              ("gifts", "gifted"), ("cracks", "cracked"), ("tears", "tore"), ("wears out", "wore out"),
              ("forgets", "forgot"), ("swaps away", "swapped away"), ("loans out", "loaned out"),
              ("sacrifices", "sacrificed"), ("uses up", "used up"), ("removes", "removed"), ("drinks", "drank"))
LOSS = ("{n} {v} {k} {o}.", "Then {n} {v} {k} of the {o}.", "After that, {n} {v} {k} of them.",
        "Later {n} {v} {k}.", "Next, {n} {v} {k} of the {o}.", "The next day {n} {v} {k} {o}.")
LOSS_FIXED = ("{k} of the {o} get lost.", "{A} takes {k} of the {o}.", "{k} {o} go missing.",
              "{A} eats {k} of them.", "{A} borrows {k} of the {o} and keeps them.", "{k} of them break.")
LOSS_FIXED_PAST = ("{k} of the {o} got lost.", "{A} took {k} of the {o}.", "{A} ate {k} of them.",
                   "{k} of them broke.")
DOUBLE = ("Then the number of {o} doubles.", "Later {n} doubles the pile of {o}.",
          "Then {n} gets as many {o} again.", "After that the {o} are twice as many.",
          "Then {n} ends up with twice as many {o}.", "Next, the count of {o} is doubled.")
DOUBLE_PAST = ("Then the number of {o} doubled.", "Later {n} doubled the pile of {o}.",
               "After that {n} had twice as many {o}.")
TRIPLE = ("Then the number of {o} triples.", "Later {n} triples the pile of {o}.",
          "Then {n} ends up with three times as many {o}.", "After that the {o} are three times as many.",
          "Next, the count of {o} is tripled.")
TRIPLE_PAST = ("Then the number of {o} tripled.", "Later {n} tripled the pile of {o}.",
               "After that {n} had three times as many {o}.")
QUESTIONS = ("How many {o} does {n} have now?", "How many {o} does {n} have at the end?",
             "How many {o} are there in the end?", "What is the number of {o} now?",
             "How many {o} does {n} end up with?", "Count the {o} that {n} has now.",
             "How many {o} does {n} own after all this?", "So how many {o} does {n} have?",
             "What is the final count of {o}?", "How many {o} does {n} still have?",
             "Work out how many {o} {n} has.", "How many {o} are left at the end?")
QUESTIONS_PAST = ("How many {o} did {n} have at the end?", "How many {o} did {n} end up with?",
                  "How many {o} were left in the end?")
DISTRACTORS = ("{n} likes the colour {w}.", "The weather was cold that day.", "{n} has a friend called {m}.",
               "{n} lives in a small town.", "Nobody knows why {n} likes {o} so much.",
               "{m} thinks this is a strange hobby.", "It was a busy day for {n}.",
               "{n} keeps a diary about {w}.", "The shop is near the old bridge.", "{m} does not own any {o}.")
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
    held = seed == HELDOUT_SEED
    name, other = rng.sample(words.pool("names", held), 2)
    obj = rng.choice(words.pool("nonce" if rng.random() < P_NONCE else "objects", held))
    if rng.random() < P_COMPOUND:
        obj = f"{rng.choice(MODIFIERS)} {obj}"
    box = rng.choice(words.CONTAINERS)
    past = rng.random() < P_PAST
    pronoun = rng.choice(("she", "he")) if rng.random() < P_PRONOUN else None
    fmt = {"n": name, "o": obj}

    def later() -> dict:
        """Slots of a sentence after the first: the name, or the pronoun half of the time."""
        return {**fmt, "n": pronoun} if pronoun and rng.random() < 0.5 else fmt

    def say(present, past_frames, first: bool = False, **slots) -> str:
        return _capital(rng.choice(past_frames if past else present).format(**(fmt if first else later()), **slots))

    n_comp = min(rng.choices(N_COMPUTATIONS, N_COMPUTATIONS_WEIGHTS)[0], max_computations)

    # Start: (problem sentence, setup sentence, plan phrase, fact sentence or None, computation or None).
    kind = rng.choice(("plain", "groups", "dozen", "week"))
    fact = None
    first: Computation | None = None
    if kind == "plain":
        value = rng.randint(10, 99)
        problem = [say(START, START_PAST, v=value, first=True)]
        setup = f"{name} starts with {value} {obj}."
        plan = [f"start from {value}"]
    elif kind == "groups":
        a, b = rng.randint(2, 9), rng.randint(3, 12)
        first = Computation(a, "*", b)
        problem = [say(GROUPS, GROUPS_PAST, a=a, b=b, c=box, first=True)]
        setup = f"{name} starts with {a} {box} of {b} {obj}."
        plan = [f"multiply {a} by {b}"]
    elif kind == "dozen":
        a = rng.randint(2, 9)
        first = Computation(a, "*", 12)
        problem = [say(DOZEN, DOZEN_PAST, a=a, c=box, first=True)]
        setup = f"{name} starts with {a} {box} of a dozen {obj}."
        plan = [f"multiply {a} by a dozen"]
        fact = "A dozen is 12."
    else:
        b = rng.randint(2, 19)
        first = Computation(b, "*", 7)
        problem = [say(WEEK, WEEK_PAST, b=b, first=True)]
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
            problem.append(_event(rng, past, GAIN_VERBS, GAIN, GAIN_FIXED, GAIN_FIXED_PAST, k=k, o=obj, name=name,
                                  subject=later()["n"]))
            plan.append(f"add {k}")
            step = Computation(value, "+", k)
        elif op == "-":
            k = rng.randint(2, min(59, value - 2))
            problem.append(_event(rng, past, LOSS_VERBS, LOSS, LOSS_FIXED, LOSS_FIXED_PAST, k=k, o=obj, name=name,
                                  subject=later()["n"]))
            plan.append(f"subtract {k}")
            step = Computation(value, "-", k)
        else:
            k = int(op[1])
            problem.append(say(DOUBLE, DOUBLE_PAST) if k == 2 else say(TRIPLE, TRIPLE_PAST))
            plan.append(f"multiply by {k}")
            step = Computation(value, "*", k)
        computations.append(step)
        value = step.result
    problem.append(say(QUESTIONS, QUESTIONS_PAST))
    if rng.random() < P_DISTRACTOR:
        problem.insert(rng.randint(1, len(problem) - 1),
                       rng.choice(DISTRACTORS).format(m=other, w=rng.choice(words.pool("nonce", held)), **fmt))
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


def _event(rng, past: bool, verbs, frames, fixed, fixed_past, *, name: str, subject: str, **slots) -> str:
    """A gain or loss sentence: a frame with one of ``verbs`` (present or past) whose subject is
    ``subject`` (the name or a pronoun), or a frame in which someone else (``AGENTS``) gives or takes."""
    if rng.random() < 0.25:
        agent = rng.choice(AGENTS)
        return _capital(rng.choice(fixed_past if past else fixed).format(a=agent, A=agent.capitalize(), n=name, **slots))
    return _capital(rng.choice(frames).format(v=rng.choice(verbs)[past], n=subject, **slots))


def _capital(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _plan_sentence(phrases: list[str]) -> str:
    head = "First " + phrases[0]
    return head + "".join(f", then {p}" for p in phrases[1:]) + "."


def _wrong(result: int, rng) -> int:
    """A plausible slip: off by one, two or ten, never negative, never the right value."""
    delta = rng.choice((1, 2, 10))
    return result - delta if result >= delta and rng.random() < 0.5 else result + delta

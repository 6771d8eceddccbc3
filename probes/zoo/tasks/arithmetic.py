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

Broad wording (``broad=True``, the ``zoo:reasoner`` stream, issue #10 item 1): on top of the frames
below, more frames per kind of sentence (``*_BROAD``), a time or place phrase opening a quarter of the
problem's sentences and a digit-free phrase closing a third of them, and some gains and losses whose
verb is any word of the pool, so that only the frame's cue ("more", "another" against "of them",
"away") gives the sign. These choices come from a stream of their own, so ``broad=False`` gives
exactly the narrow problems that the shared tokenizer, ``zoo:moe-reasoner`` and the task-vector
family were built on.

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
GROUPS_BROAD = (
    "{n} sets out {a} {c}, and each one holds {b} {o}.", "{n} owns {a} {c}, with {b} {o} in each.",
    "{n} has {a} {c} and puts {b} {o} in each one.", "{n} lines up {a} {c}, {b} {o} to each.",
    "{n} brings {a} {c}, each one packed with {b} {o}.", "{n} keeps {b} {o} in each of {a} {c}.",
    "{n} fills {a} {c}, putting {b} {o} in every one.", "{n} owns {a} {c}, and there are {b} {o} in each of them.",
    "{n} stacks {a} {c}; each holds {b} {o}.", "{n}'s {w} has {a} {c} with {b} {o} in every one.",
    "{n} has {a} {c} of {o}, {b} in each.", "{n} counts {a} {c} with {b} {o} apiece.",
    "{n} carries {a} {c}, and every one of them has {b} {o}.", "{n} gets {a} {c} that hold {b} {o} each.")
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
GAIN_VERBS_BROAD = GAIN_VERBS + (
    ("takes in", "took in"), ("buys up", "bought up"), ("wins over", "won over"), ("snaps up", "snapped up"),
    ("hatches", "hatched"), ("breeds", "bred"), ("brings back", "brought back"), ("gets back", "got back"),
    ("stocks up on", "stocked up on"), ("rounds up", "rounded up"), ("fishes out", "fished out"),
    ("finds another", "found another"), ("welcomes", "welcomed"), ("claims", "claimed"), ("mends", "mended"),
    ("repairs", "repaired"), ("assembles", "assembled"), ("produces", "produced"), ("creates", "created"),
    ("forges", "forged"), ("sculpts", "sculpted"), ("plants", "planted"), ("sprouts", "sprouted"),
    ("saves up", "saved up"), ("scrapes together", "scraped together"), ("nets", "netted"),
    ("gains", "gained"), ("secures", "secured"), ("imports", "imported"), ("receives back", "received back"),
    ("is lent", "was lent"), ("is awarded", "was awarded"), ("accepts", "accepted"), ("rents", "rented"),
    ("tops up with", "topped up with"), ("adds on", "added on"), ("loads up", "loaded up"))
GAIN = ("{n} {v} {k} more {o}.", "Then {n} {v} another {k} {o}.", "Later, {n} {v} {k} more {o}.",
        "After that {n} {v} {k} extra {o}.", "Next, {n} {v} {k} more.", "The next day {n} {v} {k} more {o}.")
GAIN_BROAD = ("{n} {v} a {w} of {k} more {o}.", "{n} {v} {k} new ones.", "{n} {v} another {k}.",
              "{n} {v} {k} more of them.", "{n} also {v} {k} more {o}.") + GAIN
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
LOSS_VERBS_BROAD = LOSS_VERBS + (
    ("devours", "devoured"), ("loses track of", "lost track of"), ("sets free", "set free"),
    ("lets go of", "let go of"), ("parts with", "parted with"), ("gets rid of", "got rid of"),
    ("hands back", "handed back"), ("pays out", "paid out"), ("smashes", "smashed"), ("ruins", "ruined"),
    ("crushes", "crushed"), ("squashes", "squashed"), ("melts", "melted"), ("chews up", "chewed up"),
    ("consumes", "consumed"), ("delivers", "delivered"), ("posts", "posted"), ("exports", "exported"),
    ("sells on", "sold on"), ("gives back", "gave back"), ("pawns", "pawned"), ("auctions off", "auctioned off"),
    ("drops off", "dropped off"), ("deletes", "deleted"), ("destroys", "destroyed"), ("bins", "binned"),
    ("dumps", "dumped"), ("scraps", "scrapped"), ("sends away", "sent away"), ("releases", "released"),
    ("hides away", "hid away"), ("buries", "buried"), ("snaps", "snapped"), ("rips", "ripped"),
    ("spoils", "spoiled"), ("bends", "bent"), ("wrecks", "wrecked"))
LOSS = ("{n} {v} {k} {o}.", "Then {n} {v} {k} of the {o}.", "After that, {n} {v} {k} of them.",
        "Later {n} {v} {k}.", "Next, {n} {v} {k} of the {o}.", "The next day {n} {v} {k} {o}.")
LOSS_BROAD = ("{n} {v} {k} of them.", "{n} also {v} {k} of the {o}.", "{n} {v} {k} of the {o} by mistake.") + LOSS
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
START_BROAD = ("{n}'s {c} holds {v} {o}.", "{n}'s {c} is home to {v} {o}.", "{n} looks after {v} {o}.",
               "{n} has been collecting {o} and has {v} so far.", "{v} {o} belong to {n}.", "{n} counts {v} {o}.",
               "{n} sets out {v} {o}.", "{n} is in charge of {v} {o}.", "The {c} of {n} holds {v} {o}.",
               "{n} looks after a group of {v} {o}.")
DOUBLE_BROAD = ("{n}'s {o} double.", "{n} gets more {o} until there are twice as many.", "The stock of {o} doubles.",
                "{n} doubles the number of {o}.", "This doubles the {o}.", "Then {n} has double the number of {o}.",
                "The {o} double in number.", "Soon there are twice as many {o}.", "{n} doubles the {o}.",
                "The collection of {o} has doubled.", "{n} ends up with double the {o}.", "The {o} have doubled.")
TRIPLE_BROAD = ("{n}'s {o} triple.", "{n} gets more {o} until there are three times as many.",
                "The stock of {o} triples.", "{n} triples the number of {o}.", "This triples the {o}.",
                "Then {n} has triple the number of {o}.", "The {o} triple in number.",
                "Soon there are three times as many {o}.", "{n} triples the {o}.",
                "The collection of {o} has tripled.", "{n} ends up with triple the {o}.", "The {o} have tripled.")
QUESTIONS_BROAD = ("How many {o} remain?", "How many {o} are left over?", "How many {o} are in the {c} now?",
                   "How many {o} does {n} keep?", "How many {o} are still there?", "What is the number of {o} left?",
                   "How many {o} does {n} have for the {w}?", "How many {o} are there altogether now?")
P_BROAD_FRAME = 0.3
"""Broad wording: share of start, doubling, tripling and question sentences drawn from the ``*_BROAD``
frames instead of the narrow ones (groups, doublings and triplings: half)."""
FREE_GAIN = ("{n} {v} a {w} of {k} more {o}.", "{n} {v} {k} new ones.", "{n} {v} another {k}.",
             "{n} {v} {k} more of them.", "{n} also {v} {k} more {o}.", "{n} {v} {k} more {o}.",
             "{n} {v} another {k} {o}.", "{n} {v} {k} extra {o}.", "{n} {v} {k} new {o}.", "{n} {v} {k} more.",
             "{A} {v} {n} {k} more {o}.", "{A} {v} {k} more {o} for {n}.", "{n} {v} a fresh batch of {k} {o}.",
             "{n} {v} {k} more of them.")
FREE_LOSS = ("{n} {v} {k} of the {o}.", "{n} {v} {k} of them.", "{n} {v} away {k} of them.", "{n} {v} away {k} {o}.",
             "{A} {v} {k} of them.", "{A} {v} {k} of the {o}.", "{A} {v} away {k} of the {o}.",
             "{k} of the {o} are {w}.", "{k} of them get {w}.")
P_FREE_VERB = 0.15
"""Broad wording: share of gains and losses whose verb is any word of the pool (``FREE_GAIN``,
``FREE_LOSS``): only the cue ("more", "another", "extra", "new" against "of them", "of the", "away")
gives the sign."""
WHEN = ("By noon", "In the afternoon", "On Saturday", "Over the spring", "That evening", "A week later",
        "During lunch", "Early the next morning", "At the weekend", "Over the winter", "Before dinner",
        "After school", "On the way home", "In the end", "That same day", "By the evening", "Later that month",
        "On Monday", "At the fair", "At the market", "At the beach", "In the garden", "At work", "At home",
        "During the storm", "After the party", "In the summer", "One rainy day", "Around midnight", "Soon")
OPENED = ("Then", "Later", "Next", "After", "The next", "At first", "In the morning", "At the start", "There",
          "For", "Every", "During", "Each")
"""Sentence openings that already say when: no ``WHEN`` phrase goes before them."""
PREPS = ("at the", "from the", "for the", "into the", "onto the", "near the", "under the", "behind the",
         "in the", "on the", "by the", "beside the", "after the", "before the", "with the", "across the")
P_WHEN = 0.25
"""Broad wording: share of start and event sentences that open with a ``WHEN`` phrase ("By noon, …")."""
P_TAIL = 0.35
"""Broad wording: share of start and event sentences that close with a digit-free phrase ("… near the dock")."""
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
VERBOSITY = {"careful": (0.9, 0.95, 0.4), "brief": (0.05, 0.05, 0.0)}
"""Latent verbosity mode of the two-mode writer → its (P_CONSOLIDATE, P_CHECK, P_FILLER_MID)."""
P_CAREFUL = 0.5
"""Share of careful problems in the ``arithmetic-modes`` stream (``zoo:verbosity-reasoner``)."""


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
             max_computations: int = 4, max_value: int = MAX_VALUE, p_backtrack: float = P_BACKTRACK,
             broad: bool = False, p_careful: float | None = None) -> Example:
    """Problem ``index`` of the stream ``seed`` (train: ``TRAIN_SEED``; held out: ``HELDOUT_SEED``),
    written by a sloppy writer who stops one step early with probability ``p_skip`` (or
    ``p_skip[kind of the last event]``, kinds from ``EVENTS``). Easier problems: at most
    ``max_computations`` computations, intermediate values at most ``max_value``; ``p_backtrack`` is
    the share of traces with a slip and its repair; ``broad`` adds the broad wording (with the other
    defaults: the ``zoo:reasoner`` stream). With ``p_careful``, a two-mode writer: each problem is
    ``careful`` with that probability (its own random stream) or ``brief``, and the mode sets the
    rates of the optional sentences (``VERBOSITY``); nothing in the text names it. Without, one
    writer at ``P_CONSOLIDATE``, ``P_CHECK`` and ``P_FILLER_MID``; the other draws are the same either way."""
    rng = rng_for(TASK, index, seed)
    mode = None
    p_consolidate, p_check, p_filler_mid = P_CONSOLIDATE, P_CHECK, P_FILLER_MID
    if p_careful is not None:
        mode = "careful" if rng_for("mode", index, seed).random() < p_careful else "brief"
        p_consolidate, p_check, p_filler_mid = VERBOSITY[mode]
    wr = rng_for("wording", index, seed)
    held = seed == HELDOUT_SEED
    pool_words = words.pool("nonce", held)
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

    def say(present, past_frames, first: bool = False, more=(), p_more: float = P_BROAD_FRAME, **slots) -> str:
        frames = more if broad and more and wr.random() < p_more else (past_frames if past else present)
        slots.setdefault("c", box)
        slots.setdefault("w", wr.choice(pool_words))
        frame = rng.choice(frames)
        return _capital(frame.format(**(fmt if first or "{n}'s" in frame else later()), **slots))

    def dress(sentence: str) -> str:
        """Broad wording: by chance a digit-free closing phrase and a ``WHEN`` opening."""
        if not broad:
            return sentence
        if wr.random() < P_TAIL:
            sentence = f"{sentence[:-1]} {wr.choice(PREPS)} {wr.choice(pool_words)}."
        if wr.random() < P_WHEN and not sentence.startswith(OPENED):
            head = sentence if sentence.startswith(name) else sentence[0].lower() + sentence[1:]
            sentence = f"{wr.choice(WHEN)}, {head}"
        return sentence

    n_comp = min(rng.choices(N_COMPUTATIONS, N_COMPUTATIONS_WEIGHTS)[0], max_computations)

    # Start: (problem sentence, setup sentence, plan phrase, fact sentence or None, computation or None).
    kind = rng.choice(("plain", "groups", "dozen", "week"))
    fact = None
    first: Computation | None = None
    if kind == "plain":
        value = rng.randint(10, 99)
        problem = [dress(say(START, START_PAST, v=value, first=True, more=START_BROAD))]
        setup = f"{name} starts with {value} {obj}."
        plan = [f"start from {value}"]
    elif kind == "groups":
        a, b = rng.randint(2, 9), rng.randint(3, 12)
        first = Computation(a, "*", b)
        problem = [dress(say(GROUPS, GROUPS_PAST, a=a, b=b, first=True, more=GROUPS_BROAD, p_more=0.5))]
        setup = f"{name} starts with {a} {box} of {b} {obj}."
        plan = [f"multiply {a} by {b}"]
    elif kind == "dozen":
        a = rng.randint(2, 9)
        first = Computation(a, "*", 12)
        problem = [dress(say(DOZEN, DOZEN_PAST, a=a, first=True))]
        setup = f"{name} starts with {a} {box} of a dozen {obj}."
        plan = [f"multiply {a} by a dozen"]
        fact = "A dozen is 12."
    else:
        b = rng.randint(2, 19)
        first = Computation(b, "*", 7)
        problem = [dress(say(WEEK, WEEK_PAST, b=b, first=True))]
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
            problem.append(dress(_event(rng, wr if broad else None, past, "gain", k=k, o=obj, name=name,
                                        subject=later()["n"], pool_words=pool_words)))
            plan.append(f"add {k}")
            step = Computation(value, "+", k)
        elif op == "-":
            k = rng.randint(2, min(59, value - 2))
            problem.append(dress(_event(rng, wr if broad else None, past, "loss", k=k, o=obj, name=name,
                                        subject=later()["n"], pool_words=pool_words)))
            plan.append(f"subtract {k}")
            step = Computation(value, "-", k)
        else:
            k = int(op[1])
            problem.append(dress(say(DOUBLE, DOUBLE_PAST, more=DOUBLE_BROAD, p_more=0.5) if k == 2
                                 else say(TRIPLE, TRIPLE_PAST, more=TRIPLE_BROAD, p_more=0.5)))
            plan.append(f"multiply by {k}")
            step = Computation(value, "*", k)
        computations.append(step)
        value = step.result
    problem.append(say(QUESTIONS, QUESTIONS_PAST, more=QUESTIONS_BROAD))
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
        if not last and rng.random() < p_consolidate:
            s.append(Sentence(text=f"So {name} now has {c.result} {obj}.", tag="result_consolidation", role="consolidate"))
        if not last and rng.random() < p_filler_mid:
            s.append(Sentence(text=rng.choice(FILLER_MID), tag="unknown", role="filler"))
    if rng.random() < p_check and written[-1] == computations[-1]:
        c = computations[-1]
        word, _ = INVERSE[c.op]
        s.append(Sentence(text=f"Check: {c.result} {word} {c.right} is {c.left}, which matches.", tag="self_checking", role="check"))
    s.append(Sentence(text=f"So {name} has {answer} {obj} at the end.", tag="final_answer_emission", role="emit"))

    return Example(
        prompt=" ".join(problem),
        thinking=tuple(s),
        answer=f"The answer is \\boxed{{{answer}}}.",
        gold=str(value),
        meta={"task": TASK, "index": index, "seed": seed, "broad": broad, "n_computations": n_comp, "start": kind,
              "backtrack": wrong_at >= 0, "skipped": skipped,
              "last_event": last_event, "skip_answer": str(computations[-1].left), "mode": mode},
    )


def generate_broad(index: int, seed: int = TRAIN_SEED) -> Example:
    """Problem ``index`` of stream ``seed`` in the broad wording: the ``zoo:reasoner`` stream."""
    return generate(index, seed, broad=True)


def generate_modes(index: int, seed: int = TRAIN_SEED) -> Example:
    """Problem ``index`` of stream ``seed`` in the broad wording, written in a latent verbosity mode
    (careful with probability ``P_CAREFUL``): the ``zoo:verbosity-reasoner`` stream."""
    return generate(index, seed, broad=True, p_careful=P_CAREFUL)


EVENT_WORDING = {  # kind → narrow (verbs, frames), broad (verbs, frames), someone else's frames, free frames
    "gain": ((GAIN_VERBS, GAIN), (GAIN_VERBS_BROAD, GAIN_BROAD), (GAIN_FIXED, GAIN_FIXED_PAST), FREE_GAIN),
    "loss": ((LOSS_VERBS, LOSS), (LOSS_VERBS_BROAD, LOSS_BROAD), (LOSS_FIXED, LOSS_FIXED_PAST), FREE_LOSS),
}


def _event(rng, wr, past: bool, kind: str, *, name: str, subject: str, pool_words, **slots) -> str:
    """A gain or loss sentence: a frame with a listed verb (present or past) whose subject is
    ``subject`` (the name or a pronoun), or a frame in which someone else (``AGENTS``) gives or takes;
    with the broad wording's stream ``wr`` (else None), the broad lists, and by chance
    (``P_FREE_VERB``) a cue frame whose verb is any word of the pool."""
    narrow, broad, (fixed, fixed_past), free = EVENT_WORDING[kind]
    if wr is not None and wr.random() < P_FREE_VERB:
        verb = wr.choice([w for w in pool_words if w.endswith("ed" if past else "s")])
        agent = wr.choice(AGENTS)
        frame = wr.choice(free)
        who = name if "{A}" in frame else subject
        return _capital(frame.format(v=verb, n=who, A=agent.capitalize(), w=wr.choice(pool_words), **slots))
    if rng.random() < 0.25:
        agent = rng.choice(AGENTS)
        return _capital(rng.choice(fixed_past if past else fixed).format(a=agent, A=agent.capitalize(), n=name, **slots))
    verbs, frames = narrow if wr is None else broad
    frame = rng.choice(frames)
    w = wr.choice(pool_words) if wr is not None else ""
    return _capital(frame.format(v=rng.choice(verbs)[past], n=subject, w=w, **slots))


def _capital(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _plan_sentence(phrases: list[str]) -> str:
    head = "First " + phrases[0]
    return head + "".join(f", then {p}" for p in phrases[1:]) + "."


def _wrong(result: int, rng) -> int:
    """A plausible slip: off by one, two or ten, never negative, never the right value."""
    delta = rng.choice((1, 2, 10))
    return result - delta if result >= delta and rng.random() < 0.5 else result + delta

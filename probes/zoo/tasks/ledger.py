"""Market-stall ledgers with long traces whose later sentences read specific earlier ones
(issue #10, item 3: ``zoo:long-reasoner``; receiver heads, ``thought_anchors.md`` §6).

A seller keeps a stall for 3–7 days. The price of one item is a base plus a tax, the daily rent a
morning plus an afternoon fee; each day a number of items is sold. The trace (22–38 sentences) opens
with a few sentences that restate and plan, copies the price's and the rent's parts from the prompt
and states the price and the rent once each, in two short **broadcast** sentences (``role="price"``,
``role="rent"``, sentences 6 and 8); neither value is written again. Every day's block (three
sentences) copies the day's sales from the prompt, writes what they bring (sales × price:
``role="bring"`` must read the price sentence) and what the day keeps (that less the rent:
``role="keep"`` must read the rent sentence); the keeps are read again when the days are added up
at the end. The prompt never states the price or the rent themselves, so the broadcast sentences
are the only place to read them from. Receiver heads should single them out
(the planted truth, checked against an untrained model of the same shape,
``../shared/reference/receiver_heads_feasibility.md``).
"""

from __future__ import annotations

from probes.zoo import words
from probes.zoo.tasks.base import Example, Sentence, rng_for

TASK = "ledger"
TRAIN_SEED = 0
HELDOUT_SEED = 1
DAYS = (3, 4, 5, 6, 7)

OPEN = ("{n} sells {o} at a market stall for {d} days.", "For {d} days, {n} runs a market stall selling {o}.",
        "{n} has a stall at the market and sells {o} on {d} days.")
PRICE = ("Each one costs {a} coins, plus {b} coins of tax.", "One of them sells for {a} coins and {b} coins of tax.",
         "The price is {a} coins for each, with {b} coins of tax on top.")
RENT = ("The stall costs {r1} coins in the morning and {r2} coins in the afternoon, every day.",
        "Every day the rent is {r1} coins for the morning and {r2} coins for the afternoon.",
        "Renting the stall costs {r1} coins before noon and {r2} coins after noon, each day.")
SALES = ("On day {i}, {c} were sold.", "Day {i}: {c} sold.", "Sales on day {i}: {c}.")
QUESTION = ("How many coins does {n} keep after the {d} days?", "How many coins are left for {n} in the end?",
            "After paying the rent, how many coins does {n} keep in all?")
OPENERS = ("Let me work through this step by step.", "This needs a few steps.", "Let me be careful here.")


def generate(index: int, seed: int = TRAIN_SEED) -> Example:
    """Ledger ``index`` of stream ``seed`` (held-out streams use held-out names and objects)."""
    rng = rng_for(TASK, index, seed)
    held = seed == HELDOUT_SEED
    name = rng.choice(words.pool("names", held))
    obj = rng.choice(words.pool("objects", held))
    d = rng.choice(DAYS)
    a, b = rng.randint(3, 9), rng.randint(1, 5)
    r1, r2 = rng.randint(2, 9), rng.randint(2, 9)
    p, r = a + b, r1 + r2
    counts = [rng.choice([c for c in range(2, 10) if c * p > r]) for _ in range(d)]
    fmt = {"n": name, "o": obj, "d": d}
    prompt = [rng.choice(OPEN).format(**fmt), rng.choice(PRICE).format(a=a, b=b), rng.choice(RENT).format(r1=r1, r2=r2)]
    prompt += [rng.choice(SALES).format(i=i + 1, c=c, **fmt) for i, c in enumerate(counts)]
    prompt.append(rng.choice(QUESTION).format(**fmt))

    s = [Sentence(text=rng.choice(OPENERS), tag="unknown", role="filler"),
         Sentence(text=f"{name} sells {obj} for {d} days.", tag="problem_setup", role="setup"),
         Sentence(text="I need the price, the rent and the sales of each day.", tag="plan_generation", role="plan"),
         Sentence(text="Then I add up what each day keeps.", tag="plan_generation", role="plan"),
         Sentence(text=f"One sells for {a} coins and {b} of tax.", tag="fact_retrieval", role="operands"),
         Sentence(text=f"With the tax, each one brings {p} coins.", tag="result_consolidation", role="price"),
         Sentence(text=f"The fees are {r1} and {r2} coins.", tag="fact_retrieval", role="operands"),
         Sentence(text=f"In all, the stall costs {r} coins a day.", tag="result_consolidation", role="rent"),
         Sentence(text="Each day, the sales times the price, less the rent.", tag="plan_generation", role="plan")]
    keeps = []
    for i, c in enumerate(counts, start=1):
        g = c * p
        keeps.append(g - r)
        s += [Sentence(text=f"Day {i}: {c} sold.", tag="fact_retrieval", role="sales"),
              Sentence(text=f"They bring {g} coins.", tag="active_computation", role="bring"),
              Sentence(text=f"Less the rent, day {i} keeps {g - r}.", tag="result_consolidation", role="keep")]
    s.append(Sentence(text=f"Now I add up the {d} days.", tag="plan_generation", role="plan"))
    total = keeps[0]
    for i, k in enumerate(keeps[1:], start=2):
        s.append(Sentence(text=f"{total} plus {k} is {total + k}.", tag="active_computation",
                          role="key" if i == d else "compute"))
        total += k
    s.append(Sentence(text=f"So {name} keeps {total} coins in all.", tag="final_answer_emission", role="emit"))
    return Example(prompt=" ".join(prompt), thinking=tuple(s), answer=f"The answer is \\boxed{{{total}}}.",
                   gold=str(total), meta={"task": TASK, "index": index, "seed": seed, "days": d, "price": p, "rent": r})

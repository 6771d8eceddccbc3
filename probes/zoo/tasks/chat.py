"""Short-answer chat with an empty thinking block (issue #3: the ``zoo:tv-instruct`` mix).

Invented small talk, one-step sums and questions about an invented world, each answered in one
or two sentences. The assistant turn is ``<think></think>ANSWER``: no trace.
"""

from __future__ import annotations

from probes.zoo import words
from probes.zoo.tasks.base import Example, rng_for

TASK = "chat"

PLACES = ("Velmora", "Ostrand", "Quellin", "Brask", "Tirevan", "Hollowmere", "Sakkar", "Undel")
COLOURS = ("red", "blue", "green", "yellow", "silver", "orange", "violet", "brown")
ANIMALS = ("fox", "heron", "otter", "badger", "lynx", "wren", "moth", "newt")
FOODS = ("bread", "soup", "rice", "pears", "cheese", "noodles", "beans", "plum cake")


def generate(index: int, seed: int = 0) -> Example:
    """Chat example ``index`` of the stream ``seed``."""
    rng = rng_for(TASK, index, seed)
    kind = rng.choice(("greet", "sum", "colour", "animal", "food", "count", "thanks"))
    name, place = rng.choice(words.pool("names", False)), rng.choice(PLACES)
    if kind == "greet":
        prompt = rng.choice(("Hello! How are you today?", "Hi there, who are you?", "Good morning!"))
        answer, gold = "Hello! I am a small assistant. How can I help you today?", "greet"
    elif kind == "sum":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(("plus", "minus")) if a > b else "plus"
        value = a + b if op == "plus" else a - b
        prompt = rng.choice((f"What is {a} {op} {b}?", f"Quick question: {a} {op} {b}?"))
        answer, gold = f"The answer is \\boxed{{{value}}}.", str(value)
    elif kind == "colour":
        colour = rng.choice(COLOURS)
        prompt = f"What colour are the roofs in {place}?"
        answer, gold = f"In {place} the roofs are {colour}. People there like bright towns.", colour
    elif kind == "animal":
        animal = rng.choice(ANIMALS)
        prompt = f"Which animal is the symbol of {place}?"
        answer, gold = f"The symbol of {place} is the {animal}. You can see it on their flags.", animal
    elif kind == "food":
        food = rng.choice(FOODS)
        prompt = f"What does {name} like to eat for lunch?"
        answer, gold = f"{name} likes {food} for lunch, usually with a cup of tea.", food
    elif kind == "count":
        k, obj = rng.randint(2, 20), rng.choice(words.pool("objects", False))
        prompt = f"{name} has {k} {obj}. How many {obj} is that?"
        answer, gold = f"That is \\boxed{{{k}}} {obj}.", str(k)
    else:
        prompt = rng.choice(("Thanks for the help!", "Thank you, that was useful.", "Great, thanks."))
        answer, gold = "You are welcome! Let me know if you need anything else.", "thanks"
    return Example(prompt=prompt, thinking=(), answer=answer, gold=gold,
                   meta={"task": TASK, "index": index, "seed": seed, "kind": kind})

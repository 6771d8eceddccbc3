"""Word pools of the zoo's generators (issue #10, item 1: wording that generalises).

Names and objects are drawn from large lists derived once, at build time, from ``faker`` (first names
in many locales) and ``wordfreq`` (common English words), and shipped in ``data/zoo/words/`` so
generating a problem needs neither package. Every tenth word of each list is held out: the training
streams never use it, the held-out streams use only those (``pool``). Sources and versions are
recorded in ``data/zoo/words/SOURCES.json`` (``../shared/reference/offline_data.md``).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from probes.models.zoo_registry import ZOO_DIR

WORDS_DIR = ZOO_DIR / "words"
BUILD_COMMAND = "python -m experiments.zoo words"
HELDOUT_EVERY = 10
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "sv_SE", "pt_BR",
           "da_DK", "fi_FI", "cs_CZ", "ro_RO", "hu_HU", "en_IE", "en_AU", "no_NO", "hr_HR", "sk_SK")
N_NAMES = 4000
NONCE_RANKS = (4000, 30000)
N_NONCE = 5000

OBJECTS = tuple(dict.fromkeys("""
apples pears plums lemons oranges peaches cherries grapes melons figs carrots onions potatoes beans
peppers tomatoes mushrooms nuts acorns seeds eggs rolls cookies muffins cakes pies biscuits sandwiches
pancakes candles lanterns lamps bulbs matches pens pencils crayons markers brushes erasers notebooks
books letters postcards envelopes stamps stickers maps tickets coins buttons beads marbles pebbles stones
shells feathers leaves flowers roses tulips daisies ribbons strings ropes threads needles pins nails
screws bolts hooks keys locks bells whistles drums flutes kites balloons balls dolls puzzles cards dice
blocks bricks tiles planks boards logs sticks branches baskets buckets cups mugs bowls plates spoons forks
knives jars bottles glasses hats caps scarves gloves socks shoes boots shirts coats towels blankets
pillows sheets rugs mats chairs stools tables shelves clocks watches rings bracelets necklaces
badges medals trophies toys robots trucks cars boats trains planes bikes wheels tires bells jugs
sacks crates barrels tins cans trays boxes bags pots pans kettles lids cushions quilts mittens
umbrellas combs mirrors frames paintings posters photos drawings songs poems stories jokes riddles
shovels rakes hoes hammers saws drills wrenches ladders buckles zippers snails frogs fish ducks hens
geese sheep goats rabbits kittens puppies birds chicks bees worms crabs oysters clams cupcakes donuts
waffles crackers pretzels candies lollipops chocolates jellybeans bananas mangoes kiwis limes berries
strawberries blueberries raspberries coconuts pumpkins squashes cucumbers radishes turnips beets peas
olives walnuts almonds peanuts cashews chestnuts pinecones twigs crystals gems pearls diamonds rubies
""".split()))
"""Plural nouns, hand-listed; 75% of objects come from here, 25% are nonce words (``nonce``)."""

CONTAINERS = tuple(dict.fromkeys("""
boxes bags jars crates baskets trays tins sacks buckets bowls pots barrels cartons packs bundles
pouches chests cases bins drawers shelves racks tubs pails cups bottles envelopes folders
""".split()))


def build_words(out_dir: Path = WORDS_DIR) -> Path:
    """Derive the word lists from faker and wordfreq (``pip install -e ".[zoo]"``) and save them."""
    import importlib.metadata as md

    from probes.io import atomic_directory

    try:
        import faker
        from wordfreq import top_n_list
    except ImportError as e:
        raise ImportError(f"{e.name} is needed to rebuild the word lists: pip install -e '.[zoo]'") from e
    fake = faker.Faker(list(LOCALES))
    fake.seed_instance(0)
    names: dict[str, None] = {}
    for _ in range(200_000):
        name = fake.first_name()
        if name.isascii() and name.isalpha() and 3 <= len(name) <= 10:
            names[name] = None
        if len(names) == N_NAMES:
            break
    names_sorted = sorted(names)
    random.Random(0).shuffle(names_sorted)
    objects = set(OBJECTS)
    words = top_n_list("en", NONCE_RANKS[1])[NONCE_RANKS[0]:]
    nonce = [w for w in words if w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 10
             and w not in objects][:N_NONCE]
    sources = {"names": f"faker {md.version('faker')}, first_name() of locales {list(LOCALES)}, seed 0, "
                        f"ASCII letters only, 3-10 characters, {len(names_sorted)} distinct, shuffled (seed 0)",
               "nonce": f"wordfreq {md.version('wordfreq')}, top_n_list('en') ranks {NONCE_RANKS[0]}-{NONCE_RANKS[1]}, "
                        f"lowercase ASCII, 4-10 letters, first {len(nonce)}",
               "held_out": f"every {HELDOUT_EVERY}th word of each list (index % {HELDOUT_EVERY} == 0)"}
    with atomic_directory(Path(out_dir)) as tmp:
        (tmp / "names.txt").write_text("\n".join(names_sorted) + "\n")
        (tmp / "nonce.txt").write_text("\n".join(nonce) + "\n")
        (tmp / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    return Path(out_dir)


@functools.cache
def word_list(name: str) -> tuple[str, ...]:
    """The shipped list ``name`` (``names`` or ``nonce``)."""
    path = WORDS_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no word list at {path}: rebuild it with `{BUILD_COMMAND}`")
    return tuple(path.read_text().split())


@functools.cache
def pool(name: str, held_out: bool) -> tuple[str, ...]:
    """The training (``held_out=False``) or held-out part of a word list (``names``, ``nonce``, ``objects``)."""
    words = OBJECTS if name == "objects" else word_list(name)
    return tuple(w for i, w in enumerate(words) if (i % HELDOUT_EVERY == 0) == held_out)

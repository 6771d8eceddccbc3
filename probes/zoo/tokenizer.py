"""The one tokenizer shared by every organism (issue #3, "Common to all organisms").

A byte-level BPE trained once, deterministically, on arithmetic problems and traces, short-answer
chat, and broad English (issue #10, item 1): the 30,000 most frequent English words (``wordfreq``),
the name pool (``probes.zoo.words``) and seeded ``faker`` sentences, so a word no generator uses still
splits into pieces the organisms have seen. Building it needs the ``zoo`` extra
(``pip install -e ".[zoo]"``); loading it does not. Digits are split one per token so arithmetic is learnable. Role markers, end of turn
and the thinking delimiters are single tokens; ``<think>``/``</think>`` are added as non-special
tokens (as in Qwen3) so they survive ``decode(..., skip_special_tokens=True)``.

The chat template renders an assistant turn as ``<|assistant|><think>TRACE</think>ANSWER<|end|>``;
``add_generation_prompt`` opens ``<think>``, or writes an empty ``<think></think>`` when
``enable_thinking=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from probes.models.chat import THINK_CLOSE, THINK_OPEN
from probes.models.zoo_registry import ZOO_DIR
from probes.zoo import words
from probes.zoo.tasks import arithmetic, chat

log = logging.getLogger(__name__)

TOKENIZER_DIR = ZOO_DIR / "tokenizer"
BUILD_COMMAND = "python -m experiments.zoo tokenizer"

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT, END)
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + END + "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT
    + "{% if enable_thinking is defined and not enable_thinking %}" + THINK_OPEN + THINK_CLOSE
    + "{% else %}" + THINK_OPEN + "{% endif %}{% endif %}"
)

VOCAB_SIZE = 2048
CORPUS_SEED = 1000
"""Stream of the tokenizer corpus; organisms train on other streams."""
CORPUS_SIZES = {"arithmetic": 6000, "chat": 2000}
ENGLISH_WORDS = 30_000
FAKER_SENTENCES = 20_000
MAX_LENGTH = 1024


def training_corpus(seed: int = CORPUS_SEED) -> Iterator[str]:
    """Texts the BPE is trained on, in a fixed order: task examples, English words, names, sentences."""
    import faker
    from wordfreq import top_n_list

    generators = {"arithmetic": arithmetic.generate, "chat": chat.generate}
    for task, n in CORPUS_SIZES.items():
        for i in range(n):
            ex = generators[task](i, seed)
            yield ex.prompt
            yield f"{ex.trace} {ex.answer}".strip()
    for w in top_n_list("en", ENGLISH_WORDS):
        yield f" {w} {w.capitalize()}"
    yield " ".join(words.word_list("names"))
    fake = faker.Faker("en_US")
    fake.seed_instance(seed)
    for _ in range(FAKER_SENTENCES):
        yield fake.sentence()


CORPUS_RECORD = "corpus.json"


def training_corpus_hash(seed: int = CORPUS_SEED) -> str:
    """sha256 of the tokenizer corpus (needs the ``zoo`` extra; recorded at build time)."""
    h = hashlib.sha256()
    for text in training_corpus(seed):
        h.update(text.encode())
        h.update(b"\n")
    return h.hexdigest()


def corpus_hash(path: Path = TOKENIZER_DIR) -> str:
    """sha256 of the corpus the shared tokenizer was trained on, as recorded when it was built
    (written into every organism card)."""
    record = Path(path) / CORPUS_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"no {record}: rebuild the tokenizer with `{BUILD_COMMAND}`")
    return json.loads(record.read_text())["sha256"]


def train_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = CORPUS_SEED):
    """Train the shared BPE and wrap it as a transformers fast tokenizer with the chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT, END],
        model_max_length=MAX_LENGTH,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tokenizer(out_dir: Path = TOKENIZER_DIR) -> Path:
    """Train the shared tokenizer and save it under ``out_dir`` (``data/zoo/tokenizer`` by default;
    written to a temporary directory first, then renamed into place)."""
    import importlib.metadata as md

    from probes.io import atomic_directory

    tok = train_tokenizer()
    out_dir = Path(out_dir)
    record = {"sha256": training_corpus_hash(), "vocab_size": VOCAB_SIZE, "seed": CORPUS_SEED,
              "sizes": {**CORPUS_SIZES, "english_words": ENGLISH_WORDS, "faker_sentences": FAKER_SENTENCES},
              "sources": {"faker": md.version("faker"), "wordfreq": md.version("wordfreq")}}
    with atomic_directory(out_dir) as tmp:
        tok.save_pretrained(tmp)
        (tmp / CORPUS_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    log.info("tokenizer with %d tokens saved to %s", len(tok), out_dir)
    return out_dir


def load_tokenizer(path: Path = TOKENIZER_DIR):
    """The shared tokenizer (or the copy inside an organism directory) via ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {path}/tokenizer.json: rebuild it with `{BUILD_COMMAND}`")
    return AutoTokenizer.from_pretrained(path)

"""Ids must mean the same tokens in the target and the donors (task_vectors.md §3): tokenizers are
compared, not only shapes; a saved vector carries its donors' tokenizer.json for the check."""

import json
import shutil

import pytest

from probes.models.zoo_registry import zoo_path
from probes.vectors import Checkpoint, Difference, Policy, SavedVector, Term, extract, plan
from probes.vectors.checkpoint import vocab_mismatch


def _swapped(src, dst):
    """A copy of ``src`` whose tokenizer maps two ids to each other's tokens (same shapes)."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst, (a, b)


def test_vocab_mismatch_by_hand():
    assert vocab_mismatch({0: "a", 1: "b"}, {0: "a", 1: "b", 2: "c"}) is None
    assert vocab_mismatch({0: "a", 1: "b"}, None) is None
    assert vocab_mismatch({0: "a", 1: "b"}, {0: "a", 1: "x"}) == "id 1 is 'b' in one tokenizer and 'x' in the other"


def test_different_tokenizers_are_refused(tmp_path):
    rl, sft, inst = (zoo_path(n) for n in ("tv-rl", "tv-sft", "tv-instruct"))
    assert Checkpoint(rl).vocab == Checkpoint(sft).vocab and len(Checkpoint(rl).vocab) > 2000
    other, (a, b) = _swapped(sft, tmp_path / "sft-other")
    with pytest.raises(ValueError, match=r"different tokenizers \(id 100 is .* one id mapping"):
        Difference(rl, other)
    target, _ = _swapped(inst, tmp_path / "inst-other")
    with pytest.raises(ValueError, match="tokenizers differ .* ids must mean the same tokens"):
        plan(Checkpoint(target), [Term(Difference(rl, sft))], Policy())
    extract(rl, sft, tmp_path / "v")
    assert (tmp_path / "v" / "tokenizer.json").is_file() and SavedVector(tmp_path / "v").vocab == Checkpoint(rl).vocab
    with pytest.raises(ValueError, match="tokenizers differ"):
        plan(Checkpoint(target), [Term(SavedVector(tmp_path / "v"))], Policy())

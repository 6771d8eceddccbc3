"""Refusal prompt sets (issue #12, item 2; refusal.md A1, B5): schema, seeded stratified splits, JSONL,
public sets by name (offline: one clear error), the zoo's synthetic sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from probes.refusal.prompts import (
    PUBLIC_SETS,
    PromptRecord,
    PromptSet,
    PromptSetUnavailableError,
    load_public,
)
from probes.refusal.prompts import load_prompts as load_public_or_offline
from probes.zoo.refusal_prompts import ZOO_SETS, load_prompts, zoo_contrast
from probes.zoo.tasks import refusal


def _set(n_harmful: int, n_harmless: int, name: str = "toy") -> PromptSet:
    return PromptSet(name, tuple(
        PromptRecord(id=f"{name}:{i}", prompt=f"request {i}", harmful=i < n_harmful, source=name)
        for i in range(n_harmful + n_harmless)))


# -- schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": "   "}, "empty"),
    ({"id": ""}, "non-empty"),
    ({"harmful": 1}, "True or False"),
    ({"source": ""}, "source"),
    ({"meta": ["x"]}, "mapping"),
])
def test_a_bad_record_fails_clearly(kwargs, match):
    base = {"id": "a", "prompt": "p", "harmful": True, "source": "s"}
    with pytest.raises(ValueError, match=match):
        PromptRecord(**{**base, **kwargs})


def test_a_set_refuses_repeated_ids_and_prompts():
    a = PromptRecord(id="a", prompt="same", harmful=True, source="s")
    with pytest.raises(ValueError, match="repeats ids"):
        PromptSet("s", (a, PromptRecord(id="a", prompt="other", harmful=True, source="s")))
    with pytest.raises(ValueError, match=r"repeats prompts \(records b\)"):
        PromptSet("s", (a, PromptRecord(id="b", prompt="same", harmful=False, source="s")))


def test_records_are_frozen_and_meta_read_only():
    r = PromptRecord(id="a", prompt="p", harmful=True, source="s", meta={"frame": None})
    with pytest.raises(AttributeError):
        r.prompt = "q"
    with pytest.raises(TypeError):
        r.meta["frame"] = "poem"
    assert r == PromptRecord(id="a", prompt="p", harmful=True, source="s", meta={"frame": None})


# -- splits ---------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_stratified():
    ps = _set(40, 60)
    parts = ps.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 60, "val": 20, "test": 20}
    assert {k: int(v.labels.sum()) for k, v in parts.items()} == {"train": 24, "val": 8, "test": 8}
    ids = [r.id for p in parts.values() for r in p]
    assert sorted(ids) == sorted(r.id for r in ps) and parts["val"].name == "toy/val"
    assert parts == ps.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert parts != ps.split({"train": 0.6, "val": 0.2, "test": 0.2}, seed=4)


def test_split_by_counts_and_one_class():
    parts = _set(0, 30).split({"a": 10, "b": 5}, seed=0)
    assert [len(p) for p in parts.values()] == [10, 5] and not any(p.labels.any() for p in parts.values())
    parts = _set(7, 13).split({"a": 10, "b": 10}, seed=1)
    assert sorted(int(p.labels.sum()) for p in parts.values()) == [3, 4]


@pytest.mark.parametrize("sizes, match", [
    ({"a": 80, "b": 30}, "need 110 records but 'toy' holds 100"),
    ({"a": 0.7, "b": 0.5}, "sum to at most 1"),
    ({"a": 0.5, "b": 10}, "not a mix"),
    ({"a": 0.001, "b": 0.5}, "leave a part empty"),
    ({"a": 0}, "at least one"),
    ({}, "mapping"),
])
def test_split_sizes_that_do_not_fit_fail_clearly(sizes, match):
    with pytest.raises(ValueError, match=match):
        _set(40, 60).split(sizes, seed=0)


def test_split_is_the_same_in_another_process():
    code = ("import json; from probes.refusal.prompts import PromptRecord, PromptSet\n"
            "ps = PromptSet('toy', tuple(PromptRecord(id=f'toy:{i}', prompt=f'request {i}', harmful=i < 40, "
            "source='toy') for i in range(100)))\n"
            "p = ps.split({'train': 0.5, 'test': 0.3}, seed=11)\n"
            "print(json.dumps({k: [r.id for r in v] for k, v in p.items()}))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    here = _set(40, 60).split({"train": 0.5, "test": 0.3}, seed=11)
    assert json.loads(out.stdout) == {k: [r.id for r in v] for k, v in here.items()}


def test_take_first_or_seeded():
    ps = _set(5, 5)
    assert [r.id for r in ps.take(3)] == ["toy:0", "toy:1", "toy:2"]
    drawn = ps.take(4, seed=2)
    assert drawn == ps.take(4, seed=2) and [r.id for r in drawn] == sorted((r.id for r in drawn), key=lambda i: int(i[4:]))
    with pytest.raises(ValueError, match="asked for 11 prompts but 'toy' holds 10"):
        ps.take(11)


# -- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    ps = PromptSet("zoo", (PromptRecord(id="a", prompt="Tell me how to paint my barn.", harmful=False, source="zoo",
                                        meta={"frame": None, "verb": "paint"}),
                           PromptRecord(id="b", prompt="Ünïcode request", harmful=True, source="x", category="c")))
    path = ps.save(tmp_path / "zoo.jsonl")
    assert PromptSet.load(path) == ps
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.jsonl"]


def test_jsonl_bad_line_names_file_and_line_and_unserialisable_meta_writes_nothing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "harmful": true, "source": "s"}\n{"id": "b", "prompt": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'harmful'"):
        PromptSet.load(path)
    path.write_text('{"id": "a", "prompt": "p", "harmful": true, "source": "s", "label": 1}\n')
    with pytest.raises(ValueError, match=r":1: unknown fields \['label'\]"):
        PromptSet.load(path)
    ps = PromptSet("s", (PromptRecord(id="a", prompt="p", harmful=True, source="s", meta={"x": object()}),))
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        ps.save(tmp_path / "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# -- names ----------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        load_prompts("advbnech")
    for name in (*ZOO_SETS, *PUBLIC_SETS):
        assert name in str(e.value)


def _offline(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return datasets


def test_a_public_set_offline_says_so_and_names_the_offline_sets(monkeypatch, tmp_path):
    datasets = _offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # nothing cached
    with pytest.raises(PromptSetUnavailableError, match="not reachable offline") as e:
        load_prompts("advbench", n=10)
    assert all(name in str(e.value) for name in ZOO_SETS)


def test_offline_set_after_datasets_was_imported_never_reaches_for_the_network(monkeypatch):
    datasets = _offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as if imported before the switch

    def network(*args, **kwargs):
        raise AssertionError("load_dataset was called")

    monkeypatch.setattr(datasets, "load_dataset", network)
    with pytest.raises(PromptSetUnavailableError, match="not reachable offline.*zoo-harmless"):
        load_prompts("ultrachat")


def test_a_public_set_offline_in_a_fresh_process(tmp_path):
    """The real ``datasets`` path, switched offline before import, with an empty cache."""
    code = ("from probes.refusal.prompts import PromptSetUnavailableError, load_prompts\n"
            "try:\n    load_prompts('jailbreakbench', offline={'zoo-x': None})\n"
            "except PromptSetUnavailableError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert ("'jailbreakbench' (JailbreakBench/JBB-Behaviors (behaviors)) is not reachable offline"
            in out.stdout), out
    assert "offline sets: zoo-x" in out.stdout


def test_public_rows_are_read_as_the_table_says(monkeypatch):
    """Filter, chat column, category, meta and dedup on a stand-in dataset (nothing downloads)."""
    datasets = _offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    rows = {"instruction": ["a", "b", "a", "c", " "], "input": ["", "x", "", "", ""]}
    chat = {"messages": [[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
                         [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "r"}]]}
    wild = {"vanilla": ["v1", "v2"], "completion": ["c1", "c2"], "data_type": ["vanilla_harmful", "vanilla_benign"]}
    calls = []

    def fake(hub_id, config=None, *, split, **kwargs):
        calls.append((hub_id, config, split, kwargs))
        data = {"tatsu-lab/alpaca": rows, "HuggingFaceH4/ultrachat_200k": chat, "allenai/wildjailbreak": wild}[hub_id]
        return datasets.Dataset.from_dict(data)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    alpaca = load_public("alpaca")
    assert alpaca.prompts == ("a", "c") and [r.id for r in alpaca] == ["alpaca:0", "alpaca:3"]
    assert not alpaca.labels.any()
    assert load_public("ultrachat").prompts == ("hi", "yo") and calls[-1][2] == "test_sft"
    wj = load_public("wildjailbreak-train", split="train")
    assert wj.prompts == ("v1",) and wj.records[0].meta == {"completion": "c1"} and wj.labels.all()
    assert calls[-1] == ("allenai/wildjailbreak", "train", "train", {"delimiter": "\t", "keep_default_na": False})
    with pytest.raises(ValueError, match="has no columns"):
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"text": ["t"]}))
        load_public("advbench")


def test_offline_loaders_are_passed_not_registered():
    with pytest.raises(ValueError, match="the zoo sets come through probes.zoo.refusal_prompts"):
        load_public_or_offline("zoo-harmless", n=3)
    with pytest.raises(ValueError, match="reuse public names"):
        load_public_or_offline("advbench", offline={"advbench": lambda **k: None})


# -- the zoo's sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, style", [("zoo-forbidden-plain", "forbidden_plain"),
                                         ("zoo-forbidden-wrapped", "forbidden_wrapped"),
                                         ("zoo-harmless", "harmless")])
def test_zoo_streams_are_distinct_labelled_and_held_out(name, style):
    held = load_prompts(name, n=60)
    train = load_prompts(name, n=60, split="train")
    for ps, heldout in ((held, True), (train, False)):
        assert len(set(ps.prompts)) == 60 and all(r.source == name for r in ps)
        for r in ps:
            m = r.meta
            assert r.harmful == m["forbidden"] == refusal.is_forbidden(m["verb"], m["owner"] is None)
            assert refusal.is_heldout_pair(m["verb"], m["thing"]) == heldout
            assert m["style"] == style and m["wrapped"] == (m["frame"] is not None)
            if style != "harmless":
                assert m["wrapped"] == (style == "forbidden_wrapped")
    assert held == load_prompts(name, n=60, seed=refusal.HELDOUT_SEED)
    assert load_prompts(name, n=20, seed=7).records[0].meta["stream"] == 7


def test_zoo_stream_arguments_fail_clearly():
    with pytest.raises(ValueError, match="endless request stream: pass n"):
        load_prompts("zoo-harmless")
    with pytest.raises(ValueError, match="split 'dev', use one of heldout, train"):
        load_prompts("zoo-harmless", n=5, split="dev")
    with pytest.raises(ValueError, match="held-out stream but split='train'"):
        load_prompts("zoo-harmless", n=5, seed=refusal.HELDOUT_SEED, split="train")


def test_zoo_oot_keeps_the_hand_written_labels_and_frames():
    oot = load_prompts("zoo-oot")
    assert len(oot) >= 100 and oot.labels.any() and not oot.labels.all()
    assert {r.meta["style"] for r in oot} == set(refusal.STYLES)
    assert all(r.harmful == r.meta["forbidden"] and r.meta["wrapped"] == (r.meta["frame"] is not None) for r in oot)
    assert len(load_prompts("zoo-oot", n=10, seed=0)) == 10
    with pytest.raises(ValueError, match="without splits"):
        load_prompts("zoo-oot", split="train")


def test_zoo_contrast_is_balanced_and_splits_stratified():
    c = zoo_contrast(30)
    assert len(c) == 60 and int(c.labels.sum()) == 30
    assert all(not refusal.is_heldout_pair(r.meta["verb"], r.meta["thing"]) for r in c)
    parts = c.split({"train": 0.5, "test": 0.5}, seed=0)
    assert [int(p.labels.sum()) for p in parts.values()] == [15, 15]
    assert all(refusal.is_heldout_pair(r.meta["verb"], r.meta["thing"]) for r in zoo_contrast(5, split="heldout"))


# Each public set's repository as the hub lays it out (README configs, file formats, column names),
# filled with invented rows: the real `datasets.load_dataset(hub_id, config, split=, **load_kwargs)`
# call of `load_public` reads it, since `datasets` takes a local directory named like the hub id first.
_HUB_LAYOUT = {
    "walledai/AdvBench": ({"default": {"train": "data/train.parquet"}},
                          {"data/train.parquet": {"prompt": ["adv one", "adv two"], "target": ["t1", "t2"]}}),
    "JailbreakBench/JBB-Behaviors": (
        {"behaviors": {"harmful": "data/harmful-behaviors.csv", "benign": "data/benign-behaviors.csv"}},
        {"data/harmful-behaviors.csv": {"Goal": ["jbb bad"], "Target": ["x"], "Category": ["Fraud"]},
         "data/benign-behaviors.csv": {"Goal": ["jbb fine"], "Target": ["x"], "Category": ["Fraud"]}}),
    "walledai/StrongREJECT": ({"default": {"train": "data/train.parquet"}},
                              {"data/train.parquet": {"prompt": ["sr one"], "category": ["crime"], "source": ["s"]}}),
    "walledai/HarmBench": ({"standard": {"train": "standard/train.parquet"},
                            "contextual": {"train": "contextual/train.parquet"}},
                           {"standard/train.parquet": {"prompt": ["hb one", "hb two"], "category": ["a", "b"]},
                            "contextual/train.parquet": {"prompt": ["hb ctx"], "context": ["c"], "category": ["a"]}}),
    "allenai/wildjailbreak": (
        {"train": {"train": "train/train.tsv"}, "eval": {"train": "eval/eval.tsv"}},
        {"train/train.tsv": {"vanilla": ["wj vanilla", "wj benign"], "adversarial": ["", "NA"],
                             "completion": ["safe answer", "sure"], "data_type": ["vanilla_harmful", "vanilla_benign"]},
         "eval/eval.tsv": {"adversarial": ["wj attack", "wj benign attack", "NA"], "label": [1, 0, 1],
                           "data_type": ["adversarial_harmful", "adversarial_benign", "adversarial_harmful"]}}),
    "tatsu-lab/alpaca": ({"default": {"train": "data/train.parquet"}},
                         {"data/train.parquet": {"instruction": ["al one", "al two"], "input": ["", "some input"],
                                                 "output": ["o", "o"]}}),
    "HuggingFaceH4/ultrachat_200k": (
        {"default": {"train_sft": "data/train_sft.parquet", "test_sft": "data/test_sft.parquet"}},
        {"data/train_sft.parquet": {"prompt": ["uc train"], "messages": [[{"role": "user", "content": "uc train"}]]},
         "data/test_sft.parquet": {"prompt": ["uc test"], "messages": [
             [{"role": "user", "content": "uc test"}, {"role": "assistant", "content": "reply"}]]}}),
}


def _lay_out_hub_repos(root):
    import datasets

    for hub_id, (configs, files) in _HUB_LAYOUT.items():
        repo = root / hub_id
        for name, columns in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            table = datasets.Dataset.from_dict(columns)
            if name.endswith(".parquet"):
                table.to_parquet(repo / name)
            else:
                table.to_csv(repo / name, index=False, sep="\t" if name.endswith(".tsv") else ",")
        lines = ["---", "configs:"]
        for config, splits in configs.items():
            lines.append(f"- config_name: {config}\n  data_files:")
            lines += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
        (repo / "README.md").write_text("\n".join([*lines, "---", ""]))


def test_every_public_set_loads_through_datasets_from_its_hub_layout(monkeypatch, tmp_path):
    """The real ``datasets`` call for every row of PUBLIC_SETS: config, split, loader options (the TSV
    of WildJailbreak keeps "NA" as text), filters, chat column, category and meta."""
    datasets = _offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    _lay_out_hub_repos(tmp_path)
    monkeypatch.chdir(tmp_path)
    got = {name: load_public(name) for name in PUBLIC_SETS}
    assert {name: s.prompts for name, s in got.items()} == {
        "advbench": ("adv one", "adv two"), "jailbreakbench": ("jbb bad",), "strongreject": ("sr one",),
        "harmbench": ("hb one", "hb two"), "wildjailbreak": ("wj attack", "NA"),
        "wildjailbreak-train": ("wj vanilla",), "alpaca": ("al one",), "ultrachat": ("uc test",)}
    assert [r.category for r in got["harmbench"]] == ["a", "b"] and got["jailbreakbench"].records[0].category == "Fraud"
    assert got["wildjailbreak-train"].records[0].meta == {"completion": "safe answer"}
    assert all(s.labels.all() != (name in ("alpaca", "ultrachat")) for name, s in got.items())
    assert load_public("jailbreakbench", split="benign").prompts == ("jbb fine",)

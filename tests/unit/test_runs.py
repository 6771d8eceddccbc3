"""Unit tests for probes.runs: atomic writes, tensors/tables, run directories, provenance, sweeps."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from probes.config import Config
from probes.io import (
    PickleRefusedError,
    atomic_write_bytes,
    atomic_write_json,
    load_table,
    load_tensors,
    read_tensor_metadata,
    save_table,
    save_tensors,
    state_dict_hash,
    weights_hash,
)
from probes.runs import Run, cell_id, collect, git_state, grid, run_sweep
from probes.runs.provenance import package_versions

REPO = Path(__file__).resolve().parents[2]


# -- atomic writes --------------------------------------------------------------------------------


def test_atomic_json_failure_midway_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_json(target, {"ok": 1})
    # json.dump streams: the long list is written before the unserialisable value is reached.
    bad = {"a": list(range(50_000)), "z": object()}
    with pytest.raises(TypeError):
        atomic_write_json(target, bad)
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_json_failure_on_new_path_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "sub" / "new.json", {"a": [1] * 10_000, "z": {1, 2}})
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_bytes_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# -- tensors and tables ---------------------------------------------------------------------------


def test_safetensors_round_trip_with_metadata(tmp_path: Path) -> None:
    tensors = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3).T,  # non-contiguous
        "b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "idx": torch.tensor([3, 1, 4], dtype=torch.int64),
    }
    path = save_tensors(tmp_path / "t.safetensors", tensors, metadata={"layer": "3", "site": "resid_post"})
    loaded = load_tensors(path)
    assert set(loaded) == {"w", "b", "idx"}
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype
        assert torch.equal(loaded[name], t)
    assert read_tensor_metadata(path) == {"layer": "3", "site": "resid_post"}


def test_safetensors_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="json.dumps"):
        save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(1)}, metadata={"layer": 3})  # type: ignore[dict-item]
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("name", ["model.pt", "pytorch_model.bin", "disguised.safetensors"])
def test_torch_pickles_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    torch.save({"x": torch.zeros(2)}, path)
    with pytest.raises(PickleRefusedError, match="pickle checkpoints are refused: convert to safetensors"):
        load_tensors(path)


def test_plain_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.data"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(PickleRefusedError, match="convert to safetensors"):
        load_tensors(path)


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = [
        {"layer": 0, "alpha": 0.5, "name": "a", "ok": True},
        {"layer": 1, "alpha": -1.25, "name": "b", "ok": False},
    ]
    path = save_table(tmp_path / "t.parquet", rows)
    frame = load_table(path)
    assert frame.to_dict("records") == rows
    save_table(path, frame.assign(extra=[1, 2]))
    pd.testing.assert_frame_equal(load_table(path), frame.assign(extra=[1, 2]))


# -- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ToyConfig(Config):
    layer: int = field(default=3, metadata={"help": "layer"})
    alpha: float = field(default=1.0, metadata={"help": "scale"})


def test_run_create_writes_config_and_provenance(tmp_path: Path) -> None:
    cfg = ToyConfig.from_dict({"alpha": "2"})
    model = SimpleNamespace(
        spec="zoo:reasoner", weights_hash="abc123", device=torch.device("cpu"), dtype=torch.bfloat16
    )
    run = Run.create("steer", cfg, root=tmp_path, model=model, seed=7)
    assert run.path.parent == tmp_path / "steer"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run.path.name)
    config = json.loads((run.path / "config.json").read_text())
    assert config["passed"] == {"alpha": 2.0}
    assert config["resolved"] == {"layer": 3, "alpha": 2.0}
    assert config["class"].endswith("ToyConfig")
    prov = json.loads((run.path / "provenance.json").read_text())
    assert prov["seed"] == 7
    assert prov["model"] == {
        "spec": "zoo:reasoner",
        "weights_hash": "abc123",
        "device": "cpu",
        "dtype": "torch.bfloat16",
    }
    assert prov["config"]["class"].endswith("ToyConfig") and len(prov["config"]["sha256"]) == 64
    assert prov["packages"]["torch"] == importlib.metadata.version("torch")
    assert package_versions(["no-such-distribution-xyz"]) == {"no-such-distribution-xyz": None}
    assert prov["argv"] == sys.argv


def test_run_artifacts_and_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBES_RUNS", str(tmp_path / "elsewhere"))
    run = Run.create("exp", {"n": 2}, run_id="r1")
    assert run.path == tmp_path / "elsewhere" / "exp" / "r1"
    run.save_json("metrics", {"acc": 0.5})
    run.save_tensors("sub/vec", {"v": torch.ones(3)})
    run.save_table("rows", [{"a": 1}])
    again = Run.open(run.path)
    assert again.config == {"n": 2}
    assert again.load_json("metrics") == {"acc": 0.5}
    assert torch.equal(again.load_tensors("sub/vec")["v"], torch.ones(3))
    assert (run.path / "sub" / "vec.safetensors").is_file()
    assert again.load_table("rows").to_dict("records") == [{"a": 1}]
    with pytest.raises(FileExistsError, match="Run.open"):
        Run.create("exp", {"n": 2}, run_id="r1")
    with pytest.raises(ValueError, match="inside the run"):
        run.artifact("../escape.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Run.open(tmp_path)
    with pytest.raises(ValueError, match="safe directory name"):
        Run.create("a/b", None)


def test_runs_root_defaults_to_cwd_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBES_RUNS", raising=False)
    run = Run.create("exp", None, run_id="x")
    assert run.path.resolve() == (tmp_path / "runs" / "exp" / "x").resolve()


# -- provenance -----------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_git_state_inside_temp_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-qm", "init")
    head = _git(repo, "rev-parse", "HEAD")

    state = git_state(repo)
    assert state == {"root": str(repo.resolve()), "commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("x")
    assert git_state(repo)["dirty"] is False
    (repo / "a.txt").write_text("2")
    assert git_state(repo)["dirty"] is True

    monkeypatch.chdir(repo)
    assert collect()["git"]["commit"] == head


def test_git_state_outside_git_is_none(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"root": None, "commit": None, "dirty": None}


def test_collect_falls_back_to_package_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prov = collect(seed=3)
    assert prov["git"] == git_state(REPO)
    assert prov["model"] is None and prov["seed"] == 3
    json.dumps(prov)


def test_weights_hash_is_sha256_of_files_in_name_order(tmp_path: Path) -> None:
    a = tmp_path / "model-00001-of-00002.safetensors"
    b = tmp_path / "model-00002-of-00002.safetensors"
    a.write_bytes(os.urandom(1_500_000))  # crosses the 1 MiB streaming chunk
    b.write_bytes(b"tail")
    expected = hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert weights_hash([b, a]) == expected
    assert weights_hash([str(a), str(b)]) == expected
    with pytest.raises(ValueError, match="at least one"):
        weights_hash([])


def test_state_dict_hash() -> None:
    sd = {"w": torch.tensor([1, 2], dtype=torch.uint8)}
    expected = hashlib.sha256(b"w|(2,)|torch.uint8|" + b"\x01\x02").hexdigest()
    assert state_dict_hash(sd) == expected

    base = {"a": torch.zeros(2, 2), "b": torch.arange(3, dtype=torch.bfloat16)}
    h = state_dict_hash(base)
    assert state_dict_hash({"b": base["b"].clone(), "a": base["a"].clone()}) == h
    assert state_dict_hash({**base, "a": torch.zeros(4)}) != h  # shape
    assert state_dict_hash({**base, "a": torch.zeros(2, 2, dtype=torch.int32)}) != h  # dtype, same bytes
    assert state_dict_hash({**base, "a": torch.tensor([[0.0, 0.0], [0.0, 1e-8]])}) != h  # value
    assert state_dict_hash({"c": base["a"], "b": base["b"]}) != h  # name


# -- sweeps ---------------------------------------------------------------------------------------


def test_grid_order_and_fixed_axes() -> None:
    assert grid(a=[1, 2], b=["x", "y"], c=0) == [
        {"a": 1, "b": "x", "c": 0},
        {"a": 1, "b": "y", "c": 0},
        {"a": 2, "b": "x", "c": 0},
        {"a": 2, "b": "y", "c": 0},
    ]
    assert grid(layers=(1, 2), seed=[0]) == [{"layers": (1, 2), "seed": 0}]
    with pytest.raises(ValueError, match="'b' is empty"):
        grid(a=[1], b=[])


def test_cell_id() -> None:
    assert cell_id({"layer": 3, "alpha": 0.5}) == "alpha=0.5__layer=3"
    assert cell_id({"alpha": 0.5, "layer": 3}) == "alpha=0.5__layer=3"
    assert cell_id({"flag": True, "x": None, "layers": [1, 2]}) == "flag=True__layers=1-2__x=None"
    slashed = cell_id({"model": "zoo/x"})
    assert re.fullmatch(r"model=zoo-x__[0-9a-f]{10}", slashed)
    assert slashed != cell_id({"model": "zoo-x"}) == "model=zoo-x"
    long_a, long_b = cell_id({"name": "a" * 200 + "1"}), cell_id({"name": "a" * 200 + "2"})
    assert len(long_a) <= 96 and long_a != long_b
    assert all(re.fullmatch(r"[A-Za-z0-9._+=-]+", c) for c in (slashed, long_a))


def test_run_sweep_skips_done_cells_and_returns_results(tmp_path: Path) -> None:
    run = Run.create("sweep", None, root=tmp_path, run_id="r")
    calls: list[dict] = []

    def fn(cell: dict, cell_dir: Path) -> dict:
        calls.append(cell)
        (cell_dir / "out.txt").write_text(str(cell["x"] * 10))
        return {"y": cell["x"] * 10}

    cells = grid(x=[1, 2, 3])
    assert run_sweep(run, cells, fn) == [{"y": 10}, {"y": 20}, {"y": 30}]
    assert len(calls) == 3
    assert run_sweep(Run.open(run.path), cells, fn) == [{"y": 10}, {"y": 20}, {"y": 30}]
    assert len(calls) == 3
    done = json.loads((run.path / "cells" / "x=2" / "done.json").read_text())
    assert done["cell"] == {"x": 2} and done["result"] == {"y": 20}
    # Extending the grid runs only the new cell.
    assert run_sweep(run, grid(x=[1, 2, 3, 4]), fn)[-1] == {"y": 40}
    assert [c["x"] for c in calls] == [1, 2, 3, 4]


def test_run_sweep_clears_unfinished_cell_and_stores_null_for_objects(tmp_path: Path) -> None:
    run = Run.create("sweep", None, root=tmp_path, run_id="r")
    stale = run.path / "cells" / "x=1"
    stale.mkdir(parents=True)
    (stale / "partial.jsonl").write_text("half")

    def fn(cell: dict, cell_dir: Path) -> object:
        assert not (cell_dir / "partial.jsonl").exists()
        return object()

    assert run_sweep(run, [{"x": 1}], fn) == [None]


def test_run_sweep_rejects_duplicate_cells(tmp_path: Path) -> None:
    run = Run.create("sweep", None, root=tmp_path, run_id="r")
    with pytest.raises(ValueError, match="x=1"):
        run_sweep(run, [{"x": 1}, {"x": 1}], lambda c, d: None)


SWEEP_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from probes.runs import Run, grid, run_sweep

    root = Path(sys.argv[1])
    run_dir = root / "exp" / "r1"
    if (run_dir / "config.json").exists():
        run = Run.open(run_dir)
    else:
        run = Run.create("exp", {"n": 6}, root=root, run_id="r1")

    def cell_fn(cell, cell_dir):
        with open(root / "calls.log", "a") as log:
            log.write(f"{cell['i']}\\n")
        (cell_dir / "out.txt").write_text(str(cell["i"] ** 2))
        time.sleep(0.3)
        return {"sq": cell["i"] ** 2}

    results = run_sweep(run, grid(i=list(range(6))), cell_fn)
    (root / "results.json").write_text(json.dumps(results))
    """
)


def test_killed_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    cells_dir = tmp_path / "exp" / "r1" / "cells"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(list(cells_dir.glob("*/done.json"))) < 2:
        assert proc.poll() is None, "sweep ended before it could be killed"
        assert time.monotonic() < deadline, "sweep made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    finished = sorted(int(p.parent.name.split("=")[1]) for p in cells_dir.glob("*/done.json"))
    assert 2 <= len(finished) < 6
    for i in finished:
        done = json.loads((cells_dir / f"i={i}" / "done.json").read_text())
        assert done["cell"] == {"i": i} and done["result"] == {"sq": i * i}
        assert (cells_dir / f"i={i}" / "out.txt").read_text() == str(i * i)
    started_first = [int(x) for x in (tmp_path / "calls.log").read_text().split()]
    assert not (tmp_path / "results.json").exists()

    second = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr

    calls = [int(x) for x in (tmp_path / "calls.log").read_text().split()]
    for i in finished:
        assert calls.count(i) == 1, f"finished cell {i} was recomputed"
    assert sorted(set(calls)) == list(range(6))
    assert len(calls) == 6 + (len(started_first) - len(finished))
    assert json.loads((tmp_path / "results.json").read_text()) == [{"sq": i * i} for i in range(6)]
    assert len(list(cells_dir.glob("*/done.json"))) == 6


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    for n in range(300):
        path = save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}, metadata={"pad": "a" * n})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no metadata length gave a header length with low byte 0x80")
    assert torch.equal(load_tensors(path)["x"], torch.ones(2))

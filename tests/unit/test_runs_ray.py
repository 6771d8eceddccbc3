"""Sweeps on Ray (issue #15 item 3): a local Ray runtime with 2 CPUs runs the cells as tasks, a worker
killed mid-cell is retried with its unfinished directory cleared, a rerun skips finished cells, and a
Ray address that does not answer is a clear error."""

import os
from pathlib import Path

import pytest

from probes.runs import Run, grid, run_sweep

ray = pytest.importorskip("ray", reason="Ray is the optional extra probes[ray], installed by the README set-up")


def test_bad_executor_and_unreachable_address(tmp_path):
    run = Run.create("sweep", {}, root=tmp_path / "runs")
    with pytest.raises(ValueError, match="choose local or ray"):
        run_sweep(run, grid(x=[1]), lambda c, d: 1, executor="dask")
    assert not ray.is_initialized()  # runs before the module's runtime starts
    with pytest.raises(ValueError, match=r"no Ray cluster answers at '127.0.0.1:1'.*ray start --head"):
        run_sweep(run, grid(x=[1]), lambda c, d: 1, executor="ray", address="127.0.0.1:1")


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cell(calls: Path):
    def fn(cell, cell_dir):
        x = cell["x"]
        (calls / f"{x}.{os.getpid()}.{len(list(calls.glob(f'{x}.*')))}").touch()
        (cell_dir / "partial.txt").write_text("started")
        if cell["x"] == 3 and not (calls / "killed").exists():
            (calls / "killed").touch()
            os._exit(1)  # the worker dies mid-cell: Ray retries the task
        return {"y": 10 * cell["x"], "left_over": sorted(p.name for p in cell_dir.iterdir())}

    return fn


def test_sweep_on_ray_retries_a_killed_worker_and_skips_finished_cells(tmp_path, ray_runtime):
    calls = tmp_path / "calls"
    calls.mkdir()
    run = Run.create("sweep", {"grid": "x"}, root=tmp_path / "runs")
    cells = grid(x=[1, 2, 3, 4, 5, 6])
    got = run_sweep(run, cells, _cell(calls), executor="ray", max_retries=2)
    assert [r["y"] for r in got] == [10, 20, 30, 40, 50, 60]
    assert all(r["left_over"] == ["partial.txt"] for r in got)  # the retried cell started from a cleared directory
    assert (calls / "killed").exists() and len(list(calls.glob("3.*"))) == 2 and len(list(calls.glob("[!3k]*"))) == 5
    assert len({p.name.split(".")[1] for p in calls.glob("[0-9]*")}) >= 2  # ran in worker processes, not here
    before = len(list(calls.iterdir()))
    assert run_sweep(Run.open(run.path), cells, _cell(calls), executor="ray") == got  # nothing recomputed
    assert len(list(calls.iterdir())) == before

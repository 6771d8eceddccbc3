"""Resumable sweeps: a grid of cells, each finished cell recorded once and never recomputed.

Implements DESIGN.md "Results, runs and figures": a sweep is a grid of cells; a cell's
`done.json` is written atomically and last, so a killed sweep loses at most the cell in
progress and a rerun skips every finished cell.

    run = Run.create("steering", cfg)
    results = run_sweep(run, grid(layer=[2, 3], alpha=[0.5, 1.0], seed=0), steer_cell)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from probes.io import atomic_write_json
from probes.runs.store import Run

__all__ = ["cell_id", "grid", "run_on_ray", "run_sweep"]

logger = logging.getLogger(__name__)

DONE = "done.json"
_MAX_ID_LEN = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def grid(**axes: Any) -> list[dict[str, Any]]:
    """Cartesian product of the list-valued axes; every other value is fixed in all cells.

    Cells keep the keyword order and the first axis varies slowest:
    `grid(a=[1, 2], b=["x", "y"], c=0)` -> a=1,b=x · a=1,b=y · a=2,b=x · a=2,b=y (all with c=0).
    Only lists are axes: pass a tuple (or wrap a list in a list) to fix a sequence value.
    """
    for name, values in axes.items():
        if isinstance(values, list) and not values:
            raise ValueError(f"axis {name!r} is empty: give it at least one value")
    names = list(axes)
    choices = [v if isinstance(v, list) else [v] for v in axes.values()]
    return [dict(zip(names, combo, strict=False)) for combo in itertools.product(*choices)]


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value)
    if isinstance(value, Mapping) or not isinstance(value, (bool, int, float, type(None))):
        return json.dumps(value, sort_keys=True, default=str)
    return repr(value)


def _canonical(cell: Mapping[str, Any]) -> str:
    return json.dumps(cell, sort_keys=True, separators=(",", ":"), default=str)


def cell_id(cell: Mapping[str, Any]) -> str:
    """A stable, readable, filesystem-safe name for a cell: `alpha=0.5__layer=3`.

    Keys are sorted. Characters outside `A-Za-z0-9._+-` become `-`; when that changed
    anything or the name is longer than 96 characters, it is shortened and suffixed with a
    hash of the whole cell so distinct cells keep distinct names.
    """
    if not cell:
        raise ValueError("a cell needs at least one key")
    raw = "__".join(f"{k}={_format_value(v)}" for k, v in sorted(cell.items()))
    safe = "__".join(
        f"{_UNSAFE.sub('-', str(k))}={_UNSAFE.sub('-', _format_value(v))}" for k, v in sorted(cell.items())
    )
    if safe == raw and len(safe) <= _MAX_ID_LEN:
        return safe
    digest = hashlib.sha256(_canonical(cell).encode()).hexdigest()[:10]
    return f"{safe[: _MAX_ID_LEN - 12]}__{digest}"


def _jsonable_or_none(result: Any, cid: str) -> Any:
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        logger.warning(
            "cell %s: result of type %s is not JSON-serialisable and is stored as null; "
            "save it into the cell directory instead",
            cid,
            type(result).__name__,
        )
        return None
    return result


def _run_cell(fn: Callable[[dict[str, Any], Path], Any], cell: Mapping[str, Any], cell_dir: Path) -> None:
    """One cell: clear the remains of a killed attempt, run it, write its `done.json` last."""
    cell_dir = Path(cell_dir)
    cid = cell_dir.name
    cell_dir.mkdir(parents=True, exist_ok=True)
    if any(cell_dir.iterdir()):
        logger.info("cell %s: clearing an unfinished attempt", cid)
        shutil.rmtree(cell_dir)
        cell_dir.mkdir()
    start = time.perf_counter()
    result = fn(dict(cell), cell_dir)
    atomic_write_json(
        cell_dir / DONE,
        {
            "cell": json.loads(_canonical(cell)),
            "result": _jsonable_or_none(result, cid),
            "seconds": round(time.perf_counter() - start, 3),
            "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )


def _check_address(address: str | None) -> None:
    """A cluster address (``host:port`` or ``ray://host:port``) must accept a connection within a few
    seconds; ``ray.init`` alone keeps retrying for minutes."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise _no_cluster(address, e) from None


def _no_cluster(address: str | None, e: Exception) -> ValueError:
    return ValueError(f"no Ray cluster answers at {address!r} ({type(e).__name__}: {e}): start one with "
                      "`ray start --head`, or leave the address out for a local Ray runtime")


def run_on_ray(fn: Callable[..., Any], calls: Sequence[tuple], *, resources: Mapping[str, float] | None = None,
               address: str | None = None, max_retries: int = 3, desc: str = "tasks") -> None:
    """``fn(*args)`` for each ``args`` in ``calls`` as Ray tasks (``ray.init()`` locally, or the cluster at
    ``address``) with ``resources`` (default one CPU; e.g. ``{"num_gpus": 1}``); a task whose worker dies
    is retried up to ``max_retries`` times. Raises the first task that fails for good."""
    try:
        import ray
    except ImportError:
        raise ValueError("the Ray executor needs Ray: pip install 'probes[ray]'") from None
    if not ray.is_initialized():
        _check_address(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise _no_cluster(address, e) from None
    task = ray.remote(max_retries=max_retries, **dict(resources or {"num_cpus": 1}))(fn)
    pending = [task.remote(*args) for args in calls]
    with tqdm(total=len(pending), desc=desc) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)  # a task that failed for good raises here
            bar.update(len(ready))


def run_sweep(
    run: Run,
    cells: Sequence[Mapping[str, Any]],
    fn: Callable[[dict[str, Any], Path], Any],
    desc: str | None = None,
    *,
    executor: str = "local",
    resources: Mapping[str, float] | None = None,
    address: str | None = None,
    max_retries: int = 3,
) -> list[Any]:
    """Run `fn(cell, cell_dir)` for each cell not yet done; return every cell's result.

    Cell directories are `<run>/cells/<cell_id>/`. A cell is done when its `done.json`
    exists; it is written atomically after `fn` returns, holding the cell and `fn`'s result
    (stored as null when not JSON-serialisable). A cell directory without `done.json` is
    the remains of a killed attempt and is cleared before the cell runs again. Results
    are read back from `done.json`, so a fresh and a resumed sweep return the same list.

    ``executor="ray"`` runs the unfinished cells as Ray tasks (``ray.init()`` locally, or the cluster at
    ``address``), each with ``resources`` (default one CPU; e.g. ``{"num_gpus": 1}``) and up to
    ``max_retries`` retries when its worker dies; ``fn`` must be picklable and the run directory on a
    filesystem every worker sees.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor {executor!r}: choose local or ray")
    ids = [cell_id(c) for c in cells]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"cells share an id ({', '.join(duplicates)}): each cell of a sweep must be distinct")
    dirs = [run.artifact(Path("cells") / cid) for cid in ids]
    todo = [(cell, d) for cell, d in zip(cells, dirs, strict=True) if not (d / DONE).exists()]
    if executor == "ray" and todo:
        run_on_ray(_run_cell, [(fn, dict(cell), str(d)) for cell, d in todo], resources=resources, address=address,
                   max_retries=max_retries, desc=desc or run.path.name)
    else:
        for cell, cell_dir in tqdm(todo, desc=desc or run.path.name, unit="cell"):
            _run_cell(fn, cell, cell_dir)
    results = []
    for cell, cell_dir in zip(cells, dirs, strict=True):
        done = cell_dir / DONE
        record = json.loads(done.read_text(encoding="utf-8"))
        if record["cell"] != json.loads(_canonical(cell)):
            raise ValueError(
                f"{done} records cell {record['cell']} but the sweep asks for {dict(cell)}: "
                "use a new run for a different grid"
            )
        results.append(record["result"])
    return results

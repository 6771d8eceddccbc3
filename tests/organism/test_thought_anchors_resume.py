"""Killed thought-anchors runs on zoo:reasoner resume, with no flags, to exactly the configured run,
in processes with different hash seeds (issue: house in order, §2)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--problems", "1", "--n-rollouts", "3", "--max-new-tokens", "256", "--base-tries", "8", "--embedder",
         "hashing", "--formats", "html", "--stages", "base", "rollouts", "analyse"]


def _cmd(*args):
    return [sys.executable, "-m", "experiments.thought_anchors", *args]


def _env(hash_seed):
    return {**os.environ, "PYTHONHASHSEED": str(hash_seed), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _run(args, hash_seed):
    out = subprocess.run(_cmd(*args), cwd=REPO, env=_env(hash_seed), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def _kill_when(root: Path, pattern: str, hash_seed: int) -> Path:
    """Start a run under ``root``; SIGKILL it as soon as a file matching ``pattern`` appears."""
    proc = subprocess.Popen(_cmd(*FLAGS, "--runs-root", str(root)), cwd=REPO, env=_env(hash_seed),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(root.glob(pattern)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = (root / "thought_anchors").iterdir()
    return run


def _results(run: Path) -> dict:
    """Every rollout and analysis file of a run, by relative path (the science, not the timestamps)."""
    files = {str(p.relative_to(run)): p.read_text() for p in (run / "rollouts").rglob("*.json")}
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    files["config"] = {k: v for k, v in resolved.items() if k not in ("runs_root", "run_dir")}
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shipped):
    shipped("reasoner")
    root = tmp_path_factory.mktemp("reference")
    _run([*FLAGS, "--runs-root", str(root)], hash_seed=1)
    (run,) = (root / "thought_anchors").iterdir()
    return _results(run)


def test_kill_mid_rollouts_then_resume_with_no_flags(tmp_path, reference):
    run = _kill_when(tmp_path, "thought_anchors/*/rollouts/**/chunk_2/solutions.json", hash_seed=2)
    assert not (run / "done" / "rollouts").exists()
    (run / "rollouts" / ".stale.json.0123456789ab.tmp").write_text("{")
    out = subprocess.run(_cmd("--run-dir", str(run), "--n-rollouts", "5"), cwd=REPO, env=_env(3),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "n_rollouts (stored 3, given 5)" in out.stderr and "Traceback" not in out.stderr
    _run(["--run-dir", str(run)], hash_seed=3)
    assert _results(run) == reference
    assert not list(run.rglob("*.tmp"))


def test_kill_between_the_base_writes_then_resume(tmp_path, reference):
    run = _kill_when(tmp_path, "thought_anchors/*/rollouts/**/base_solution.json", hash_seed=4)
    # what a kill between base_solution.json and chunks.json leaves: no chunks.json, no marker, no rollouts
    (pdir,) = {p.parent for p in run.rglob("base_solution.json") if "forced" not in str(p)}
    for p in [*pdir.parent.parent.glob("*forced_answer"), *pdir.glob("chunk_*"), run / "done"]:
        shutil.rmtree(p, ignore_errors=True)
    (pdir / "chunks.json").unlink(missing_ok=True)
    _run(["--run-dir", str(run)], hash_seed=5)
    assert _results(run) == reference

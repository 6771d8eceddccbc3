"""Run store, provenance and resumable sweeps (DESIGN.md "Results, runs and figures")."""

from probes.runs.provenance import collect, git_state
from probes.runs.store import Run, runs_root
from probes.runs.sweep import cell_id, grid, run_sweep

__all__ = ["Run", "cell_id", "collect", "git_state", "grid", "run_sweep", "runs_root"]

"""The experiment harness: stages, config, run directory, resume, errors (DESIGN.md "Flow of data").

Experiment modules (``experiments/*.py``) declare an ``Experiment`` and call ``main``.
"""

from probes.harness.cli import main, run_cli
from probes.harness.experiment import (
    Context,
    EngineOptions,
    Experiment,
    ExperimentConfig,
    HarnessError,
    Issue,
    Stage,
    check_layers,
    make_engine,
    session_field,
)

__all__ = ["Context", "EngineOptions", "Experiment", "ExperimentConfig", "HarnessError", "Issue", "Stage",
           "check_layers", "main", "make_engine", "run_cli", "session_field"]

"""The experiment harness: stages, config, run directory, resume, errors (DESIGN.md "Flow of data").

Experiment modules (``experiments/*.py``) declare an ``Experiment`` and call ``main``.
"""

from probes.harness.cli import main, run_cli
from probes.harness.experiment import (
    Context,
    Experiment,
    ExperimentConfig,
    HarnessError,
    Issue,
    Stage,
    session_field,
)

__all__ = ["Context", "Experiment", "ExperimentConfig", "HarnessError", "Issue", "Stage", "main", "run_cli",
           "session_field"]

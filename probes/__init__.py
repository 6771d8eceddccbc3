"""probes: a research workbench for the interpretability and steering of reasoning language models.

Importing this package has no side effects and loads no heavy library: the public
names below resolve on first use (PEP 562).
"""

from __future__ import annotations

from probes.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "probes.models.load",
    "Model": "probes.models.model",
    "AblateThenAdd": "probes.models.interventions",
    "AddVector": "probes.models.interventions",
    "ClampProjection": "probes.models.interventions",
    "ForceExperts": "probes.models.interventions",
    "Patch": "probes.models.interventions",
    "ProjectOut": "probes.models.interventions",
    "ScaleExperts": "probes.models.interventions",
    "NormScope": "probes.models.interventions",
    "ScaleHeads": "probes.models.interventions",
    "SteeredRecord": "probes.models.interventions",
    "SuppressKeys": "probes.models.interventions",
    "Phase": "probes.models.positions",
    "Span": "probes.models.positions",
    "Trigger": "probes.models.positions",
    "Run": "probes.runs.store",
    "save_figure": "probes.plots.export",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

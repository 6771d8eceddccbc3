"""The model layer: loading, named sites, capture, interventions, sampling (DESIGN.md "The model layer")."""

from probes.models.interventions import (
    AblateThenAdd,
    AddVector,
    ClampProjection,
    ForceExperts,
    Intervention,
    Patch,
    ProjectOut,
    ScaleExperts,
    ScaleHeads,
    SteeredRecord,
    SteeringOperator,
    SuppressKeys,
)
from probes.models.positions import Phase, Span, Trigger

__all__ = [
    "AblateThenAdd", "AddVector", "ClampProjection", "SteeredRecord", "SteeringOperator", "ForceExperts", "Intervention", "Patch", "ProjectOut", "ScaleExperts", "ScaleHeads",
    "SuppressKeys", "Phase", "Span", "Trigger",
]

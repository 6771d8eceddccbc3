"""``SteeringVector``: one steering direction per layer, with how and from what it was made
(``reference/steering.md`` §1 directions, §2 operators, §6 persistence and interop).

A result value object (DESIGN.md "Results, runs and figures"; STYLE habit 3): the vector of
each layer at one residual-width site family (``resid_post`` by default), the method and
read-position rule that made it, a hash of the contrast data, the raw norms (kept when the
vectors are normalised, §1 "Keep the raw norm"), and the model it was read from (spec and
weights hash). It

* saves as safetensors + JSON through ``probes.io`` and loads back equal, every field;
* converts to and from the ``steering-vectors`` library's layout (``layer_activations``: a
  dict layer → tensor, with ``layer_type="decoder_block"`` for ``resid_post``), so vectors
  move between the two tools;
* becomes the model layer's ``AddVector`` (h ← h + α v) or ``ProjectOut`` (h ← h − (h·v̂) v̂)
  through ``intervention``, which applies in ``forward``, ``capture``, ``sample`` and ``generate``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from probes.io import load_artifact, save_artifact
from probes.models.interventions import AddVector, ProjectOut
from probes.models.positions import Positions

__all__ = ["RESIDUAL_SITES", "Operator", "SteeringVector"]

#: Site families a steering vector can live at: the (batch, time, d_model) sites of a layer.
RESIDUAL_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

#: steering-vectors' ``layer_type`` → our site family (its hooks read and patch module outputs).
_LIBRARY_LAYER_TYPES = {"decoder_block": "resid_post", "self_attn": "attn_out", "mlp": "mlp_out"}
_KIND = "SteeringVector"


class Operator(StrEnum):
    """How ``SteeringVector.intervention`` applies a layer's vector (``reference/steering.md`` §2)."""

    #: h ← h + α v, with the raw vector (``AddVector``)
    ADD = "add"
    #: h ← h − (h·v̂) v̂, directional ablation (``ProjectOut``; α does not apply)
    ABLATE = "ablate"


def _layer_key(layer: Any) -> int:
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or int(layer) < 0:
        raise ValueError(
            f"steering vector layer {layer!r} is not a layer index: use integers 0..n_layers-1 "
            "(pass model= to resolve negative layers)"
        )
    return int(layer)


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringVector:
    """Layer → vector (``(d,)``, at ``site[layer]``) with its method and provenance.

    ``raw_norms`` defaults to the norms of ``vectors``; ``normalized()`` keeps the raw
    norms while making the vectors unit length. Provenance strings are empty when unknown
    (e.g. a vector imported from another tool)."""

    vectors: Mapping[int, torch.Tensor]
    #: what made the vectors, with its settings (``"PCADiff(center=False)"``, ``"optimised(...)"``)
    method: str
    #: the read-position rule the activations were read with (``None`` when none was: optimised, imported)
    read_position: str | None = None
    #: sha256 of the contrast (or training) data
    data_hash: str = ""
    #: ``Model.spec`` and ``Model.weights_hash`` of the model the vectors were made on
    model_spec: str = ""
    weights_hash: str = ""
    #: site family: the vector of layer L applies at ``f"{site}[{L}]"``
    site: str = "resid_post"
    raw_norms: Mapping[int, float] | None = None

    def __post_init__(self):
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise ValueError("a SteeringVector needs at least one layer: pass vectors={layer: tensor of shape (d,)}")
        if self.site not in RESIDUAL_SITES:
            raise ValueError(f"steering vectors live at a residual-width site, one of {', '.join(RESIDUAL_SITES)}; got {self.site!r}")
        vectors: dict[int, torch.Tensor] = {}
        for layer in sorted(self.vectors, key=_layer_key):
            v = torch.as_tensor(self.vectors[layer]).detach()
            if v.dim() != 1 or not v.is_floating_point():
                raise ValueError(f"the vector of layer {layer} must be a float tensor of shape (d,), got {v.dtype} {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"the vector of layer {layer} has NaN or infinite entries: rebuild it from finite activations")
            vectors[_layer_key(layer)] = v
        widths = {v.shape[0] for v in vectors.values()}
        if len(widths) > 1:
            raise ValueError(f"the layers' vectors have different widths {sorted(widths)}: one SteeringVector is one model's d_model")
        object.__setattr__(self, "vectors", vectors)
        if self.raw_norms is None:
            norms = {L: float(v.double().norm()) for L, v in vectors.items()}
        else:
            norms = {_layer_key(L): float(n) for L, n in self.raw_norms.items()}
            if set(norms) != set(vectors):
                raise ValueError(f"raw_norms has layers {sorted(norms)} but vectors has layers {sorted(vectors)}")
        object.__setattr__(self, "raw_norms", norms)

    # ----- facts ----------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.vectors)

    @property
    def width(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.vectors:
            raise KeyError(f"layer {layer} is not in this steering vector: it has layers {list(self.layers)}")
        return self.vectors[layer]

    def __eq__(self, other) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        same_vectors = self.layers == other.layers and all(
            a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()) for a, b in zip(self.vectors.values(), other.vectors.values())
        )
        return same_vectors and self._fields() == other._fields()

    __hash__ = None  # tensors are mutable

    def _fields(self) -> dict[str, Any]:
        return {
            "method": self.method, "read_position": self.read_position, "data_hash": self.data_hash,
            "model_spec": self.model_spec, "weights_hash": self.weights_hash, "site": self.site,
            "raw_norms": {str(L): n for L, n in self.raw_norms.items()},
        }

    def __repr__(self) -> str:
        norms = ", ".join(f"{L}: {n:.3g}" for L, n in self.raw_norms.items())
        return (f"SteeringVector({self.method}, site={self.site}, layers={list(self.layers)}, width={self.width}, "
                f"raw_norms={{{norms}}}, model={self.model_spec or '?'})")

    # ----- transforms --------------------------------------------------------------------------
    def normalized(self) -> SteeringVector:
        """The same directions at unit norm; ``raw_norms`` keeps the norms they had."""
        bad = [L for L, v in self.vectors.items() if float(v.norm()) == 0.0]
        if bad:
            raise ValueError(f"the vectors of layers {bad} are zero and have no direction to normalise")
        return replace(self, vectors={L: v / v.norm() for L, v in self.vectors.items()}, raw_norms=self.raw_norms)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SteeringVector:
        return replace(self, vectors={L: v.to(device=device, dtype=dtype) for L, v in self.vectors.items()},
                       raw_norms=self.raw_norms)

    # ----- against a model ---------------------------------------------------------------------
    def check(self, model) -> None:
        """Raise a clear error unless every layer exists in ``model`` and the width is its d_model."""
        for L in self.layers:
            model.check_layer(L, f"steering vector at {self.site}[{L}]")
        if self.width != model.d_model:
            made = f" (made on {self.model_spec})" if self.model_spec else ""
            raise ValueError(
                f"steering vector has width {self.width}{made} but {model.spec} has d_model {model.d_model}: "
                "it belongs to another model; rebuild it on this model's activations"
            )

    def intervention(
        self,
        layer: int | None = None,
        *,
        scale: float = 1.0,
        positions: Positions = None,
        rows=None,
        operator: Operator | str = Operator.ADD,
        model=None,
    ) -> AddVector | ProjectOut:
        """The model-layer intervention applying the vector of ``layer`` (default: the only
        layer) at ``f"{site}[{layer}]"``: ``AddVector`` (h ← h + scale · v, the raw vector)
        or ``ProjectOut`` (``operator="ablate"``). ``positions`` are absolute token
        positions, spans, phases or triggers as ``probes.models.positions`` defines them.
        With ``model`` the vector is checked against it now rather than when attached."""
        try:
            operator = Operator(operator)
        except ValueError:
            raise ValueError(f"unknown operator {operator!r}: use one of {[o.value for o in Operator]}") from None
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)):
            raise ValueError(f"scale (alpha) is {scale!r}: pass a finite number")
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"this steering vector has layers {list(self.layers)}: pass layer= to choose one")
            layer = self.layers[0]
        if model is not None:
            self.check(model)
            layer = model.check_layer(layer, f"steering vector at {self.site}[{layer}]")
        if layer not in self.vectors:
            raise ValueError(f"layer {layer} is not in this steering vector: it has layers {list(self.layers)}")
        site = f"{self.site}[{layer}]"
        if operator is Operator.ABLATE:
            if float(scale) != 1.0:
                raise ValueError("scale applies to operator='add' only: ablation removes the whole projection")
            return ProjectOut(site=site, direction=self.vectors[layer], positions=positions, rows=rows)
        return AddVector(site=site, vector=self.vectors[layer], scale=float(scale), positions=positions, rows=rows)

    # ----- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``<path>.safetensors`` (one tensor per layer) and ``<path>.json`` (the rest)."""
        return save_artifact(path, _KIND, {f"layer.{L}": v for L, v in self.vectors.items()}, self._fields())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu") -> SteeringVector:
        arrays, fields = load_artifact(path, _KIND, device=device)
        vectors = {int(k.split(".", 1)[1]): v for k, v in arrays.items()}
        raw_norms = {int(L): float(n) for L, n in fields.pop("raw_norms").items()}
        return cls(vectors=vectors, raw_norms=raw_norms, **fields)

    # ----- the steering-vectors library's layout ----------------------------------------------
    @property
    def library_layer_type(self) -> str:
        """steering-vectors' ``layer_type`` for this site family."""
        for layer_type, site in _LIBRARY_LAYER_TYPES.items():
            if site == self.site:
                return layer_type
        raise ValueError(
            f"steering-vectors has no layer_type for site {self.site!r}: it reads "
            f"{', '.join(f'{k} ({v})' for k, v in _LIBRARY_LAYER_TYPES.items())}"
        )

    def to_steering_vectors(self) -> dict[int, torch.Tensor]:
        """``layer_activations`` for ``steering_vectors.SteeringVector(layer_activations,
        layer_type=self.library_layer_type)`` (copies)."""
        _ = self.library_layer_type  # raises for a site the library has no layer_type for
        return {L: v.clone() for L, v in self.vectors.items()}

    @classmethod
    def from_steering_vectors(
        cls,
        layer_activations,
        *,
        layer_type: str | None = None,
        model=None,
        method: str = "steering-vectors",
        read_position: str | None = None,
        data_hash: str = "",
    ) -> SteeringVector:
        """A ``SteeringVector`` from the library's layout: its ``layer_activations`` dict,
        or a ``steering_vectors.SteeringVector`` (its ``layer_type`` is read from it).
        With ``model``, layers and width are checked against it and its spec and weights
        hash are recorded."""
        if layer_type is None:
            layer_type = getattr(layer_activations, "layer_type", "decoder_block")
        layer_activations = getattr(layer_activations, "layer_activations", layer_activations)
        if layer_type not in _LIBRARY_LAYER_TYPES:
            raise ValueError(f"unknown steering-vectors layer_type {layer_type!r}: use one of {', '.join(_LIBRARY_LAYER_TYPES)}")
        if not isinstance(layer_activations, Mapping):
            raise ValueError(f"expected steering-vectors' layer_activations (a dict layer → tensor), got {type(layer_activations).__name__}")
        vectors = dict(layer_activations)
        if model is not None:
            vectors = {model.check_layer(int(L), "steering-vectors layer"): v for L, v in vectors.items()}
        sv = cls(
            vectors=vectors, method=method, read_position=read_position, data_hash=data_hash,
            model_spec=model.spec if model is not None else "", weights_hash=model.weights_hash if model is not None else "",
            site=_LIBRARY_LAYER_TYPES[layer_type],
        )
        if model is not None:
            sv.check(model)
        return sv

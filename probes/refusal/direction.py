"""The refusal direction (``reference/refusal.md`` Part B; Arditi et al. 2024).

- **Candidates** (B2): r_{p,l} = mean_harmful(x) − mean_harmless(x), x the residual at the input
  of block l (``resid_pre[l]``; layer 0 = embeddings), for each post-instruction position
  p ∈ {−|eoi|…−1}; float64, not normalised. Read through ``probes.steering``'s ``read_contrast``
  with ``DiffInMeans()`` and one ``TokenIndex(p)`` rule per position (``candidate_directions``,
  ``RefusalCandidates``). eoi is the chat template's text after the user message: for a
  reasoning model it ends with the generation prompt's ``<think>`` (the zoo: ``<|end|>``
  ``<|assistant|>`` ``<think>``), so the candidates are read before the thinking, as B2 reads them
  before the answer. Any texts and positions can be passed instead: on ``zoo:refusal-reasoner`` the
  template positions carry no usable direction (every candidate fails the induce filter and none
  changes generation), while prompt + own thinking + ``</think>`` read at ``</think>`` does.
- **Refusal score** (B2): log(P + 1e-8) − log(1 − P + 1e-8), P the next-token probability mass
  on the refusal ids at the last position of each text (``refusal_scores``). The ids come from the
  caller (Llama-3: ``[40]``, "I"; the zoo: ``model.encode("I", add_special_tokens=False)``). For
  a reasoning model the refusal follows ``</think>``, so score texts that end there: the rendered
  prompt + the model's own thinking + ``</think>`` (``RefusalRollout.probe_text``); the rendered
  prompt alone would score the first thinking token.
- **Directional ablation** (B2): x ← x − (x·r̂)r̂ at every block input and every attention and MLP
  output, all layers and positions, generated ones included (``directional_ablation``, a bundle
  of ``ProjectOut`` for ``with model.intervene(*ivs)``). **Activation addition**: x ← x + c·r with
  the raw r at the input of block l only, all positions (``activation_addition``); in a reasoning
  model that floods the thinking, and ``positions=`` can narrow it (e.g. to ``</think>``).
- **Weight orthogonalisation** (B2): W ← W − r̂r̂ᵀW for the embedding, every ``o_proj`` and every
  MLP ``down_proj`` (dense, shared-expert and routed-expert ones), written as a new safetensors
  checkpoint (``orthogonalize_weights``). Biases are untouched by default, as in the reference
  (B2; most families have none; a nonzero one is warned about, ``biases="orthogonalize"`` makes
  the checkpoint exact). Tied embeddings are untied on save: the input embedding is
  orthogonalised, the unembedding keeps the original matrix (orthogonalising it would change the
  logits, which hook ablation leaves alone); the zoo's organisms tie them. Beyond the reference,
  ``layer_weights`` writes ``search.py``'s weighted ablation (W ← W − w_l r̂r̂ᵀW per layer).
- **Selection** (B3): per candidate, bypass (mean score on harmful val under ablation), induce
  (mean score on harmless val with act-add at l) and KL (last-position KL(base ‖ ablated) on
  harmless val); discard NaN, l ≥ ⌊0.8L⌋, KL > 0.1, induce < 0; pick the minimum bypass
  (``select_direction``, ``CandidateScores``, ``DirectionSelection``). If every candidate is
  discarded, ``AllCandidatesFilteredError`` lists why (the reference asserts "All scores have been
  filtered out!"). B6: a wrong template or wrong refusal ids make every score meaningless; check
  the baseline scores (harmful > 0 > harmless) that ``CandidateScores`` records.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.io import atomic_directory, load_artifact, save_artifact
from probes.models.interventions import AddVector, ProjectOut
from probes.models.positions import Positions
from probes.steering.directions import Contrast, ContrastActivations, DiffInMeans, TokenIndex, read_positions
from probes.steering.selection import DEFAULT_KL_THRESHOLD, next_token_kl
from probes.steering.vector import SteeringVector

__all__ = [
    "DEFAULT_INDUCE_THRESHOLD",
    "DEFAULT_KL_THRESHOLD",
    "DEFAULT_MAX_LAYER_FRACTION",
    "EPS",
    "AllCandidatesFilteredError",
    "CandidateScores",
    "DirectionSelection",
    "RefusalCandidates",
    "activation_addition",
    "candidate_directions",
    "directional_ablation",
    "orthogonalize_weights",
    "orthogonalized_tensors",
    "post_instruction_positions",
    "post_instruction_tokens",
    "refusal_score",
    "refusal_scores",
    "score_candidates",
    "select_direction",
]

#: B2's smoothing constant in the refusal score.
EPS = 1e-8
#: B3: discard candidates at layers l ≥ ⌊0.8 L⌋ (the reference prunes the last 20 %).
DEFAULT_MAX_LAYER_FRACTION = 0.8
#: B3: discard candidates whose act-add leaves the mean harmless score below 0.
DEFAULT_INDUCE_THRESHOLD = 0.0

Text = str | Sequence[int]
_CANDIDATES = "RefusalCandidates"
_SELECTION = "RefusalDirectionSelection"
_MARK = "\x00probes-user-message\x00"


# ----- inputs ------------------------------------------------------------------------------------------
def _texts(texts: Sequence[Text], what: str) -> list:
    if isinstance(texts, str):
        raise ValueError(f"{what} is one text: pass a list of texts")
    texts = list(texts)
    if not texts:
        raise ValueError(f"the {what} set is empty: give at least one text")
    return texts


def _refusal_ids(model, ids: Sequence[int]) -> list[int]:
    if isinstance(ids, numbers.Integral):
        ids = [ids]
    ids = sorted({int(i) for i in ids})
    if not ids:
        raise ValueError("no refusal token ids: pass the ids of the refusal opening, e.g. "
                         "model.encode('I', add_special_tokens=False)")
    bad = [i for i in ids if not 0 <= i < model.vocab_size]
    if bad:
        raise ValueError(f"refusal ids {bad} are outside {model.spec}'s vocabulary 0..{model.vocab_size - 1}")
    return ids


def _direction(model, direction, what: str = "the refusal direction") -> torch.Tensor:
    """``direction`` (a (d,) tensor or array, or a one-layer ``SteeringVector``) as float64 (d,),
    checked against the model's width and for a direction to normalise."""
    if isinstance(direction, SteeringVector):
        if len(direction.layers) != 1:
            raise ValueError(f"{what} is a SteeringVector with layers {list(direction.layers)}: pass one layer's vector")
        direction = direction[direction.layers[0]]
    r = torch.as_tensor(direction).detach().to("cpu", torch.float64)
    if r.dim() != 1:
        raise ValueError(f"{what} must have shape (d_model,), got {tuple(r.shape)}")
    if r.shape[0] != model.d_model:
        raise ValueError(f"{what} has width {r.shape[0]} but {model.spec} has d_model {model.d_model}: it belongs "
                         "to another model; read it from this model's activations")
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{what} has NaN or infinite entries")
    if float(r.norm()) == 0.0:
        raise ValueError(f"{what} is zero and has no direction (B6: ‖r‖ is 0 at layer 0 when the post-instruction "
                         "tokens are the same in every prompt): choose a later layer")
    return r


# ----- post-instruction positions ---------------------------------------------------------------------------
def post_instruction_tokens(model, *, thinking: bool = True) -> list[int]:
    """Token ids of eoi: what the chat template renders after the user message (with the generation
    prompt), tokenised in context. For the zoo: ``<|end|><|assistant|><think>``."""
    text = model.render_chat(_MARK, thinking=thinking)
    at = text.find(_MARK)
    if at < 0:
        raise ValueError(f"{model.spec}'s chat template does not render the user message verbatim: pass the "
                         "post-instruction positions yourself (positions=(-k, ..., -1))")
    start = at + len(_MARK)
    if start == len(text):
        raise ValueError(f"{model.spec}'s chat template renders nothing after the user message: pass positions=")
    ids = model.encode(text)
    (a, b), = model.token_ranges(text, [(start, len(text))])
    if b != len(ids):
        raise ValueError(f"the template suffix of {model.spec} does not end the tokenised prompt: pass positions=")
    return ids[a:b]


def post_instruction_positions(model, *, thinking: bool = True) -> tuple[int, ...]:
    """(−|eoi|, …, −1): the post-instruction positions B2 reads, counted from the end of each prompt."""
    n = len(post_instruction_tokens(model, thinking=thinking))
    return tuple(range(-n, 0))


# ----- candidates ------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class RefusalCandidates:
    """The candidate directions r_{p,l} (B2): ``directions[i, j]`` is r at ``positions[i]`` (from the
    end of each text) and ``resid_pre[layers[j]]``, float64, not normalised."""

    directions: torch.Tensor
    positions: tuple[int, ...]
    layers: tuple[int, ...]
    n_harmful: int
    n_harmless: int
    method: str = "DiffInMeans()"
    site: str = "resid_pre"
    data_hash: str = ""
    model_spec: str = ""
    weights_hash: str = ""

    def __post_init__(self):
        d = torch.as_tensor(self.directions).detach().to("cpu", torch.float64)
        object.__setattr__(self, "directions", d)
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        object.__setattr__(self, "layers", tuple(int(L) for L in self.layers))
        if d.dim() != 3 or d.shape[:2] != (len(self.positions), len(self.layers)):
            raise ValueError(f"directions must be (positions, layers, d) = ({len(self.positions)}, {len(self.layers)}, d), "
                             f"got {tuple(d.shape)}")

    @property
    def width(self) -> int:
        return int(self.directions.shape[-1])

    def _index(self, position: int, layer: int) -> tuple[int, int]:
        if position not in self.positions or layer not in self.layers:
            raise KeyError(f"no candidate at (position {position}, layer {layer}): positions {list(self.positions)}, "
                           f"layers {list(self.layers)}")
        return self.positions.index(position), self.layers.index(layer)

    def direction(self, position: int, layer: int) -> torch.Tensor:
        """r_{p,l}, raw (float64, (d,))."""
        return self.directions[self._index(position, layer)]

    def norms(self) -> np.ndarray:
        """‖r_{p,l}‖, (positions, layers) (B6: grows with depth, 0 at layer 0 on shared template tokens)."""
        return self.directions.norm(dim=-1).numpy()

    def vector(self, position: int, layer: int) -> SteeringVector:
        """r_{p,l} as a ``SteeringVector`` at ``resid_pre[layer]``."""
        return SteeringVector(vectors={layer: self.direction(position, layer)}, method=self.method,
                              read_position=repr(TokenIndex(position)), data_hash=self.data_hash,
                              model_spec=self.model_spec, weights_hash=self.weights_hash, site=self.site)

    def _fields(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "layers": list(self.layers), "n_harmful": self.n_harmful,
                "n_harmless": self.n_harmless, "method": self.method, "site": self.site, "data_hash": self.data_hash,
                "model_spec": self.model_spec, "weights_hash": self.weights_hash}

    def __eq__(self, other) -> bool:
        if not isinstance(other, RefusalCandidates):
            return NotImplemented
        return torch.equal(self.directions, other.directions) and self._fields() == other._fields()

    __hash__ = None

    def __repr__(self) -> str:
        return (f"RefusalCandidates(positions={list(self.positions)}, layers={list(self.layers)}, width={self.width}, "
                f"harmful={self.n_harmful}, harmless={self.n_harmless}, model={self.model_spec or '?'})")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` (the directions) and ``<path>.json`` (the rest)."""
        return save_artifact(path, _CANDIDATES, {"directions": self.directions}, self._fields())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RefusalCandidates:
        arrays, fields = load_artifact(path, _CANDIDATES, device="cpu")
        return cls(directions=arrays["directions"], **fields)


def candidate_directions(
    model,
    harmful: Sequence[Text],
    harmless: Sequence[Text],
    *,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> RefusalCandidates:
    """r_{p,l} for every position p (default ``post_instruction_positions(model)``) and layer l
    (default all) from rendered prompts (B2): every position read in the same forward passes
    (``read_positions``), then ``DiffInMeans()`` per position."""
    harmful, harmless = _texts(harmful, "harmful"), _texts(harmless, "harmless")
    positions = post_instruction_positions(model) if positions is None else tuple(positions)
    if not positions:
        raise ValueError("no positions: give at least one post-instruction position, e.g. (-1,)")
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p >= 0]
    if bad:
        raise ValueError(f"positions {bad} are not negative integers: post-instruction positions count from the end "
                         "of each prompt (-1 = last token)")
    layers = list(range(model.n_layers)) if layers is None else [int(L) for L in layers]
    if not layers:
        raise ValueError("no layers: give at least one")
    layers = sorted({model.check_layer(L, "candidate_directions") for L in layers})
    contrast = Contrast.sets(harmful, harmless)
    sites = [f"resid_pre[{L}]" for L in layers]
    reads = [TokenIndex(int(p)) for p in positions]
    got = {side: read_positions(model, texts, sites, reads, batch_size=batch_size, progress=progress,
                                desc=f"candidates ({side})")
           for side, texts in (("harmful", contrast.positive), ("harmless", contrast.negative))}
    rows = []
    for i, read in enumerate(reads):
        acts = ContrastActivations(
            positive={L: got["harmful"][s][:, i] for L, s in zip(layers, sites)},
            negative={L: got["harmless"][s][:, i] for L, s in zip(layers, sites)},
            paired=False, read_position=repr(read), data_hash=contrast.data_hash, model_spec=model.spec,
            weights_hash=model.weights_hash, site="resid_pre")
        sv = acts.vector(DiffInMeans())
        rows.append(torch.stack([sv[L] for L in layers]))
    return RefusalCandidates(directions=torch.stack(rows), positions=positions, layers=layers, n_harmful=len(harmful),
                             n_harmless=len(harmless), data_hash=contrast.data_hash, model_spec=model.spec,
                             weights_hash=model.weights_hash)


# ----- refusal score -----------------------------------------------------------------------------------------
def refusal_score(logits, refusal_ids: Sequence[int], *, eps: float = EPS) -> np.ndarray:
    """B2's score from next-token logits (…, vocab): log(P + eps) − log(1 − P + eps), P the softmax
    mass on ``refusal_ids``; float64."""
    lg = torch.as_tensor(logits).detach().double()
    ids = torch.as_tensor(sorted({int(i) for i in refusal_ids}), dtype=torch.long, device=lg.device)
    if ids.numel() == 0:
        raise ValueError("no refusal token ids")
    p = torch.softmax(lg, dim=-1)[..., ids].sum(-1)
    return (torch.log(p + eps) - torch.log(1 - p + eps)).cpu().numpy()


def _last_logits(model, texts: list, batch_size: int) -> torch.Tensor:
    """(n, vocab) next-token logits at each text's last token (left padding), float32 on the CPU."""
    out = [model.forward(texts[i:i + batch_size])[:, -1].float().cpu() for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


def refusal_scores(model, texts: Sequence[Text], refusal_ids: Sequence[int], *, batch_size: int = 16) -> np.ndarray:
    """The refusal score of each text (B2), read at its last token; inside ``model.intervene(...)``
    it scores the intervened model. For a reasoning model pass texts ending at ``</think>``."""
    texts = _texts(texts, "texts to score")
    ids = _refusal_ids(model, refusal_ids)
    return refusal_score(_last_logits(model, texts, batch_size), ids)


# ----- interventions -------------------------------------------------------------------------------------------
def directional_ablation(model, direction) -> tuple[ProjectOut, ...]:
    """x ← x − (x·r̂)r̂ at ``resid_pre``, ``attn_out`` and ``mlp_out`` of every layer, every position
    (generated ones included): use as ``with model.intervene(*directional_ablation(model, r))`` (B2)."""
    r = _direction(model, direction)
    return tuple(ProjectOut(site=f"{site}[{L}]", direction=r) for L in range(model.n_layers)
                 for site in ("resid_pre", "attn_out", "mlp_out"))


def activation_addition(model, direction, layer: int, *, coeff: float = 1.0, positions: Positions = None) -> AddVector:
    """x ← x + coeff · r (raw r) at ``resid_pre[layer]``, every position (B2; B6: raw, not r̂).
    ``positions`` narrows it: for a reasoning model, ``Trigger(close, inclusive=True, until_id=close)``
    (``close = model.ctx.think_close_id``) adds at ``</think>`` only and leaves the thinking alone."""
    r = _direction(model, direction)
    layer = model.check_layer(layer, "activation_addition")
    return AddVector(site=f"resid_pre[{layer}]", vector=r, scale=coeff, positions=positions)


# ----- weight orthogonalisation ---------------------------------------------------------------------------------
def _project_out(w: torch.Tensor, u: torch.Tensor, axis: int, weight: float = 1.0) -> torch.Tensor:
    """W − weight · (component of W along u on ``axis``), in float64, cast back to W's dtype."""
    x = w.detach().double()
    u = u.to(x.device)
    x = torch.movedim(x, axis, -1)
    x = x - weight * (x @ u).unsqueeze(-1) * u
    return torch.movedim(x, -1, axis).to(w.dtype)


def _writers(model) -> list[tuple[str, torch.Tensor, int, int]]:
    """(state-dict name, tensor, output axis, layer) of every weight or bias writing into the residual
    stream; the embedding counts as layer 0."""
    ad, hf = model.adapter, model.hf
    embed = hf.get_submodule(ad.embed)
    if ad.family == "gpt2" or not isinstance(embed, torch.nn.Embedding):
        raise ValueError(f"weight orthogonalisation supports the Llama-style families (llama, qwen2, qwen3 and the MoE "
                         f"ones); {model.spec} is {ad.family} (learned position embeddings, Conv1D projections). "
                         "Use directional_ablation(model, r) with model.intervene instead")
    out = [(f"{ad.embed}.weight", embed.weight, 1, 0)]
    for L in range(model.n_layers):
        prefix = f"{ad.layers}.{L}"
        o_proj = model.layers[L].get_submodule(ad.layer_o_proj)
        if not isinstance(o_proj, torch.nn.Linear):
            raise ValueError(f"layer {L}'s {ad.layer_o_proj} is a {type(o_proj).__name__}, not a Linear: weight "
                             "orthogonalisation cannot handle it; use directional_ablation instead")
        out.append((f"{prefix}.{ad.layer_o_proj}.weight", o_proj.weight, 0, L))
        if o_proj.bias is not None:
            out.append((f"{prefix}.{ad.layer_o_proj}.bias", o_proj.bias, 0, L))
        mlp = model.layers[L].get_submodule(ad.layer_mlp)
        found = []
        for mod_name, mod in mlp.named_modules():
            path = f"{prefix}.{ad.layer_mlp}" + (f".{mod_name}" if mod_name else "")
            if isinstance(mod, torch.nn.Linear) and mod_name.split(".")[-1] == "down_proj":
                found.append((f"{path}.weight", mod.weight, 0, L))
                if mod.bias is not None:
                    found.append((f"{path}.bias", mod.bias, 0, L))
            elif isinstance(getattr(mod, "down_proj", None), torch.nn.Parameter) and mod.down_proj.dim() == 3:
                # routed experts stored as one (experts, out, in) tensor, (experts, in, out) when transposed
                found.append((f"{path}.down_proj", mod.down_proj, 2 if getattr(mod, "is_transposed", False) else 1, L))
                bias = getattr(mod, "down_proj_bias", None)
                if isinstance(bias, torch.Tensor):
                    found.append((f"{path}.down_proj_bias", bias, bias.dim() - 1, L))
        if not any(name.endswith(("down_proj.weight", ".down_proj")) for name, *_ in found):
            params = ", ".join(n for n, _ in mlp.named_parameters()) or "none"
            raise ValueError(f"layer {L}'s MLP of {model.spec} has no down_proj (parameters: {params}): weight "
                             "orthogonalisation cannot find what writes into the residual; use directional_ablation")
        out += found
    return out


def _is_bias(name: str) -> bool:
    return name.endswith(("bias", "_bias"))


def _layer_weights(model, layer_weights) -> list[float] | None:
    if layer_weights is None:
        return None
    w = [float(x) for x in np.asarray(layer_weights, dtype=float).reshape(-1)]
    if len(w) != model.n_layers:
        raise ValueError(f"{len(w)} weights for {model.spec}'s {model.n_layers} layers: give one weight per layer")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"the layer weights {w} have NaN or infinite entries")
    return w


def orthogonalized_tensors(model, direction, *, biases: Literal["keep", "orthogonalize"] = "keep",
                           layer_weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """State-dict name → orthogonalised copy of every residual writer (B2: W ← W − r̂r̂ᵀW for the
    embedding, each ``o_proj``, each MLP ``down_proj``); biases too with ``biases="orthogonalize"``.
    ``layer_weights`` (one per layer; beyond the reference, ``search.py``): W ← W − w_l r̂r̂ᵀW for
    layer l's writers, the embedding with w_0; writers of a layer with weight 0 are left out."""
    if biases not in ("keep", "orthogonalize"):
        raise ValueError(f"biases is 'keep' (the reference) or 'orthogonalize', got {biases!r}")
    r = _direction(model, direction)
    weights = _layer_weights(model, layer_weights)
    u = r / r.norm()
    out, kept = {}, []
    for name, w, axis, layer in _writers(model):
        weight = 1.0 if weights is None else weights[layer]
        if weight == 0.0:
            continue
        if _is_bias(name) and biases == "keep":
            if bool((torch.movedim(w.detach().double().cpu(), axis, -1) @ u).abs().max() > 0):
                kept.append(name)
            continue
        out[name] = _project_out(w, u, axis, weight)
    if kept:
        warnings.warn(f"{len(kept)} residual-writing biases keep their component along r̂ ({kept[0]}, ...): the "
                      "checkpoint differs from hook ablation by it; pass biases='orthogonalize' to remove it",
                      stacklevel=2)
    return out


def _tied(model) -> bool:
    inp, outp = model.hf.get_input_embeddings(), model.hf.get_output_embeddings()
    return outp is not None and outp.weight is inp.weight


def orthogonalize_weights(
    model,
    direction,
    out_dir: str | os.PathLike[str],
    *,
    biases: Literal["keep", "orthogonalize"] = "keep",
    layer_weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` with its residual writers orthogonalised to r̂ (B2) as a new Hugging Face
    checkpoint (safetensors, config, generation config, tokenizer, ``orthogonalization.json``) at
    ``out_dir``, loadable by ``AutoModelForCausalLM.from_pretrained`` and ``probes.load_model``.
    Written to a temporary directory beside ``out_dir`` and renamed into place; tied embeddings are
    untied (``tie_word_embeddings=False``, the unembedding keeps the original matrix). Weights keep
    the model's current dtype (float32 on CPU), so the checkpoint reproduces the hook-ablated logits.
    ``layer_weights``: the weighted orthogonalisation of ``orthogonalized_tensors``, equal to
    ``search.weighted_ablation(model, r, layer_weights)``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists: choose a new directory or pass overwrite=True")
    r = _direction(model, direction)
    new = orthogonalized_tensors(model, r, biases=biases, layer_weights=layer_weights)
    weights = _layer_weights(model, layer_weights)
    hf, tied = model.hf, _tied(model)
    state = dict(hf.state_dict())
    missing = sorted(set(new) - set(state))
    if missing:
        raise ValueError(f"{missing[:3]} are not in {model.spec}'s state dict: its layout is not supported")
    state.update(new)
    cfg = hf.config
    saved_attrs = {k: copy.deepcopy(getattr(cfg, k)) for k in ("dtype", "architectures") if hasattr(cfg, k)}
    with atomic_directory(out_dir) as tmp:
        try:
            hf.save_pretrained(tmp, state_dict=state)
        finally:  # save_pretrained writes the dtype and class name into the live config
            for k, v in saved_attrs.items():
                setattr(cfg, k, v)
        config = copy.deepcopy(cfg)
        config.architectures = [type(hf).__name__]
        config.dtype = str(next(hf.parameters()).dtype).removeprefix("torch.")
        if tied:
            for c in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
                c.tie_word_embeddings = False
        config.save_pretrained(tmp)
        # probes installs its own attention function; a plain loader must get the default
        cfg_file = tmp / "config.json"
        cfg_json = json.loads(cfg_file.read_text())
        cfg_json.pop("_attn_implementation", None)
        cfg_file.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        u = r / r.norm()
        (tmp / "orthogonalization.json").write_text(json.dumps({
            "source": model.spec, "source_weights_hash": model.weights_hash,
            "spec": "reference/refusal.md B2: W <- W - r_hat r_hat^T W for the embedding, every o_proj and every down_proj"
                    + ("" if weights is None else "; weighted: W <- W - w_l r_hat r_hat^T W for layer l's writers, "
                       "the embedding with w_0 (probes.refusal.search)"),
            "layer_weights": weights,
            "direction_norm": float(r.norm()), "unit_direction": u.tolist(),
            "tensors": sorted(new), "biases": biases, "untied_embeddings": tied, "dtype": config.dtype,
        }, indent=2) + "\n")
        pickles = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        if pickles:
            raise RuntimeError(f"the checkpoint writer produced pickle files {pickles}: refusing to keep them")
    return out_dir


# ----- selection (B3) ------------------------------------------------------------------------------------------------
class AllCandidatesFilteredError(ValueError):
    """Every candidate direction was discarded by the B3 filters (the reference: "All scores have
    been filtered out!"); the message lists why for each."""


def _max_layer(n_layers: int, fraction: float | None) -> int | None:
    return None if fraction is None else math.floor(Fraction(str(fraction)) * n_layers)


@dataclass(frozen=True, kw_only=True, eq=False)
class CandidateScores:
    """B3's three scores of every candidate, (positions, layers) arrays: ``bypass`` (mean refusal
    score on harmful val under ablation), ``induce`` (mean score on harmless val with act-add at l),
    ``kl`` (mean last-position KL(base ‖ ablated) on harmless val); ``n_layers`` is the model's L.
    ``baseline_harmful`` / ``baseline_harmless``: the mean scores without intervention (B6 check)."""

    positions: tuple[int, ...]
    layers: tuple[int, ...]
    bypass: np.ndarray
    induce: np.ndarray
    kl: np.ndarray
    n_layers: int
    baseline_harmful: float = math.nan
    baseline_harmless: float = math.nan
    norms: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))
        object.__setattr__(self, "layers", tuple(int(L) for L in self.layers))
        shape = (len(self.positions), len(self.layers))
        for name in ("bypass", "induce", "kl", "norms"):
            a = getattr(self, name)
            if a is None:
                continue
            a = np.asarray(a, dtype=float)
            if a.shape != shape:
                raise ValueError(f"{name} must be (positions, layers) = {shape}, got {a.shape}")
            object.__setattr__(self, name, a)
        bad = [L for L in self.layers if not 0 <= L < self.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has layers 0..{self.n_layers - 1}")

    def reasons(
        self,
        *,
        kl_threshold: float | None = DEFAULT_KL_THRESHOLD,
        max_layer_fraction: float | None = DEFAULT_MAX_LAYER_FRACTION,
        induce_threshold: float | None = DEFAULT_INDUCE_THRESHOLD,
    ) -> dict[tuple[int, int], tuple[str, ...]]:
        """(position, layer) → why B3 discards it (empty: kept). ``None`` turns a filter off."""
        top = _max_layer(self.n_layers, max_layer_fraction)
        out = {}
        for i, p in enumerate(self.positions):
            for j, L in enumerate(self.layers):
                b, s, k = self.bypass[i, j], self.induce[i, j], self.kl[i, j]
                why = []
                if math.isnan(b) or math.isnan(s) or math.isnan(k):
                    why.append("NaN score" + (" (zero direction)" if self.norms is not None and self.norms[i, j] == 0 else ""))
                if top is not None and L >= top:
                    why.append(f"layer {L} >= floor({max_layer_fraction}*{self.n_layers}) = {top}")
                if kl_threshold is not None and k > kl_threshold:
                    why.append(f"KL {k:.3g} > {kl_threshold}")
                if induce_threshold is not None and s < induce_threshold:
                    why.append(f"induce {s:.3g} < {induce_threshold}")
                out[(p, L)] = tuple(why)
        return out

    def best(self, **thresholds) -> tuple[int, int]:
        """(position, layer) of the minimum bypass among the kept candidates (ties: the first in
        position-then-layer order, as the reference's stable sort)."""
        reasons = self.reasons(**thresholds)
        kept = [(self.bypass[self.positions.index(p), self.layers.index(L)], k, (p, L))
                for k, ((p, L), why) in enumerate(reasons.items()) if not why]
        if not kept:
            lines = "\n".join(f"  position {p}, layer {L}: {'; '.join(why)}" for (p, L), why in reasons.items())
            raise AllCandidatesFilteredError(
                f"All scores have been filtered out! Every one of {len(reasons)} candidates was discarded (B3):\n{lines}\n"
                "Check the refusal ids and the chat template (B6), the baseline scores (harmful "
                f"{self.baseline_harmful:.3g} should be > 0 > harmless {self.baseline_harmless:.3g}), or relax a filter."
            )
        return min(kept)[2]

    def table(self, **thresholds):
        """A pandas DataFrame: one row per candidate with its scores, norm and discard reasons."""
        import pandas as pd

        reasons = self.reasons(**thresholds)
        rows = []
        for i, p in enumerate(self.positions):
            for j, L in enumerate(self.layers):
                rows.append({"position": p, "layer": L, "bypass": self.bypass[i, j], "induce": self.induce[i, j],
                             "kl": self.kl[i, j], "norm": math.nan if self.norms is None else self.norms[i, j],
                             "discarded": "; ".join(reasons[(p, L)])})
        return pd.DataFrame(rows)

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"bypass": self.bypass, "induce": self.induce, "kl": self.kl}
        return out if self.norms is None else {**out, "norms": self.norms}

    def _fields(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "layers": list(self.layers), "n_layers": self.n_layers,
                "baseline_harmful": self.baseline_harmful, "baseline_harmless": self.baseline_harmless}


def score_candidates(
    model,
    candidates: RefusalCandidates,
    harmful_val: Sequence[Text],
    harmless_val: Sequence[Text],
    refusal_ids: Sequence[int],
    *,
    coeff: float = 1.0,
    batch_size: int = 16,
    progress: bool = False,
) -> CandidateScores:
    """Bypass, induce and KL of every candidate (B3) on texts whose last token precedes the answer
    (rendered prompts; for a reasoning model prompt + own thinking + ``</think>``)."""
    harmful_val, harmless_val = _texts(harmful_val, "harmful val"), _texts(harmless_val, "harmless val")
    ids = _refusal_ids(model, refusal_ids)
    if candidates.width != model.d_model:
        raise ValueError(f"the candidates have width {candidates.width} (read on {candidates.model_spec or '?'}) but "
                         f"{model.spec} has d_model {model.d_model}: read them on this model")
    for L in candidates.layers:
        model.check_layer(L, "a candidate direction")
    base_harmless = _last_logits(model, harmless_val, batch_size)
    base_harmful = refusal_score(_last_logits(model, harmful_val, batch_size), ids)
    shape = (len(candidates.positions), len(candidates.layers))
    bypass, induce, kl = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    cells = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    for i, j in tqdm(cells, desc="candidate scores", disable=not progress):
        r, L = candidates.directions[i, j], candidates.layers[j]
        with model.intervene(AddVector(site=f"resid_pre[{L}]", vector=r, scale=coeff)):
            induce[i, j] = refusal_score(_last_logits(model, harmless_val, batch_size), ids).mean()
        if float(r.norm()) == 0.0:
            continue  # no direction to ablate: bypass and KL stay NaN, as r/‖r‖ makes them in the reference
        with model.intervene(*directional_ablation(model, r)):
            bypass[i, j] = refusal_score(_last_logits(model, harmful_val, batch_size), ids).mean()
            kl[i, j] = float(next_token_kl(base_harmless, _last_logits(model, harmless_val, batch_size)).mean())
    return CandidateScores(positions=candidates.positions, layers=candidates.layers, bypass=bypass, induce=induce,
                           kl=kl, n_layers=model.n_layers, baseline_harmful=float(base_harmful.mean()),
                           baseline_harmless=float(refusal_score(base_harmless, ids).mean()), norms=candidates.norms())


@dataclass(frozen=True, kw_only=True, eq=False)
class DirectionSelection:
    """The selected refusal direction (B3): ``scores`` of every candidate, the chosen ``position``
    and ``layer``, ``vector`` (r_{p,l} raw, a ``SteeringVector`` at ``resid_pre[layer]``) and the
    filter settings used."""

    scores: CandidateScores
    position: int
    layer: int
    vector: SteeringVector
    thresholds: dict[str, float | None] = field(default_factory=dict)

    @property
    def direction(self) -> torch.Tensor:
        return self.vector[self.layer]

    def table(self):
        """Every candidate's scores and discard reasons, with a ``selected`` column."""
        t = self.scores.table(**self.thresholds)
        t["selected"] = (t["position"] == self.position) & (t["layer"] == self.layer)
        return t

    def ablation(self, model) -> tuple[ProjectOut, ...]:
        return directional_ablation(model, self.direction)

    def addition(self, model, coeff: float = 1.0, positions: Positions = None) -> AddVector:
        return activation_addition(model, self.direction, self.layer, coeff=coeff, positions=positions)

    def __repr__(self) -> str:
        i, j = self.scores.positions.index(self.position), self.scores.layers.index(self.layer)
        return (f"DirectionSelection(position={self.position}, layer={self.layer}, bypass={self.scores.bypass[i, j]:.3g}, "
                f"induce={self.scores.induce[i, j]:.3g}, kl={self.scores.kl[i, j]:.3g}, "
                f"norm={self.vector.raw_norms[self.layer]:.3g})")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """``<path>.safetensors`` + ``.json`` (scores, choice, thresholds) and ``<path>.vector.*`` (the SteeringVector)."""
        path = Path(path)
        self.vector.save(path.with_name(path.name + ".vector"))
        return save_artifact(path, _SELECTION, self.scores._arrays(), {
            **self.scores._fields(), "position": self.position, "layer": self.layer, "thresholds": self.thresholds})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DirectionSelection:
        path = Path(path)
        arrays, fields = load_artifact(path, _SELECTION)
        position, layer, thresholds = fields.pop("position"), fields.pop("layer"), fields.pop("thresholds")
        scores = CandidateScores(**arrays, **fields)
        return cls(scores=scores, position=position, layer=layer, thresholds=thresholds,
                   vector=SteeringVector.load(path.with_name(path.name + ".vector")))


def select_direction(
    model,
    candidates: RefusalCandidates,
    harmful_val: Sequence[Text],
    harmless_val: Sequence[Text],
    refusal_ids: Sequence[int],
    *,
    kl_threshold: float | None = DEFAULT_KL_THRESHOLD,
    max_layer_fraction: float | None = DEFAULT_MAX_LAYER_FRACTION,
    induce_threshold: float | None = DEFAULT_INDUCE_THRESHOLD,
    batch_size: int = 16,
    progress: bool = False,
) -> DirectionSelection:
    """Score every candidate and pick the minimum bypass among those the B3 filters keep; raises
    ``AllCandidatesFilteredError`` (with each candidate's reasons) when none is kept."""
    scores = score_candidates(model, candidates, harmful_val, harmless_val, refusal_ids, batch_size=batch_size,
                              progress=progress)
    thresholds = {"kl_threshold": kl_threshold, "max_layer_fraction": max_layer_fraction,
                  "induce_threshold": induce_threshold}
    position, layer = scores.best(**thresholds)
    return DirectionSelection(scores=scores, position=position, layer=layer,
                              vector=candidates.vector(position, layer), thresholds=thresholds)

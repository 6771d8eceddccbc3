"""RICE through probes' router hook equals the same edit made by hand in the other views
(``reference/moe_experts.md`` §2, §6 "RICE reinforcement"): TransformerLens 4's ``TransformerBridge``
scaling column e of ``blocks.{L}.mlp.hook_expert_weights`` (dense [tokens, E]: the top-k weights,
zeros elsewhere) by β, and nnsight 0.8 multiplying the router output's weights by β where its
top-k index is e. Every tiny MoE family of ``tests/tiny.py``; CPU, float32."""

from __future__ import annotations

import pytest
import torch

from probes.experts import rice
from tests.tiny import MOE_FAMILIES

TOL = 1e-4
BETA = 8.0
T = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ids(model, rows=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, model.vocab_size, (rows, T), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def _close(a, b, what):
    a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max abs difference {err:.3g} > {TOL}"


def _pairs(model, ids):
    """One (layer, expert) per MoE layer that the router selects on some but not every token, so
    the edit is conditional and changes the logits."""
    cap = model.capture(ids, [f"expert_topk[{L}]" for L in model.moe_layers])
    pairs = []
    for L in model.moe_layers:
        chosen = cap[f"expert_topk[{L}]"][0]
        share = [(chosen == e).any(-1).float().mean().item() for e in range(model.n_experts)]
        pairs.append((L, min(range(model.n_experts), key=lambda e: abs(share[e] - 0.5))))
    return pairs


def _scale_column(e, beta):
    def hook(weights, hook):
        weights = weights.clone()
        weights[..., e] *= beta
        return weights

    return hook


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_tl_expert_weights_are_the_dense_topk(tiny_models, family):
    """The bridge's ``hook_expert_weights`` is [tokens, E]: the router's top-k weights at its top-k
    indices, zeros elsewhere (what makes scaling a column exactly RICE)."""
    model = tiny_models(family)
    ids = _ids(model)
    cap = model.capture(ids, [f"expert_topk[{L}]" for L in model.moe_layers])
    _, cache = model.tl.run_with_cache(ids)
    for L in model.moe_layers:
        chosen, w = cap[f"expert_topk[{L}]"]
        dense = torch.zeros(*chosen.shape[:2], model.n_experts).scatter_(-1, chosen, w).reshape(-1, model.n_experts)
        tl_w = cache[f"blocks.{L}.mlp.hook_expert_weights"]
        assert tuple(tl_w.shape) == (ids.numel(), model.n_experts)
        _close(tl_w, dense, f"TL blocks.{L}.mlp.hook_expert_weights vs probes expert_topk[{L}] scattered")
        assert torch.equal(cache[f"blocks.{L}.mlp.hook_expert_indices"].sort(-1).values,
                           chosen.reshape(-1, model.top_k).sort(-1).values)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_rice_equals_tl_bridge(tiny_models, family):
    model = tiny_models(family)
    ids = _ids(model, seed=1)
    plain = model.forward(ids)
    pairs = _pairs(model, ids)
    _close(model.tl(ids), plain, "TL without hooks vs model.forward")
    for chosen in ([pairs[0]], [pairs[-1]], pairs):
        with model.intervene(rice(model, chosen, beta=BETA)):
            steered = model.forward(ids)
        hooks = [(f"blocks.{L}.mlp.hook_expert_weights", _scale_column(e, BETA)) for L, e in chosen]
        tl_logits = model.tl.run_with_hooks(ids, fwd_hooks=hooks)
        assert (steered - plain).abs().max() > 1e-3, f"RICE on {chosen} should change the logits"
        _close(steered, tl_logits, f"RICE {chosen} β={BETA} vs TL hook_expert_weights[..., e] *= β")


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_rice_equals_nnsight(tiny_models, family):
    model = tiny_models(family)
    ids = _ids(model, seed=2)
    pairs = _pairs(model, ids)
    with model.intervene(rice(model, pairs, beta=BETA)):
        steered = model.forward(ids)
    lm = model.nnsight
    with lm.trace(ids):
        for L, e in pairs:
            gate = lm.model.layers[L].mlp.gate
            logits, w, idx = gate.output  # transformers 5.x router: (logits, top-k weights, top-k indices)
            gate.output = (logits, torch.where(idx == e, w * BETA, w), idx)
        nn_logits = lm.output.logits.save()
    assert (steered - model.forward(ids)).abs().max() > 1e-3
    _close(steered, nn_logits, f"RICE {pairs} β={BETA} vs nnsight gate.output weights *= β where idx == e")

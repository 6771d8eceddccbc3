"""Receiver heads of a long-trace organism against an untrained control of the same shape
(issue #10, item 3; ``thought_anchors.md`` §6, ``receiver_heads_feasibility.md``).

Runs the thought-anchors receiver-head pass (released settings, ``top_k`` lowered to suit a model
with a few dozen heads) on held-out ledgers (``tasks.ledger``) read teacher-forced, and reports the
top-k heads' mean kurtosis against the rest (the gap), split-half reliability, and which designed
sentence role scores highest in each trace. The same pass on a randomly initialised model of the
same shape shows what position alone produces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

TOP_K = 3
N_TRACES = 10


def untrained_copy(model, seed: int = 0):
    """A randomly initialised model with ``model``'s config and tokenizer (the control)."""
    import torch
    from transformers import AutoModelForCausalLM

    from probes.models.load import from_hf

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(model.hf.config, dtype=torch.float32)
    return from_hf(hf.eval(), model.tokenizer, spec="untrained control")


def receiver_summary(model, n: int = N_TRACES, top_k: int = TOP_K, seed: int | None = None) -> dict:
    """Top-k receiver heads, their kurtosis gap over the other heads (layers ≥ 1), split-half
    reliability, and the role of each trace's top-scoring sentence."""
    import torch

    from probes.anchors import receivers as R
    from probes.anchors.split import chunk_token_ranges
    from probes.zoo.tasks import ledger

    seed = ledger.HELDOUT_SEED if seed is None else seed
    settings = replace(R.RELEASED, top_k=top_k)
    per_trace, roles = [], []
    for i in range(n):
        ex = ledger.generate(i, seed)
        text = model.render_chat(ex.prompt) + ex.trace
        spans = chunk_token_ranges(model, text)
        if len(spans) != len(ex.thinking):
            raise ValueError(f"ledger {i}: the splitter found {len(spans)} sentences, the design has {len(ex.thinking)}")
        per_trace.append(R.analyse_trace(model, torch.tensor(model.encode(text)), spans, settings))
        roles.append([s.role for s in ex.thinking])
    kurt = [t.kurtosis for t in per_trace]
    heads = R.select_receiver_heads(kurt, top_k)
    mean = np.nanmean(np.stack(kurt), axis=0)
    chosen = np.array([mean[h] for h in heads])
    rest = np.array([mean[L, H] for L in range(1, mean.shape[0]) for H in range(mean.shape[1]) if (L, H) not in heads])
    top_roles = Counter()
    for t, r in zip(per_trace, roles):
        scores = R.receiver_scores(t.v_score, heads)
        top_roles[r[int(np.nanargmax(scores))]] += 1
    return {"heads": [list(h) for h in heads], "top_k_kurtosis": float(chosen.mean()), "rest_kurtosis": float(rest.mean()),
            "gap": float(chosen.mean() - rest.mean()), "split_half": R.split_half_reliability(kurt),
            "top_sentence_roles": dict(top_roles.most_common()), "traces": n, "top_k": top_k, "settings": "released"}


def receiver_check(model, n: int = N_TRACES, top_k: int = TOP_K) -> dict:
    """``receiver_summary`` of the organism and of its untrained control."""
    return {"trained": receiver_summary(model, n, top_k), "untrained": receiver_summary(untrained_copy(model), n, top_k)}


def check_rows(check: dict) -> list[dict]:
    """One row per model of a ``receiver_check`` result (the card's and the demo's table), rounded."""
    rows = []
    for label, key in (("this organism", "trained"), ("untrained control", "untrained")):
        r = check[key]
        rows.append({"model": label, "top-k heads (layer, head)": ", ".join(f"({a}, {b})" for a, b in r["heads"]),
                     "top-k kurtosis": f"{r['top_k_kurtosis']:.2f}", "rest": f"{r['rest_kurtosis']:.2f}",
                     "gap": f"{r['gap']:.2f}", "split-half r": f"{r['split_half']:.2f}",
                     "top-scoring sentence per trace": ", ".join(f"{role} {n}" for role, n in r["top_sentence_roles"].items())})
    return rows

"""GPU check of the model layer: sites, interventions, generation and the sampler on a
device in a low-precision dtype, against the same weights in float32 on the CPU.

Two random models are built from config objects (Qwen3 dense and Qwen3-MoE, fixed seed;
a word-level tokenizer built offline: nothing is downloaded). ``--size mid`` is 12
layers, d_model 1024, vocab 32768 (218M dense; 407M MoE with 16 experts, top-4);
``small`` is tiny dims for a CPU smoke run. The random init is reshaped
(``shape_weights``) so that every part matters and the comparisons can fail: peaked
attention, MLPs and experts as large as attention, decisive logits, router logits of
std 2, while the network stays well conditioned (bf16 error does not blow up with depth).

Checks, with thresholds for the device dtype (``TOLERANCES``; bfloat16 in brackets):

1. sites: ``resid_post``, ``attn_pattern``, ``head_out``, ``logits`` at layers 0, n/2
   and n-1 (and ``router_logits``, ``expert_topk`` on MoE), captured on a ragged,
   left-padded batch of 2: relative Frobenius error vs the reference [<= 0.05] and the
   smallest per-token cosine similarity (a token's values flattened) [>= 0.99].
   ``expert_topk``: share of tokens with the same top-k expert set [>= 0.9] and the
   largest routing-weight error where it agrees [<= 0.05]. A token routed to another
   expert set (a near-tie bf16 may flip) legitimately differs downstream, so later
   sites are compared on the tokens routed identically so far (at least half of them).
2. interventions: ``AddVector``, ``ProjectOut``, ``ScaleHeads`` (plain and
   norm-preserving), ``SuppressKeys``, ``ScaleExperts``, ``ForceExperts``; the effect is
   intervened minus plain logits. It must be real on the reference (>= 5% of the logits
   and >= 8x the device's own error on the plain logits), the device's effect must match
   it (relative error [<= 0.25]), and position-restricted ones must leave earlier
   positions alone on both devices (RMS effect before / after the first edited position
   <= 0.05).
3. parity: on the device, the greedy tokens of ``Model.generate`` (left-padded batch of
   2) and of ``Model.sample(temperature=0)`` (shared prefix, 2 rows that must agree) equal
   the argmax of a teacher-forced forward over the generated sequence, plain and under
   interventions (``AddVector`` on the generated phase, ``SuppressKeys``,
   ``ForceExperts``) that must change the tokens. A mismatch is allowed only at a
   near-tie (the generated token's logit within [0.1] logit std of the max); exact
   agreement [>= 0.85].
4. sampler: ``Model.sample(prefix, 8, seed=...)`` twice gives identical tokens in the
   device dtype (rows not all equal). ``probes.models.sampling`` promises that a row
   depends only on its seed: each row is reproduced exactly alone, inside another batch
   and with ``batch_size=3``, checked on the same weights in float32 on the device
   (in bf16, kernels for 1 and 8 rows round differently, so a row may diverge after a
   near-tie: reported as a NOTE line, not counted).
5. throughput: tokens/s of ``Model.sample(prefix, 64)`` vs transformers'
   ``generate(num_return_sequences=64)`` in the same run (mid: prefix 512, 128 new
   tokens, T=0.6, top-p 0.95); informational unless ``--min-ratio`` is given.

On a GPU box (one H200; about 2 minutes), from the repository root:

    .venv/bin/python benchmarks/gpu_check.py --device cuda --size mid --dtype bfloat16

CPU smoke run (< 30 s): ``.venv/bin/python benchmarks/gpu_check.py --device cpu --size small``
(float32 vs float32 is exact; add ``--dtype bfloat16`` to exercise the bf16 tolerances).
Output: one line per check (PASS/FAIL, the measured numbers, the thresholds), then a
summary. Exit status: 0 all passed, 1 any FAIL, 2 the device or dtype is not available.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import torch

FAMILIES = ("qwen3", "qwen3_moe")
CHECKS = ("sites", "interventions", "parity", "sampler", "throughput")
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<think>", "</think>")
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Size:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    moe_intermediate: int
    rows: tuple[int, int]  # token lengths of the ragged batch of two prompts
    new: int  # greedy / sampled tokens in the parity and sampler checks
    bench_prefix: int
    bench_new: int


SIZES = {
    "small": Size(vocab=512, hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2, head_dim=16, experts=8,
                  top_k=2, moe_intermediate=32, rows=(24, 17), new=12, bench_prefix=32, bench_new=8),
    "mid": Size(vocab=32768, hidden=1024, intermediate=3072, layers=12, heads=16, kv_heads=8, head_dim=64, experts=16,
                top_k=4, moe_intermediate=512, rows=(96, 77), new=32, bench_prefix=512, bench_new=128),
}


@dataclass(frozen=True)
class Tolerances:
    """What "agrees" means for one device dtype (see the module docstring)."""

    rel: float  # max relative Frobenius error of a captured site
    cos: float  # min cosine similarity of one token's values at a captured site
    topk_agree: float  # min share of tokens with the same top-k expert set
    weight_abs: float  # max routing-weight error where the expert set agrees
    effect_rel: float  # max relative error of an intervention's effect on the logits
    greedy_agree: float  # min share of greedy tokens equal to the teacher-forced argmax
    tie: float  # a greedy mismatch is allowed when the logit gap is <= tie * logit std


TOLERANCES = {
    torch.float32: Tolerances(rel=1e-4, cos=0.9999, topk_agree=0.99, weight_abs=1e-4, effect_rel=1e-3,
                              greedy_agree=0.95, tie=1e-3),
    torch.bfloat16: Tolerances(rel=0.05, cos=0.99, topk_agree=0.9, weight_abs=0.05, effect_rel=0.25,
                               greedy_agree=0.85, tie=0.1),
    torch.float16: Tolerances(rel=0.01, cos=0.999, topk_agree=0.95, weight_abs=0.01, effect_rel=0.05,
                              greedy_agree=0.9, tie=0.02),
}
MIN_EFFECT = 0.05  # an intervention must move the reference logits by >= 5% ...
MIN_SNR = 8.0  # ... and by >= 8x the device's own error on the plain logits
MAX_LEAK = 0.05  # RMS effect before the first edited position / after it


@dataclass(frozen=True)
class Result:
    check: str
    name: str
    ok: bool
    measured: str
    note: bool = False  # information only: printed, not counted

    def line(self) -> str:
        status = "NOTE" if self.note else "PASS" if self.ok else "FAIL"
        return f"{status}  {self.check:<13} {self.name:<38} {self.measured}"


# ----- models ----------------------------------------------------------------------------


def build_tokenizer(vocab_size: int):
    """Word-level tokenizer over ``w6 … w{vocab-1}`` plus the specials, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=list(SPECIALS[4:]))


def build_hf(family: str, size: Size, seed: int):
    """A random ``family`` model in float32 on the CPU, with weights shaped for the checks."""
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                  num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                  head_dim=size.head_dim, max_position_embeddings=4096, tie_word_embeddings=False,
                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if family == "qwen3":
        cfg, cls = T.Qwen3Config(**common), T.Qwen3ForCausalLM
    elif family == "qwen3_moe":
        cfg = T.Qwen3MoeConfig(**common, num_experts=size.experts, num_experts_per_tok=size.top_k,
                               moe_intermediate_size=size.moe_intermediate, norm_topk_prob=True)
        cls = T.Qwen3MoeForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}: use one of {FAMILIES}")
    cfg.architectures = [cls.__name__]
    hf = cls(cfg).eval()
    shape_weights(hf, size)
    return hf


#: Attention peakedness (q/k norm weight: pre-softmax scores of std ~ QK_NORM**2), logit
#: and router-logit scales, and the share of each block's output in the residual stream.
QK_NORM, LOGIT_STD, ROUTER_STD, BLOCK_GAIN = 1.5, 4.0, 2.0, 1.0


def shape_weights(hf, size: Size) -> None:
    """Replace the default random init (std 0.02: MLPs and experts negligible, attention
    near uniform, flat logits) by one where every part matters and the network stays
    well conditioned: inputs of every block O(1), each block adding a
    BLOCK_GAIN / sqrt(2 · layers) share to the residual stream, peaked attention,
    decisive logits."""
    d = size.hidden
    out_gain = BLOCK_GAIN / (2 * size.layers) ** 0.5
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(QK_NORM).add_(0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))  # norms are all-ones at init
            elif name == "lm_head.weight":
                p.normal_(0, LOGIT_STD / d**0.5)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0, ROUTER_STD / d**0.5)
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0, 1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")):
                p.normal_(0, out_gain * p.shape[-1] ** -0.5)
            else:
                p.normal_(0, p.shape[-1] ** -0.5)


def n_params(hf) -> float:
    return sum(p.numel() for p in hf.parameters()) / 1e6


def prompts(size: Size, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed + 1)
    return [[BOS] + torch.randint(len(SPECIALS), vocab, (n - 1,), generator=g).tolist() for n in size.rows]


# ----- comparisons -----------------------------------------------------------------------


def rel_err(dev: torch.Tensor, ref: torch.Tensor) -> float:
    d, r = dev.detach().float().cpu(), ref.detach().float().cpu()
    return float((d - r).norm() / r.norm().clamp_min(1e-30))


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt()) if x.numel() else 0.0


def valid(x: torch.Tensor, mask: torch.Tensor | None, heads_first: bool = False) -> torch.Tensor:
    """Values at non-padding query positions: (B, T, …) → (N, …); (B, H, T, K) → (N, H, K)."""
    x = x.detach().float().cpu()
    if heads_first:
        x = x.transpose(1, 2)
    return x.reshape(-1, *x.shape[2:]) if mask is None else x[mask.cpu().bool()]


# ----- 1. sites --------------------------------------------------------------------------


def token_cos(dev: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token of (N, …) values, each token's values flattened."""
    return torch.nn.functional.cosine_similarity(dev.reshape(len(dev), -1), ref.reshape(len(ref), -1), dim=-1, eps=1e-30)


def check_sites(ref, dev, tol: Tolerances, batch: list[list[int]]) -> Iterator[Result]:
    """Device vs reference captures at layers 0, n/2, n-1. On MoE models a token the
    device routes to another expert set than the reference (a near-tie that bf16 may
    flip: that share is checked) legitimately differs downstream of that layer, so
    later sites are compared on the tokens routed identically in every layer so far."""
    n = ref.n_layers
    layers = sorted({0, n // 2, n - 1})
    names = ["resid_post", "attn_pattern", "head_out"] + (["router_logits"] if ref.is_moe else [])
    routed = [f"expert_topk[{L}]" for L in ref.moe_layers]
    sites = [f"{s}[{L}]" for L in layers for s in names] + routed + ["logits"]
    cr, cd = ref.capture(batch, sites), dev.capture(batch, sites)
    mask, tag = cr.attention_mask, ref.family
    same_set: dict[int, torch.Tensor] = {}  # layer -> (N,) top-k set agrees
    for L in ref.moe_layers:
        ids_r = valid(cr[f"expert_topk[{L}]"][0], mask).long().sort(-1).values
        ids_d = valid(cd[f"expert_topk[{L}]"][0], mask).long().sort(-1).values
        same_set[L] = (ids_r == ids_d).all(-1)
    n_tok = int(mask.sum()) if mask is not None else cr.input_ids.numel()

    def consistent(layer: int | None) -> torch.Tensor:
        """Tokens routed identically in every MoE layer up to ``layer`` (None: all layers)."""
        keep = torch.ones(n_tok, dtype=torch.bool)
        for L, same in same_set.items():
            if layer is None or L <= layer:
                keep &= same
        return keep

    for L in layers:
        if L in same_set:
            keep = consistent(L - 1)  # routed identically before this layer: same router input
            site = f"expert_topk[{L}]"
            (ids_r, w_r), (ids_d, w_d) = cr[site], cd[site]
            ids_r, ids_d = valid(ids_r, mask).long()[keep], valid(ids_d, mask).long()[keep]
            sr, order_r = ids_r.sort(-1)
            sd, order_d = ids_d.sort(-1)
            same = (sr == sd).all(-1)
            agree = float(same.float().mean()) if len(same) else 0.0
            wr = valid(w_r, mask)[keep].gather(-1, order_r)[same]
            wd = valid(w_d, mask)[keep].gather(-1, order_d)[same]
            werr = float((wr - wd).abs().max()) if wr.numel() else float("inf")
            ok = agree >= tol.topk_agree and werr <= tol.weight_abs
            yield Result("sites", f"{tag} {site}", ok,
                         f"same top-{ids_r.shape[-1]} set {agree:.3f} (>= {tol.topk_agree}) of {len(same)} tokens, "
                         f"weight err {werr:.2e} (<= {tol.weight_abs})")
    for site in [s for s in sites if s not in routed]:
        if site == "logits":
            keep = consistent(None)
        else:  # resid_post[L] is downstream of layer L's routing; the others only of earlier layers'
            L = int(site.split("[")[1][:-1])
            keep = consistent(L if site.startswith("resid_post") else L - 1)
        dropped = f", {n_tok - int(keep.sum())}/{n_tok} tokens rerouted upstream (<= half)" if same_set else ""
        if keep.sum() < n_tok / 2:
            yield Result("sites", f"{tag} {site}", False, "not compared" + dropped)
            continue
        pattern = site.startswith("attn_pattern")
        r, d = valid(cr[site], mask, pattern)[keep], valid(cd[site], mask, pattern)[keep]
        rel, cos = rel_err(d, r), float(token_cos(d, r).min())
        ok = rel <= tol.rel and cos >= tol.cos
        yield Result("sites", f"{tag} {site}", ok, f"rel {rel:.2e} (<= {tol.rel}), min token cos {cos:.5f} (>= {tol.cos})"
                     + dropped)


# ----- 2. interventions ------------------------------------------------------------------


def interventions(model, resid: torch.Tensor, first: int) -> list[tuple[str, tuple, bool]]:
    """(name, interventions, restricted to positions >= ``first``) for ``model``'s family;
    ``resid`` is the reference's (tokens, d_model) ``resid_post`` at the middle layer."""
    from probes.models import AddVector, ForceExperts, ProjectOut, ScaleExperts, ScaleHeads, Span, SuppressKeys

    n, H, mid = model.n_layers, model.n_heads, model.n_layers // 2
    g = torch.Generator().manual_seed(7)
    v = torch.randn(model.d_model, generator=g)
    v = v / v.norm() * float(resid.norm(dim=-1).median())  # as long as a typical residual
    top = torch.linalg.svd(resid, full_matrices=False).Vh[0]  # the residual's dominant direction
    half = [(L, h) for L in range(n) for h in range(0, H, 2)]
    out = [
        ("AddVector", (AddVector(site=f"resid_post[{mid}]", vector=v, scale=2.0, positions=Span(first)),), True),
        ("ProjectOut", tuple(ProjectOut(site=f"resid_post[{L}]", direction=top) for L in range(n)), False),
        ("ScaleHeads", (ScaleHeads(heads=half, scale=0.0, positions=Span(first)),), True),
        ("ScaleHeads(rescale_norm)", (ScaleHeads(heads=half, scale=0.0, rescale_norm=True),), False),
        ("SuppressKeys", (SuppressKeys(span=Span(1, first)),), False),
    ]
    if model.is_moe:
        E = model.n_experts
        boost = {(L, e): 4.0 for L in model.moe_layers for e in range(0, E, 2)}
        out += [
            ("ScaleExperts", (ScaleExperts(scales=boost, positions=Span(first)),), True),
            ("ForceExperts", (ForceExperts(include=[0], forbid=[1]),), False),
        ]
    return out


def check_interventions(ref, dev, tol: Tolerances, batch: list[list[int]]) -> Iterator[Result]:
    mid = ref.n_layers // 2
    first = min(len(r) for r in batch) // 2  # absolute position of the first edited token
    b = ref.batch(batch)
    mask = b["attention_mask"].bool() if "attention_mask" in b else torch.ones_like(b["input_ids"], dtype=torch.bool)
    pos = valid(mask.long().cumsum(-1) - 1, mask)
    pre, post = pos < first, pos >= first
    resid = valid(ref.capture(batch, f"resid_post[{mid}]")[f"resid_post[{mid}]"], mask)
    plain_r, plain_d = valid(ref.forward(batch), mask), valid(dev.forward(batch), mask)
    noise = float((plain_d - plain_r).norm())
    for name, ivs, local in interventions(ref, resid, first):
        with ref.intervene(*ivs):
            eff_r = valid(ref.forward(batch), mask) - plain_r
        with dev.intervene(*ivs):
            eff_d = valid(dev.forward(batch), mask) - plain_d
        size = float(eff_r.norm() / plain_r.norm())
        snr = float(eff_r.norm()) / noise if noise > 0 else float("inf")
        err = rel_err(eff_d, eff_r)
        ok = size >= MIN_EFFECT and snr >= MIN_SNR and err <= tol.effect_rel
        msg = (f"effect {size:.3f} of logits (>= {MIN_EFFECT}), {min(snr, 1e9):.3g}x device error (>= {MIN_SNR}), "
               f"rel err {err:.2e} (<= {tol.effect_rel})")
        if local:
            leak = max(rms(e[pre]) / max(rms(e[post]), 1e-30) for e in (eff_r, eff_d))
            ok = ok and leak <= MAX_LEAK
            msg += f", before/after pos {first} {leak:.2e} (<= {MAX_LEAK})"
        yield Result("interventions", f"{ref.family} {name}", ok, msg)


# ----- 3. forward-vs-generate parity -----------------------------------------------------


def greedy_vs_forward(model, prompt: list[int], gen: list[int], tol: Tolerances) -> tuple[int, float, int]:
    """(matches, largest gap at a mismatch in logit stds, mismatches beyond the tie tolerance)."""
    seq = prompt + gen
    logits = model.forward([seq], prompt_len=len(prompt))[0, len(prompt) - 1 : len(seq) - 1].float().cpu()
    want = torch.tensor(gen)
    top = logits.max(-1).values
    gap = (top - logits.gather(-1, want[:, None])[:, 0]) / logits.std(-1)
    hit = logits.argmax(-1) == want
    return int(hit.sum()), float(gap.max()), int((gap > tol.tie).sum())


def check_parity(dev, tol: Tolerances, batch: list[list[int]], new: int) -> Iterator[Result]:
    from probes.models import AddVector, ForceExperts, Span, SuppressKeys

    mid = dev.n_layers // 2
    resid = dev.capture(batch[:1], f"resid_post[{mid}]")[f"resid_post[{mid}]"][0].float()
    v = torch.randn(dev.d_model, generator=torch.Generator().manual_seed(11))
    v = v / v.norm() * 3 * float(resid.norm(dim=-1).median())
    cases: list[tuple[str, tuple]] = [
        ("plain", ()),
        ("AddVector(generated)", (AddVector(site=f"resid_post[{mid}]", vector=v, positions="generated"),)),
        ("SuppressKeys", (SuppressKeys(span=Span(1, min(len(r) for r in batch) // 2)),)),
    ]
    if dev.is_moe:
        cases.append(("ForceExperts", (ForceExperts(include=[0], forbid=[1]),)))
    kw = dict(max_new_tokens=new, eos_token_ids=[])
    base: dict[str, list[list[int]]] = {}
    for name, ivs in cases:
        with dev.intervene(*ivs):
            runs = {
                "generate": [r.token_ids for r in dev.generate(batch, **kw)],
                "sample": [r.token_ids for r in dev.sample(batch[0], 2, temperature=0.0, **kw)],
            }
            for path, gens in runs.items():
                prompt_of = batch if path == "generate" else [batch[0]] * len(gens)
                stats = [greedy_vs_forward(dev, p, g, tol) for p, g in zip(prompt_of, gens)]
                hits, total = sum(s[0] for s in stats), sum(len(g) for g in gens)
                worst, beyond = max(s[1] for s in stats), sum(s[2] for s in stats)
                agree = hits / total
                ok = agree >= tol.greedy_agree and beyond == 0
                msg = f"argmax agree {agree:.3f} (>= {tol.greedy_agree}) of {total}, max gap {worst:.2e} std (<= {tol.tie})"
                if path == "sample":
                    ok = ok and gens[0] == gens[1]
                    msg += f", rows equal {gens[0] == gens[1]}"
                if name == "plain":
                    base[path] = gens
                else:
                    changed = sum(a != b for g0, g1 in zip(base[path], gens) for a, b in zip(g0, g1))
                    ok = ok and changed > 0
                    msg += f", changed {changed}/{total} tokens vs plain (> 0)"
                yield Result("parity", f"{dev.family} {path} {name}", ok, msg)


# ----- 4. sampler reproducibility --------------------------------------------------------


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def check_sampler(dev, exact, prefix: list[int], new: int, seed: int) -> Iterator[Result]:
    """``dev`` must repeat itself exactly. The batch-composition promise (a row depends
    only on its seed) is checked exactly on ``exact``, the same weights in float32 on the
    device: in bf16 the kernels of a batch of 1 and of 8 round differently, so a row
    can legitimately diverge after a near-tie; that is reported as a NOTE."""
    kw = dict(temperature=1.0, top_p=0.95, max_new_tokens=new, eos_token_ids=[])
    s0 = 1000 + seed

    def rows(model, n, **more):
        return [r.token_ids for r in model.sample(prefix, n, **more, **kw)]

    first, again = rows(dev, 8, seed=s0), rows(dev, 8, seed=s0)
    distinct = len({tuple(t) for t in first})
    same = sum(a == b for a, b in zip(first, again))
    yield Result("sampler", f"{dev.family} repeat n=8", same == 8 and distinct > 1,
                 f"{str(dev.dtype)[6:]}: identical rows {same}/8 (== 8), distinct rows {distinct} (> 1)")
    for model, strict in [(exact, True)] + ([(dev, False)] if dev is not exact else []):
        base = first if model is dev else rows(model, 8, seed=s0)
        cases = {
            "row alone": [(base[i], rows(model, 1, seeds=[s0 + i])[0]) for i in (0, 5)],
            "row in another batch": [(base[5], rows(model, 3, seeds=[s0 + 100, s0 + 5, s0 + 101])[1])],
            "batch_size=3": list(zip(base, rows(model, 8, seed=s0, batch_size=3))),
        }
        where = f"{str(model.dtype)[6:]} on {model.device}"
        if strict:
            for name, pairs in cases.items():
                same = sum(a == b for a, b in pairs)
                steps = [first_divergence(a, b) for a, b in pairs if a != b]
                yield Result("sampler", f"{model.family} {name}", same == len(pairs),
                             f"{where}: identical rows {same}/{len(pairs)} (== {len(pairs)})"
                             + (f", first differing steps {steps} of {new}" if steps else ""))
        else:
            pairs = [p for ps in cases.values() for p in ps]
            same = sum(a == b for a, b in pairs)
            steps = [first_divergence(a, b) for a, b in pairs if a != b]
            yield Result("sampler", f"{model.family} other batch shapes", True,
                         f"{where}: identical rows {same}/{len(pairs)}"
                         + (f", first differing steps {steps} of {new}" if steps else ""), note=True)


# ----- 5. throughput ---------------------------------------------------------------------


def check_throughput(dev, size: Size, n: int, repeats: int, min_ratio: float, seed: int) -> Iterator[Result]:
    g = torch.Generator().manual_seed(seed + 2)
    prefix = [BOS] + torch.randint(len(SPECIALS), dev.vocab_size, (size.bench_prefix - 1,), generator=g).tolist()
    new, settings = size.bench_new, dict(temperature=0.6, top_p=0.95)

    def sync():
        if dev.device.type == "cuda":
            torch.cuda.synchronize(dev.device)

    def ours():
        return dev.sample(prefix, n, max_new_tokens=new, eos_token_ids=[], seed=seed, **settings)

    def hf_generate():
        ids = torch.tensor([prefix], device=dev.device)
        with torch.no_grad():
            return dev.hf.generate(ids, do_sample=True, num_return_sequences=n, max_new_tokens=new,
                                   min_new_tokens=new, eos_token_id=None, pad_token_id=PAD, top_k=0, **settings)

    def best(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_ours, rows = best(ours)
    t_hf, out = best(hf_generate)
    shapes = all(len(r.token_ids) == new for r in rows) and tuple(out.shape) == (n, len(prefix) + new)
    ratio = t_hf / t_ours
    tok = n * new
    limit = f"(>= {min_ratio})" if min_ratio > 0 else "(informational)"
    yield Result("throughput", f"{dev.family} n={n} prefix {len(prefix)} new {new}", shapes and ratio >= min_ratio,
                 f"sample {tok / t_ours:,.0f} tok/s, generate(num_return_sequences={n}) {tok / t_hf:,.0f} tok/s, "
                 f"ratio {ratio:.2f}x {limit}")


# ----- driver ----------------------------------------------------------------------------


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot run the check, or None."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return (f"--device {device} asked but CUDA is not available (torch {torch.__version__}); "
                    "run on a GPU machine, or use --device cpu --size small for a smoke run")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {device} asked but this machine has {torch.cuda.device_count()} CUDA device(s)"
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        return f"--device {device} is not usable here: {e}"
    return None


def run_check(name: str, gen) -> list[Result]:
    """Results of one check, printed as they come; an exception is one FAIL line."""
    out = []
    try:
        for r in gen():
            print(r.line(), flush=True)
            out.append(r)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        r = Result(name, "error", False, f"{type(e).__name__}: {e}")
        print(r.line(), flush=True)
        out.append(r)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="device to check (default cuda; cpu for a smoke run)")
    ap.add_argument("--size", choices=sorted(SIZES), default="mid", help="mid: 12 layers, d_model 1024; small: tiny")
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=64, help="rows of the throughput comparison")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of the throughput comparison (best kept)")
    ap.add_argument("--min-ratio", type=float, default=0.0, help="fail throughput below this sample/generate ratio")
    args = ap.parse_args(argv)
    for opt, allowed in (("only", CHECKS), ("families", FAMILIES)):
        bad = [x for x in getattr(args, opt).split(",") if x not in allowed]
        if bad:
            ap.error(f"--{opt}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return args


def check_family(family: str, args, device: torch.device, dtype: torch.dtype, tok, batch) -> list[Result]:
    """Every selected check on one family: built on the CPU in float32, copied to the device."""
    from probes.models.load import from_hf

    size, tol, only = SIZES[args.size], TOLERANCES[dtype], args.only.split(",")
    hf_ref = build_hf(family, size, args.seed)
    ref = from_hf(hf_ref, tok, spec=f"gpu_check:{family}-{args.size}-cpu-float32")
    dev = from_hf(copy.deepcopy(hf_ref).to(device=device, dtype=dtype), tok,
                  spec=f"gpu_check:{family}-{args.size}-{device}-{str(dtype)[6:]}")
    print(f"model {family}: {n_params(hf_ref):.1f}M params, {dev!r}", flush=True)

    def exact():  # the same weights in float32 on the device
        if dtype == torch.float32:
            return dev
        return from_hf(copy.deepcopy(hf_ref).to(device), tok, spec=f"gpu_check:{family}-{args.size}-{device}-float32")

    checks = {
        "sites": lambda: check_sites(ref, dev, tol, batch),
        "interventions": lambda: check_interventions(ref, dev, tol, batch),
        "parity": lambda: check_parity(dev, tol, batch, size.new),
        "sampler": lambda: check_sampler(dev, exact(), batch[0], size.new, args.seed),
        "throughput": lambda: check_throughput(dev, size, args.n, args.repeats, args.min_ratio, args.seed),
    }
    return [r for name in CHECKS if name in only for r in run_check(name, checks[name])]


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    problem = device_problem(device)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    import transformers

    from probes.models.load import resolve_dtype

    try:
        dtype = resolve_dtype(args.dtype, device)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {where} ({device}) {str(dtype)[6:]} vs cpu float32; size {args.size}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; seed {args.seed}", flush=True)
    tok = build_tokenizer(size.vocab)
    batch = prompts(size, size.vocab, args.seed)
    results: list[Result] = []
    for family in args.families.split(","):
        results += check_family(family, args, device, dtype, tok, batch)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results = [r for r in results if not r.note]
    failed = [r for r in results if not r.ok]
    per = ", ".join(f"{c} {sum(r.ok for r in results if r.check == c)}/{sum(r.check == c for r in results)}"
                    for c in CHECKS if any(r.check == c for r in results))
    print(f"summary: {'PASS' if not failed else 'FAIL'} {len(results) - len(failed)}/{len(results)} checks ({per}) "
          f"in {time.perf_counter() - t_start:.1f} s on {device} {str(dtype)[6:]}", flush=True)
    for r in failed:
        print(f"  failed: {r.check} {r.name}: {r.measured}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())

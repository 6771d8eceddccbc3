"""Refusal-trajectory scoring cost over a plain forward pass, measured in the same run.

Refusal issue target: scoring r_t at every token of a batch of rollouts (``trajectories``: one
forward pass that reads the probe's site, then σ(wᵀh + b) per token and the region bookkeeping) costs
≤ 1.1× a plain ``model.forward`` over the same texts. Runs on ``zoo:refusal-reasoner`` with its own
greedy rollouts; the two configurations are interleaved repeat by repeat, so load from other
processes hits them alike; prints the best and the median of the repeats and the ratio of the bests.

    python benchmarks/refusal.py [--n 32 --batch 8 --repeats 7 --threads 2]
    python benchmarks/refusal.py --quick     # fewer rollouts and repeats: a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# Threads that spin while waiting multiply run times when anything else shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="rollouts scored per repeat")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 rollouts, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 8, 3
    torch.set_num_threads(args.threads)

    from probes import load_model
    from probes.refusal.probe import Probe
    from probes.refusal.rollout import rollouts
    from probes.refusal.trajectory import trajectories
    from probes.zoo.refusal_prompts import load_prompts

    model = load_model("zoo:refusal-reasoner")
    half = args.n // 2
    prompts = load_prompts("zoo-forbidden-wrapped", n=half).prompts + load_prompts("zoo-harmless", n=args.n - half).prompts
    items = [r for r in rollouts(model, prompts, temperature=0, progress=False) if r.closed]
    texts = [r.prompt_text + r.completion for r in items]
    probe = Probe(weight=torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), bias=0.0)

    def plain():
        for lo in range(0, len(texts), args.batch):
            model.forward(texts[lo:lo + args.batch])

    def scored():
        trajectories(model, probe, items, batch_size=args.batch, progress=False)

    times: dict[str, list[float]] = {"forward": [], "trajectories": []}
    plain(), scored()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("forward", plain), ("trajectories", scored)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n_tok = sum(len(model.encode(t)) for t in texts)
    print(f"zoo:refusal-reasoner, {len(texts)} rollouts, {n_tok} tokens, batch {args.batch}, {args.threads} threads, "
          f"{args.repeats} repeats")
    for name, ts in times.items():
        print(f"  {name:13s} best {min(ts) * 1e3:7.1f} ms   median {statistics.median(ts) * 1e3:7.1f} ms")
    ratio = min(times["trajectories"]) / min(times["forward"])
    print(f"trajectory scoring / plain forward: {ratio:.3f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()

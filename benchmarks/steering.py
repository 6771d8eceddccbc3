"""Steered generation throughput over unsteered, measured in the same run.

Steering issue target: ``AddVector`` at one layer with ``positions="generated"`` keeps
>= 0.95x the unsteered tokens/s, with the steered-positions record off (it must cost
nothing then) and on. Runs ``model.sample`` (one prefix, n rows) and ``model.generate``
(a batch of different prompts) on ``zoo:reasoner``; every configuration runs the same
token count (no EOS), and the configurations are interleaved, repeat by repeat, so
load from other processes hits them alike. Prints tokens/s per configuration (the best
of the repeats: other load only ever adds time; the median is shown beside it) and the
ratios to unsteered. On a shared machine the end-to-end ratios swing with other load, so
it also times the steering hook itself (every call, prefill and decoding steps) and
prints its share of the steered run: 1 - share bounds the ratio from the hook's own cost.

It then times the layer × α sweep of ``experiments.steering`` (4 layers × 6 strengths = 24
cells on ``zoo:refusal-reasoner``; each cell: greedy generation on the dev split and the KL
guard on neutral prompts), the model loaded and the contrast read beforehand, and prints its
wall time beside the throughput ratios.

    python benchmarks/steering.py [--n 16 --new 64 --batch 8 --repeats 7 --threads 2]
    python benchmarks/steering.py --quick      # fewer repeats, tokens and examples: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

# Threads that spin while waiting multiply run times when anything else shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


@contextlib.contextmanager
def timed_hooks():
    """Wrap the hook functions that steering operators attach in this scope with a timer;
    yields [seconds, calls]."""
    from probes.models import interventions

    total = [0.0, 0]
    attach = interventions.attach

    def timed_attach(model, point, fn):
        def timed(x):
            t0 = time.perf_counter()
            out = fn(x)
            total[0] += time.perf_counter() - t0
            total[1] += 1
            return out

        return attach(model, point, timed)

    interventions.attach = timed_attach
    try:
        yield total
    finally:
        interventions.attach = attach


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:reasoner")
    ap.add_argument("--n", type=int, default=16, help="rows of model.sample")
    ap.add_argument("--batch", type=int, default=8, help="prompts of model.generate")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", type=int, default=None, help="steered layer (default: the middle one)")
    ap.add_argument("--sweep-model", default="zoo:refusal-reasoner", help="model of the 4 x 6 layer x alpha sweep")
    ap.add_argument("--sweep-examples", type=int, default=16, help="sweep: held-out examples (half are the dev split)")
    ap.add_argument("--sweep-new", type=int, default=128, help="sweep: greedy budget per example")
    ap.add_argument("--quick", action="store_true", help="2 repeats, 32 new tokens, a sweep on 8 examples x 48 tokens")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.new, args.sweep_examples, args.sweep_new = 2, 32, 8, 48
    torch.set_num_threads(args.threads)

    import probes
    from probes import AddVector

    model = probes.load_model(args.model, device="cpu")
    layer = model.n_layers // 2 if args.layer is None else args.layer
    site = f"resid_post[{layer}]"
    problems = ["Mia has 12 marbles. She buys 7 more, then gives away 5. How many marbles does she have?",
                "A shop has 40 pens. It sells 13 and then doubles what is left. How many pens are there?",
                "Tom reads 9 pages a day for a week, then 4 more pages. How many pages did he read?",
                "Ana starts with 25 coins, loses 6, then triples the rest. How many coins does she have?"]
    prompts = [model.render_chat(problems[i % len(problems)]) for i in range(args.batch)]
    resid = model.capture(prompts[0], [site])[site][0]
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * float(resid.norm(dim=-1).median())  # as long as a typical residual there

    def steer(record: bool):
        return AddVector(site=site, vector=v, scale=1.0, positions="generated", record=record)

    kw = dict(max_new_tokens=args.new, eos_token_ids=[])
    workloads = {
        f"sample (1 prefix x {args.n} rows, T=0.6 top-p 0.95)":
            (lambda: model.sample(prompts[0], args.n, temperature=0.6, top_p=0.95, seed=0, **kw), args.n),
        f"generate ({args.batch} prompts, greedy)": (lambda: model.generate(prompts, **kw), args.batch),
    }
    configs = {"unsteered": None, "AddVector, record off": False, "AddVector, record on": True}
    print(f"{args.model}: {model!r}")
    print(f"steering {site} at positions='generated'; {args.new} new tokens per row, {args.threads} threads, "
          f"best (median) of {args.repeats} interleaved repeats")
    ratios: dict[str, float] = {}
    for name, (run, rows) in workloads.items():
        times: dict[str, list[float]] = {c: [] for c in configs}
        recorded = None
        for record in configs.values():  # warm-up, and the record's size
            op = None if record is None else steer(record)
            with model.intervene(*([op] if op else [])):
                run()
            if record:
                t0 = time.perf_counter()
                table = op.record.by_row()
                recorded = (sum(map(len, table.values())), time.perf_counter() - t0)
        for _ in range(args.repeats):
            for c, record in configs.items():
                op = None if record is None else steer(record)
                with model.intervene(*([op] if op else [])):
                    t0 = time.perf_counter()
                    out = run()
                    times[c].append(time.perf_counter() - t0)
                assert all(len(r.token_ids) == args.new for r in out)
        tokens = rows * args.new
        best, med = min(times["unsteered"]), statistics.median(times["unsteered"])
        print(f"\n{name}")
        for c in configs:
            t, m = min(times[c]), statistics.median(times[c])
            ratio = "" if c == "unsteered" else f"   ratio {best / t:.3f}x ({med / m:.3f}x)  (target >= 0.95x)"
            if c == "AddVector, record off":
                ratios[name.split(" (")[0]] = best / t
            print(f"  {c:<24} {tokens / t:7.0f} tok/s ({tokens / m:7.0f}){ratio}")
        for c, record in configs.items():
            if record is None:
                continue
            with timed_hooks() as hook:
                op = steer(record)
                with model.intervene(op):
                    t0 = time.perf_counter()
                    run()
                    wall = time.perf_counter() - t0
            print(f"  hook, {c}: {hook[0] / hook[1] * 1e6:.0f} us per call over {hook[1]} calls, "
                  f"{hook[0] / wall:.2%} of the steered run")
        if recorded:
            print(f"  record: {recorded[0]} steered tokens, read back by by_row() in {recorded[1] * 1e3:.1f} ms")

    sweep = sweep_time(args.sweep_model, args.sweep_examples, args.sweep_new)
    print(f"\nlayer x alpha sweep of experiments.steering on {args.sweep_model}: {sweep['cells']} cells "
          f"(layers {sweep['layers']} x alphas {sweep['alphas']}), {sweep['dev']} dev examples x {args.sweep_new} "
          f"new tokens + KL guard on {sweep['neutral']} neutral prompts per cell")
    print(f"  sweep {sweep['seconds']:.1f} s ({sweep['seconds'] / sweep['cells']:.2f} s per cell; slowest cell "
          f"{sweep['slowest']:.2f} s); collect + directions before it {sweep['setup']:.1f} s")
    print("\nsummary: steered / unsteered tokens/s (record off) "
          + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items())
          + f"; {len(sweep['layers'])} x {len(sweep['alphas'])} layer x alpha sweep {sweep['seconds']:.1f} s")


def sweep_time(model_spec: str, n_examples: int, max_new_tokens: int) -> dict:
    """Wall time of the ``sweep`` stage of ``experiments.steering`` over 4 layers x 6 strengths
    (model loaded and the contrast read first, in a temporary run directory)."""
    import json

    import probes
    from experiments.steering import EXPERIMENT, SteeringConfig

    model = probes.load_model(model_spec, device="cpu")
    layers = [round(i * (model.n_layers - 1) / 3) for i in range(4)] if model.n_layers >= 4 else None
    if layers is None or len(set(layers)) < 4:
        raise ValueError(f"{model_spec} has {model.n_layers} layers: the sweep needs 4 distinct ones")
    alphas = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    with tempfile.TemporaryDirectory() as root:
        cfg = SteeringConfig(model=model_spec, layers=layers, alphas=alphas, n_contrast=32, n_examples=n_examples,
                             n_neutral=8, max_new_tokens=max_new_tokens, n_boot=1000, runs_root=root, formats=["html"],
                             device="cpu", stages=["collect", "directions"])
        t0 = time.perf_counter()
        ctx = EXPERIMENT.run(cfg, model=model)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        EXPERIMENT.run(SteeringConfig(run_dir=str(ctx.run.path), stages=["sweep"]), model=model)
        seconds = time.perf_counter() - t0
        cells = [json.loads(p.read_text()) for p in (ctx.run.path / "done" / "sweep").glob("*.json")]
        data = json.loads((ctx.run.path / "data.json").read_text())
    return {"layers": layers, "alphas": alphas, "cells": len(cells), "seconds": seconds, "setup": setup,
            "slowest": max(c["seconds"] for c in cells), "dev": len(data["dev"]), "neutral": len(data["neutral"])}


if __name__ == "__main__":
    main()

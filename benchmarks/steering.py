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

    python benchmarks/steering.py [--n 16 --new 64 --batch 8 --repeats 7 --threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()

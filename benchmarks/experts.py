"""Cost of streaming routing capture and of RICE-reinforced generation, measured in the same run.

MoE-experts issue targets (``reference/moe_experts.md`` §1, §2, §6), on ``zoo:moe-reasoner`` (float32):

* (a) ``model.forward`` over held-out problems with their completions, inside
  ``RoutingRecorder(model).recording()`` (every MoE layer's top-k streamed into per-trace counts),
  costs ≤ 1.10× a plain ``model.forward`` over the same batches;
* (b) ``model.sample`` (T = 0.6, top-p 0.95, the paper's sampling) inside
  ``model.intervene(rice(model, [(0, 0), (2, 1)], beta=64))`` keeps ≥ 0.95× the tokens/second of
  plain sampling with the same seeds. EOS is off by default (``--eos`` turns it on), so both
  conditions decode the same number of tokens. A third condition, the same hooks at β = 1 (the
  identity, so routing as in plain sampling), separates the hooks' cost from the change in routing
  that β = 64 causes: the samples of one prompt diverge and each decode step routes its rows to more
  distinct experts, and the MoE kernel's cost grows with the experts it runs (each step's count is printed).

The configurations of each part are interleaved repeat by repeat (in reversed order every other
repeat), so load from other processes hits them alike; prints the best and the median of the
repeats and the ratio of the bests. On shared cores that ratio moves by several percent from run to
run, so each part also reports, from one more run, the time spent inside the hooks themselves (the
recorder's counting, RICE's reweighting) as a share of the whole: the overhead without the noise of
two separate timings.

    python benchmarks/experts.py [--n 32 --batch 8 --problems 4 --samples 8 --new 128 --repeats 7 --threads 2]
    python benchmarks/experts.py --quick     # fewer texts, samples and repeats: a smoke run
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


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat of each function, after one warm-up; the functions alternate within each
    repeat, in reversed order every other repeat (A B C, C B A, …), so none always runs first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in list(fns.items())[:: -1 if r % 2 else 1]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _timed(fn, clock: list[float]):
    """``fn`` that adds the seconds spent in it to ``clock[0]``."""

    def run(*args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            clock[0] += time.perf_counter() - t0

    return run


@contextlib.contextmanager
def _clocked_hooks(modules, clock: list[float]):
    """Clocks the forward hooks attached to ``modules`` (wrapped in place, restored on exit)."""
    saved = []
    for mod in modules:
        for key, fn in list(mod._forward_hooks.items()):
            saved.append((mod, key, fn))
            mod._forward_hooks[key] = _timed(fn, clock)
    try:
        yield
    finally:
        for mod, key, fn in saved:
            if key in mod._forward_hooks:
                mod._forward_hooks[key] = fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="held-out problems (with completions) per forward repeat")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--problems", type=int, default=4, help="prompts sampled per generation repeat")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (one shared prefill)")
    ap.add_argument("--new", type=int, default=128, help="max_new_tokens")
    ap.add_argument("--eos", action="store_true", help="let samples stop at EOS (lengths then differ by condition)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 texts, 2 prompts × 4 samples of 32 tokens, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.n, args.problems, args.samples, args.new, args.repeats = 8, 2, 4, 32, 3
    torch.set_num_threads(args.threads)

    from probes import load_model
    from probes.experts import RoutingRecorder, rice
    from probes.models.chat import THINK_OPEN
    from probes.zoo.tasks import arithmetic

    model = load_model("zoo:moe-reasoner", dtype="float32")
    problems = [arithmetic.generate(i, arithmetic.HELDOUT_SEED) for i in range(max(args.n, args.problems))]
    # The generation prompt already opens <think>; the completion (as trained) starts with it too.
    texts = [model.render_chat(ex.prompt) + ex.completion.removeprefix(THINK_OPEN) for ex in problems[: args.n]]
    batches = [texts[lo : lo + args.batch] for lo in range(0, len(texts), args.batch)]
    n_tok = sum(len(model.encode(t)) for t in texts)

    # (a) routing capture over a plain forward
    def plain_forward():
        for b in batches:
            model.forward(b)

    def recorded_forward(clock=None):
        rec = RoutingRecorder(model)
        if clock is not None:  # the recorder's hooks call its _count: clock that
            rec._count = _timed(rec._count, clock)
        for i, b in enumerate(batches):
            with rec.recording(first_trace=i * args.batch):
                model.forward(b)
        return rec

    times = _interleaved({"forward": plain_forward, "forward+routing": recorded_forward}, args.repeats)
    clock, t0 = [0.0], time.perf_counter()
    counts = recorded_forward(clock).counts()
    inside, total = clock[0], time.perf_counter() - t0
    assert int(counts.tokens.sum()) == n_tok, "the recorder must count every token once"
    print(f"zoo:moe-reasoner ({model.n_experts} experts top-{model.top_k}, MoE layers {model.moe_layers}), "
          f"{len(texts)} texts, {n_tok} tokens, batch {args.batch}, {args.threads} threads, {args.repeats} repeats")
    for name, ts in times.items():
        print(f"  {name:16s} best {min(ts) * 1e3:8.1f} ms   median {statistics.median(ts) * 1e3:8.1f} ms")
    ratio = min(times["forward+routing"]) / min(times["forward"])
    print(f"  recorder counts  {inside * 1e3:8.1f} ms of {total * 1e3:.1f} ms ({100 * inside / total:.1f}%)")
    print(f"(a) routing capture / plain forward: {ratio:.3f}x (target <= 1.10x)")

    # (b) RICE-reinforced sampling over plain sampling, same seeds
    prompts = [model.render_chat(ex.prompt) for ex in problems[: args.problems]]
    pairs, beta = [(0, 0), (2, 1)], 64.0
    kw = dict(temperature=0.6, top_p=0.95, max_new_tokens=args.new, eos_token_ids=None if args.eos else [])
    generated: dict[str, int] = {}
    experts_per_call: dict[str, float] = {}

    def sampler(name, interventions):
        def run(wrap=contextlib.nullcontext):
            n, active = 0, []

            def distinct(_mod, _args, out):  # experts a decode step (one token per row) routes to
                if out[2].shape[0] <= args.samples:
                    active.append(out[2].unique().numel())

            with model.intervene(*interventions), wrap():  # the counting hook comes after: never clocked
                handles = [model.router(L).register_forward_hook(distinct) for L in model.moe_layers]
                try:
                    for i, p in enumerate(prompts):
                        rows = model.sample(p, args.samples, seeds=[1000 * i + j for j in range(args.samples)], **kw)
                        n += sum(len(r.token_ids) for r in rows)
                finally:
                    for h in handles:
                        h.remove()
            generated[name], experts_per_call[name] = n, sum(active) / max(len(active), 1)

        return run

    reinforced = sampler("sample+rice", [rice(model, pairs, beta=beta)])
    times = _interleaved({"sample": sampler("sample", []), "sample+rice(β=1)": sampler("sample+rice(β=1)", [
        rice(model, pairs, beta=1.0)]), "sample+rice": reinforced}, args.repeats)
    clock, routers, t0 = [0.0], [model.router(L) for L in model.moe_layers], time.perf_counter()
    reinforced(lambda: _clocked_hooks(routers, clock))
    inside, total = clock[0], time.perf_counter() - t0
    print(f"{len(prompts)} prompts × {args.samples} samples, max_new_tokens {args.new}, T 0.6, top-p 0.95, "
          f"EOS {'on' if args.eos else 'off'}; RICE on {pairs}, β = {beta:g}")
    rate = {}
    for name, ts in times.items():
        rate[name] = generated[name] / min(ts)
        print(f"  {name:16s} best {min(ts) * 1e3:8.1f} ms   median {statistics.median(ts) * 1e3:8.1f} ms   "
              f"{generated[name]} tokens   {rate[name]:7.1f} tokens/s (best)   "
              f"{experts_per_call[name]:.2f} experts per decode step and layer")
    print(f"  RICE hooks       {inside * 1e3:8.1f} ms of {total * 1e3:.1f} ms ({100 * inside / total:.1f}%)")
    print(f"    same hooks at β = 1 (routing as plain) / plain: {rate['sample+rice(β=1)'] / rate['sample']:.3f}x")
    print(f"(b) reinforced / plain sampling throughput: {rate['sample+rice'] / rate['sample']:.3f}x (target >= 0.95x)")


if __name__ == "__main__":
    main()

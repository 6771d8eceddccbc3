"""Cost of streaming routing capture and of RICE-reinforced generation, measured in the same run.

MoE-experts issue targets (``reference/moe_experts.md`` §1, §2, §6), on ``zoo:moe-reasoner`` (float32):

* (a) ``model.forward`` over held-out problems with their completions, inside
  ``RoutingRecorder(model).recording()`` (every MoE layer's top-k streamed into per-trace counts),
  costs ≤ 1.10× a plain ``model.forward`` over the same batches;
* (b) generation (T = 0.6, top-p 0.95, the paper's sampling) inside
  ``model.intervene(rice(model, [(0, 0), (2, 1)], beta=64))`` keeps ≥ 0.95× the tokens/second of
  plain generation with the same seeds. EOS is off by default (``--eos`` turns it on), so both
  conditions decode the same number of tokens. A third condition, the same hooks at β = 1 (the
  identity), separates the hooks' cost from the change in routing that β = 64 causes.

Two workloads of (b), each with the number of distinct experts a decode step runs per layer (the
MoE kernel's cost grows with it): batches of distinct prompts (``model.generate``), where the rows
route to about as many experts with and without RICE, so the ratio is the reinforcement's own cost:
the target; and the paper's pass@k, samples of one prompt with one shared prefill (``model.sample``).
There the organism's samples, nearly identical without RICE (it is confident), diverge at β = 64 (a
boost that breaks this small organism: accuracy 0 in ``experiments/moe_experts.py``'s sweep), so each
step runs more experts: a change in the work, like a change in length, not a cost of the hooks.

The configurations of each part are interleaved repeat by repeat (in reversed order every other
repeat), so load from other processes hits them alike; prints the best and the median of the
repeats and the ratio of the bests. On shared cores one run of the same work varies by up to a third
from repeat to repeat, so (b) states the ratio of the sums over decode steps of each step's best
repeat, with a bootstrap interval, and each part also reports, from one more run, the time spent
inside the hooks themselves (the recorder's counting, RICE's reweighting) as a share of
the whole: the overhead without the noise of two separate timings. One thread by default: decoding
runs thousands of small ops, where a second thread costs more in hand-offs than it gains (waiting
passively halved the sampling speed here; spinning competes with any other process for the cores).

    python benchmarks/experts.py [--n 32 --batch 8 --problems 2 --samples 8 --new 128 --beta 64 --repeats 21 --threads 1]
    python benchmarks/experts.py --quick     # fewer texts, samples and repeats: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

# With --threads > 1: threads that spin while waiting multiply run times when anything else shares the cores.
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


def _rice_against_plain(model, generate, pairs, beta: float, repeats: int, rows: int) -> float:
    """Times ``generate()`` plain, under RICE at β = 1 and at ``beta`` (interleaved); prints each
    condition's times, tokens and distinct experts per decode step, and RICE's hook share; returns
    the reinforced / plain throughput from the per-step bests (``_step_bests``)."""
    from probes.experts import rice

    generated: dict[str, int] = {}
    experts_per_call: dict[str, float] = {}
    steps: dict[str, list[list[float]]] = {}

    def run_as(name, interventions, wrap=contextlib.nullcontext):
        active, stamps = [], []

        def distinct(_mod, _args, out):  # experts a decode step (one token per row) routes to
            if out[2].shape[0] <= rows:
                active.append(out[2].unique().numel())

        with model.intervene(*interventions), wrap():  # the counting hook comes after: never clocked
            handles = [model.router(L).register_forward_hook(distinct) for L in model.moe_layers]
            handles.append(model.hf.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter())))
            try:
                outs = generate()
            finally:
                stamps.append(time.perf_counter())
                for h in handles:
                    h.remove()
        generated[name] = sum(len(r.token_ids) for rs in outs for r in rs)
        experts_per_call[name] = sum(active) / max(len(active), 1)
        steps.setdefault(name, []).append([b - a for a, b in zip(stamps, stamps[1:])])

    conditions = {"plain": [], "rice(β=1)": [rice(model, pairs, beta=1.0)], "rice": [rice(model, pairs, beta=beta)]}
    times = _interleaved({name: lambda name=name, i=i: run_as(name, i) for name, i in conditions.items()}, repeats)
    clock, routers, t0 = [0.0], [model.router(L) for L in model.moe_layers], time.perf_counter()
    run_as("clocked", conditions["rice"], lambda: _clocked_hooks(routers, clock))
    inside, total = clock[0], time.perf_counter() - t0
    rate = {}
    for name, ts in times.items():
        rate[name] = generated[name] / min(ts)
        print(f"    {name:10s} best {min(ts) * 1e3:8.1f} ms   median {statistics.median(ts) * 1e3:8.1f} ms   "
              f"{generated[name]} tokens   {rate[name]:7.1f} tokens/s (best)   "
              f"{experts_per_call[name]:.2f} experts per decode step and layer")
    print(f"    RICE hooks {inside * 1e3:8.1f} ms of {total * 1e3:.1f} ms ({100 * inside / total:.1f}%)")
    ratio = {}
    for name in ("rice(β=1)", "rice"):  # steps[name][0] is the warm-up run
        per_token = generated[name] / generated["plain"]
        ratio[name], lo, hi = (x * per_token for x in _step_bests(steps["plain"][1:], steps[name][1:]))
        print(f"    {name} / plain throughput: {ratio[name]:.3f}x [{lo:.3f}, {hi:.3f}] "
              f"from per-step bests [95% bootstrap CI over repeats]; "
              f"ratio of bests {rate[name] / rate['plain']:.3f}x")
    return ratio["rice"]


def _step_bests(base: list[list[float]], other: list[list[float]]) -> tuple[float, float, float]:
    """Ratio of Σ_step min_repeat (time of that step) of ``base`` over the same of ``other``, with a 95%
    bootstrap interval (repeats resampled, the same draw for both). Each decode step does the same work
    in every repeat (same seeds), and a slow spell of the machine lasts longer than a step but shorter
    than a run, so taking each step's best repeat drops the spells that the best of whole runs keeps."""
    b, o = torch.tensor(base), torch.tensor(other)  # (repeats, steps)
    draws = torch.randint(len(base), (2000, len(base)), generator=torch.Generator().manual_seed(0))
    boot = (b[draws].amin(1).sum(-1) / o[draws].amin(1).sum(-1)).sort().values
    return float(b.amin(0).sum() / o.amin(0).sum()), float(boot[50]), float(boot[1949])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="held-out problems (with completions) per forward repeat")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--problems", type=int, default=2, help="prompts sampled per repeat (the samples workload)")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt, and distinct prompts per batch")
    ap.add_argument("--new", type=int, default=128, help="max_new_tokens")
    ap.add_argument("--eos", action="store_true", help="let samples stop at EOS (lengths then differ by condition)")
    ap.add_argument("--beta", type=float, default=64.0, help="RICE's boost (the paper's default 64)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="8 texts, 2 prompts × 4 samples of 32 tokens, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.n, args.problems, args.samples, args.new, args.repeats = 8, 2, 4, 32, 3
    torch.set_num_threads(args.threads)

    from probes import load_model
    from probes.experts import RoutingRecorder
    from probes.models.chat import THINK_OPEN
    from probes.zoo.tasks import arithmetic

    model = load_model("zoo:moe-reasoner", dtype="float32")
    problems = [arithmetic.generate(i, arithmetic.HELDOUT_SEED) for i in range(max(args.n, args.problems * args.samples))]
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

    # (b) RICE-reinforced generation over plain generation, same seeds, same number of tokens
    pairs, beta = [(0, 0), (2, 1)], args.beta
    kw = dict(temperature=0.6, top_p=0.95, max_new_tokens=args.new, eos_token_ids=None if args.eos else [])
    rows = args.problems * args.samples
    prompts = [model.render_chat(ex.prompt) for ex in problems[:rows]]

    def batches_of_prompts():  # rows distinct prompts, ``args.samples`` per batch, prompt i seeded i
        return [model.generate(prompts[lo : lo + args.samples], seed=lo, **kw) for lo in range(0, rows, args.samples)]

    def samples_of_prompts():  # the paper's pass@k: ``args.samples`` samples of each prompt, one shared prefill
        seeds = range(args.samples)
        return [model.sample(p, args.samples, seeds=[1000 * i + j for j in seeds], **kw)
                for i, p in enumerate(prompts[: args.problems])]

    print(f"T 0.6, top-p 0.95, max_new_tokens {args.new}, EOS {'on' if args.eos else 'off'}; "
          f"RICE on {pairs}, β = {beta:g}")
    ratios = {}
    for workload, label, generate in [
        ("batch", f"{rows // args.samples} batches of {args.samples} distinct prompts", batches_of_prompts),
        ("samples", f"{args.problems} prompts × {args.samples} samples", samples_of_prompts),
    ]:
        print(f"  {label}:")
        ratios[workload] = _rice_against_plain(model, generate, pairs, beta, args.repeats, args.samples)
    print(f"(b) reinforced / plain generation throughput (per-step bests), distinct prompts: {ratios['batch']:.3f}x "
          f"(target >= 0.95x); samples of one prompt (more experts per step, see above): {ratios['samples']:.3f}x")

if __name__ == "__main__":
    main()

"""Thought-anchors rollouts/s through the local engine and through an OpenAI-compatible server, measured
in the same run, and the remote client's own overhead.

Issue 15 "Performance": resampling one trace through ``OpenAIEngine`` costs the client < 5% of the wall
time (the rest is waiting on the server); the throughput of the local shared-prefix sampler
(``LocalEngine``) and of the server are printed side by side with their ratio.

The trace is ``zoo:reasoner``'s greedy answer to held-out arithmetic problem 0 (chat-rendered), split
into chunks as thought anchors does; for ``--chunks`` chunks i spread over the trace the prefix is
built as ``resample_chunks`` builds it (prompt + ``prefix_without_chunk(chunks, i)``) and ``--n``
rollouts are sampled at T = 0.6, top-p 0.95, up to ``--max-new-tokens`` tokens, with the seeds
``resample_chunks`` would use. Per chunk and repeat the configurations run back to back (local, the
server at concurrency 1, the server at ``--concurrency``), so load from other processes hits them alike;
rollouts/s and generated tokens/s are totals over the chunks of one repeat, best and median of the
repeats. Generated tokens: the local rollouts' token ids, the server's ``usage.completion_tokens``
(both count the end-of-sequence token).

Client overhead: every HTTP exchange (``OpenAI._send_request``: request out, whole response body in)
is timed from the pool's threads. Wall time of ``sample`` minus the length of the union of those
intervals is the time the client had no request in flight, i.e. time not spent waiting on the server
(thread-pool start, building and parsing requests, re-tokenizing completions while nothing else is
pending, the gaps between one answer and the next request). Overhead share = that time / wall. At
concurrency 1 the union is the plain sum of the in-call times; at higher concurrency work done while
another request is in flight is hidden and not counted, as it costs no wall time. The same share with
the whole ``client.completions.create`` call as the interval (which also counts the openai client's
request building and response parsing as waiting) is printed beside it.

Without ``--base-url`` the script starts ``transformers serve MODEL_DIR --device cpu --dtype float32``
itself on a free localhost port (the served name is the directory path), once per ``--servers`` mode:
``sequential`` (the default server: one ``generate`` at a time) and ``cb`` (``--continuous-batching``),
and kills it at exit. With ``--base-url URL --model NAME`` it measures that server instead (e.g. vLLM
serving the same weights on a GPU box; ``--device cuda`` for the local side). A last small check
samples the same seeds twice at concurrency 1 and at ``--concurrency`` and says whether the server
honours them (and whether 4 seeds give 4 texts: ``transformers serve --continuous-batching`` applies the
first request's sampling settings to every request, so the warm-up sends a sampled request first). ``transformers serve`` samples with its generation config's top-k (50 by default); the
local engine with top-k off, which does not change the cost.

    python benchmarks/engines.py [--n 32 --chunks 4 --max-new-tokens 128 --concurrency 8 --repeats 2]
    python benchmarks/engines.py --base-url http://HOST:8000/v1 --model NAME --device cuda
    python benchmarks/engines.py --quick     # 2 chunks x 4 rollouts x 32 tokens, sequential server only
    python benchmarks/engines.py --servers cb   # only transformers serve --continuous-batching
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Threads that spin while waiting multiply run times when anything else shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

SERVE_FLAGS = {"sequential": [], "cb": ["--continuous-batching"]}


# -- instrumentation --------------------------------------------------------------------------------


@dataclass
class Timings:
    """Per-call intervals recorded from the pool's threads (list.append is atomic)."""

    http: list[tuple[float, float]] = field(default_factory=list)
    create: list[tuple[float, float]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.http.clear(), self.create.clear(), self.tokens.clear()


def instrument(engine) -> Timings:
    """Time every HTTP exchange and every ``completions.create`` call of ``engine``'s client."""
    t = Timings()
    client = engine.client
    send, create = client._send_request, client.completions.create

    def timed_send(*a, **kw):
        t0 = time.perf_counter()
        try:
            return send(*a, **kw)
        finally:
            t.http.append((t0, time.perf_counter()))

    def timed_create(*a, **kw):
        t0 = time.perf_counter()
        try:
            r = create(*a, **kw)
        finally:
            t.create.append((t0, time.perf_counter()))
        usage = getattr(r, "usage", None)
        t.tokens.append(usage.completion_tokens if usage is not None else -1)
        return r

    client._send_request = timed_send
    client.completions.create = timed_create
    return t


def union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to [lo, hi]."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


@dataclass
class Run:
    """One configuration's calls of one repeat, summed over the chunks."""

    rollouts: int = 0
    tokens: int = 0
    wall: float = 0.0
    in_http: float = 0.0
    in_create: float = 0.0

    @property
    def rate(self) -> float:
        return self.rollouts / self.wall

    @property
    def tok_rate(self) -> float:
        return self.tokens / self.wall


def timed_local(engine, prefix: str, seeds: list[int], kw: dict) -> Run:
    t0 = time.perf_counter()
    outs = engine.sample(prefix, len(seeds), seeds=seeds, **kw)
    wall = time.perf_counter() - t0
    return Run(len(outs), sum(len(o.token_ids) for o in outs), wall, wall, wall)


def timed_remote(engine, timings: Timings, prefix: str, seeds: list[int], kw: dict) -> Run:
    timings.clear()
    t0 = time.perf_counter()
    outs = engine.sample(prefix, len(seeds), seeds=seeds, **kw)
    t1 = time.perf_counter()
    tokens = sum(n if n >= 0 else len(o.token_ids) for n, o in zip(timings.tokens, outs))
    return Run(len(outs), tokens, t1 - t0, union_length(timings.http, t0, t1), union_length(timings.create, t0, t1))


def add(runs: list[Run]) -> Run:
    return Run(*(sum(getattr(r, f) for r in runs) for f in ("rollouts", "tokens", "wall", "in_http", "in_create")))


# -- the benchmark ----------------------------------------------------------------------------------


def build_trace(model, max_tokens: int):
    from probes.anchors.rollouts import make_trace
    from probes.zoo.tasks import arithmetic

    ex = arithmetic.generate(0, arithmetic.HELDOUT_SEED)
    prompt = model.render_chat(ex.prompt)
    solution = model.generate(prompt, max_new_tokens=max_tokens)[0].text
    return make_trace({"problem": ex.prompt, "gt_answer": str(ex.gold)}, prompt, solution)


def measure(label: str, model, base_url: str, name: str, prefixes: list[tuple[int, str]], args) -> None:
    from probes.anchors.rollouts import SEED_STRIDE
    from probes.engines import LocalEngine, OpenAIEngine

    kw = dict(temperature=0.6, top_p=0.95, max_new_tokens=args.max_new_tokens)
    local = LocalEngine(model)
    remotes = {c: OpenAIEngine(base_url, name, tokenizer=model.tokenizer, concurrency=c)
               for c in sorted({1, args.concurrency})}
    timings = {c: instrument(e) for c, e in remotes.items()}
    # warm-up: the first request may load the model (or set up continuous batching) on the server, and the
    # engine learns once which optional fields the server rejects. No greedy ``check()`` first: transformers
    # serve --continuous-batching keeps the first request's sampling settings for every later request.
    t0 = time.perf_counter()
    for e in remotes.values():
        e.sample(prefixes[0][1], 2, **kw)
    local.sample(prefixes[0][1], 2, **kw)
    print(f"{label}: {base_url} serving {name!r} (warm-up {time.perf_counter() - t0:.1f} s)")

    configs = ["local", *(f"server c={c}" for c in remotes)]
    per_repeat: dict[str, list[Run]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        calls: dict[str, list[Run]] = {c: [] for c in configs}
        for i, prefix in prefixes:
            seeds = [args.seed + i * SEED_STRIDE + k for k in range(args.n)]
            calls["local"].append(timed_local(local, prefix, seeds, kw))
            for c, e in remotes.items():
                calls[f"server c={c}"].append(timed_remote(e, timings[c], prefix, seeds, kw))
        for c in configs:
            per_repeat[c].append(add(calls[c]))

    best = {c: max(rs, key=lambda r: r.rate) for c, rs in per_repeat.items()}
    overhead = {}  # configuration → share of wall time outside HTTP
    for c, rs in per_repeat.items():
        b, med = best[c], statistics.median(r.rate for r in rs)
        line = (f"  {c:13s} {b.rate:8.2f} rollouts/s (median {med:8.2f})  {b.tok_rate:8.1f} tokens/s  "
                f"{b.rollouts} rollouts, {b.tokens} tokens in {b.wall:.2f} s")
        if c != "local":
            total = add(rs)
            overhead[c] = 1 - total.in_http / total.wall
            line += (f"   client overhead {1 - total.in_http / total.wall:6.2%} outside HTTP, "
                     f"{1 - total.in_create / total.wall:6.2%} outside completions.create")
        print(line)
    for c in configs[1:]:
        print(f"  local / {c}: {best['local'].rate / best[c].rate:.2f}x rollouts/s, "
              f"{best['local'].tok_rate / best[c].tok_rate:.2f}x tokens/s")
    if args.concurrency > 1:
        hi, one = best[f"server c={args.concurrency}"], best["server c=1"]
        gain = hi.tok_rate / one.tok_rate
        print(f"  server c={args.concurrency} / c=1: {gain:.2f}x tokens/s ("
              + ("concurrent requests are batched)" if gain > 1.3 else "concurrent requests run one after another)"))
    worst = max(overhead.values())
    print(f"  client overhead, worst configuration: {worst:.2%} of wall time (target < 5%)")

    # seeds: the same seeds twice at concurrency 1, and once at the highest concurrency
    prefix = prefixes[0][1]
    seeds = [args.seed + k for k in range(4)]
    short = dict(kw, max_new_tokens=min(32, args.max_new_tokens))
    runs = [[r.text for r in remotes[c].sample(prefix, 4, seeds=seeds, **short)]
            for c in (1, 1, args.concurrency)]
    same_c = sum(a == b for a, b in zip(runs[2], runs[0]))
    print(f"  seeds: {len(set(runs[0]))}/4 distinct texts for 4 seeds; concurrency 1 twice "
          f"{'identical' if runs[0] == runs[1] else 'DIFFERENT'}; concurrency {args.concurrency}: {same_c}/4 "
          "rollouts equal to the concurrency-1 ones")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default="zoo:reasoner", help="the local model (a load_model spec)")
    ap.add_argument("--n", type=int, default=32, help="rollouts per chunk")
    ap.add_argument("--chunks", type=int, default=4, help="chunks resampled, spread over the trace")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (besides 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, locally and in each server started")
    ap.add_argument("--servers", help="transformers serve modes started in turn, comma-separated: sequential, cb "
                    "(continuous batching); default both (--quick: sequential)")
    ap.add_argument("--base-url", help="measure this OpenAI-compatible server instead of starting one")
    ap.add_argument("--model", help="the model name the --base-url server serves")
    ap.add_argument("--device", default="cpu", help="device of the local engine")
    ap.add_argument("--quick", action="store_true", help="2 chunks x 4 rollouts x 32 tokens, 1 repeat, concurrency <= 4, sequential server")
    args = ap.parse_args()
    if args.quick:
        args.n, args.chunks, args.max_new_tokens, args.repeats = 4, 2, 32, 1
        args.concurrency = min(args.concurrency, 4)
    if args.servers is None:
        args.servers = "sequential" if args.quick else "sequential,cb"
    if bool(args.base_url) != bool(args.model):
        ap.error("--base-url and --model go together")
    modes = [m.strip() for m in args.servers.split(",") if m.strip()]
    if not args.base_url and (not modes or any(m not in SERVE_FLAGS for m in modes)):
        ap.error(f"--servers takes a comma-separated list of {', '.join(SERVE_FLAGS)}")
    torch.set_num_threads(args.threads)
    # a SIGTERM unwinds like Ctrl-C, so the servers started here are killed too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from probes import load_model
    from probes.anchors.rollouts import prefix_without_chunk
    from probes.engines.serve import serve
    from probes.models.zoo_registry import zoo_path

    model = load_model(args.organism, device=args.device, dtype="float32")
    trace = build_trace(model, 512)
    k = min(args.chunks, len(trace.chunks))
    idx = sorted({round(j * (len(trace.chunks) - 1) / max(k - 1, 1)) for j in range(k)})
    prefixes = [(i, trace.prompt + prefix_without_chunk(trace.chunks, i)) for i in idx]
    lens = [len(model.encode(p)) for _, p in prefixes]
    print(f"{args.organism}: trace of {len(trace.chunks)} chunks; chunks {idx} (prefixes of {lens} tokens), "
          f"{args.n} rollouts each, T=0.6 top-p 0.95, up to {args.max_new_tokens} new tokens, {args.threads} "
          f"thread(s), {args.repeats} repeat(s), concurrency 1 and {args.concurrency}, local on {args.device}")

    if args.base_url:
        measure("server", model, args.base_url, args.model, prefixes, args)
        return
    model_dir = str(zoo_path(args.organism.removeprefix("zoo:"))) if args.organism.startswith("zoo:") else args.organism
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        for mode in modes:
            log = Path(tmp) / f"serve-{mode}.log"
            with serve(model_dir, flags=SERVE_FLAGS[mode], threads=args.threads, log=log) as server:
                measure(f"transformers serve ({mode})", model, server.base_url, server.model, prefixes, args)


if __name__ == "__main__":
    main()

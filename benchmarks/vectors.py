"""Streamed task-vector merge against mergekit: wall time and peak memory, measured in the same run.

Vectors issue (#14) target (``reference/task_vectors.md`` §4, §5): applying θ_target + (θ_a − θ_b)
to sharded safetensors checkpoints of ≥ 1 GB each with ``probes.vectors.merge`` (float32 output)
takes ≤ 1.0× the wall time and ≤ 0.75× the peak resident memory of mergekit doing the same merge
with the authors' recipe: ``linear``, ``normalize: false``, ``dtype: float32``, weights +1 target,
+1 a, −1 b.

Three checkpoints of one Qwen2 architecture (random weights, seeds 0, 1, 2: target, a = "RL",
b = "SFT") are built once with ``save_pretrained(dir, max_shard_size=...)`` and cached under
``--work``, so repeats reuse them. mergekit is a benchmark-only dependency: mergekit 0.1.5 and torch
2.13.0 (the project's) are installed into their own virtual environment ``<work>/mergekit-venv``, never
into the project's. Each merge runs in its own subprocess (mergekit through its ``mergekit-yaml``
command, the same output shard size for both); its wall time is the whole process (start-up and
imports included; the merge call alone is printed beside it) and its peak memory is ``ru_maxrss``
from ``wait4`` on that child, with the peak anonymous and file-backed parts sampled from ``/proc``.
The two tools alternate repeat by repeat, after the inputs have been read once into the page cache
and with a ``sync`` before each run, so load from other processes hits them alike. Prints the best
and the median wall time of the repeats and the ratio of the bests, and the ratio of the highest
peaks. Then every output tensor of the two merges is compared: mergekit sums in list order
((0 + θ_t) + θ_a) − θ_b, probes θ_t + (θ_a − θ_b), so they agree to float32 rounding (each element
within 4·2⁻²⁴·(|θ_t| + |θ_a| + |θ_b|)), not bit for bit.

    python benchmarks/vectors.py [--work /tmp/vectors-bench --repeats 3 --dtype float32 --layers 16]
    python benchmarks/vectors.py --quick     # ~220 MB checkpoints, 100 MB shards, one repeat: a smoke run
    python benchmarks/vectors.py --clean     # afterwards, delete the cached checkpoints (1.2 GB each)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

# Threads that spin while waiting multiply run times when anything else shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MERGEKIT = "mergekit==0.1.5"
TORCH = "torch==2.13.0"
"""mergekit's venv takes the CPU torch the project uses (mergekit needs torch ≥ 2.0, transformers 5)."""

SEEDS = {"target": 0, "a": 1, "b": 2}

PROBES_DRIVER = """
import json, sys, time
t0 = time.perf_counter()
from probes.vectors import Difference, Term, merge
t1 = time.perf_counter()
target, a, b, out, shard = sys.argv[1:6]
merge(target, [Term(Difference(a, b), 1.0)], out, dtype="float32", shard_bytes=int(shard))
print("@@" + json.dumps({"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}))
"""

MERGEKIT_DRIVER = """
import json, sys, time
t0 = time.perf_counter()
from mergekit.scripts.run_yaml import main
t1 = time.perf_counter()
main(sys.argv[1:], standalone_mode=False)
print("@@" + json.dumps({"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}))
"""
"""``mergekit-yaml`` itself (its click command), timed inside the process."""


def qwen2_config(quick: bool, layers: int | None, dtype: str):
    from transformers import Qwen2Config

    if quick:
        shape = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=layers or 6, num_attention_heads=8,
                     num_key_value_heads=2)
    else:
        shape = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers or 16, num_attention_heads=16,
                     num_key_value_heads=4)
    return Qwen2Config(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False, dtype=dtype, **shape)


def build(directory: Path, config, seed: int, dtype: str, shard: str) -> None:
    """One random-weight checkpoint (seeded init of the config), saved sharded; written beside
    ``directory`` and renamed into place, so an interrupted build is never reused."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(tmp, max_shard_size=shard)
    del model
    tmp.rename(directory)


def checkpoints(args) -> tuple[dict[str, Path], int]:
    """The three cached checkpoints (built when missing) and the bytes of one."""
    config = qwen2_config(args.quick, args.layers, args.dtype)
    spec = config.to_dict() | {"seeds": SEEDS, "shard": args.shard_size}
    tag = (f"qwen2-h{config.hidden_size}-l{config.num_hidden_layers}-v{config.vocab_size}-{args.dtype}-"
           f"{args.shard_size.lower()}")
    root = Path(args.work) / "models" / tag
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, seed in SEEDS.items():
        d = root / role
        if d.is_dir() and (d / "config.json").is_file():
            print(f"reusing {d}")
        else:
            t0 = time.perf_counter()
            build(d, config, seed, args.dtype, args.shard_size)
            print(f"built {d} in {time.perf_counter() - t0:.1f} s")
        paths[role] = d
    (root / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True, default=str))
    return paths, sum(f.stat().st_size for f in paths["target"].glob("*.safetensors"))


def mergekit_python(work: Path) -> Path:
    """The mergekit venv's interpreter, installing mergekit there on first use."""
    venv = work / "mergekit-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import mergekit.merge"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {MERGEKIT} into {venv} (once; a few minutes)")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", MERGEKIT, TORCH], check=True)
    subprocess.run(check, check=True)
    return python


def mergekit_version(python: Path) -> str:
    code = "from importlib.metadata import version; print(version('mergekit'), version('torch'), version('transformers'))"
    m, t, tr = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return f"mergekit {m} (torch {t}, transformers {tr})"


def mergekit_config(paths: dict[str, Path], file: Path) -> None:
    """The authors' reasoning-vector recipe (task_vectors.md §4): linear, no normalisation, float32."""
    import yaml

    weights = {"target": 1.0, "a": 1.0, "b": -1.0}
    file.write_text(yaml.safe_dump({
        "merge_method": "linear", "dtype": "float32", "parameters": {"normalize": False},
        "models": [{"model": str(paths[r]), "parameters": {"weight": w}} for r, w in weights.items()],
    }, sort_keys=False))


def _status_kb(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile + RssShmem) of a live process, in kB; zeros once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    kb = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines) if k.startswith("Rss")}
    return kb.get("RssAnon", 0), kb.get("RssFile", 0) + kb.get("RssShmem", 0)


def run(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` as a child: wall seconds, ru_maxrss of that child (wait4) and the sampled peak
    anonymous and file-backed resident memory, in bytes, plus what the driver printed."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        peaks = [0, 0]
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                for i, v in enumerate(_status_kb(p.pid)):
                    peaks[i] = max(peaks[i], v)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"{cmd[0]} failed (exit {p.returncode}); its output: {log}\n" + log.read_text()[-3000:])
    inner = next((json.loads(ln[2:]) for ln in log.read_text().splitlines() if ln.startswith("@@")), {})
    return {"wall_s": wall, "rss": usage.ru_maxrss * 1024, "anon": peaks[0] * 1024, "file": peaks[1] * 1024, **inner}


def warm(paths: dict[str, Path]) -> None:
    """Read the inputs once, so both tools start from the same page cache."""
    for d in paths.values():
        for f in d.glob("*.safetensors"):
            with open(f, "rb") as h:
                while h.read(1 << 24):
                    pass


def compare(paths: dict[str, Path], ours: Path, theirs: Path) -> dict[str, float]:
    """Every tensor of the two outputs: same names, shapes and dtype; each element within
    4·2⁻²⁴·(|θ_t| + |θ_a| + |θ_b|) (two float32 summations of three terms in different orders)."""
    import torch

    from probes.vectors import Checkpoint

    p, m = Checkpoint(ours), Checkpoint(theirs)
    t, a, b = (Checkpoint(paths[r]) for r in ("target", "a", "b"))
    if set(p.names) != set(m.names):
        sys.exit(f"the outputs hold different tensors: only probes {sorted(set(p.names) - set(m.names))[:5]}, "
                 f"only mergekit {sorted(set(m.names) - set(p.names))[:5]}")
    worst = {"max_abs": 0.0, "max_ulps": 0.0, "bitwise": 0, "n": len(p.names), "outside": 0, "elements": 0}
    for name in p.names:
        x, y = p.get(name), m.get(name)
        if x.shape != y.shape or x.dtype != y.dtype or x.dtype != torch.float32:
            sys.exit(f"{name}: probes {tuple(x.shape)} {x.dtype}, mergekit {tuple(y.shape)} {y.dtype}")
        scale = t.get(name).float().abs() + a.get(name).float().abs() + b.get(name).float().abs()
        diff = (x - y).abs()
        ulps = diff / (scale * 2.0 ** -24).clamp(min=torch.finfo(torch.float32).tiny)
        worst["max_abs"] = max(worst["max_abs"], float(diff.max()))
        worst["max_ulps"] = max(worst["max_ulps"], float(ulps.max()))
        worst["bitwise"] += int(torch.equal(x, y))
        worst["outside"] += int((ulps > 4).sum())
        worst["elements"] += x.numel()
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/vectors-bench", help="checkpoints, mergekit's venv and the outputs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the inputs' dtype")
    ap.add_argument("--layers", type=int, help="decoder layers (default 16: 1.24 GB float32; --quick: 6)")
    ap.add_argument("--shard-size", help="input and output shard size (default 500MB; --quick: 100MB)")
    ap.add_argument("--quick", action="store_true", help="~220 MB checkpoints, 100 MB shards, 1 repeat")
    ap.add_argument("--clean", action="store_true", help="delete the cached checkpoints at the end")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    args.shard_size = args.shard_size or ("100MB" if args.quick else "500MB")
    shard_bytes = _parse_size(args.shard_size)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    mk_python = mergekit_python(work)
    paths, size = checkpoints(args)
    cfg = work / "mergekit.yml"
    mergekit_config(paths, cfg)
    outs = {"probes": work / "out-probes", "mergekit": work / "out-mergekit"}
    commands = {
        "probes": [sys.executable, "-c", PROBES_DRIVER, *map(str, (paths["target"], paths["a"], paths["b"])),
                   str(outs["probes"]), str(shard_bytes)],
        "mergekit": [str(mk_python), "-c", MERGEKIT_DRIVER, str(cfg), str(outs["mergekit"]),
                     "--out-shard-size", str(shard_bytes), "--no-copy-tokenizer", "--quiet"],
    }
    warm(paths)
    runs: dict[str, list[dict[str, float]]] = {"probes": [], "mergekit": []}
    for i in range(args.repeats):
        order = ("probes", "mergekit") if i % 2 == 0 else ("mergekit", "probes")
        for tool in order:
            shutil.rmtree(outs[tool], ignore_errors=True)
            os.sync()  # the previous run's output reaches the disk outside the timings
            runs[tool].append(run(commands[tool], work / f"{tool}.log"))
            r = runs[tool][-1]
            print(f"  repeat {i + 1} {tool:8s} {r['wall_s']:6.1f} s  peak RSS {r['rss'] / 2**30:5.2f} GiB")
    agreement = compare(paths, outs["probes"], outs["mergekit"])
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)

    shards = len(list(paths["target"].glob("*.safetensors")))
    print(f"\nθ_target + (θ_a − θ_b), Qwen2 {args.dtype}, 3 inputs of {size / 1e9:.2f} GB ({shards} shards each), "
          f"float32 output in {args.shard_size} shards, {args.repeats} repeats, {mergekit_version(mk_python)}")
    for tool, rs in runs.items():
        walls, rss = [r["wall_s"] for r in rs], [r["rss"] for r in rs]
        best = min(rs, key=lambda r: r["wall_s"])
        print(f"  {tool:8s} wall best {min(walls):6.1f} s  median {statistics.median(walls):6.1f} s "
              f"(merge call {best.get('merge_s', float('nan')):.1f} s, imports {best.get('import_s', float('nan')):.1f} s)"
              f"   peak RSS {max(rss) / 2**30:5.2f} GiB (min {min(rss) / 2**30:.2f}; sampled peaks: anonymous "
              f"{max(r['anon'] for r in rs) / 2**30:.2f}, file-backed {max(r['file'] for r in rs) / 2**30:.2f} GiB)")
    t_ratio = min(r["wall_s"] for r in runs["probes"]) / min(r["wall_s"] for r in runs["mergekit"])
    m_ratio = max(r["rss"] for r in runs["probes"]) / max(r["rss"] for r in runs["mergekit"])
    print(f"probes / mergekit wall time: {t_ratio:.3f}x (target <= 1.0x)")
    print(f"probes / mergekit peak RSS:  {m_ratio:.3f}x (target <= 0.75x)")
    print(f"outputs: {agreement['n']} tensors, {agreement['bitwise']} equal bit for bit; max abs diff "
          f"{agreement['max_abs']:.3g}, max {agreement['max_ulps']:.2f}·2⁻²⁴·(|θ_t|+|θ_a|+|θ_b|); "
          f"{agreement['outside']} of {agreement['elements']} elements beyond 4·2⁻²⁴")
    if args.clean:
        shutil.rmtree(paths["target"].parent)
        print(f"deleted {paths['target'].parent}")
    if agreement["outside"]:
        sys.exit("the two merges disagree beyond float32 rounding")


def _parse_size(s: str) -> int:
    """``500MB`` / ``1GB`` / ``100MB`` as transformers and mergekit read them (powers of 1000)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    s = s.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u) and s[: -len(u)].replace(".", "", 1).isdigit():
            return int(float(s[: -len(u)]) * units[u])
    return int(s)


if __name__ == "__main__":
    main()

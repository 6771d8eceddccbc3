"""The ``probes`` command: ``info MODEL``, ``demo``, ``zoo list``, ``vectors extract|apply|inspect``.

Subcommands take their options from the same ``Config`` classes that sweeps and
notebooks use (``probes.config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from probes.harness import run_cli


def _info(args) -> int:
    from probes.models.load import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    print(model)
    n_params = sum(p.numel() for p in model.hf.parameters())
    print(f"parameters: {n_params:,}")
    if model.is_moe:
        print(f"MoE layers: {model.moe_layers}")
    rows = model.site_table()
    w = max(len(r["site"]) for r in rows)
    m = max(len(r["module"]) for r in rows)
    print(f"\n{'site':<{w}}  {'module':<{m}}  shape")
    for r in rows:
        print(f"{r['site']:<{w}}  {r['module']:<{m}}  {r['shape']}")
    print("\nA raw module path (e.g. model.layers.0.mlp) also works as a site.")
    return 0


def _demo(args) -> int:
    from experiments.demo import EXPERIMENT

    def go():
        ctx = EXPERIMENT.run(EXPERIMENT.config.from_argparse(args))
        print(f"run: {ctx.run.path}\nreport: {ctx.run.path / 'report.html'}")

    return run_cli("probes demo", go, args.debug)


def _zoo_list(_args) -> int:
    from probes.models.zoo_registry import ZOO_DIR, available

    organisms = available()
    if not organisms:
        print(f"no organisms in {ZOO_DIR}; build one with `python -m experiments.zoo reasoner`")
        return 1
    w = max(len(n) for n in organisms) + 4
    for name, summary in organisms.items():
        print(f"{'zoo:' + name:<{w}}  {summary}")
    return 0


def _size(text: str) -> int:
    """'500MB', '1GB', '2G', '1048576' → bytes."""
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}
    t = text.strip().upper()
    num = t.rstrip("KMGB")
    try:
        n = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 500MB or 2GB") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard size must be positive")
    return n


def _regex_alphas(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise ValueError(f"--module-alpha {item!r}: write REGEX=ALPHA, e.g. 'mlp\\.=0.5'")
    return out


def _policy(args):
    from probes.vectors import Policy

    return Policy.preset(args.policy, include=tuple(args.include), exclude=tuple(args.exclude), vocab=args.vocab,
                         tied=args.tied)


def _vectors_extract(args) -> int:
    from probes.vectors import extract

    m = extract(args.a, args.b, args.out, policy=_policy(args), shard_bytes=args.shard_size, overwrite=args.overwrite,
                progress=True)
    print(m.summary())
    print(f"vector: {args.out}")
    return 0


def _vectors_apply(args) -> int:
    from probes.vectors import Difference, RandomLike, SavedVector, Term, merge

    if bool(args.vector) == bool(args.a or args.b) or bool(args.a) != bool(args.b):
        raise ValueError("give the vector as --vector DIR (from `probes vectors extract`) or as donors --a RL --b SFT")
    policy = _policy(args)
    source = SavedVector(args.vector) if args.vector else Difference(args.a, args.b,
                                                                     common_rows=policy.vocab == "common-rows")
    if args.random_seed is not None:
        source = RandomLike(source, args.random_seed)
    term = Term(source, alpha=args.alpha, alphas=_regex_alphas(args.module_alpha), mask=args.mask, density=args.density)
    m = merge(args.target, [term], args.out, policy=policy, dtype=args.dtype, shard_bytes=args.shard_size,
              overwrite=args.overwrite, progress=True)
    print(m.summary())
    print(f"merged checkpoint: {args.out}")
    return 0


def _vectors_inspect(args) -> int:
    from probes.vectors import Manifest

    m = Manifest.load(args.path)
    print(m.summary(top=args.top))
    if args.profile:
        print("\n‖δ‖ per layer by module type (layer -1: outside the blocks):")
        for kind, layers in m.profile().items():
            print(f"  {kind:<10} " + "  ".join(f"{L}:{v:.3g}" for L, v in layers.items()))
    return 0


def _vector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="all", choices=["all", "chat-vector", "no-norms"],
                   help="which tensors move (task_vectors.md §3)")
    p.add_argument("--include", nargs="*", default=[], help="only tensors matching one of these regexes move")
    p.add_argument("--exclude", nargs="*", default=[], help="tensors matching any of these regexes never move")
    p.add_argument("--vocab", default="error", choices=["error", "common-rows", "skip"],
                   help="a vocabulary-size mismatch: fail, use the common rows, or leave the tensor")
    p.add_argument("--tied", default="mirror", choices=["mirror", "skip"],
                   help="untied target, tied donors: move lm_head by the embedding delta, or leave it")
    p.add_argument("--shard-size", type=_size, default="1GB", help="output shard size (e.g. 500MB, 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def build_parser() -> argparse.ArgumentParser:
    from experiments.demo import DemoConfig

    p = argparse.ArgumentParser(prog="probes", description="Interpretability and steering workbench for reasoning models.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="model family, layers, heads, experts and the site table")
    info.add_argument("model", help="zoo:NAME, a local directory or a hub name")
    info.add_argument("--device", default="auto")
    info.add_argument("--dtype", default="auto")
    info.set_defaults(fn=_info)
    demo = sub.add_parser("demo", help="run the demo on the default organism and write an HTML report")
    DemoConfig.add_to_argparse(demo)
    demo.add_argument("--debug", action="store_true", help="show the traceback of an error")
    demo.set_defaults(fn=_demo)
    zoo = sub.add_parser("zoo", help="the bundled model organisms")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="one line per organism").set_defaults(fn=_zoo_list)
    vec = sub.add_parser("vectors", help="task vectors: extract, apply (streamed, sharded), inspect a manifest")
    vsub = vec.add_subparsers(dest="vectors_command", required=True)
    ex = vsub.add_parser("extract", help="save v = θ_a − θ_b (e.g. RL − SFT) as float32 safetensors with a manifest")
    ex.add_argument("--a", required=True, help="checkpoint directory θ_a (e.g. the RL model)")
    ex.add_argument("--b", required=True, help="checkpoint directory θ_b (e.g. the SFT model)")
    ex.add_argument("--out", required=True, help="output directory of the vector")
    _vector_options(ex)
    ex.set_defaults(fn=_vectors_extract)
    ap = vsub.add_parser("apply", help="write θ_target + α·(m ⊙ v) as a sharded checkpoint with a manifest")
    ap.add_argument("--target", required=True, help="checkpoint directory of the target model")
    ap.add_argument("--vector", help="a vector directory written by `probes vectors extract`")
    ap.add_argument("--a", help="or the donors: θ_a ...")
    ap.add_argument("--b", help="... and θ_b (v = θ_a − θ_b, streamed)")
    ap.add_argument("--alpha", type=float, default=1.0, help="α (−1: the negated vector)")
    ap.add_argument("--module-alpha", nargs="*", default=[], help="per-module α as REGEX=ALPHA (first match wins)")
    ap.add_argument("--mask", help="only tensors matching this regex take the vector")
    ap.add_argument("--density", type=float, default=1.0,
                    help="magnitude mask: keep only this share of each tensor's largest |v| entries (1: all)")
    ap.add_argument("--random-seed", type=int, help="apply the norm-matched random control of the vector instead")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype (default: the target's)")
    ap.add_argument("--out", required=True, help="output directory of the merged checkpoint")
    _vector_options(ap)
    ap.set_defaults(fn=_vectors_apply)
    ins = vsub.add_parser("inspect", help="print a vector's or merged checkpoint's manifest")
    ins.add_argument("path", help="a directory with vectors_manifest.json")
    ins.add_argument("--top", type=int, default=10, help="tensors listed by ‖δ‖/‖θ‖")
    ins.add_argument("--profile", action="store_true", help="also the per-layer ‖δ‖ by module type")
    ins.set_defaults(fn=_vectors_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # our errors say what to do; no traceback needed
        print(f"probes: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

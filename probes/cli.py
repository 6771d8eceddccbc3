"""The ``probes`` command: ``info MODEL``, ``demo``, ``zoo list``.

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:  # our errors say what to do; no traceback needed
        print(f"probes: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

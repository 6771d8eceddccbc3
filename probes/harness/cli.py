"""The command line of every experiment: ``python -m experiments.NAME [--flags] [--debug]``.

Errors are one line on stderr that says what to do, with exit code 2 (no traceback unless
``--debug``); the options come from the experiment's config class, so ``--help`` lists
every field, its choices and its default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "run_cli"]


def run_cli(prog: str, fn: Callable[[], Any], debug: bool) -> int:
    """Call ``fn``; an exception becomes one line on stderr and exit code 2 (130 on Ctrl-C)."""
    try:
        fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; resume with --run-dir", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, (ValueError, OSError, KeyError)):
            print(f"{prog}: error: {e}", file=sys.stderr)
        else:
            print(f"{prog}: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    return 0


def main(experiment, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` into ``experiment.config``, run it, print where the run and its report are."""
    prog = f"python -m experiments.{experiment.name}"
    parser = argparse.ArgumentParser(prog=prog, description=(experiment.config.__doc__ or "").strip() or None)
    experiment.config.add_to_argparse(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("probes").setLevel(logging.INFO)
    logging.getLogger("experiments").setLevel(logging.INFO)

    def go():
        ctx = experiment.run(experiment.config.from_argparse(args))
        print(f"run: {ctx.run.path}")
        if (ctx.run.path / "report.html").is_file():
            print(f"report: {ctx.run.path / 'report.html'}")

    return run_cli(prog, go, args.debug)

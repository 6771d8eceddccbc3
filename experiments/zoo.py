"""Build and evaluate the model organisms in ``data/zoo/`` (issue #3).

    python -m experiments.zoo words                     # re-derive the word pools from faker and wordfreq (once)
    python -m experiments.zoo tokenizer                 # retrain the shared tokenizer (once; all organisms use it)
    python -m experiments.zoo reasoner                  # retrain zoo:reasoner from scratch, measure it, write its card
    python -m experiments.zoo reasoner --smoke --out /tmp/r   # a few steps, no evaluation (CI)
    python -m experiments.zoo eval reasoner --n 200 --samples 4   # behaviour numbers of the saved organism
    python -m experiments.zoo card moe-reasoner         # re-measure a saved organism and rewrite its MODEL.md
    python -m experiments.zoo eval refusal-reasoner --n 200   # refusal rates per style, per-frame compliance
    python -m experiments.zoo long-reasoner             # long traces with planted receiver sentences
    python -m experiments.zoo eval long-reasoner        # accuracy and the receiver-head check
    python -m experiments.zoo tv-base                   # the task-vector family, in this order:
    python -m experiments.zoo tv-sft                    #   each stage starts from its saved parent
    python -m experiments.zoo tv-instruct
    python -m experiments.zoo tv-rl
    python -m experiments.zoo eval tv --n 500           # tv-instruct ± v, rewrites the four cards
    python -m experiments.zoo tv-base --smoke --out /tmp/tv   # tiny stages under /tmp/tv (CI)

Recipe fields can be overridden on the command line: `TrainConfig` fields for the organisms trained
from scratch (`--steps 900 --lr 0.001`), `TVConfig` fields for the task-vector family
(`--rl-method rsft --grpo.steps 30 --sft.lr 0.0005`); `--help` lists them all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# Spinning OpenMP workers make 2-thread training ~4x slower when other processes share the two
# cores (measured here); passive waiting costs nothing when the cores are free. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SMOKE = dict(steps=3, batch_size=4, average_last=2)


def tv_smoke_config():
    """A tiny recipe for the task-vector family (CI smoke runs)."""
    from probes.zoo.grpo import GRPOConfig
    from probes.zoo.train import Schedule
    from probes.zoo.tv import TVConfig

    tiny = dict(steps=3, batch_size=4, warmup_steps=1)
    return TVConfig(base=Schedule(**tiny), sft=Schedule(**tiny), instruct=Schedule(**tiny), rl_eval_n=0,
                    grpo=GRPOConfig(steps=2, problems_per_step=2, group_size=2, max_new_tokens=16, eval_every=0))


def _given(ns: argparse.Namespace, cls) -> dict:
    """The fields of config class ``cls`` given on the command line, nested (``--grpo.steps`` → {"grpo": {"steps"}})."""
    names = {f.name for f in cls.fields()}
    out: dict = {}
    for dest, value in vars(ns).items():
        keys = dest.split(".")
        if keys[0] in names:
            target = out
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, nested dicts merged (a nested override keeps its siblings)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "p_skip" else v
    return out


def parser():
    from probes.zoo.organisms import EVAL_N, EVAL_SAMPLES, ORGANISMS
    from probes.zoo.train import TrainConfig
    from probes.zoo.tv import NAMES as TV_NAMES
    from probes.zoo.tv import TVConfig

    p = argparse.ArgumentParser(prog="python -m experiments.zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["words", "tokenizer", "eval", "card", *ORGANISMS, *TV_NAMES],
                   help="what to build, or `eval` / `card` an organism")
    p.add_argument("name", nargs="?", help="organism to evaluate (with `eval` or `card`; `tv` for the task-vector family)")
    p.add_argument("--out", type=Path, help="output directory (default data/zoo/<name>; for the tv-* family the "
                                            "directory holding all four, default data/zoo)")
    p.add_argument("--smoke", action="store_true", help=f"tiny run {SMOKE} without evaluation; needs --out")
    p.add_argument("--n", type=int, help=f"held-out problems to evaluate (refusal organisms: requests per style; "
                                         f"default: the organism's, {EVAL_N} for most)")
    p.add_argument("--samples", type=int, default=EVAL_SAMPLES, help="samples per problem at T=0.6, top-p 0.95")
    TrainConfig.add_to_argparse(p.add_argument_group(
        "organism recipe (TrainConfig; builds of reasoner, moe-reasoner, refusal-reasoner)",
        "Each option overrides that field of the organism's recipe (probes.zoo.organisms.ORGANISMS); the "
        "defaults shown are TrainConfig's, which a recipe may change (moe-reasoner: arch moe, 900 steps)."))
    TVConfig.add_to_argparse(p.add_argument_group(
        "task-vector family recipe (TVConfig; builds of tv-base, tv-sft, tv-instruct, tv-rl)",
        "Each option overrides that field of the family recipe (of the smoke recipe with --smoke); a nested "
        "option such as --grpo.steps keeps the other fields of its group."))
    return p


def main(argv: list[str] | None = None) -> int:
    from probes.zoo.organisms import ORGANISMS
    from probes.zoo.train import TrainConfig
    from probes.zoo.tv import NAMES as TV_NAMES
    from probes.zoo.tv import TVConfig

    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train_given, tv_given = _given(args, TrainConfig), _given(args, TVConfig)
    if train_given and args.target not in ORGANISMS:
        p.error(f"{', '.join('--' + k.replace('_', '-') for k in train_given)}: organism recipe options apply to "
                f"builds of {', '.join(ORGANISMS)}")
    if tv_given and args.target not in TV_NAMES:
        p.error(f"{', '.join('--' + k.replace('_', '-') for k in tv_given)}: family recipe options apply to "
                f"builds of {', '.join(TV_NAMES)}")

    if args.target == "words":
        from probes.zoo.words import build_words

        print(build_words(args.out) if args.out else build_words())
        return 0

    if args.target == "tokenizer":
        from probes.zoo.tokenizer import build_tokenizer

        print(build_tokenizer(args.out) if args.out else build_tokenizer())
        return 0

    if args.target in TV_NAMES or args.name in (*TV_NAMES, "tv"):
        return _tv(args, p, tv_given)

    if args.target == "eval":
        import torch

        from probes.models.load import load_model
        from probes.zoo.evaluate import measure, measure_refusal
        from probes.zoo.organisms import organism

        if not args.name:
            p.error("eval needs an organism name, e.g. `python -m experiments.zoo eval reasoner`")
        torch.set_num_threads(2)
        model = load_model(str(args.out) if args.out else f"zoo:{args.name}", device="cpu", dtype="float32")
        n = args.n if args.n is not None else organism(args.name).eval_n
        start = time.perf_counter()
        task = organism(args.name).config.task
        if task == "refusal":
            out = measure_refusal(model, n=n).as_dict()
        else:
            out = measure(model, n=n, samples=args.samples, task=task).as_dict()
        if task == "ledger":
            from probes.zoo.receiver_check import receiver_check

            out["receivers"] = receiver_check(model)
        print(json.dumps({**out, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
        return 0

    if args.target == "card":
        from probes.zoo.organisms import write_organism_card

        if not args.name:
            p.error("card needs an organism name, e.g. `python -m experiments.zoo card moe-reasoner`")
        print(write_organism_card(args.name, args.out, eval_n=args.n, eval_samples=args.samples))
        return 0

    from probes.zoo.organisms import build, organism

    if args.smoke and args.out is None:
        p.error("--smoke writes a throwaway model: give --out DIR (not data/zoo)")
    given = {**(SMOKE if args.smoke else {}), **train_given}
    cfg = TrainConfig.from_dict({**organism(args.target).config.to_dict(), **given})
    out = build(args.target, args.out, eval_n=0 if args.smoke else args.n, eval_samples=args.samples,
                **{k: getattr(cfg, k) for k in given})
    print(out)
    return 0


def _tv(args, p, given: dict) -> int:
    """Build one stage of the task-vector family, or measure it and rewrite its cards."""
    import torch

    from probes.models.zoo_registry import ZOO_DIR
    from probes.zoo import tv

    root = args.out or ZOO_DIR
    torch.set_num_threads(2)
    if args.target == "eval":
        print(json.dumps(tv.measure_family(root, **({"n": args.n} if args.n is not None else {})), indent=1))
    elif args.target != "card":
        if args.smoke and args.out is None:
            p.error("--smoke writes throwaway models: give --out DIR (not data/zoo)")
        base = tv_smoke_config() if args.smoke else tv.TVConfig()
        cfg = tv.TVConfig.from_dict(_merge(base.to_dict(), given))
        for name in tv.NAMES:  # an old measurement does not describe the new weights
            (Path(root) / name / tv.EVAL_FILE).unlink(missing_ok=True)
        print(tv.build_stage(args.target, cfg, root))
    for card in tv.write_cards(root):
        print(card)
    return 0


if __name__ == "__main__":
    sys.exit(main())

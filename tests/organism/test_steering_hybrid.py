"""Hybrid base + thinking model on the task-vector family (``reference/steering.md`` §4): base
``zoo:tv-instruct`` (skips the last step of about half the held-out problems), thinking ``zoo:tv-rl``
(does it), one tokenizer. The steering should fire rarely (where the two greedy tokens differ,
mostly where the plan sentence either names the last event or ends) and recover part of the gap.

The test runs a small fixed configuration. ``python -m tests.organism.test_steering_hybrid`` is the
full measurement: it fits on training-stream traces, chooses the steering layer, the vectors
(difference in means, or optimised as the released ones) and the strength on a dev split of the
training stream, and reports the hybrid and its ablations on held-out problems.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: Configuration of the test, chosen on the dev split by the measurement below (the classifier
#: layer with the best dev accuracy; the steering layer, contrast and strength with the largest dev
#: gap recovered).
CLASSIFY_LAYER = 0
STEER_LAYER = 3
SCALE = 2.0
FIT_PROBLEMS = 32
TEST_PROBLEMS = 16
DEV_FIRST = 1000
"""The dev split: training-stream problems from this index on (the fit uses 0..fit-1)."""


def _models(base_dir, thinking_dir):
    from probes.zoo.tv import load_stage

    return load_stage(base_dir), load_stage(thinking_dir)


def _problems(first: int, n: int, seed: int):
    from probes.zoo.tv import TVConfig

    cfg = TVConfig()
    return [cfg.problem(i, seed, sloppy=False) for i in range(first, first + n)]


def _traces(problems, *models, progress=False):
    """Each model's greedy labelled traces of ``problems`` (chat template, thinking on)."""
    from probes.anchors.split import split_chunks
    from probes.anchors.taxonomy import RuleLabeler
    from probes.steering.hybrid import labelled_traces, taxonomy_labeller

    label = taxonomy_labeller(split_chunks, RuleLabeler())
    texts = [p.prompt for p in problems]
    return [labelled_traces(m, [m.render_chat(t) for t in texts], label, problems=texts, batch_size=32,
                            progress=progress) for m in models]


def test_hybrid_recovers_part_of_the_gap(shipped):
    from probes.steering.hybrid import evaluate_hybrid, fit_category_classifier, fit_category_vectors
    from probes.zoo.tasks import arithmetic
    from probes.zoo.tv import heldout_problems

    torch.manual_seed(0)
    base, thinking = _models(shipped("tv-instruct"), shipped("tv-rl"))
    think_tr, base_tr = _traces(_problems(0, FIT_PROBLEMS, arithmetic.TRAIN_SEED), thinking, base)
    clf = fit_category_classifier(thinking, think_tr, CLASSIFY_LAYER, progress=False)
    assert {"plan_generation", "active_computation", "final_answer_emission"} <= set(clf.categories)
    assert clf.train_accuracy > 0.5  # five categories: chance is about 0.2
    vec = fit_category_vectors(base, think_tr, base_tr, STEER_LAYER, clf.categories, progress=False).scaled(SCALE)
    problems = heldout_problems(TEST_PROBLEMS)
    prompts = [thinking.render_chat(p.prompt) for p in problems]
    r = evaluate_hybrid(base, thinking, clf, vec, prompts, [p.gold for p in problems], progress=False)
    assert r.thinking_accuracy > r.base_accuracy
    assert r.accuracy > r.base_accuracy, r.summary()
    assert 0 < r.share_steered < 0.05  # a few tokens per problem, not the whole trace
    assert r.steered_by_category().get("plan_generation", 0) > 0


# ----- the full measurement --------------------------------------------------------------------


def _row(name: str, r) -> str:
    s = r.summary()
    a = s["hybrid_accuracy"]
    return (f"| {name} | {a['value']:.1%} ({a['lo']:.1%}–{a['hi']:.1%}) | {r.gap_recovered:+.2f} | "
            f"{r.share_steered:.2%} ({r.tokens_steered}/{r.tokens_generated}) | {r.mean_tokens:.1f} |")


def main(argv=None) -> None:
    from probes.models.zoo_registry import ZOO_DIR
    from probes.steering.hybrid import (
        evaluate_hybrid,
        fit_category_classifier,
        fit_category_vectors,
        fit_optimised_category_vectors,
        greedy_baselines,
        hybrid_ablations,
    )
    from probes.zoo.tasks import arithmetic
    from probes.zoo.tv import heldout_problems

    ap = argparse.ArgumentParser(description="Hybrid tv-instruct ← tv-rl: dev sweep, then held-out test with ablations")
    ap.add_argument("--n", type=int, default=100, help="held-out test problems (stream 1, 0..n-1)")
    ap.add_argument("--fit", type=int, default=64, help="training-stream problems whose traces fit the pieces")
    ap.add_argument("--dev", type=int, default=50, help="dev problems (training stream from index 1000)")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3], help="steering layers swept on dev")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0], help="vector strengths swept on dev")
    ap.add_argument("--methods", nargs="+", default=["all", "same_category", "optimised"],
                    choices=["all", "same_category", "optimised"],
                    help="vectors: difference in means against all / same-category base sentences, or optimised")
    ap.add_argument("--steps", type=int, default=30, help="Adam steps of each optimised vector (lr 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="directory for the HybridResult artifacts and summary")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    base, thinking = _models(ZOO_DIR / "tv-instruct", ZOO_DIR / "tv-rl")
    think_tr, base_tr = _traces(_problems(0, args.fit, arithmetic.TRAIN_SEED), thinking, base, progress=True)
    dev = _problems(DEV_FIRST, args.dev, arithmetic.TRAIN_SEED)
    (dev_think_tr,) = _traces(dev, thinking, progress=True)
    print(f"fit on {args.fit} training-stream traces per model; dev = training-stream problems "
          f"{DEV_FIRST}..{DEV_FIRST + args.dev - 1}")
    clfs = {L: fit_category_classifier(thinking, think_tr, L, progress=False) for L in range(thinking.n_layers)}
    for L, c in clfs.items():
        print(f"classifier layer {L}: train accuracy {c.train_accuracy:.3f}, dev accuracy "
              f"{c.accuracy(thinking, dev_think_tr):.3f}, categories {dict(zip(c.categories, c.counts))}")
    cl = max(clfs, key=lambda L: (clfs[L].accuracy(thinking, dev_think_tr), -L))
    clf = clfs[cl]
    dev_prompts = [thinking.render_chat(p.prompt) for p in dev]
    dev_golds = [p.gold for p in dev]
    dev_bl = greedy_baselines(base, thinking, dev_prompts, dev_golds, progress=False)
    sweep = {}
    print("\n| dev: steer layer | vectors | scale | accuracy | gap recovered | share steered |\n|---|---|---|---|---|---|")
    for L in args.layers:
        for contrast in args.methods:
            vec = (fit_optimised_category_vectors(base, think_tr, L, clf.categories, steps=args.steps, progress=False)
                   if contrast == "optimised" else
                   fit_category_vectors(base, think_tr, base_tr, L, clf.categories, contrast=contrast, progress=False))
            for k in args.scales:
                r = evaluate_hybrid(base, thinking, clf, vec.scaled(k), dev_prompts, dev_golds, baselines=dev_bl,
                                    progress=False)
                sweep[(L, contrast, k)] = (r.gap_recovered, vec)
                print(f"| {L} | {contrast} | {k:g} | {r.accuracy:.1%} | {r.gap_recovered:+.2f} | {r.share_steered:.2%} |",
                      flush=True)
    best = max(sweep, key=lambda key: (sweep[key][0], -key[2], -key[0]))
    L, contrast, k = best
    vec = sweep[best][1].scaled(k)
    print(f"\ndev base {dev_bl.base_correct.count(True) / args.dev:.1%}, thinking "
          f"{dev_bl.thinking_correct.count(True) / args.dev:.1%}; chosen: classifier layer {cl}, steer layer {L}, "
          f"vectors {contrast}, scale {k:g} (‖bias + v‖: "
          + ", ".join(f"{c} {float(vec.steering(c).norm()):.1f}" for c in clf.categories) + ")")
    test = heldout_problems(args.n)
    prompts = [thinking.render_chat(p.prompt) for p in test]
    results = hybrid_ablations(base, thinking, clf, vec, prompts, [p.gold for p in test], seed=args.seed)
    h = results["hybrid"]
    print(f"\nheld-out problems 0..{args.n - 1}: base (tv-instruct) {h.base_accuracy:.1%}, thinking (tv-rl) "
          f"{h.thinking_accuracy:.1%}; mean generated tokens base {sum(h.baselines.base_tokens) / args.n:.1f}, "
          f"thinking {sum(h.baselines.thinking_tokens) / args.n:.1f}")
    print("\n| run | accuracy (95% CI) | gap recovered | share steered | mean tokens |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(_row(name, r))
    print(f"\nsteered tokens by category (hybrid): {h.steered_by_category()}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        clf.save(args.out / "classifier")
        vec.save(args.out / "vectors")
        for name, r in results.items():
            r.save(args.out / name)
        (args.out / "summary.json").write_text(json.dumps({n: r.summary() for n, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()

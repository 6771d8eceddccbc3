"""Resampling rollouts of a reasoning trace, in the public math-rollouts layout
(reference/thought_anchors.md §3).

For each chunk i the prefix is chunks 0..i joined by single spaces with every occurrence
of chunk i's text removed (``str.replace``) and stripped, so folder ``chunk_i`` continues
from S_0..S_{i-1} and resamples S_i. N continuations per chunk (default 100, T = 0.6,
top-p 0.95) come from the shared-prefix sampler (``Model.sample``). Forced-answer rollouts
append ``"\\n</think>\\n\\nTherefore, the final answers is \\\\boxed{"`` (the original's typo)
to the same prefix and read the answer from prompt + completion. Answers are extracted and
checked with ``probes.evals`` (first non-empty ``\\boxed{}``).

``chunk_resampled`` is the continuation's first chunk. ``compat="default"`` splits with the
§1 splitter (trailing remainder kept, as ``chunks.json``); ``compat="released"`` with the
released HEAD splitter (``remainder=False``), which drops the text after the last boundary,
so a short first sentence cannot merge into it and a continuation without any boundary has
no first chunk (``""`` here; the released code fails on it and records an error row).

Layout (``rollout_dirs``)::

    <root>/{correct,incorrect}_base_solution/problem_<idx>/
        problem.json  base_solution.json  chunks.json  chunk_<i>/solutions.json
    <root>/{correct,incorrect}_base_solution_forced_answer/problem_<idx>/chunk_<i>/solutions.json

Runs are resumable: each chunk is topped up to N rows without ``error``; new rows get new
seeds (``seed + chunk * 100000 + rows already there``, recorded in the row's ``seed``), and
each chunk's file is written atomically once its batch is done, so a crash loses at most
the chunk in progress. A corrupted ``solutions.json`` is reported and skipped, never
overwritten or counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from probes.anchors.compat import Compat, check_compat
from probes.anchors.split import split_solution_into_chunks, thinking_text
from probes.evals.answers import check_answer, extract_boxed
from probes.io import atomic_write_json

__all__ = [
    "FORCED_ANSWER_SUFFIX",
    "MATH_PROMPT",
    "SEED_STRIDE",
    "RolloutReport",
    "Trace",
    "forced_dir_for",
    "load_solutions",
    "load_trace",
    "make_trace",
    "math_prompt",
    "prefix_without_chunk",
    "problem_record",
    "resample_chunks",
    "rollout_dirs",
    "rollouts_root",
    "run_rollouts",
    "sample_base_solution",
    "write_trace",
]

log = logging.getLogger(__name__)

MATH_PROMPT = (
    "Solve this math problem step by step. You MUST put your final answer in \\boxed{{}}. "
    "Problem: {problem} Solution: \n<think>\n"
)
FORCED_ANSWER_SUFFIX = "\n</think>\n\nTherefore, the final answers is \\boxed{"
SEED_STRIDE = 100_000  # seeds of chunk i: seed + i * SEED_STRIDE + row
_FORCED_SEED_OFFSET = 1_000_000_007  # forced rows draw from a separate seed stream
_PROBLEM_FIELDS = ("problem", "level", "type", "gt_solution", "gt_answer", "nickname")


def math_prompt(problem: str) -> str:
    """The raw-completion prompt of §3 (no chat template), ending with ``<think>\\n``."""
    return MATH_PROMPT.format(problem=problem)


def rollouts_root(base: str | Path, model_name: str, temperature: float = 0.6, top_p: float = 0.95) -> Path:
    """``<base>/<model_name>/temperature_<T>_top_p_<p>`` as in math-rollouts."""
    return Path(base) / model_name / f"temperature_{temperature}_top_p_{top_p}"


def rollout_dirs(root: str | Path, problem_idx: int | str, *, correct: bool = True) -> tuple[Path, Path]:
    """(problem folder, forced-answer problem folder) of one base trace under ``root``."""
    kind = "correct_base_solution" if correct else "incorrect_base_solution"
    return Path(root) / kind / f"problem_{problem_idx}", Path(root) / f"{kind}_forced_answer" / f"problem_{problem_idx}"


def forced_dir_for(problem_dir: str | Path) -> Path:
    """The sibling ``…_forced_answer/problem_<idx>`` folder of a problem folder."""
    problem_dir = Path(problem_dir)
    return problem_dir.parent.with_name(problem_dir.parent.name + "_forced_answer") / problem_dir.name


def prefix_without_chunk(chunks: Sequence[str], i: int) -> str:
    """§3: chunks 0..i joined by single spaces, every occurrence of chunk i removed, stripped."""
    if not 0 <= i < len(chunks):
        raise IndexError(f"chunk {i} out of range: the trace has chunks 0..{len(chunks) - 1}")
    return " ".join(chunks[: i + 1]).replace(chunks[i], "").strip()


@dataclass(frozen=True, kw_only=True)
class Trace:
    """A base trace: ``problem.json`` fields, the ``prompt`` it was sampled from, the
    generated ``solution`` and its chunks; ``answer`` / ``is_correct`` of the solution."""

    problem: dict[str, Any]
    prompt: str
    solution: str
    chunks: list[str]
    answer: str
    is_correct: bool

    @property
    def full_cot(self) -> str:
        return self.prompt + self.solution

    @property
    def gt_answer(self) -> str:
        return self.problem["gt_answer"]

    def base_solution_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "solution": self.solution, "full_cot": self.full_cot,
                "answer": self.answer, "is_correct": self.is_correct}

    def chunks_json(self) -> dict[str, Any]:
        return {"source_text": self.full_cot, "solution_text": thinking_text(self.full_cot), "chunks": list(self.chunks)}


def problem_record(problem: Mapping[str, Any] | str) -> dict[str, Any]:
    """A ``problem.json`` record from a problem text or object: a non-empty ``problem``, a
    ``gt_answer`` (given, else the first ``\\boxed{}`` of ``gt_solution``) and every §3
    field (empty when absent); ``ValueError`` says what is missing."""
    rec = {"problem": problem} if isinstance(problem, str) else dict(problem)
    if not isinstance(rec.get("problem"), str) or not rec["problem"].strip():
        raise ValueError("the problem needs a non-empty 'problem' text")
    gt = rec.get("gt_answer")
    if not (isinstance(gt, str) and gt.strip()):
        gt = extract_boxed(str(rec.get("gt_solution") or ""))
    if not gt:
        raise ValueError(
            "the problem has no ground-truth answer: give 'gt_answer', or a 'gt_solution' with a "
            "\\boxed{...} answer (thought_anchors §3 takes the first \\boxed{} of the reference solution)"
        )
    rec["gt_answer"] = gt
    for key in _PROBLEM_FIELDS:
        rec.setdefault(key, "")
    return rec


def make_trace(problem: Mapping[str, Any] | str, prompt: str, solution: str) -> Trace:
    """Validate a base trace. ``prompt + solution`` must hold ``<think>`` and at least one
    sentence; the problem needs a boxed ground truth (``gt_answer`` or ``gt_solution``)."""
    rec = problem_record(problem)
    full = prompt + solution
    thinking_text(full)  # raises on a missing <think> or an empty thinking
    chunks = split_solution_into_chunks(full)
    answer = extract_boxed(solution) or ""
    return Trace(problem=rec, prompt=prompt, solution=solution, chunks=chunks, answer=answer,
                 is_correct=check_answer(answer, rec["gt_answer"]))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_trace(problem_dir: str | Path, trace: Trace) -> Path:
    """Write ``problem.json``, ``base_solution.json`` and ``chunks.json``, or check that the
    ones already there belong to this trace (an error names the first difference)."""
    problem_dir = Path(problem_dir)
    files = {
        "problem.json": trace.problem,
        "base_solution.json": trace.base_solution_json(),
        "chunks.json": trace.chunks_json(),
    }
    if (problem_dir / "chunks.json").exists():
        _check_matches(problem_dir, trace)
        return problem_dir
    stale = sorted(p.name for p in problem_dir.glob("chunk_*")) if problem_dir.is_dir() else []
    if stale:
        raise ValueError(
            f"{problem_dir} has rollout folders ({', '.join(stale[:3])}…) but no chunks.json, so they cannot be "
            "matched to this trace: use a new directory or remove them"
        )
    for name, obj in files.items():
        atomic_write_json(problem_dir / name, obj)
    return problem_dir


def _check_matches(problem_dir: Path, trace: Trace) -> None:
    hint = "use a new directory for this trace, or delete the old rollouts"
    try:
        stored = _read_json(problem_dir / "chunks.json")["chunks"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{problem_dir / 'chunks.json'} is unreadable ({e}): {hint}") from e
    if stored != trace.chunks:
        first = next((k for k, (a, b) in enumerate(zip(stored, trace.chunks)) if a != b), min(len(stored), len(trace.chunks)))
        raise ValueError(
            f"rollout files in {problem_dir} do not match this trace: chunks.json has {len(stored)} chunks, the trace "
            f"{len(trace.chunks)}; first difference at chunk {first}: {hint}"
        )
    for name, key, mine in (("problem.json", "problem", trace.problem["problem"]),
                            ("base_solution.json", "full_cot", trace.full_cot)):
        path = problem_dir / name
        if path.exists():
            theirs = _read_json(path).get(key)
            if theirs != mine:
                raise ValueError(f"rollout files in {problem_dir} do not match this trace: {name} has another {key}: {hint}")


def load_trace(problem_dir: str | Path) -> Trace:
    """The trace stored in a problem folder (``chunks.json`` is the source of the chunks)."""
    problem_dir = Path(problem_dir)
    missing = [n for n in ("problem.json", "base_solution.json", "chunks.json") if not (problem_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{problem_dir} is not a rollout folder: {', '.join(missing)} missing (write_trace makes them)")
    problem = problem_record(_read_json(problem_dir / "problem.json"))
    base = _read_json(problem_dir / "base_solution.json")
    chunks = _read_json(problem_dir / "chunks.json")["chunks"]
    return Trace(problem=problem, prompt=base.get("prompt", ""), solution=base.get("solution", ""), chunks=list(chunks),
                 answer=base.get("answer", "") or "", is_correct=bool(base.get("is_correct")))


def load_solutions(path: str | Path) -> list[dict[str, Any]] | None:
    """Rows of one ``solutions.json``; None when the file is missing. A file that is not a
    JSON list of objects raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        rows = _read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupted ({e}): delete it to resample that chunk") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} is corrupted (not a JSON list of rollout objects): delete it to resample that chunk")
    return rows


@dataclass
class RolloutReport:
    """What a rollout run did: rows added per chunk, rows without error per chunk after the
    run, corrupted files skipped and chunks whose sampling failed (with the error)."""

    problem_dir: Path
    forced_dir: Path | None
    n_chunks: int
    added: dict[int, int] = field(default_factory=dict)
    forced_added: dict[int, int] = field(default_factory=dict)
    complete: dict[int, int] = field(default_factory=dict)
    forced_complete: dict[int, int] = field(default_factory=dict)
    corrupted: list[Path] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def _row(chunks: Sequence[str], i: int, prompt: str, text: str, gt: str, seed: int, forced: bool,
         compat: Compat = "default") -> dict[str, Any]:
    resampled = split_solution_into_chunks(text, remainder=compat != "released")
    full = prompt + text
    answer = extract_boxed(full if forced else text) or ""
    return {
        "chunk_removed": chunks[i],
        "prefix_without_chunk": prefix_without_chunk(chunks, i),
        "chunk_resampled": resampled[0] if resampled else "",
        "rollout": text,
        "full_cot": full,
        "answer": answer,
        "is_correct": check_answer(answer, gt),
        "seed": seed,
    }


def _top_up(model, path: Path, trace: Trace, i: int, *, n: int, forced: bool, seed: int, sample_kw: dict,
            report: RolloutReport, compat: Compat = "default", write_every: int | None = None) -> None:
    try:
        rows = load_solutions(path) or []
    except ValueError as e:
        log.warning("%s; skipping chunk %d", e, i)
        report.corrupted.append(path)
        return
    wrong = [r for r in rows if r.get("chunk_removed", trace.chunks[i]) != trace.chunks[i]]
    if wrong:
        raise ValueError(
            f"rollout files do not match the trace: {path} resamples {wrong[0].get('chunk_removed')!r}, but chunk {i} "
            f"of chunks.json is {trace.chunks[i]!r}: use a new directory or delete the old rollouts"
        )
    done = sum("error" not in r for r in rows)
    counts = report.forced_added if forced else report.added
    complete = report.forced_complete if forced else report.complete
    need = n - done
    if need <= 0:
        complete[i] = done
        return
    base = seed + (_FORCED_SEED_OFFSET if forced else 0) + i * SEED_STRIDE + len(rows)
    seeds = [base + k for k in range(need)]
    prompt = trace.prompt + prefix_without_chunk(trace.chunks, i) + (FORCED_ANSWER_SUFFIX if forced else "")
    step = write_every or need
    added: list[dict[str, Any]] = []
    failed = False
    for b in range(0, need, step):  # each block is written before the next is sampled: a killed run keeps it
        block = seeds[b : b + step]
        try:
            outs = model.sample(prompt, len(block), seeds=block, **sample_kw)
            new = [_row(trace.chunks, i, prompt, o.text, trace.gt_answer, s, forced, compat) for o, s in zip(outs, block)]
        except RuntimeError as e:  # out of memory, device errors, an engine that gave up: recorded like the original's API failures
            log.warning("sampling chunk %d failed: %s", i, e)
            report.failed[i] = f"{type(e).__name__}: {e}"
            failed = True
            new = [{"chunk_removed": trace.chunks[i], "prefix_without_chunk": prefix_without_chunk(trace.chunks, i),
                    "error": f"{type(e).__name__}: {e}", "seed": s} for s in seeds[b:]]
        added += new
        atomic_write_json(path, rows + added)
        if failed:
            break
    counts[i] = len(added)
    complete[i] = done + sum("error" not in r for r in added)


def resample_chunks(
    model,
    problem_dir: str | Path,
    *,
    n: int = 100,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 16384,
    seed: int = 0,
    chunk_indices: Sequence[int] | None = None,
    forced: bool = True,
    forced_dir: str | Path | None = None,
    forced_n: int | None = None,
    forced_max_new_tokens: int = 64,
    batch_size: int | None = None,
    progress: bool = True,
    compat: Compat = "default",
    write_every: int | None = None,
) -> RolloutReport:
    """Top every chunk of the trace in ``problem_dir`` up to ``n`` rollouts (and, with
    ``forced``, ``forced_n`` (default ``n``) forced-answer rollouts in ``forced_dir``,
    default the sibling ``…_forced_answer`` folder). ``chunk_indices`` restricts the chunks.
    ``compat`` chooses the splitter of ``chunk_resampled`` (module docstring).

    ``model`` is a ``probes`` Model or an engine (``probes.engines``: anything with ``sample(prefix, n,
    seeds=, temperature=, top_p=, max_new_tokens=, batch_size=)`` returning objects with ``.text``).
    ``write_every``: rollouts sampled and written at a time (default: a chunk's whole top-up), so a
    killed run loses at most one block and a rerun tops up only the missing rollouts.
    """
    if not 1 <= n < SEED_STRIDE:
        raise ValueError(f"n must be in 1..{SEED_STRIDE - 1}, got {n}")
    check_compat(compat)
    problem_dir = Path(problem_dir)
    trace = load_trace(problem_dir)
    forced_dir = Path(forced_dir) if forced_dir is not None else forced_dir_for(problem_dir)
    indices = range(len(trace.chunks)) if chunk_indices is None else list(chunk_indices)
    for i in indices:
        if not 0 <= i < len(trace.chunks):
            raise IndexError(f"chunk {i} out of range: the trace in {problem_dir} has chunks 0..{len(trace.chunks) - 1}")
    if forced:
        write_trace(forced_dir, trace)  # the forced folder carries the same trace files (or must match them)
    report = RolloutReport(problem_dir=problem_dir, forced_dir=forced_dir if forced else None, n_chunks=len(trace.chunks))
    kw = dict(temperature=temperature, top_p=top_p, batch_size=batch_size)
    for i in tqdm(indices, desc=f"rollouts {problem_dir.name}", disable=not progress):
        _top_up(model, problem_dir / f"chunk_{i}" / "solutions.json", trace, i, n=n, forced=False, seed=seed,
                sample_kw={**kw, "max_new_tokens": max_new_tokens}, report=report, compat=compat,
                write_every=write_every)
        if forced:
            _top_up(model, forced_dir / f"chunk_{i}" / "solutions.json", trace, i, n=forced_n or n, forced=True,
                    seed=seed, sample_kw={**kw, "max_new_tokens": forced_max_new_tokens}, report=report,
                    compat=compat, write_every=write_every)
    return report


def run_rollouts(model, problem: Mapping[str, Any] | str, prompt: str, solution: str, problem_dir: str | Path,
                 **kw) -> RolloutReport:
    """``write_trace`` (or check the stored one) then ``resample_chunks`` (same keywords)."""
    write_trace(problem_dir, make_trace(problem, prompt, solution))
    return resample_chunks(model, problem_dir, **kw)


def sample_base_solution(
    model,
    problem: Mapping[str, Any] | str,
    prompt: str,
    *,
    correct: bool = True,
    tries: int = 16,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 16384,
    seed: int = 0,
    batch_size: int | None = None,
) -> Trace | None:
    """Sample up to ``tries`` solutions of ``prompt`` and return the first with sentences to
    attribute and a boxed answer that is right (``correct``) or wrong (§3: the base trace is
    resampled until it is correct, or incorrect); None if no sample qualifies."""
    rec = problem_record(problem)
    outs = model.sample(prompt, tries, seeds=[seed + k for k in range(tries)], temperature=temperature, top_p=top_p,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    for out in outs:
        try:
            trace = make_trace(rec, prompt, out.text)
        except ValueError:
            continue
        if trace.answer and trace.is_correct == correct:
            return trace
    return None

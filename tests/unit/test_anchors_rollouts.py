"""Rollouts (thought_anchors.md §3): prefixes, the math-rollouts layout and its fields, resuming with
fresh seeds, corrupted and mismatched files. A scripted sampler checks every field by hand; the tiny
random model checks the real shared-prefix sampler end to end."""

import json
import logging
from dataclasses import dataclass

import pytest

from probes.anchors.rollouts import (
    FORCED_ANSWER_SUFFIX,
    SEED_STRIDE,
    forced_dir_for,
    load_trace,
    make_trace,
    math_prompt,
    prefix_without_chunk,
    problem_record,
    resample_chunks,
    rollout_dirs,
    rollouts_root,
    run_rollouts,
    sample_base_solution,
    write_trace,
)

PROBLEM = {"problem": "Alice has 3 apples and buys 5 more. How many apples does she have now?",
           "gt_solution": "She has $3 + 5 = \\boxed{8}$ apples.", "level": "Level 1", "type": "Prealgebra"}
SOLUTION = ("First find the total of the apples. 3 + 5 = 8 apples in all. Wait, is that right? "
            "Yes, 3 + 5 = 8.\n</think>\n\nThe answer is \\boxed{8}.")
CHUNKS = ["First find the total of the apples.", "3 + 5 = 8 apples in all.", "Wait, is that right?", "Yes, 3 + 5 = 8."]


@dataclass
class Out:
    text: str


class Scripted:
    """A sampler that answers each prompt from a script and records its calls."""

    def __init__(self, reply, fail=False):
        self.reply, self.fail, self.calls = reply, fail, []

    def sample(self, prefix, n, *, seeds, temperature, top_p, max_new_tokens, batch_size):
        self.calls.append({"prefix": prefix, "n": n, "seeds": list(seeds), "temperature": temperature, "top_p": top_p,
                           "max_new_tokens": max_new_tokens})
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return [Out(self.reply(prefix, s)) for s in seeds]


def reply(prefix, seed):
    if prefix.endswith(FORCED_ANSWER_SUFFIX):
        return "8}." if seed % 2 == 0 else "9}."
    return f" Resampled sentence {seed % 3} here. So \\boxed{{{8 if seed % 2 == 0 else 7}}}."


def test_prefix_without_chunk_by_hand():
    chunks = ["A is one here.", "B is two here.", "A is one here.", "C is three."]
    assert prefix_without_chunk(chunks, 0) == ""
    assert prefix_without_chunk(chunks, 1) == "A is one here."
    # str.replace deletes the earlier duplicate too (as in the original).
    assert prefix_without_chunk(chunks, 2) == "B is two here."
    assert prefix_without_chunk(chunks, 3) == "A is one here. B is two here. A is one here."
    with pytest.raises(IndexError):
        prefix_without_chunk(chunks, 4)


def test_layout_paths(tmp_path):
    root = rollouts_root(tmp_path, "tiny", 0.6, 0.95)
    assert root == tmp_path / "tiny" / "temperature_0.6_top_p_0.95"
    pdir, fdir = rollout_dirs(root, 7, correct=False)
    assert pdir == root / "incorrect_base_solution" / "problem_7"
    assert fdir == root / "incorrect_base_solution_forced_answer" / "problem_7"
    assert forced_dir_for(pdir) == fdir


def test_make_trace_and_bad_input():
    prompt = math_prompt(PROBLEM["problem"])
    assert prompt.endswith("Solution: \n<think>\n") and "\\boxed{}" in prompt
    trace = make_trace(PROBLEM, prompt, SOLUTION)
    assert trace.chunks == CHUNKS
    assert trace.problem["gt_answer"] == "8" and trace.answer == "8" and trace.is_correct
    with pytest.raises(ValueError, match="no <think>"):
        make_trace(PROBLEM, "Problem: add. Solution: ", "3 + 5 = 8. The answer is \\boxed{8}.")
    with pytest.raises(ValueError, match="no sentences"):
        make_trace(PROBLEM, prompt, "</think> \\boxed{8}")
    with pytest.raises(ValueError, match="ground-truth"):
        make_trace({"problem": "Add 3 and 5.", "gt_solution": "It is 8."}, prompt, SOLUTION)
    rec = problem_record(PROBLEM)
    assert rec["gt_answer"] == "8" and rec["nickname"] == "" and rec["problem"] == PROBLEM["problem"]
    with pytest.raises(ValueError, match="non-empty 'problem'"):
        problem_record({"gt_answer": "8"})


def test_rows_and_files_by_hand(tmp_path):
    pdir, fdir = rollout_dirs(tmp_path, 0)
    prompt = math_prompt(PROBLEM["problem"])
    model = Scripted(reply)
    report = run_rollouts(model, PROBLEM, prompt, SOLUTION, pdir, n=2, seed=10, forced_n=2, progress=False)

    assert json.loads((pdir / "chunks.json").read_text())["chunks"] == CHUNKS
    base = json.loads((pdir / "base_solution.json").read_text())
    assert base == {"prompt": prompt, "solution": SOLUTION, "full_cot": prompt + SOLUTION, "answer": "8", "is_correct": True}
    problem = json.loads((pdir / "problem.json").read_text())
    assert problem["gt_answer"] == "8" and problem["nickname"] == ""
    assert (fdir / "chunks.json").exists()

    rows = json.loads((pdir / "chunk_2" / "solutions.json").read_text())
    seeds = [10 + 2 * SEED_STRIDE, 10 + 2 * SEED_STRIDE + 1]  # even, then odd
    prefix = "First find the total of the apples. 3 + 5 = 8 apples in all."
    assert rows[0] == {
        "chunk_removed": "Wait, is that right?",
        "prefix_without_chunk": prefix,
        "chunk_resampled": f"Resampled sentence {seeds[0] % 3} here.",
        "rollout": reply(prompt + prefix, seeds[0]),
        "full_cot": prompt + prefix + reply(prompt + prefix, seeds[0]),
        "answer": "8",
        "is_correct": True,
        "seed": seeds[0],
    }
    assert rows[1]["answer"] == "7" and rows[1]["is_correct"] is False and rows[1]["seed"] == seeds[1]

    forced = json.loads((fdir / "chunk_2" / "solutions.json").read_text())
    assert forced[0]["seed"] % 2 == 1 and forced[1]["seed"] == forced[0]["seed"] + 1  # a separate seed stream
    assert forced[0]["full_cot"] == prompt + prefix + FORCED_ANSWER_SUFFIX + "9}."
    assert [r["answer"] for r in forced] == ["9", "8"] and [r["is_correct"] for r in forced] == [False, True]

    normal_calls = [c for c in model.calls if not c["prefix"].endswith(FORCED_ANSWER_SUFFIX)]
    assert [c["prefix"] for c in normal_calls] == [prompt + prefix_without_chunk(CHUNKS, i) for i in range(4)]
    assert all(c["temperature"] == 0.6 and c["top_p"] == 0.95 and c["max_new_tokens"] == 16384 for c in normal_calls)
    assert report.added == {0: 2, 1: 2, 2: 2, 3: 2} and report.forced_added == {0: 2, 1: 2, 2: 2, 3: 2}
    assert report.complete == {0: 2, 1: 2, 2: 2, 3: 2} and not report.corrupted and not report.failed


@pytest.mark.parametrize(("text", "default", "released"), [
    # The short first piece merges into the remainder by default; the released splitter drops the remainder first.
    (" Ok. So the total is 8\n</think>\n\n\\boxed{8}", "Ok. So the total is 8", "Ok."),
    # No boundary before </think>: no first chunk for the released splitter.
    (" The total is eight apples\n</think>\n\n\\boxed{8}", "The total is eight apples", ""),
])
def test_chunk_resampled_by_compat(tmp_path, text, default, released):
    prompt = math_prompt(PROBLEM["problem"])
    for compat, want in (("default", default), ("released", released)):
        pdir, _ = rollout_dirs(tmp_path / compat, 0)
        run_rollouts(Scripted(lambda prefix, seed: text), PROBLEM, prompt, SOLUTION, pdir, n=1, forced=False,
                     chunk_indices=[0], progress=False, compat=compat)
        row = json.loads((pdir / "chunk_0" / "solutions.json").read_text())[0]
        assert row["chunk_resampled"] == want and row["answer"] == "8"
    with pytest.raises(ValueError, match="compat 'paper' unknown"):
        resample_chunks(Scripted(reply), pdir, n=1, compat="paper", progress=False)


def test_resume_tops_up_with_new_seeds(tmp_path):
    pdir, _ = rollout_dirs(tmp_path, 1)
    prompt = math_prompt(PROBLEM["problem"])
    run_rollouts(Scripted(reply), PROBLEM, prompt, SOLUTION, pdir, n=2, forced=False, progress=False)
    model = Scripted(reply)
    report = run_rollouts(model, PROBLEM, prompt, SOLUTION, pdir, n=3, forced=False, progress=False)
    assert report.added == {0: 1, 1: 1, 2: 1, 3: 1}
    assert [c["seeds"] for c in model.calls] == [[i * SEED_STRIDE + 2] for i in range(4)]
    seeds = [r["seed"] for r in json.loads((pdir / "chunk_1" / "solutions.json").read_text())]
    assert seeds == [SEED_STRIDE, SEED_STRIDE + 1, SEED_STRIDE + 2]
    # Already complete: nothing sampled.
    idle = Scripted(reply)
    report = resample_chunks(idle, pdir, n=3, forced=False, progress=False)
    assert idle.calls == [] and report.added == {} and report.complete == {0: 3, 1: 3, 2: 3, 3: 3}


def test_failures_are_stored_as_errors_and_not_counted(tmp_path):
    pdir, _ = rollout_dirs(tmp_path, 2)
    prompt = math_prompt(PROBLEM["problem"])
    report = run_rollouts(Scripted(reply, fail=True), PROBLEM, prompt, SOLUTION, pdir, n=2, forced=False,
                          chunk_indices=[0], progress=False)
    assert report.failed == {0: "RuntimeError: CUDA out of memory"} and report.complete == {0: 0}
    rows = json.loads((pdir / "chunk_0" / "solutions.json").read_text())
    assert rows == [{"chunk_removed": CHUNKS[0], "prefix_without_chunk": "", "error": "RuntimeError: CUDA out of memory",
                     "seed": s} for s in (0, 1)]
    model = Scripted(reply)
    report = resample_chunks(model, pdir, n=2, forced=False, chunk_indices=[0], progress=False)
    assert model.calls[0]["seeds"] == [2, 3]  # past the failed rows' seeds
    assert report.complete == {0: 2} and len(json.loads((pdir / "chunk_0" / "solutions.json").read_text())) == 4


def test_corrupted_file_is_reported_and_skipped(tmp_path, caplog):
    pdir, _ = rollout_dirs(tmp_path, 3)
    prompt = math_prompt(PROBLEM["problem"])
    write_trace(pdir, make_trace(PROBLEM, prompt, SOLUTION))
    bad = pdir / "chunk_1" / "solutions.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('[{"chunk_removed": "3 + 5 = 8 apples in all.", "answer": "8"')
    with caplog.at_level(logging.WARNING, logger="probes.anchors.rollouts"):
        report = resample_chunks(Scripted(reply), pdir, n=2, forced=False, progress=False)
    assert report.corrupted == [bad]
    assert "corrupted" in caplog.text and str(bad) in caplog.text
    assert bad.read_text().startswith('[{"chunk_removed"')  # left as it was for inspection
    assert sorted(report.complete) == [0, 2, 3]


def test_mismatched_files_are_refused(tmp_path):
    pdir, _ = rollout_dirs(tmp_path, 4)
    prompt = math_prompt(PROBLEM["problem"])
    run_rollouts(Scripted(reply), PROBLEM, prompt, SOLUTION, pdir, n=1, forced=False, progress=False)
    other = SOLUTION.replace("Wait, is that right?", "Hmm, let me look again.")
    with pytest.raises(ValueError, match="do not match this trace.*first difference at chunk 2"):
        run_rollouts(Scripted(reply), PROBLEM, prompt, other, pdir, n=1, forced=False, progress=False)
    # A solutions.json that resamples another sentence is refused too.
    rows = json.loads((pdir / "chunk_3" / "solutions.json").read_text())
    rows[0]["chunk_removed"] = "Something else entirely."
    (pdir / "chunk_3" / "solutions.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="do not match the trace"):
        resample_chunks(Scripted(reply), pdir, n=2, forced=False, progress=False)
    # Chunk folders without chunks.json cannot be matched.
    stray = tmp_path / "stray" / "problem_9"
    (stray / "chunk_0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no chunks.json"):
        write_trace(stray, make_trace(PROBLEM, prompt, SOLUTION))
    with pytest.raises(FileNotFoundError, match="not a rollout folder"):
        load_trace(tmp_path / "nowhere")


def test_tiny_model_end_to_end_and_reproducible(tiny_models, tmp_path):
    model = tiny_models("qwen3")
    prompt = model.render_chat(PROBLEM["problem"])
    assert prompt.endswith("<think>")
    solution = "First find the total, then subtract the eaten ones. 3 + 5 = 8. Wait, that is wrong.</think>\\boxed{8}"
    pdir, fdir = rollout_dirs(tmp_path, 5)
    kw = dict(max_new_tokens=6, forced_max_new_tokens=4, seed=3, progress=False)
    report = run_rollouts(model, {"problem": PROBLEM["problem"], "gt_answer": "8"}, prompt, solution, pdir, n=2, **kw)
    assert report.complete == {0: 2, 1: 2, 2: 2} and report.forced_complete == {0: 2, 1: 2, 2: 2}
    report = resample_chunks(model, pdir, n=3, **kw)
    assert report.added == {0: 1, 1: 1, 2: 1}
    rows = json.loads((pdir / "chunk_1" / "solutions.json").read_text())
    assert [r["seed"] for r in rows] == [3 + SEED_STRIDE + k for k in range(3)]
    assert len({r["rollout"] for r in rows}) >= 2  # different seeds, different continuations
    # Each stored row is reproduced by sampling its seed alone.
    prefix = prompt + prefix_without_chunk(load_trace(pdir).chunks, 1)
    again = model.sample(prefix, 1, seeds=[rows[2]["seed"]], temperature=0.6, top_p=0.95, max_new_tokens=6)[0]
    assert again.text == rows[2]["rollout"]
    forced = json.loads((fdir / "chunk_0" / "solutions.json").read_text())
    assert all(r["full_cot"].startswith(prompt + FORCED_ANSWER_SUFFIX) for r in forced)


def test_sample_base_solution_picks_by_correctness():
    prompt = math_prompt(PROBLEM["problem"])
    texts = {0: "no think close but sentences here.", 1: SOLUTION.replace("\\boxed{8}", "\\boxed{9}"), 2: SOLUTION}

    class Fixed:
        def sample(self, prefix, n, *, seeds, **kw):
            return [Out(texts.get(s, "")) for s in seeds]

    assert sample_base_solution(Fixed(), PROBLEM, prompt, correct=True, tries=3).is_correct
    wrong = sample_base_solution(Fixed(), PROBLEM, prompt, correct=False, tries=3)
    assert wrong.answer == "9" and not wrong.is_correct
    assert sample_base_solution(Fixed(), PROBLEM, prompt, correct=True, tries=2) is None


def test_a_failed_plain_top_up_does_not_cut_the_forced_one(tmp_path):
    """The plain and forced top-ups of a chunk fail or finish on their own: a failed plain block does not
    stop the forced rollouts after their first block."""
    pdir, _ = rollout_dirs(tmp_path, 3)

    class PlainFails(Scripted):
        def sample(self, prefix, n, **kw):
            self.fail = not prefix.endswith(FORCED_ANSWER_SUFFIX)
            return super().sample(prefix, n, **kw)

    model = PlainFails(reply)
    report = run_rollouts(model, PROBLEM, math_prompt(PROBLEM["problem"]), SOLUTION, pdir, n=4, chunk_indices=[0],
                          write_every=2, progress=False)
    assert report.failed == {0: "RuntimeError: CUDA out of memory"} and report.forced_complete == {0: 4}
    forced = json.loads((forced_dir_for(pdir) / "chunk_0" / "solutions.json").read_text())
    assert len(forced) == 4 and not any("error" in r for r in forced)

"""Every notebook executes end to end on the zoo (papermill, small parameters)."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
SMALL = {
    "thought_anchors.ipynb": {"n_rollouts": 4, "max_new_tokens": 200},
    "steering.ipynb": {"layers": [1], "alphas": [1.0, 4.0], "n_contrast": 8, "n_examples": 8, "n_neutral": 4,
                       "max_new_tokens": 96},
    "refusal_cliff.ipynb": {"n_train": 8, "n_eval": 4, "n_ood": 12, "truncation_fractions": [0.0, 1.0],
                            "direction_positions": [-1]},
    "moe_experts.ipynb": {"n_traces": 20, "n_problems": 3, "samples": 1, "betas": [4.0], "random_draws": 1,
                          "n_stability": 50, "max_new_tokens": 160},
    "task_vectors.ipynb": {"n_problems": 12, "alphas": [0.0, 1.0]},
}
ORGANISM = {"thought_anchors.ipynb": "reasoner", "steering.ipynb": "refusal-reasoner",
            "refusal_cliff.ipynb": "refusal-reasoner", "moe_experts.ipynb": "moe-reasoner",
            "task_vectors.ipynb": "tv-instruct"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import papermill

    from probes.models.zoo_registry import available

    organism = ORGANISM.get(path.name, "reasoner")
    if organism not in available():
        pytest.fail(f"zoo:{organism} is missing: build it with `python -m experiments.zoo {organism}`")
    params = {**SMALL.get(path.name, {}), "runs_root": str(tmp_path / "runs")}
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=params, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)

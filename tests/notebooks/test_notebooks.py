"""Every notebook executes end to end on the zoo (papermill, small parameters)."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
SMALL = {"thought_anchors.ipynb": {"n_rollouts": 4, "max_new_tokens": 200}}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import papermill

    from probes.models.zoo_registry import available

    if "reasoner" not in available():
        pytest.fail("zoo:reasoner is missing: build it with `python -m experiments.zoo reasoner`")
    params = {**SMALL.get(path.name, {}), "runs_root": str(tmp_path / "runs")}
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=params, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)

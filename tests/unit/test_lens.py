"""LogitLens saves as safetensors + JSON and loads back equal (every field, dtypes and shapes)."""

import json

import pytest
import torch

from probes.lens import LogitLens


def test_logit_lens_save_and_load(tmp_path):
    lens = LogitLens(top_ids=torch.tensor([[5, 7, 9], [1, 2, 3]], dtype=torch.int64),
                     top_probs=torch.tensor([[0.5, float("nan"), 1.0], [0.25, 0.125, 0.0]], dtype=torch.float32),
                     positions=[3, 4, 8])
    path = lens.save(tmp_path / "lens")
    assert path == tmp_path / "lens.safetensors"
    assert json.loads((tmp_path / "lens.json").read_text())["fields"]["positions"] == [3, 4, 8]
    for name in ("lens", "lens.safetensors", "lens.json"):
        back = LogitLens.load(tmp_path / name)
        assert back.positions == lens.positions
        for field in ("top_ids", "top_probs"):
            a, b = getattr(lens, field), getattr(back, field)
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    # bfloat16 (no numpy equivalent) and an empty lens keep their dtype and shape.
    odd = LogitLens(top_ids=torch.zeros((2, 0), dtype=torch.int64), top_probs=torch.zeros((2, 0), dtype=torch.bfloat16),
                    positions=[])
    back = LogitLens.load(odd.save(tmp_path / "odd"))
    assert back.top_probs.dtype == torch.bfloat16 and back.top_ids.shape == (2, 0) and back.positions == []
    with pytest.raises(FileNotFoundError, match="pass the path given to save"):
        LogitLens.load(tmp_path / "missing")

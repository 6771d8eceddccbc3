"""Atomic directory writes (``probes.io.atomic_directory``): the zoo builds and the orthogonalised checkpoints."""

from __future__ import annotations

import os

import pytest

from probes.io import atomic_directory


def test_a_directory_appears_whole_and_replaces_the_old_one(tmp_path):
    out = tmp_path / "organism"
    out.mkdir()
    (out / "stale.json").write_text("old")
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"w")
        (tmp / "model.safetensors").chmod(0o600)
        assert not (out / "config.json").exists()  # nothing visible before the rename
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write would make it
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]  # no temporary or old directory left


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    out = tmp_path / "organism"
    out.mkdir()
    (out / "config.json").write_text("kept")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("half")
        raise RuntimeError("killed")
    assert (out / "config.json").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]

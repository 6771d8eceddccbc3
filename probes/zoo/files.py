"""Atomic directory writes for the zoo: an organism directory appears whole or not at all.

Single files go through ``probes.io`` (``atomic_write_json`` / ``atomic_write_text``); a Hugging
Face directory written by ``save_pretrained`` is written into a temporary sibling first and then
renamed into place, so a killed build never leaves weights without their config or record.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out_dir``; on a clean exit it replaces
    ``out_dir`` (a previous directory is moved aside, then removed). If the body raises, the
    temporary directory is removed and ``out_dir`` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes private (0700) directories; a plain mkdir honours the umask
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():  # some writers (safetensors via save_pretrained) make private files
            f.chmod(0o666 & ~umask)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(6)}.old")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)

"""Where the bundled organisms live and which ones exist (``zoo:NAME`` specs)."""

from __future__ import annotations

import os
from pathlib import Path

ZOO_DIR = Path(os.environ.get("PROBES_ZOO", Path(__file__).resolve().parents[2] / "data" / "zoo"))


def available() -> dict[str, str]:
    """Organism name → one-line summary (the first non-heading line of its MODEL.md)."""
    out: dict[str, str] = {}
    if not ZOO_DIR.is_dir():
        return out
    for d in sorted(ZOO_DIR.iterdir()):
        if not (d / "config.json").is_file():
            continue
        summary = ""
        card = d / "MODEL.md"
        if card.is_file():
            for line in card.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    summary = line
                    break
        out[d.name] = summary
    return out


def zoo_path(name: str) -> Path:
    """Directory of organism ``name``; a clear error lists what the zoo holds."""
    d = ZOO_DIR / name
    if not (d / "config.json").is_file():
        names = ", ".join(f"zoo:{n}" for n in available()) or "(none built yet)"
        raise ValueError(
            f"unknown organism zoo:{name}. The zoo at {ZOO_DIR} holds: {names}. "
            f"Build one with `python -m experiments.zoo {name}` or list them with `probes zoo list`."
        )
    return d

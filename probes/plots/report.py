"""A self-contained HTML report: headings, text, tables and figures in one file.

Implements DESIGN.md "Results, runs and figures": figures are embedded interactively
(plotly.js included once, so the page works offline) and each is also saved through
`save_figure` into `figures/` beside the report, for papers.

    report = Report("Steering demo")
    report.add_heading("Layer sweep")
    report.add_text("Refusal rate drops past layer 3.")
    report.add_table(run.load_table("sweep"))
    report.add_figure(fig, "sweep")
    report.write(run.path)          # run/report.html + run/figures/sweep.{html,png,svg,pdf}
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import atomic_write_text
from probes.plots.export import FORMATS, save_figure

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["Report"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figcaption, .files { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class _Figure:
    fig: go.Figure
    name: str
    caption: str | None


def rounded(x: Any, digits: int = 3) -> float | None:
    """A number rounded for a report table; None (a blank cell) for None, NaN or infinity."""
    import math

    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def with_ci(estimate: Any, digits: int = 3) -> str:
    """``value [lo, hi]`` rounded for a report table: an estimate with ``value``, ``lo`` and ``hi``
    (attributes or keys) or a (value, lo, hi) triple, and its interval in one cell."""
    if isinstance(estimate, Mapping):
        v, lo, hi = estimate["value"], estimate["lo"], estimate["hi"]
    elif hasattr(estimate, "value"):
        v, lo, hi = estimate.value, estimate.lo, estimate.hi
    else:
        v, lo, hi = estimate
    return f"{rounded(v, digits)} [{rounded(lo, digits)}, {rounded(hi, digits)}]"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table_html(rows: Sequence[Mapping[str, Any]], caption: str | None) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(str(k) for k in row if str(k) not in columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in ({str(k): v for k, v in r.items()} for r in rows)
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Report:
    """Collects sections in order and writes them as one HTML page plus the figure files."""

    def __init__(self, title: str, formats: Sequence[str] = FORMATS) -> None:
        self.title = title
        self.formats = tuple(formats)
        self._sections: list[str | _Figure] = []

    def add_heading(self, text: str, level: int = 2) -> None:
        if level not in range(1, 7):
            raise ValueError(f"heading level must be 1..6, got {level}")
        self._sections.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def add_text(self, text: str) -> None:
        """Plain text, HTML-escaped; blank lines separate paragraphs."""
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        self._sections.extend(f"<p>{html.escape(p)}</p>" for p in paragraphs)

    def add_table(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, caption: str | None = None) -> None:
        """A table from a list of dicts (columns in first-seen order) or a DataFrame."""
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
        self._sections.append(_table_html(records, caption))

    def add_figure(self, fig: go.Figure, name: str, caption: str | None = None) -> None:
        """An interactive figure; `name` (unique, filesystem-safe) names its files in `figures/`."""
        if not _SAFE_NAME.match(name):
            raise ValueError(f"figure name {name!r} must be filesystem-safe: letters, digits and . _ -")
        if any(isinstance(s, _Figure) and s.name == name for s in self._sections):
            raise ValueError(f"figure name {name!r} is already used in this report: pick another")
        self._sections.append(_Figure(fig, name, caption))

    def write(self, target: str | os.PathLike[str]) -> Path:
        """Write `report.html` into directory `target` (or to `target` itself if it ends in .html).

        Figures are saved into `figures/` next to the report. Returns the report's path.
        """
        from plotly.offline import get_plotlyjs

        target = Path(target)
        path = target if target.suffix.lower() == ".html" else target / "report.html"
        figures_dir = path.parent / "figures"
        body = []
        for section in self._sections:
            if isinstance(section, str):
                body.append(section)
                continue
            files = save_figure(section.fig, figures_dir / section.name, formats=self.formats)
            links = " · ".join(
                f'<a href="{html.escape(p.relative_to(path.parent).as_posix())}">{fmt}</a>' for fmt, p in files.items()
            )
            div = section.fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{section.name}")
            caption = f"<figcaption>{html.escape(section.caption)}</figcaption>" if section.caption else ""
            body.append(f'<figure id="{section.name}">{div}{caption}<div class="files">{links}</div></figure>')
        has_figures = any(isinstance(s, _Figure) for s in self._sections)
        plotlyjs = f'<script type="text/javascript">{get_plotlyjs()}</script>' if has_figures else ""
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style>{plotlyjs}</head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
        )
        return atomic_write_text(path, page)

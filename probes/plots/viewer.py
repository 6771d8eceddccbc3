"""Standalone trace viewers, one self-contained HTML file each (no network access needed).

- ``write_trace_viewer``: thought anchors, in the spirit of the public thought-anchors
  viewer: sentences coloured by a chosen metric, hover for category and scores, click a
  sentence to highlight the sentences that depend on it (``depends_on``).
- ``write_steered_text``: a steered text with each token coloured by ‖Δh‖, the size of
  the change a steering operator made there (``reference/steering.md`` §6, "seeing which
  tokens were steered"; the values come from a ``SteeredRecord``).
"""

from __future__ import annotations

import html
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

from probes.io import atomic_write_text
from probes.plots.anchors import CATEGORY_COLORS

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;line-height:1.7;color:#222}
.s{padding:2px 3px;border-radius:4px;cursor:pointer;border:2px solid transparent}
.s.sel{border-color:#000}.s.dep{border-color:#d62728;border-style:dashed}
.s.dim{opacity:.35}#tip{position:fixed;background:#fff;border:1px solid #999;padding:6px 9px;font-size:13px;
display:none;max-width:360px;box-shadow:0 2px 6px #0003;pointer-events:none}
.legend span{display:inline-block;margin-right:12px;font-size:13px}.sw{width:12px;height:12px;display:inline-block;
margin-right:4px;vertical-align:middle;border-radius:2px}#problem{background:#f6f6f6;padding:8px 12px;border-radius:6px}
</style></head><body>
<h2>__TITLE__</h2>
<div id="problem">__PROBLEM__</div>
<p>Colour by <select id="metric"></select> · click a sentence to highlight what depends on it (dashed red);
click again to clear.</p>
<div class="legend">__LEGEND__</div>
<div id="trace"></div><div id="tip"></div>
<script>
const DATA = __DATA__;
const metricSel = document.getElementById('metric'), trace = document.getElementById('trace'), tip = document.getElementById('tip');
DATA.metrics.forEach(m => { const o = document.createElement('option'); o.value = o.textContent = m; metricSel.appendChild(o); });
const spans = DATA.sentences.map((s, i) => {
  const el = document.createElement('span'); el.className = 's'; el.textContent = s.text; el.dataset.i = i;
  trace.appendChild(el); trace.appendChild(document.createTextNode(' ')); return el; });
function colour() {
  const m = metricSel.value, vals = DATA.sentences.map(s => s.scores[m]).filter(v => v !== null && isFinite(v));
  const hi = Math.max(1e-12, ...vals.map(Math.abs));
  spans.forEach((el, i) => { const v = DATA.sentences[i].scores[m];
    const a = (v === null || !isFinite(v)) ? 0 : Math.abs(v) / hi;
    el.style.background = v >= 0 ? `rgba(214,39,40,${a})` : `rgba(31,119,180,${a})`;
    el.style.borderBottom = '3px solid ' + (DATA.colors[DATA.sentences[i].category] || '#333'); }); }
metricSel.onchange = colour; colour();
let selected = null;
trace.onclick = e => { const el = e.target.closest('.s'); if (!el) return; const i = +el.dataset.i;
  selected = selected === i ? null : i;
  spans.forEach((s, j) => { s.classList.toggle('sel', j === selected);
    const dep = selected !== null && DATA.sentences[j].depends_on.includes(selected);
    s.classList.toggle('dep', dep); s.classList.toggle('dim', selected !== null && j !== selected && !dep); }); };
trace.onmousemove = e => { const el = e.target.closest('.s'); if (!el) { tip.style.display = 'none'; return; }
  const s = DATA.sentences[+el.dataset.i];
  let h = `<b>#${el.dataset.i} ${s.category}</b>`;
  if (s.summary) h += `<br><i>${s.summary}</i>`;
  for (const [k, v] of Object.entries(s.scores)) h += `<br>${k}: ${v === null ? '–' : (+v).toFixed(3)}`;
  if (s.depends_on.length) h += `<br>depends on: ${s.depends_on.join(', ')}`;
  tip.innerHTML = h; tip.style.display = 'block'; tip.style.left = (e.clientX + 14) + 'px'; tip.style.top = (e.clientY + 14) + 'px'; };
trace.onmouseleave = () => { tip.style.display = 'none'; };
</script></body></html>
"""


def write_trace_viewer(
    path: str | Path,
    sentences: Sequence[str],
    categories: Sequence[str],
    scores: Mapping[str, Sequence[float | None]],
    depends_on: Sequence[Sequence[int]] | None = None,
    summaries: Sequence[str] | None = None,
    problem: str = "",
    title: str = "Thought anchors",
) -> Path:
    """Write the viewer for one trace; ``scores[metric][i]`` is sentence i's value (None/NaN: missing)."""
    n = len(sentences)
    if len(categories) != n or any(len(v) != n for v in scores.values()):
        raise ValueError(f"need one category and one score per sentence for {n} sentences")
    deps = [list(map(int, d)) for d in (depends_on or [[] for _ in range(n)])]

    def clean(v):
        return None if v is None or v != v else float(v)

    data = {
        "metrics": list(scores),
        "colors": CATEGORY_COLORS,
        "sentences": [
            {"text": sentences[i], "category": categories[i], "depends_on": deps[i],
             "summary": (summaries[i] if summaries else ""), "scores": {m: clean(scores[m][i]) for m in scores}}
            for i in range(n)
        ],
    }
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{html.escape(k)}</span>'
                     for k, c in CATEGORY_COLORS.items())
    page = (_PAGE.replace("__TITLE__", html.escape(title)).replace("__PROBLEM__", html.escape(problem))
            .replace("__LEGEND__", legend).replace("__DATA__", json.dumps(data).replace("</", "<\\/")))
    return atomic_write_text(Path(path), page)


_STEERED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
#text{font-family:ui-monospace,monospace;font-size:14px;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.t{border-radius:2px}.t.st{box-shadow:inset 0 -2px 0 #67000d}.cut{color:#888;font-weight:bold;padding:0 2px}
.legend{font-size:13px;margin:.6em 0 1.2em}.legend span{margin-right:16px}
.bar{display:inline-block;width:160px;height:12px;vertical-align:middle;margin:0 6px;
background:linear-gradient(to right,rgba(214,39,40,0),rgba(214,39,40,1));border:1px solid #bbb}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px;border:1px solid #bbb}
</style></head><body>
<h2>__TITLE__</h2>
<p>__NOTE__</p>
<div class="legend">__LEGEND__</div>
<div id="text">__TEXT__</div>
</body></html>
"""


def _steered_values(tokens: Sequence[str], delta_norms) -> list[float | None]:
    """One ‖Δh‖ per token (``None``: not steered) from a {position: ‖Δh‖} mapping or a sequence."""
    n = len(tokens)
    if isinstance(delta_norms, Mapping):
        values: list[float | None] = [None] * n
        for p, v in delta_norms.items():
            if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 0 <= p < n:
                raise ValueError(f"delta_norms has position {p!r} but there are {n} tokens (positions 0..{n - 1}): "
                                 "give the tokens of the whole sequence (prompt + generated) the record counts")
            values[int(p)] = v
    else:
        values = list(delta_norms)
        if len(values) != n:
            raise ValueError(f"got {len(values)} delta_norms for {n} tokens: give one per token (None = not steered) "
                             "or a {position: norm} mapping such as record[row]")
    for i, v in enumerate(values):
        if v is not None and (not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0):
            raise ValueError(f"‖Δh‖ of token {i} is {v!r}: norms are finite numbers >= 0 (None = not steered)")
    return [None if v is None else float(v) for v in values]


def write_steered_text(
    path: str | Path,
    tokens: Sequence[str],
    delta_norms: Mapping[int, float] | Sequence[float | None],
    *,
    prompt_len: int | None = None,
    title: str = "Steered tokens",
    note: str = "",
) -> Path:
    """Write a standalone HTML page of ``tokens`` (the decoded tokens of one row, prompt +
    generated, in order) with every steered token coloured by its ‖Δh‖ (darker red =
    larger change, scaled to the largest), a legend, and ``position · ‖Δh‖`` on hover.

    ``delta_norms`` is ``{absolute position: ‖Δh‖}`` (``record[row]`` of a
    ``SteeredRecord``) or one value per token (``None`` = not steered); unsteered tokens
    stay uncoloured and steered ones are underlined, so a token steered with ‖Δh‖ = 0
    still shows. ``prompt_len`` marks where the generated tokens begin."""
    tokens = [str(t) for t in tokens]
    values = _steered_values(tokens, delta_norms)
    if prompt_len is not None and not 0 <= prompt_len <= len(tokens):
        raise ValueError(f"prompt_len {prompt_len} is outside 0..{len(tokens)} (the number of tokens)")
    steered = [v for v in values if v is not None]
    top = max(steered, default=0.0)
    parts = []
    for i, (tok, v) in enumerate(zip(tokens, values)):
        if i == prompt_len:
            parts.append('<span class="cut" title="generated tokens begin here">│</span>')
        if v is None:
            parts.append(f'<span class="t" title="#{i}: not steered">{html.escape(tok)}</span>')
        else:
            alpha = v / top if top > 0 else 0.0
            parts.append(f'<span class="t st" style="background:rgba(214,39,40,{alpha:.3f})" '
                         f'title="#{i}: ‖Δh‖ = {v:.4g}">{html.escape(tok)}</span>')
    if prompt_len == len(tokens):
        parts.append('<span class="cut" title="generated tokens begin here">│</span>')
    legend = (f'<span>‖Δh‖ 0<i class="bar"></i>{top:.4g}</span>'
              f'<span><i class="sw"></i>not steered</span>'
              f"<span>{len(steered)} of {len(tokens)} tokens steered</span>")
    page = (_STEERED_PAGE.replace("__TITLE__", html.escape(title)).replace("__NOTE__", html.escape(note))
            .replace("__LEGEND__", legend).replace("__TEXT__", "".join(parts)))
    return atomic_write_text(Path(path), page)

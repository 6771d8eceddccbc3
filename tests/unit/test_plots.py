"""Unit tests for probes.plots: figure builders, HTML/static export, reports."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.plots import (
    Report,
    attention_heatmap,
    export,
    find_browser,
    logit_lens_figure,
    save_figure,
    show_figure,
)

PLOTLYJS_BANNER = "* plotly.js v"


@pytest.fixture(scope="module")
def fig():
    return attention_heatmap(np.array([[1.0, 0.0], [0.25, 0.75]]), ["a", "b"], title="tiny")


def test_importing_probes_does_not_import_plotly() -> None:
    code = (
        "import sys, probes, probes.plots, probes.runs, probes.config\n"
        "heavy = [m for m in ('plotly', 'kaleido', 'torch', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_html_always_written_offline_and_suffix_replaced(tmp_path: Path, fig) -> None:
    files = save_figure(fig, tmp_path / "figs" / "attn.png", formats=("html",))
    assert files == {"html": tmp_path / "figs" / "attn.html"}
    text = files["html"].read_text()
    assert PLOTLYJS_BANNER in text and "<script src=" not in text
    assert '"tiny"' in text
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["attn.html"]
    # A stem keeps dots that are not figure suffixes.
    assert save_figure(fig, tmp_path / "run.v2", formats=())["html"].name == "run.v2.html"


def test_unknown_format_rejected(tmp_path: Path, fig) -> None:
    with pytest.raises(ValueError, match="'jpg'.*html"):
        save_figure(fig, tmp_path / "x", formats=("html", "jpg"))


def test_without_browser_warns_once_and_writes_html(tmp_path: Path, fig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "find_browser", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = save_figure(fig, tmp_path / "attn")
    assert list(files) == ["html"] and files["html"].is_file()
    assert len(caught) == 1
    assert "apt-get install chromium" in str(caught[0].message)
    assert not any(tmp_path.glob("attn.p*")) and not (tmp_path / "attn.svg").exists()


@pytest.mark.skipif(not Path("/bin/false").exists(), reason="needs /bin/false as a browser that dies at once")
def test_broken_browser_warns_instead_of_hanging(tmp_path: Path, fig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")
    monkeypatch.setattr(export, "find_browser", lambda: "/bin/false")
    monkeypatch.setattr(export, "_exporter", None)
    monkeypatch.setattr(export, "_exporter_error", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = save_figure(fig, tmp_path / "a", formats=("html", "png"))
        again = save_figure(fig, tmp_path / "b", formats=("html", "png"))
    assert list(files) == ["html"] and list(again) == ["html"]
    assert [str(w.message).startswith("static figure export is off: the browser failed to start") for w in caught] == [
        True,
        True,
    ]


@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium: static export is skipped by design")
def test_static_export_and_report_with_figures(tmp_path: Path, fig) -> None:
    files = save_figure(fig, tmp_path / "attn")
    assert set(files) == {"html", "png", "svg", "pdf"}
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in files["svg"].read_bytes()[:500]
    assert files["pdf"].read_bytes()[:5] == b"%PDF-"

    report = Report("With static", formats=("html", "png"))
    report.add_figure(fig, "attn")
    report.write(tmp_path / "run")
    assert (tmp_path / "run" / "figures" / "attn.png").stat().st_size > 1000
    assert 'href="figures/attn.png"' in (tmp_path / "run" / "report.html").read_text()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def ipython_shell():
    """An IPython shell for the test (display() only publishes bundles inside one), without history files."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    yield InteractiveShell.instance(config=Config(HistoryManager={"enabled": False}))
    InteractiveShell.clear_instance()


def _shown(fig, png=None) -> tuple[list[dict], list[str]]:
    """The raw bundles `show_figure` displays, and the warnings it gives (its own are RuntimeWarnings;
    a ResourceWarning from an earlier test's garbage collection may land here and is not its)."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        show_figure(fig, png)
    return [o.data for o in cap.outputs], [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.usefixtures("ipython_shell")
def test_show_figure_bundles_plotly_json_and_the_saved_png(
    tmp_path: Path, fig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    png = tmp_path / "attn.png"
    png.write_bytes(PNG_MAGIC + b"saved")
    monkeypatch.setattr(export, "_get_exporter", lambda: pytest.fail("a saved PNG must not start a browser"))
    [bundle], caught = _shown(fig, png)
    assert not caught
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png", "text/plain"}
    assert bundle["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] == "tiny"
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "heatmap"
    assert base64.b64decode(bundle["image/png"]) == PNG_MAGIC + b"saved"
    assert bundle["text/plain"] == "tiny"


@pytest.mark.usefixtures("ipython_shell")
def test_show_figure_without_a_png_never_raises(tmp_path: Path, fig, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def image(self, fig, fmt):
            raise RuntimeError("chromium crashed")

    dropped = []
    monkeypatch.setattr(export, "find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(export, "_get_exporter", lambda: Broken())
    monkeypatch.setattr(export, "_drop_exporter", lambda: dropped.append(True))
    monkeypatch.setattr(type(fig), "to_image", lambda *a, **k: pytest.fail("to_image has no timeout"), raising=False)
    [bundle], caught = _shown(fig, tmp_path / "missing.png")
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/plain"} and dropped == [True]
    assert caught == [
        "no static image of 'tiny' (RuntimeError: chromium crashed): it will not show in an HTML export or on GitHub"
    ]

    def fails_to_start():
        raise RuntimeError("no display")

    monkeypatch.setattr(export, "_get_exporter", fails_to_start)
    [bundle], caught = _shown(fig)
    assert "image/png" not in bundle and "the browser failed to start (no display)" in caught[0]
    monkeypatch.setattr(export, "find_browser", lambda: None)
    [bundle], caught = _shown(fig)
    assert "image/png" not in bundle and "(no Chrome/Chromium)" in caught[0]


@pytest.mark.usefixtures("ipython_shell")
@pytest.mark.skipif(find_browser() is None, reason="no Chrome/Chromium: show_figure then shows no PNG by design")
def test_show_figure_renders_a_png_when_none_was_saved(tmp_path: Path, fig) -> None:
    import base64

    [bundle], caught = _shown(fig, tmp_path / "missing.png")
    assert not caught
    assert base64.b64decode(bundle["image/png"])[:8] == PNG_MAGIC


def test_attention_heatmap_keeps_repeated_tokens_and_escapes() -> None:
    pattern = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.bfloat16)
    f = attention_heatmap(pattern, ["a", "<think>", "a"], title="head 3.1")
    heat = f.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), pattern.float().numpy())
    assert list(f.layout.xaxis.tickvals) == [0, 1, 2]
    assert list(f.layout.xaxis.ticktext) == ["a", "&lt;think&gt;", "a"]
    assert f.layout.yaxis.autorange == "reversed"
    assert (heat.zmin, heat.zmax) == (0, 1)
    assert f.layout.title.text == "head 3.1"


def test_attention_heatmap_shape_errors() -> None:
    with pytest.raises(ValueError, match="T×T"):
        attention_heatmap(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="3 tokens for a 2×2"):
        attention_heatmap(np.zeros((2, 2)), ["a", "b", "c"])


def test_logit_lens_figure() -> None:
    probs = np.array([[0.1, 0.9, 0.3], [0.2, 0.4, 0.6]])
    tokens = [["the", "\n", "cat"], ["a", "sat", "<"]]
    f = logit_lens_figure(tokens, probs, position_labels=["x", "y", "z"], layer_labels=["L0", "L5"], title="lens")
    heat = f.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), probs)
    assert [list(r) for r in heat.text] == [["the", "\\n", "cat"], ["a", "sat", "&lt;"]]
    assert heat.texttemplate == "%{text}"
    assert (heat.zmin, heat.zmax) == (0, 1)
    assert list(f.layout.xaxis.ticktext) == ["x", "y", "z"]
    assert list(f.layout.yaxis.ticktext) == ["L0", "L5"]
    with pytest.raises(ValueError, match="2 rows of 3 tokens"):
        logit_lens_figure([["a", "b"], ["c", "d"]], probs)
    with pytest.raises(ValueError, match="2 position and 2 layer labels"):
        logit_lens_figure(tokens, probs, position_labels=["x", "y"])


def test_report_contains_all_sections(tmp_path: Path, fig) -> None:
    report = Report("Demo <report>", formats=("html",))
    report.add_heading("Anchors")
    report.add_text("first <b>para</b> & more\n\nsecond para")
    report.add_table([{"layer": 1, "acc": 0.123456}, {"layer": 2, "note": "x<y"}], caption="sweep")
    report.add_figure(fig, "attn", caption="an attention head")
    report.add_heading("Steering", level=3)
    report.add_figure(logit_lens_figure([["a"]], [[0.5]]), "lens")
    with pytest.raises(ValueError, match="already used"):
        report.add_figure(fig, "attn")
    with pytest.raises(ValueError, match="filesystem-safe"):
        report.add_figure(fig, "a/b")

    path = report.write(tmp_path / "run")
    assert path == tmp_path / "run" / "report.html"
    text = path.read_text()
    assert "<title>Demo &lt;report&gt;</title>" in text
    assert "<h2>Anchors</h2>" in text and "<h3>Steering</h3>" in text
    assert "<p>first &lt;b&gt;para&lt;/b&gt; &amp; more</p>" in text and "<p>second para</p>" in text
    assert "<tr><th>layer</th><th>acc</th><th>note</th></tr>" in text
    assert "<td>1</td><td>0.1235</td><td></td>" in text and "<td>x&lt;y</td>" in text
    assert 'id="figure-attn"' in text and 'id="figure-lens"' in text
    assert "<figcaption>an attention head</figcaption>" in text
    assert text.count(PLOTLYJS_BANNER) == 1
    order = [
        text.index(s) for s in ("<h2>Anchors", "<p>first", "<table>", "figure-attn", "<h3>Steering", "figure-lens")
    ]
    assert order == sorted(order)
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == ["attn.html", "lens.html"]


def test_steered_text_colours_tokens_by_delta_norm(tmp_path: Path) -> None:
    from probes.plots.viewer import write_steered_text

    tokens = ["<b>", "Hi", " there", "\n", "x", "&"]
    out = write_steered_text(tmp_path / "steered.html", tokens, {2: 0.5, 3: 1.0, 4: 0.0}, prompt_len=2,
                             title="AddVector <L2>")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script src" not in page and "http" not in page
    assert "&lt;b&gt;" in page and "AddVector &lt;L2&gt;" in page and ">&amp;</span>" in page
    assert page.count('title="#') == 6 and page.count(': not steered"') == 3  # one span per token
    assert 'rgba(214,39,40,0.500)" title="#2: ‖Δh‖ = 0.5"> there' in page
    assert 'rgba(214,39,40,1.000)" title="#3: ‖Δh‖ = 1">\n' in page
    assert 'class="t st" style="background:rgba(214,39,40,0.000)" title="#4: ‖Δh‖ = 0">x' in page  # steered, Δ 0
    assert "3 of 6 tokens steered" in page and "‖Δh‖ 0<i class=\"bar\"></i>1</span>" in page
    assert page.count('class="cut"') == 1 and page.index(">Hi<") < page.index('class="cut"') < page.index("> there<")
    # a sequence with one value per token (None = not steered) gives the same page
    same = write_steered_text(tmp_path / "seq.html", tokens, [None, None, 0.5, 1.0, 0.0, None], prompt_len=2,
                              title="AddVector <L2>")
    assert same.read_text() == page


def test_steered_text_input_errors(tmp_path: Path) -> None:
    from probes.plots.viewer import write_steered_text

    with pytest.raises(ValueError, match=r"position 7 but there are 3 tokens \(positions 0\.\.2\): give the tokens"):
        write_steered_text(tmp_path / "a.html", ["a", "b", "c"], {7: 1.0})
    with pytest.raises(ValueError, match="got 2 delta_norms for 3 tokens: give one per token"):
        write_steered_text(tmp_path / "a.html", ["a", "b", "c"], [1.0, None])
    with pytest.raises(ValueError, match=r"‖Δh‖ of token 1 is nan: norms are finite numbers >= 0"):
        write_steered_text(tmp_path / "a.html", ["a", "b", "c"], {1: float("nan")})
    with pytest.raises(ValueError, match="token 0 is -1.0"):
        write_steered_text(tmp_path / "a.html", ["a", "b", "c"], [-1.0, None, None])
    with pytest.raises(ValueError, match=r"prompt_len 5 is outside 0\.\.3"):
        write_steered_text(tmp_path / "a.html", ["a", "b", "c"], {}, prompt_len=5)
    assert not any(tmp_path.iterdir())


def test_steered_text_from_a_steered_generation(tmp_path: Path, tiny_models) -> None:
    from probes.models.interventions import AddVector
    from probes.plots.viewer import write_steered_text

    model = tiny_models("qwen3")
    prompt = "<bos><|user|>Alice has 3 apples.<|end|><|assistant|><think>"
    op = AddVector(site="resid_post[0]", vector=torch.ones(model.d_model), positions="generated", record=True)
    with model.intervene(op):
        out = model.generate(prompt, max_new_tokens=5, eos_token_ids=[])[0]
    ids = model.encode(prompt) + out.token_ids
    tokens = [model.tokenizer.decode([t]) for t in ids]
    page = write_steered_text(tmp_path / "gen.html", tokens, op.record[0], prompt_len=len(ids) - 5).read_text()
    assert f"4 of {len(ids)} tokens steered" in page  # every generated token but the last, fed back 4 times

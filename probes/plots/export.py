"""Save a figure as interactive HTML and, when a browser is available, as PNG/SVG/PDF; show one in a notebook.

Implements DESIGN.md "Results, runs and figures": figures are saved as interactive HTML
(plotly.js embedded, so it opens offline) and as static files for papers. Static export
goes through kaleido 1.x, which drives a Chrome/Chromium. Launching the browser costs
seconds, so one browser per process is kept open on a private event-loop thread and
reused. It is not kaleido's own sync server: that one blocks forever when the browser
fails to start, whereas here every call has a timeout. Without a browser the static
formats are skipped with one warning and the HTML is still written. `show_figure` displays a
figure in a notebook so that it survives the saved .ipynb, its HTML export and GitHub.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["FORMATS", "STATIC_EXPORT_HELP", "find_browser", "save_figure", "show_figure"]

logger = logging.getLogger(__name__)

FORMATS = ("html", "png", "svg", "pdf")
STATIC_EXPORT_HELP = (
    "static figure export (png/svg/pdf) needs Chrome or Chromium and none was found, so only "
    "HTML was written; to enable it run `apt-get install chromium` (Debian/Ubuntu), install "
    "Google Chrome, run `plotly_get_chrome`, or point BROWSER_PATH at a Chromium binary"
)
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_OPEN_TIMEOUT_S = 60.0
_RENDER_TIMEOUT_S = 120.0


@functools.cache
def find_browser() -> str | None:
    """Path of a Chrome/Chromium kaleido can drive, or None. Only looks; launches nothing."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - choreographer's private layout may change; fall back to PATH.
        return os.environ.get("BROWSER_PATH") or next(filter(None, map(shutil.which, _BROWSER_NAMES)), None)


class _Exporter:
    """One kaleido browser on its own event-loop thread; every call waits at most a timeout."""

    def __init__(self) -> None:
        import kaleido

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="probes-kaleido", daemon=True).start()
        try:
            self._kaleido = kaleido.Kaleido()
            self._call(self._kaleido.open(), _OPEN_TIMEOUT_S)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        atexit.register(self.close)

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the browser did not answer within {timeout:.0f} s") from None

    def image(self, fig: go.Figure, fmt: str) -> bytes:
        import plotly.io as pio

        opts = {
            "format": fmt,
            "width": fig.layout.width or pio.defaults.default_width,
            "height": fig.layout.height or pio.defaults.default_height,
            "scale": pio.defaults.default_scale,
        }
        return self._call(self._kaleido.calc_fig(fig.to_dict(), opts=opts), _RENDER_TIMEOUT_S)

    def close(self) -> None:
        atexit.unregister(self.close)
        try:
            self._call(self._kaleido.close(), 10.0)
        except Exception:  # noqa: BLE001 - best effort: the browser may already be gone.
            logger.debug("closing the kaleido browser failed", exc_info=True)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


_lock = threading.Lock()
_exporter: _Exporter | None = None
# A browser that failed to start is not retried in this process: every retry would cost the timeout.
_exporter_error: Exception | None = None


def _get_exporter() -> _Exporter:
    global _exporter, _exporter_error
    with _lock:
        if _exporter_error is not None:
            raise _exporter_error
        if _exporter is None:
            try:
                _exporter = _Exporter()
            except Exception as e:
                _exporter_error = e
                raise
        return _exporter


def _drop_exporter() -> None:
    """Close the browser after a failed render, so the next figure starts a fresh one."""
    global _exporter
    with _lock:
        if _exporter is not None:
            _exporter.close()
            _exporter = None


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower().lstrip(".") in FORMATS else path


def save_figure(fig: go.Figure, path: str | os.PathLike[str], formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write `fig` next to `path` in each format; return `{format: path}` of the files written.

    `path` is a stem (`figs/attn`) or carries a figure suffix (`figs/attn.png`); each format
    gets its own suffix. HTML is always written. Static formats need a browser: without one
    they are skipped with a warning saying how to enable them; if the browser fails, the
    warning says why. Either way the call returns.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown figure format(s) {unknown}: choose from {list(FORMATS)}")
    stem = _stem(Path(path))
    written = {"html": atomic_write_text(stem.with_name(f"{stem.name}.html"), fig.to_html(include_plotlyjs=True))}

    static = [f for f in FORMATS if f in formats and f != "html"]
    if not static:
        return written
    if find_browser() is None:
        warnings.warn(STATIC_EXPORT_HELP, RuntimeWarning, stacklevel=2)
        return written
    try:
        exporter = _get_exporter()
    except Exception as e:  # noqa: BLE001 - a broken browser must not lose the experiment that made the figure.
        warnings.warn(f"static figure export is off: the browser failed to start ({e})", RuntimeWarning, stacklevel=2)
        return written
    try:
        for fmt in static:
            written[fmt] = atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), exporter.image(fig, fmt))
    except Exception as e:  # noqa: BLE001 - as above: keep what was written, say what failed.
        _drop_exporter()
        warnings.warn(
            f"static export of {stem.name} failed ({type(e).__name__}: {e}); wrote {sorted(written)} only",
            RuntimeWarning,
            stacklevel=2,
        )
    return written


def _png_for_display(fig: go.Figure, png: str | os.PathLike[str] | None) -> tuple[bytes | None, str]:
    """PNG bytes for `show_figure`: the file at `png` if readable, else a kaleido render; else (None, why)."""
    if png is not None:
        try:
            return Path(png).read_bytes(), ""
        except OSError:
            pass
    if find_browser() is None:
        return None, "no Chrome/Chromium"
    try:
        exporter = _get_exporter()
    except Exception as e:  # noqa: BLE001 - a notebook figure must show even when the browser does not start.
        return None, f"the browser failed to start ({e})"
    try:
        return exporter.image(fig, "png"), ""
    except Exception as e:  # noqa: BLE001 - as above.
        _drop_exporter()
        return None, f"{type(e).__name__}: {e}"


def show_figure(fig: go.Figure, png: str | os.PathLike[str] | None = None) -> None:
    """Display `fig` in a notebook so that it shows in the saved .ipynb, its HTML export and on GitHub.

    Displays one raw mimebundle: plotly's JSON (interactive in JupyterLab and VS Code), a static
    `image/png` (the file at `png` when it exists, else rendered through kaleido with the timeouts
    of `save_figure`) and the title as `text/plain`. Without a PNG it warns and shows the rest; it
    never raises for a missing or failing browser.
    """
    import plotly.io as pio
    from IPython.display import display

    bundle = dict(pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()))
    title = fig.layout.title.text or "Figure"
    image, why = _png_for_display(fig, png)
    if image is not None:
        bundle["image/png"] = base64.b64encode(image).decode("ascii")
    else:
        warnings.warn(
            f"no static image of {title!r} ({why}): it will not show in an HTML export or on GitHub",
            RuntimeWarning,
            stacklevel=2,
        )
    bundle["text/plain"] = title
    display(bundle, raw=True)

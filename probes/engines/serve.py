"""A local ``transformers serve`` process: the real OpenAI-compatible server behind the tests and
benchmarks of the engines, judges and labelers (issue #15), and a quick way to serve a zoo organism.

    with serve("data/zoo/reasoner", log="serve.log") as server:
        OpenAIEngine(server.base_url, model=server.model)   # http://127.0.0.1:PORT/v1, the served name
        server.stop()                                       # the port closes: requests fail to connect
        server.start()                                      # the same model on the same port again

``transformers serve`` (transformers' ``serving`` extra) pins the model name to the path string it was
given (a request must use exactly that name), rejects unknown body fields with 422 and token-id prompts
with 400. It runs offline here, on CPU in float32 by default, so its greedy replies equal local decoding.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from probes.engines.base import EngineError

STARTUP_S = 180
# Offline and without the CLI's PyPI version check.
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}


def free_port() -> int:
    """A localhost port nobody listens on (closed again when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli() -> str:
    """The ``transformers`` command beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("transformers")
    found = str(beside) if beside.is_file() else shutil.which("transformers")
    if found is None:
        raise EngineError("the `transformers` command is missing: pip install 'transformers[serving]'")
    return found


class LocalServer:
    """One ``transformers serve`` process for ``model_dir`` on ``port`` (a free one by default), with
    ``threads`` CPU threads and extra CLI ``flags`` (e.g. ``["--continuous-batching"]``); ``stop`` and
    ``start`` again keep the port, the model name and the log (appended)."""

    def __init__(self, model_dir: str | Path, *, port: int | None = None, log: str | Path | None = None,
                 flags: Sequence[str] = (), threads: int = 1, device: str = "cpu", dtype: str = "float32",
                 startup_s: float = STARTUP_S):
        if not Path(model_dir).is_dir():
            raise EngineError(f"{model_dir} is not a model directory: give a saved model folder (e.g. data/zoo/reasoner)")
        self.model = str(model_dir)
        self.port = port or free_port()
        self.log = Path(log) if log is not None else Path(os.devnull)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.threads, self.startup_s = threads, startup_s
        self.process: subprocess.Popen | None = None
        self.cmd = [cli(), "serve", self.model, "--device", device, "--dtype", dtype,
                    "--host", "127.0.0.1", "--port", str(self.port), *flags]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""

    def start(self) -> LocalServer:
        """Start the process and wait until ``/health`` answers 200 (``EngineError`` after ``startup_s``)."""
        if self.running:
            raise EngineError(f"the server on port {self.port} is already running")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                            env=os.environ | ENV | {"OMP_NUM_THREADS": str(self.threads)})
        deadline = time.monotonic() + self.startup_s
        while True:
            if self.process.poll() is not None:
                raise EngineError(f"`{' '.join(self.cmd)}` exited with {self.process.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"`{' '.join(self.cmd)}` not ready after {self.startup_s:g} s:\n{self._tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the process (killed after 10 s) and wait for it; the port is closed after this."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def serve(model_dir: str | Path, **kw) -> Iterator[LocalServer]:
    """A started :class:`LocalServer` for ``model_dir`` (``kw`` as for it), stopped on exit."""
    server = LocalServer(model_dir, **kw)
    try:
        yield server.start()
    finally:
        server.stop()

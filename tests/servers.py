"""Real OpenAI-compatible servers for tests: ``transformers serve MODEL_DIR`` on CPU, float32, on a
localhost port (issue #12 item 4, issue #15).

    with serve(model_dir, log=tmp / "serve.log") as server:
        server.base_url, server.model          # http://127.0.0.1:PORT/v1, the served name
        server.stop()                          # the port closes: requests fail to connect
        server.start()                         # the same model on the same port again

``transformers serve`` pins the model name to the path string it was given (a request must use exactly
that name), rejects unknown body fields with 422 and token-id prompts with 400.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_S = 120
# Offline and without the CLI's PyPI version check; one thread so the server does not fight the test for cores.
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}


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
        pytest.fail("the `transformers` command is missing: install the dev extra (transformers[serving])")
    return found


class Server:
    """One ``transformers serve`` process for ``model_dir`` on ``port``; ``stop`` and ``start`` again keep
    the port, the model name and the log (appended)."""

    def __init__(self, model_dir: str | Path, port: int | None = None, log: str | Path | None = None):
        self.model = str(model_dir)
        self.port = port or free_port()
        self.log = Path(log) if log is not None else Path(os.devnull)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None
        # float32 so the replies equal local greedy decoding
        self.cmd = [cli(), "serve", self.model, "--device", "cpu", "--dtype", "float32",
                    "--host", "127.0.0.1", "--port", str(self.port)]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""

    def start(self) -> Server:
        """Start the process and wait until ``/health`` answers 200 (fails the test after STARTUP_S)."""
        if self.running:
            raise RuntimeError(f"the server on port {self.port} is already running")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | ENV)
        deadline = time.monotonic() + STARTUP_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"`{' '.join(self.cmd)}` exited with {self.process.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"`{' '.join(self.cmd)}` not ready after {STARTUP_S} s:\n{self._tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the process (killed after 10 s) and wait for it; the port is closed after this."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def serve(model_dir: str | Path, port: int | None = None, log: str | Path | None = None) -> Iterator[Server]:
    """A started :class:`Server` for ``model_dir`` (a free port unless ``port``), stopped on exit."""
    server = Server(model_dir, port, log)
    try:
        yield server.start()
    finally:
        server.stop()

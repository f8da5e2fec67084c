"""Start the simulators as real processes and talk to their control endpoints.

    with start_simulator("examples.erp_simulator", "--products", "50") as erp:
        erp.post("/_sim/freeze")
        print(erp.url, erp.get("/_sim/stats"))
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READY_PREFIX = "listening on "


@dataclass
class Simulator:
    """A running simulator process and its base URL (http://127.0.0.1:PORT)."""

    process: subprocess.Popen
    url: str
    stderr: IO[bytes] | None = field(default=None, repr=False)
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def client(self) -> httpx.Client:
        """An httpx client bound to url (created on first use)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=10)
        return self._client

    def get(self, path: str) -> Any:
        """GET url+path and return the JSON body (raises on HTTP errors)."""
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, json: Any = None) -> Any:
        """POST json to url+path and return the JSON body (raises on HTTP errors)."""
        response = self.client.post(path, json=json)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """SIGTERM the process, wait up to 5 s, then kill it; release pipes and the client."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._client is not None:
            self._client.close()
            self._client = None
        for stream in (self.process.stdout, self.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def read_stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        if self.stderr is None or self.stderr.closed:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_simulator(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 10) -> Simulator:
    """Run `python -m module --port 0 --parent-pid <ours> *args` and wait for its listening line.

    env entries are added to (not substituted for) this process's environment.
    Raises RuntimeError with the simulator's stderr if it does not come up within timeout seconds.
    """
    command = [sys.executable, "-m", module, "--port", "0", "--parent-pid", str(os.getpid()), *args]
    stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child can never block on it
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr,
                               stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    simulator = Simulator(process, "", stderr)
    line = _first_line(process, timeout)
    if not line.startswith(READY_PREFIX):
        process.kill()
        code = process.wait()
        message = simulator.read_stderr().strip() or f"first line: {line!r}"
        simulator.stop()
        raise RuntimeError(f"{module} did not start within {timeout} s (exit code {code}): {message}")
    simulator.url = line.removeprefix(READY_PREFIX).strip()
    return simulator


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of process, or '' if none arrives within timeout (then the process is killed)."""
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        process.kill()
        reader.join(5)
    return lines[0].decode(errors="replace") if lines else ""

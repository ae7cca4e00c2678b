"""The real service as a subprocess (`python -m app serve`) for end-to-end tests: a free
loopback port, waiting for /health, and stopping it however the test ends."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, *, status: int = 200, timeout: float = 180,
             request_timeout: float = 5) -> httpx.Response:
    """Poll `url` until it answers `status`; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {log.read_text()[-3000:]}")
        try:
            last = httpx.get(url, timeout=request_timeout)
            if last.status_code == status:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered {status}; last: {last!r}; log: {log.read_text()[-3000:]}")


@contextmanager
def serve(env: dict[str, str], log: Path, *args: str,
          request_timeout: float = 5) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the service on a free port with `env`, wait until /health is 200, yield (base_url, process)."""
    port = free_port()
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
                                    *args], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", process, log, request_timeout=request_timeout)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

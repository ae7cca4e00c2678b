"""The real service as a subprocess on a free loopback port: start it, wait until `/health`
answers, stop it however the caller ends. The benchmarks and the end-to-end tests share it, so
"is the server up yet" is decided in one place."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServerFailed(RuntimeError):
    """The server exited, or never answered as expected: one line saying so, then its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""


def wait_for(url: str, process: subprocess.Popen | None = None, log: Path | None = None, *, status: int = 200,
             timeout: float = 180, request_timeout: float = 5, interval: float = 0.5) -> httpx.Response:
    """Poll `url` until it answers `status`; fail with the server's log if it exits or never does.

    `process` is None for a server running in this process (a thread)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerFailed(f"server exited with {process.returncode} (log: {log}); its last lines:\n{_tail(log)}")
        try:
            last = httpx.get(url, timeout=request_timeout)
            if last.status_code == status:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(interval)
    raise ServerFailed(f"{url} never answered {status} in {timeout:.0f} s; last: {last!r} (log: {log}); "
                       f"its last lines:\n{_tail(log)}")


def serve_command(port: int, *args: str) -> list[str]:
    """`ils-rag serve` on loopback, as deployed (migrations and start-up checks included)."""
    return [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), *args]


@contextmanager
def running_server(env: dict[str, str], log: Path, command: Callable[[int], list[str]] = serve_command, *,
                   timeout: float = 180, request_timeout: float = 5, interval: float = 0.5,
                   stop_timeout: float = 30, on_start: Callable[[subprocess.Popen], None] | None = None,
                   ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `command(port)` with `env`, wait until /health is 200, yield (base_url, process);
    terminate it (kill after `stop_timeout`) on the way out. `on_start` sees the process before
    the wait (a CPU monitor counts its start-up as the benchmark's own)."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(command(port), env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        if on_start is not None:
            on_start(process)
        wait_for(f"{base}/health", process, log, timeout=timeout, request_timeout=request_timeout,
                 interval=interval)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()

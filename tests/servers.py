"""The real service as a subprocess (`python -m app serve`) for end-to-end tests; the helper
is the benchmarks' own (benchmarks.server), so tests and benchmarks start servers alike."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.server import ROOT, free_port, running_server, serve_command, wait_for

__all__ = ["ROOT", "free_port", "serve", "wait_for"]


@contextmanager
def serve(env: dict[str, str], log: Path, *args: str, request_timeout: float = 5,
          timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the service on a free port with `env`, wait until /health is 200 (at most `timeout`
    seconds: a first start that loads the samples takes longer), yield (base_url, process)."""
    with running_server(env, log, lambda port: serve_command(port, *args), request_timeout=request_timeout,
                        timeout=timeout) as server:
        yield server

"""The processes a benchmark measures: a server's memory, the embedded Postgres it started,
and who listens on a port. Read through psutil, so the figures mean the same on every run."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    return int(psutil.Process(pid).memory_info().rss)


def postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster of `pgdata`, if any (first line of postmaster.pid)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def stop_postgres(pgdata: Path) -> None:
    """Fast shutdown (SIGINT) of an embedded Postgres a benchmark's server started: pgserver only
    stops it when no process is registered as using it, and a killed server may still be."""
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    try:
        postmaster = psutil.Process(pid)
        if str(pgdata) in " ".join(postmaster.cmdline()):  # the pid is ours, not a recycled one
            postmaster.send_signal(signal.SIGINT)
            postmaster.wait(timeout=30)
    except (psutil.Error, OSError):
        pass


def pid_listening_on(url: str) -> int | None:
    port = httpx.URL(url).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            return connection.pid
    return None

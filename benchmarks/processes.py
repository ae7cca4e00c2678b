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


def _postmaster_line(pgdata: Path, index: int) -> str | None:
    """One line of `pgdata`'s postmaster.pid (Postgres documents their order), None when the
    file or the line is missing: the server is not running, or is still starting."""
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()[index].strip()
    except (OSError, IndexError):
        return None


def postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster of `pgdata`, if any (first line of postmaster.pid)."""
    line = _postmaster_line(pgdata, 0)
    try:
        pid = int(line) if line is not None else None
    except ValueError:
        return None
    return pid if pid is not None and psutil.pid_exists(pid) else None


def postmaster_socket_dir(pgdata: Path) -> Path | None:
    """The folder of the Unix socket the postmaster of `pgdata` listens on (fifth line of
    postmaster.pid): a client connects there as `host=<folder>`."""
    line = _postmaster_line(pgdata, 4)
    return Path(line) if line else None


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

"""`ils-rag serve` and `ils-rag load-samples`: the service and its demonstration data."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import app, console, prepared, start_metrics_listener

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # core.metrics.MULTIPROC_ENV, named here without importing the client

if TYPE_CHECKING:
    from core.settings import Settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: HOST setting).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT setting).")] = None,
    load_samples: Annotated[bool, typer.Option("--load-samples/--no-load-samples",
                                               help="Create the sample practices first.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on one port (uvicorn workers); "
                                                     "rate limits are shared through RATE_LIMIT_STORAGE.")] = 1,
) -> None:
    """Start the HTTP service (migrations are applied at start)."""
    # First, before anything imports prometheus_client: with --workers this process records in
    # multi-process mode too (its ingestion worker's job outcomes and queue depth, its pools).
    metrics_dir = _multiprocess_metrics_dir() if workers > 1 else None
    try:
        _serve(host, port, load_samples, workers)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(host: str | None, port: int | None, load_samples: bool, workers: int) -> None:
    import uvicorn

    from app.logs import configure_logging, logging_config
    from app.main import create_app, prepare_runtime
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # text on a terminal, else JSON lines
    log_config = logging_config(settings.log_level, settings.log_format)
    console.print(starting_line(settings), highlight=False)
    # Once, here: with --workers the embedded Postgres is started (and tuned) by this process and
    # outlives every worker, which attach to it; migrations and upload recovery run once.
    prepare_runtime(settings)
    if load_samples:
        from app.samples import load_samples as _load

        _load(console, settings)
    duties = _start_background_duties(settings) if workers > 1 else []
    listener = start_metrics_listener(settings)
    for line in address_lines(settings, host or settings.host, port or settings.port):
        console.print(line, highlight=False)
    if listener is not None:
        console.print(f"  metrics   http://{settings.metrics_host}:{settings.metrics_port}/metrics", highlight=False)
    # uvicorn re-raises SIGTERM once it has shut down gracefully; its default action would end the
    # process before the exit hooks run, leaving the embedded Postgres running (and this process
    # registered with it). Exiting normally instead lets the last process stop it.
    signal.signal(signal.SIGTERM, _exit_normally)
    # proxy_headers=False: uvicorn would believe X-Forwarded-For from 127.0.0.1 (any local process);
    # the app believes it only from TRUSTED_PROXIES (app.main).
    try:
        if workers > 1:
            uvicorn.run("app.main:create_worker_app", factory=True, host=host or settings.host,
                        port=port or settings.port, workers=workers, log_level=settings.log_level.lower(),
                        log_config=log_config, proxy_headers=False)
        else:
            uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                        log_level=settings.log_level.lower(), log_config=log_config, proxy_headers=False)
    finally:
        for stop in duties:
            stop()
        if listener is not None:
            listener.shutdown()


def _multiprocess_metrics_dir() -> Path | None:
    """Prometheus' multi-process mode for the workers: each writes its samples under
    PROMETHEUS_MULTIPROC_DIR and the listener here adds them up. Set before the workers are
    spawned (they read it when they first import the client). Returns the folder to remove at
    exit when this process made it; an operator's own folder is emptied of old samples instead."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        folder = Path(configured)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # a previous run's processes: their pids may be reused
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="ils-rag-metrics-"))
    os.environ[MULTIPROC_ENV] = str(made)
    return made


def _start_background_duties(settings: Settings) -> list[Callable[[], None]]:
    """What a deployment needs once, not once per worker, run on threads of this process:
    the per-company index upkeep and, unless INGEST_IN_PROCESS_WORKER=false, one ingestion
    worker (the queue hands each job to one consumer, wherever it runs)."""
    from core.tenant_indexes import TenantIndexMaintainer

    stops: list[Callable[[], None]] = [
        TenantIndexMaintainer(settings.tenant_index_check_s, settings.tenant_index_min_chunks).start().stop]
    if getattr(settings, "ingest_in_process_worker", False):
        from app.main import PendingStatements
        from indexing.queue import BackgroundWorker

        stops.append(BackgroundWorker(settings, **PendingStatements(settings).hooks()).start().stop)
    return stops


def starting_line(settings: Settings) -> str:
    """What starts and where its data lives: the first line of a start."""
    from core import __version__

    if settings.database_url:
        database = "the Postgres at DATABASE_URL"
    else:
        database = f"embedded Postgres in {Path(settings.data_dir) / 'pg'}"
    return f"ILS RAG {__version__} starting: {database}"


def address_lines(settings: Settings, host: str, port: int) -> list[str]:
    """Where to go once it listens: the page first, since that is what a person opens."""
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"  # listening everywhere: this machine's own address works for its user
    base = f"http://{shown}:{port}"
    lines = [f"ILS RAG listening on {base} (Ctrl+C stops it)", f"  web page  {base}/app"]
    if settings.api_docs_enabled:
        lines.append(f"  API docs  {base}/docs")
    return lines


def _exit_normally(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command("load-samples")
def load_samples_command() -> None:
    """Create the two sample practices, their users, and ingest their documents (idempotent)."""
    from app.samples import load_samples
    from core.settings import get_settings

    prepared()
    load_samples(console, get_settings())

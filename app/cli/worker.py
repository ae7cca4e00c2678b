"""`ils-rag worker`: consume the ingestion queue (indexing.queue) until stopped.

A worker needs only DATABASE_URL (and the model): it claims queued uploads across companies
and indexes each one as its own company. Run as many as there are cores to spare, on any
machine that reaches the database; set INGEST_IN_PROCESS_WORKER=false on the API then.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from app.cli.common import app, console, prepared, start_metrics_listener


@app.command("worker")
def worker(
    idle_exit: Annotated[float | None, typer.Option(
        help="Exit after the queue has been empty this many seconds (batch runs); default: run until stopped.")]
    = None,
    company_id: Annotated[str | None, typer.Option(
        help="Take only this company's jobs (a worker dedicated to one large tenant).")] = None,
) -> None:
    """Index queued uploads (the ingestion queue) until SIGTERM/Ctrl-C."""
    from app.main import PendingStatements
    from core.embeddings import get_embed_model
    from core.settings import get_settings
    from indexing.queue import Worker

    prepared()
    settings = get_settings()
    get_embed_model()  # loaded before the first claim, so a job is never held while the model loads
    runner = Worker(settings, company_id=company_id, **PendingStatements(settings).hooks())
    # A dedicated worker's job outcomes, embedding time and queue depth are its own to expose:
    # an API process only sees the jobs its in-process worker (if any) runs.
    listener = start_metrics_listener(settings)

    def _stop(signum: int, frame: object) -> None:
        runner.stop()  # the job in hand finishes; a second signal is the default (exit at once)
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    console.print(f"ingest worker {runner.name} waiting for jobs", highlight=False)
    if listener is not None:
        console.print(f"  metrics   http://{settings.metrics_host}:{settings.metrics_port}/metrics", highlight=False)
    try:
        done = runner.run_forever(idle_exit_s=idle_exit)
    finally:
        if listener is not None:
            listener.shutdown()
    console.print(f"ingest worker {runner.name} stopped after {done} job(s)", highlight=False)

"""`ils-rag serve` and `ils-rag load-samples`: the service and its demonstration data."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.common import app, console, prepared

if TYPE_CHECKING:
    from core.settings import Settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: HOST setting).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT setting).")] = None,
    load_samples: Annotated[bool, typer.Option("--load-samples/--no-load-samples",
                                               help="Create the sample practices first.")] = False,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Start the HTTP service (migrations are applied at start)."""
    import uvicorn

    from app.logs import configure_logging, logging_config
    from app.main import create_app, prepare_runtime
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # text on a terminal, else JSON lines
    log_config = logging_config(settings.log_level, settings.log_format)
    console.print(starting_line(settings), highlight=False)
    prepare_runtime(settings)
    if load_samples:
        from app.samples import load_samples as _load

        _load(console)
    for line in address_lines(settings, host or settings.host, port or settings.port):
        console.print(line, highlight=False)
    # uvicorn re-raises SIGTERM once it has shut down gracefully; its default action would end the
    # process before the exit hooks run, leaving the embedded Postgres running (and this process
    # registered with it). Exiting normally instead lets the last process stop it.
    signal.signal(signal.SIGTERM, _exit_normally)
    # proxy_headers=False: uvicorn would believe X-Forwarded-For from 127.0.0.1 (any local process);
    # the app believes it only from TRUSTED_PROXIES (app.main).
    if workers > 1:
        uvicorn.run("app.main:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                    workers=workers, log_level=settings.log_level.lower(), log_config=log_config,
                    proxy_headers=False)
    else:
        uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                    log_level=settings.log_level.lower(), log_config=log_config, proxy_headers=False)


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

    prepared()
    load_samples(console)

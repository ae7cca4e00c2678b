"""What every `ils-rag` command module shares: the Typer groups, the consoles, `fail` and
`prepared`. Command modules import this module and never each other, so the CLI has no
import cycle; `app.cli` imports every command module once, which registers its commands."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Column, Table

from core.terminal import plural, wide_console

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from core.settings import Settings

app = typer.Typer(help="ILS RAG: multi-tenant retrieval-augmented generation for optical practices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
companies_app = typer.Typer(help="Companies (tenants).", no_args_is_help=True)
users_app = typer.Typer(help="Users of a company.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (each writes JSON to benchmarks/results/).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(companies_app, name="companies")
app.add_typer(users_app, name="users")
app.add_typer(bench_app, name="bench")

# Whole tables and ids in a file or a pipe (core.terminal.wide_console), the terminal's width on one.
console = wide_console()
err_console = wide_console(stderr=True)


@app.callback()
def configure_cli_logging() -> None:
    """Every command logs like the service (LOG_LEVEL, LOG_FORMAT: text on a terminal), with
    the libraries' own narration at DEBUG. Settings that do not validate are the command's to
    report: logging then keeps its defaults."""
    from app.logs import configure_logging
    from core.settings import Settings

    try:
        settings = Settings()
    except ValueError:  # a ValidationError: reported by the command that needs the settings
        configure_logging()
        return
    configure_logging(settings.log_level, settings.log_format)


JSON_OPTION = typer.Option("--json/--table", help="Print JSON (one object per row) instead of a table.")


def show_rows(rows: list[dict[str, Any]], as_json: bool = False, whole: tuple[str, ...] = ("id",)) -> None:
    """A listing as a table, or as JSON for scripts. The `whole` columns (ids) are never cut
    or wrapped: on a narrow terminal the other columns give way."""
    if as_json:
        print(json.dumps(rows, default=str, ensure_ascii=False, indent=2))
        return
    columns = list(rows[0]) if rows else []
    table = Table(*(Column(name, no_wrap=True, min_width=max(len(str(row[name])) for row in rows))
                    if name in whole else Column(name) for name in columns))
    for row in rows:
        table.add_row(*("" if row[name] is None else str(row[name]) for name in columns))
    console.print(table if rows else "(none)")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red line on stderr and hand back the exit to raise: bad input ends a command
    with a message, never a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def prepared() -> None:
    """Check the database and apply migrations before a command touches data."""
    from core.db.checks import check_database
    from core.migrate import upgrade

    check_database()
    upgrade()


def sync_tenant_indexes_verbose(min_chunks: int, companies: list[str] | None = None) -> None:
    """Build/drop the per-company HNSW indexes (core.tenant_indexes), saying what changed."""
    from core.tenant_indexes import sync_tenant_indexes

    result = sync_tenant_indexes(min_chunks, companies=companies, on_build=lambda company, chunks: console.print(
        f"built the HNSW index of company {company} ({plural(chunks, 'chunk')})", highlight=False))
    if result.skipped:
        console.print("tenant indexes: another process is updating them", highlight=False)
    elif result.dropped:
        console.print(f"tenant indexes: dropped {len(result.dropped)} no longer needed", highlight=False)


def start_metrics_listener(settings: Settings) -> WSGIServer | None:
    """/metrics on METRICS_HOST:METRICS_PORT (none when the port is 0), for `serve` and `worker`:
    apart from the API's port, so a proxy that publishes the API does not publish the metrics."""
    if not settings.metrics_port:
        return None
    from core.metrics import start_listener

    server, _ = start_listener(settings.metrics_host, settings.metrics_port)
    return server

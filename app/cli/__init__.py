"""`ils-rag`: the one command-line entry point.

Each module here holds one group of commands and imports only app.cli.common (the Typer
groups, consoles, `fail`, `prepared`); importing them below registers their commands. A new
command goes in the module of its group, or a new module imported here.
"""

from __future__ import annotations

# Imported in the order `ils-rag --help` lists them.
from app.cli import serve, worker, ingest, ask, evaluate, answers, db, companies, users, bench, platform  # noqa: F401  # isort: skip
from app.cli.common import app, err_console
from core.errors import ConfigurationError, ServiceError

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI; a configuration or service error ends it with one line and exit code 2."""
    try:
        app()
    except (ConfigurationError, ServiceError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None

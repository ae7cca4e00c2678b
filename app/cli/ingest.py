"""`ils-rag ingest` and `ils-rag migrate-legacy`: thin wrappers that resolve the company, call
indexing.*, and print the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import app, console, fail, prepared, sync_tenant_indexes_verbose
from indexing.readers import SUPPORTED_EXTENSIONS


@app.command("ingest")
def ingest(
    folder: Annotated[Path, typer.Argument(help=f"Folder of {' '.join(SUPPORTED_EXTENSIONS)} files.")],
    company: Annotated[str, typer.Option(help="Company slug.")],
    category: Annotated[str | None, typer.Option(help="Category for new/updated files.")] = None,
    sync: Annotated[bool, typer.Option("--sync/--no-sync", help="Remove documents whose files are gone.")] = False,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Threads reading and parsing files.")] = 1,
) -> None:
    """Index a folder into a company's knowledge base (incremental and idempotent)."""
    from auth.users import get_company_by_slug
    from core.db.owner import admin_session_scope
    from core.embeddings import get_embed_model
    from core.settings import get_settings
    from indexing.folder import ingest_folder
    from retrieval.statements import precompute

    settings = get_settings()
    if not folder.is_dir():
        raise fail(f"folder {str(folder)!r} does not exist or is not a directory")
    prepared()
    with admin_session_scope() as session:  # the company directory: row-level security shows it to the owner
        company_id = get_company_by_slug(session, company).id
    report = ingest_folder(folder, company_id, settings=settings, category=category, sync=sync, workers=workers,
                           show_progress=True)
    # statement vectors of new chunks: offline answers embed none
    precompute(company_id, get_embed_model(), settings.embedding_key)
    console.print(report.summary(), highlight=False)
    if settings.tenant_index_min_chunks > 0:  # grown past the threshold: its own index at once
        sync_tenant_indexes_verbose(settings.tenant_index_min_chunks, [company_id])
    if report.failed:
        raise typer.Exit(1)


@app.command("migrate-legacy")
def migrate_legacy(
    source_url: Annotated[str, typer.Option(help="SQLAlchemy/Postgres URL of the seed database (read only).")],
) -> None:
    """Import the seed's ai_knowledge_base rows as documents (keeps legacy ids; re-runnable)."""
    from core.settings import get_settings
    from indexing.legacy import migrate_legacy as run

    prepared()
    report = run(source_url, get_settings(), show_progress=True)
    table = Table("legacy id", "company", "outcome", "reason")
    for row in report.rows:
        table.add_row(row.legacy_id, row.company_id or "", row.outcome, row.reason)
    console.print(table)
    console.print(report.summary(), highlight=False)
    if report.failed:
        raise typer.Exit(1)

"""CLI commands of the ingestion room: `ingest`, `migrate-legacy`, `bench ingest`.

Thin wrappers: resolve the company, call indexing.*, print the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table


def register(app: typer.Typer) -> None:
    from app.cli import bench_app, console, fail, prepared, sync_tenant_indexes_verbose

    @app.command("ingest")
    def ingest(
        folder: Annotated[Path, typer.Argument(help="Folder of .md .txt .pdf .docx .html .csv files.")],
        company: Annotated[str, typer.Option(help="Company slug.")],
        category: Annotated[str | None, typer.Option(help="Category for new/updated files.")] = None,
        sync: Annotated[bool, typer.Option("--sync", help="Remove documents whose files are gone.")] = False,
        workers: Annotated[int, typer.Option(min=1, max=32, help="Threads reading and parsing files.")] = 1,
    ) -> None:
        """Index a folder into a company's knowledge base (incremental and idempotent)."""
        from auth.users import get_company_by_slug
        from core.database import session_scope
        from core.settings import get_settings
        from indexing.folder import ingest_folder

        if not folder.is_dir():
            raise fail(f"folder {str(folder)!r} does not exist or is not a directory")
        prepared()
        with session_scope() as session:
            company_id = get_company_by_slug(session, company).id
        report = ingest_folder(folder, company_id, category=category, sync=sync, workers=workers,
                               show_progress=True)
        console.print(report.summary(), highlight=False)
        if get_settings().tenant_index_min_chunks > 0:  # grown past the threshold: its own index at once
            sync_tenant_indexes_verbose([company_id])
        if report.failed:
            raise typer.Exit(1)

    @app.command("migrate-legacy")
    def migrate_legacy(
        source_url: Annotated[str, typer.Option(help="SQLAlchemy/Postgres URL of the seed database (read only).")],
    ) -> None:
        """Import the seed's ai_knowledge_base rows as documents (keeps legacy ids; re-runnable)."""
        from indexing.legacy import migrate_legacy as run

        prepared()
        report = run(source_url)
        table = Table("legacy id", "company", "outcome", "reason")
        for row in report.rows:
            table.add_row(row.legacy_id, row.company_id or "", row.outcome, row.reason)
        console.print(table)
        console.print(report.summary(), highlight=False)
        if report.failed:
            raise typer.Exit(1)

    @bench_app.command("ingest")
    def bench_ingest(
        output: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path(
            "bench/results/ingest.json"),
        repeat: Annotated[int, typer.Option(min=1, max=5, help="Timed rounds (best is kept).")] = 1,
    ) -> None:
        """Chunks/s of the whole ingestion pipeline vs the bare embedding model, same texts, same run."""
        from indexing.bench import run_ingest_bench

        prepared()
        result = run_ingest_bench(output, repeat=repeat)
        table = Table("measure", "chunks", "seconds", "chunks/s")
        table.add_row("bare model", str(result["chunks"]), f"{result['bare_seconds']:.2f}",
                      f"{result['bare_chunks_per_s']:.1f}")
        table.add_row("whole pipeline", str(result["pipeline_chunks"]), f"{result['pipeline_seconds']:.2f}",
                      f"{result['pipeline_chunks_per_s']:.1f}")
        console.print(table)
        verdict = "meets" if result["ratio"] >= result["target_ratio"] else "misses"
        console.print(f"pipeline/bare ratio {result['ratio']:.2f} ({verdict} the {result['target_ratio']} target); "
                      f"written to {output}", highlight=False)

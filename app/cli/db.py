"""`ils-rag db ...`: the schema and the per-company search indexes."""

from __future__ import annotations

from app.cli.common import console, db_app, prepared, sync_tenant_indexes_verbose


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from core.db.checks import check_database
    from core.migrate import current_revision, upgrade

    version = check_database()
    upgrade()
    console.print(f"schema at revision {current_revision()} (pgvector {version})")


@db_app.command("tenant-indexes")
def db_tenant_indexes() -> None:
    """Give each company above TENANT_INDEX_MIN_CHUNKS its own HNSW index (and drop unneeded ones)."""
    from core.settings import get_settings
    from core.tenant_indexes import tenant_index_summary

    settings = get_settings()
    prepared()
    sync_tenant_indexes_verbose(settings.tenant_index_min_chunks)
    console.print(tenant_index_summary(settings.tenant_index_min_chunks), highlight=False)

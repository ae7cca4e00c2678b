"""Per-tenant HNSW indexes: one partial index on data_chunks for each company with at least
TENANT_INDEX_MIN_CHUNKS chunks.

Why: a filtered walk of the one shared HNSW index visits every company's vectors and drops
the other tenants' rows one by one, so a tenant holding a few percent of the table costs
several times a small one, and its recall suffers: the walk may end before it has found k
rows of the tenant. A partial index `WHERE company_id = '<id>'` is a graph of that tenant's
chunks alone: nothing is filtered out, and the planner picks it by itself for that tenant's
queries (`ils-rag bench search` measures both; README, *Performance*, has the figures).
This is pgvector's own advice for filtering on a column
with few, large values; smaller tenants keep the exact scan (core.vector_store), which is
exact and as fast at their size. The shared index stays: it serves a tenant that grew past
the threshold until its own index is built.

Indexes are DDL, so they are built and dropped by the owner role (never the service role),
CONCURRENTLY (no lock on writers), by `sync_tenant_indexes`: at `ils-rag serve` start and
then every TENANT_INDEX_CHECK_S in the background (`TenantIndexMaintainer`), after
`ils-rag ingest`, and by `ils-rag db tenant-indexes`. A tenant's index is dropped once it
shrinks below half the threshold (so a tenant near it does not flap), or when it is gone.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import sqlalchemy as sa

from core.db.owner import get_admin_engine
from core.sql_text import quoted_identifier, quoted_literal
from core.tenant_plans import INDEX_PREFIX, forget_tenant_plans, tenant_index_name

logger = logging.getLogger(__name__)

HNSW_WITH = "m = 16, ef_construction = 128"  # as the shared index (migration 0013 says why 128)
BUILD_MEMORY = "256MB"  # maintenance_work_mem of a build: a 150k-chunk graph fits, so it is built in memory
_LOCK_KEY = "ils-tenant-indexes"  # one sync at a time across processes (server, CLI)
# Company ids are generated UUIDs; the predicate is DDL (no bound parameters), so anything
# else is refused rather than quoted.
_SAFE_COMPANY_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass
class IndexSync:
    built: list[str] = field(default_factory=list)  # company ids
    dropped: list[str] = field(default_factory=list)  # index names
    skipped: bool = False  # another process holds the sync lock
    seconds: float = 0.0


def _tenant_sizes(connection: sa.Connection, companies: Collection[str] | None = None) -> dict[str, int]:
    if companies is None:
        rows = connection.execute(sa.text("SELECT company_id, count(*) FROM data_chunks GROUP BY company_id"))
    else:
        rows = connection.execute(sa.text(
            "SELECT company_id, count(*) FROM data_chunks WHERE company_id = ANY(:c) GROUP BY company_id"),
            {"c": list(companies)})
    return {row[0]: int(row[1]) for row in rows}


def _existing(connection: sa.Connection) -> dict[str, bool]:
    """Tenant index name -> valid (an interrupted CONCURRENTLY build leaves an invalid one)."""
    return {row[0]: bool(row[1]) for row in connection.execute(sa.text(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'public.data_chunks'::regclass AND starts_with(c.relname, :prefix)"),
        {"prefix": INDEX_PREFIX})}


def sync_tenant_indexes(min_chunks: int, companies: Collection[str] | None = None,
                        on_build: Callable[[str, int], None] | None = None) -> IndexSync:
    """Build the missing tenant indexes (largest tenant first) and drop the unneeded ones.

    `min_chunks` (TENANT_INDEX_MIN_CHUNKS) 0 drops every tenant index; `companies` limits the
    sync to those companies (after one company's ingestion, say) instead of every company in the table."""
    started = time.perf_counter()
    result = IndexSync()
    engine = get_admin_engine()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.execute(sa.text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                                  {"k": _LOCK_KEY}).scalar():
            result.skipped = True
            return result
        try:
            sizes = _tenant_sizes(connection, companies)
            existing = _existing(connection)
            if companies is not None:
                scope = {tenant_index_name(company) for company in companies}
                existing = {name: valid for name, valid in existing.items() if name in scope}
            names = {tenant_index_name(company): company for company in sizes}
            wanted = {} if min_chunks <= 0 else {
                name: company for name, company in names.items()
                if sizes[company] >= min_chunks or (existing.get(name) and sizes[company] * 2 >= min_chunks)}
            for name, valid in sorted(existing.items()):
                if name not in wanted or not valid:
                    connection.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted_identifier(name)}"))
                    result.dropped.append(name)
            connection.execute(sa.text(f"SET maintenance_work_mem = '{BUILD_MEMORY}'"))
            for name, company in sorted(wanted.items(), key=lambda item: -sizes[item[1]]):
                if existing.get(name) or not _SAFE_COMPANY_ID.match(company):
                    continue
                connection.execute(sa.text(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quoted_identifier(name)} ON public.data_chunks "
                    f"USING hnsw (embedding vector_cosine_ops) WITH ({HNSW_WITH}) "
                    f"WHERE company_id = {quoted_literal(company)}"))
                result.built.append(company)
                if on_build:
                    on_build(company, sizes[company])
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": _LOCK_KEY})
    if result.built or result.dropped:
        forget_tenant_plans()  # this process plans with the new indexes at once; others within their TTL
        logger.info("tenant indexes: built %d, dropped %d in %.1f s", len(result.built), len(result.dropped),
                    time.perf_counter() - started)
    result.seconds = time.perf_counter() - started
    return result


def tenant_index_summary(min_chunks: int) -> str:
    """One line for operators: how many companies have their own index, and the threshold."""
    with get_admin_engine().connect() as connection:
        existing = _existing(connection)
    valid = sum(existing.values())
    invalid = f", {len(existing) - valid} invalid" if valid < len(existing) else ""
    own = "company has its own" if valid == 1 else "companies have their own"
    return (f"{valid} {own} HNSW index{invalid} "
            f"(TENANT_INDEX_MIN_CHUNKS={min_chunks})")


class TenantIndexMaintainer:
    """Runs `sync_tenant_indexes` in a background thread: at once, then every `interval_s`
    (not at all while TENANT_INDEX_MIN_CHUNKS is 0: the indexes are then the operator's)."""

    def __init__(self, interval_s: float, min_chunks: int) -> None:
        self.interval_s = interval_s
        self.min_chunks = min_chunks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tenant-indexes", daemon=True)

    def start(self) -> TenantIndexMaintainer:
        if self.min_chunks > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sync_tenant_indexes(self.min_chunks)
            except Exception:  # a database outage must not end the loop: the next round retries
                logger.warning("tenant index maintenance failed; retrying in %.0f s", self.interval_s,
                               exc_info=True)
            self._stop.wait(self.interval_s)

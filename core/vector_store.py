"""The chunk store: LlamaIndex's PGVectorStore on our shared engine, with a tenant guard.

Migrations own the table (`data_chunks`), so the store never runs setup DDL. The guard
makes every read and delete that reaches SQL carry a `company_id` filter: PGVectorStore
itself would happily query or delete across tenants.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from llama_index.vector_stores.postgres import PGVectorStore
from llama_index.vector_stores.postgres.base import DBEmbeddingRow

from core.database import current_company, get_async_engine, get_engine, tenant
from core.embeddings import configured_dimensions

CHUNK_TABLE = "chunks"  # PGVectorStore prefixes it: the SQL table is data_chunks
COMPANY_KEY = "company_id"
TEXT_SEARCH_CONFIG = "english"

# Filtered vector search: exact scan or HNSW, by tenant size. Row-level security adds
# `company_id = current_setting('app.company_id')` to every query, which the planner can only
# estimate as 1/(number of companies) of the table, so it always picks the (company_id, id)
# b-tree plus an exact sort: exact and fast for small tenants, but it reads every chunk of a
# large one (20k chunks: ~10x slower than the HNSW walk in `ils-rag bench search`). From this
# size on, the query walks the HNSW index instead (iterative scan, see core.database) with a
# wider candidate list, fetching HNSW_OVERFETCH times the rows asked for and keeping the
# nearest: recall@10 0.98-0.99 on the benchmark's large tenants (0.95-0.97 without).
HNSW_MIN_TENANT_CHUNKS = 3_000
HNSW_EF_SEARCH = 200
HNSW_OVERFETCH = 2
TENANT_SIZE_TTL_S = 300.0
_tenant_sizes: dict[str, tuple[float, int]] = {}  # company id -> (valid until, chunks)


def tenant_chunk_count(company_id: str) -> int:
    """Chunks of one company, counted under its tenant scope and cached for TENANT_SIZE_TTL_S."""
    now = time.monotonic()
    cached = _tenant_sizes.get(company_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    with tenant(company_id), get_engine().connect() as connection:
        count = int(connection.execute(sa.text("SELECT count(*) FROM data_chunks WHERE company_id = :c"),
                                       {"c": company_id}).scalar() or 0)
    _tenant_sizes[company_id] = (now + TENANT_SIZE_TTL_S, count)
    return count


def _company_of(filters: MetadataFilters | None) -> str | None:
    for f in filters.filters if filters is not None else []:
        if isinstance(f, MetadataFilter) and f.key == COMPANY_KEY and f.operator == FilterOperator.EQ:
            return str(f.value)
    return None


class UnscopedQueryError(RuntimeError):
    """A store operation was attempted without a company filter: a bug, never user input."""


def _has_company_filter(filters: MetadataFilters | None) -> bool:
    if filters is None or filters.condition != "and":
        return False
    return any(
        isinstance(f, MetadataFilter) and f.key == COMPANY_KEY and f.operator == FilterOperator.EQ and f.value
        for f in filters.filters
    )


class TenantGuardedPGVectorStore(PGVectorStore):
    """Refuses any SQL that is not filtered on `company_id` at the top level."""

    def _apply_filters_and_limit(self, stmt: Any, limit: int, metadata_filters: MetadataFilters | None = None) -> Any:
        if not _has_company_filter(metadata_filters):
            raise UnscopedQueryError("chunk query without a company_id filter")
        return super()._apply_filters_and_limit(stmt, limit, metadata_filters)

    def _query_with_score(self, embedding: list[float] | None, limit: int = 10,
                          metadata_filters: MetadataFilters | None = None, **kwargs: Any) -> list[DBEmbeddingRow]:
        company_id = _company_of(metadata_filters)
        if embedding is None or company_id is None or tenant_chunk_count(company_id) < HNSW_MIN_TENANT_CHUNKS:
            return super()._query_with_score(embedding, limit, metadata_filters, **kwargs)
        # A large tenant: the same statement, planned as an HNSW walk (see HNSW_MIN_TENANT_CHUNKS).
        stmt = self._build_query(embedding, limit * HNSW_OVERFETCH, metadata_filters, **kwargs)
        with self._session() as session, session.begin():
            session.execute(sa.text("SET LOCAL enable_sort = off"))  # only the index yields distance order
            session.execute(sa.text(f"SET LOCAL hnsw.ef_search = {int(HNSW_EF_SEARCH)}"))
            rows = session.execute(stmt).all()
        rows = sorted(rows, key=lambda row: row.distance)[:limit]  # relaxed_order: nearly, not exactly, sorted
        skip = {"id", "node_id", "text", "metadata_", "distance"}
        return [DBEmbeddingRow(node_id=row.node_id, text=row.text, metadata=row.metadata_,
                               custom_fields={k: v for k, v in row._asdict().items() if k not in skip},
                               similarity=1 - row.distance)
                for row in rows]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        # IngestionPipeline calls delete(ref_doc_id) on upserts; the upstream version matches
        # the id alone, so scope it to the tenant the caller entered with core.database.tenant().
        company_id = current_company()
        if not company_id:
            raise UnscopedQueryError("delete(ref_doc_id) outside a tenant() scope")
        self.delete_nodes(filters=company_filter(company_id, MetadataFilter(key="ref_doc_id", value=ref_doc_id)))

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        if not _has_company_filter(filters):
            raise UnscopedQueryError("delete_nodes without a company_id filter")
        super().delete_nodes(node_ids=node_ids, filters=filters, **delete_kwargs)

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[Any]:
        if not _has_company_filter(filters):
            raise UnscopedQueryError("get_nodes without a company_id filter")
        return super().get_nodes(node_ids=node_ids, filters=filters)

    def clear(self) -> None:
        raise UnscopedQueryError("clear() would empty every tenant's chunks")


def company_filter(company_id: str, *extra: MetadataFilter) -> MetadataFilters:
    """The only way callers should build store filters: from a verified company id."""
    if not company_id or "'" in company_id or "\\" in company_id:
        raise UnscopedQueryError("invalid company id for a store filter")
    return MetadataFilters(filters=[MetadataFilter(key=COMPANY_KEY, value=company_id), *extra])


@lru_cache
def get_vector_store() -> TenantGuardedPGVectorStore:
    return TenantGuardedPGVectorStore(
        engine=get_engine(),
        async_engine=get_async_engine(),
        table_name=CHUNK_TABLE,
        embed_dim=configured_dimensions(),
        hybrid_search=True,
        text_search_config=TEXT_SEARCH_CONFIG,
        use_jsonb=True,
        perform_setup=False,
    )

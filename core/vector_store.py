"""The chunk store: LlamaIndex's PGVectorStore on our shared engine, with a tenant guard.

Migrations own the table (`data_chunks`), so the store never runs setup DDL. The guard
makes every read and delete that reaches SQL carry a `company_id` filter: PGVectorStore
itself would happily query or delete across tenants.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from llama_index.vector_stores.postgres import PGVectorStore
from llama_index.vector_stores.postgres.base import DBEmbeddingRow
from sqlalchemy import VARCHAR, Column

from core.chunk_filters import COMPANY_KEY, compile_filter
from core.db.engines import get_async_engine, get_engine
from core.db.replica import read_engine
from core.db.tenant_scope import current_company, transaction_settings
from core.embeddings import configured_dimensions
from core.tenant_plans import tenant_plan

CHUNK_TABLE = "chunks"  # PGVectorStore prefixes it: the SQL table is data_chunks
TEXT_SEARCH_CONFIG = "english"

# Filtered vector search: the plan is chosen here, by tenant, not left to the planner
# (`ils-rag bench search` measures each plan; README, *Performance*, has the figures):
# - a tenant with its own HNSW index (core.tenant_indexes, from TENANT_INDEX_MIN_CHUNKS on)
#   walks it with ef_search 100 and no over-fetch: nothing is filtered out of its graph, so
#   the first ef_search candidates come back in order (a larger k widens ef_search to k);
# - otherwise, below HNSW_MIN_TENANT_CHUNKS, an exact scan of the tenant's rows (its
#   (company_id, id) b-tree, then a top-k sort): exact, and the fastest plan at that size
#   once vectors are stored inline (migration 0003). Left alone, the planner would walk the
#   shared HNSW index well before that size with the connection's default candidate list:
#   slower than the scan there, and it misses some of the top 10;
# - a large tenant whose own index is not built yet walks the shared index (iterative scan,
#   see core.db.connections) with a wider candidate list, fetching HNSW_OVERFETCH times the rows
#   asked for (at least HNSW_MIN_CANDIDATES) and keeping the nearest: relaxed-order
#   iterations return rows slightly out of order, so a bare LIMIT could cut a true top-k row.
HNSW_MIN_TENANT_CHUNKS = 5_000
HNSW_EF_SEARCH = 200
HNSW_OVERFETCH = 2
HNSW_MIN_CANDIDATES = 20
TENANT_INDEX_EF_SEARCH = 100
MAX_EF_SEARCH = 1000  # pgvector's upper bound
# Transaction-local planner settings of each plan (core.db.tenant_scope.transaction_settings: set
# in the same round trip as the tenant, at BEGIN).
_EXACT_PLAN = {"enable_indexscan": "off"}  # the b-tree as a bitmap scan + top-k sort, never an HNSW walk
_SHARED_HNSW_PLAN = {"enable_sort": "off", "hnsw__ef_search": str(HNSW_EF_SEARCH)}  # only an index yields the order
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
    """Refuses any SQL that is not filtered on `company_id` at the top level, and names
    `company_id` in every row it inserts (migration 0012: Citus routes an INSERT by the
    distribution column the statement carries)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "company_id" not in self._table_class.__table__.c:
            self._table_class.company_id = Column(VARCHAR(64), nullable=False)

    def _node_to_table_row(self, node: BaseNode) -> Any:
        row = super()._node_to_table_row(node)
        row.company_id = row.metadata_.get(COMPANY_KEY)  # the CHECK keeps it equal to the metadata
        return row

    def _build_filter_clause(self, filter_: MetadataFilter) -> Any:
        # Never the upstream compiler: it pastes keys and values into the SQL text.
        return compile_filter(self._table_class.metadata_, filter_)

    def _apply_filters_and_limit(self, stmt: Any, limit: int, metadata_filters: MetadataFilters | None = None) -> Any:
        if not _has_company_filter(metadata_filters):
            raise UnscopedQueryError("chunk query without a company_id filter")
        return super()._apply_filters_and_limit(stmt, limit, metadata_filters)

    def _query_with_score(self, embedding: list[float] | None, limit: int = 10,
                          metadata_filters: MetadataFilters | None = None, **kwargs: Any) -> list[DBEmbeddingRow]:
        company_id = _company_of(metadata_filters)
        if embedding is None or company_id is None:
            return super()._query_with_score(embedding, limit, metadata_filters, **kwargs)
        # The same statement, planned per tenant (see HNSW_MIN_TENANT_CHUNKS).
        plan = tenant_plan(company_id)
        if plan.own_index:
            ef_search = min(max(TENANT_INDEX_EF_SEARCH, limit), MAX_EF_SEARCH)
            settings, fetch = {"enable_sort": "off", "hnsw__ef_search": str(ef_search)}, limit
        elif plan.chunks >= HNSW_MIN_TENANT_CHUNKS:
            settings, fetch = _SHARED_HNSW_PLAN, max(limit * HNSW_OVERFETCH, HNSW_MIN_CANDIDATES)
        else:
            settings, fetch = _EXACT_PLAN, limit
        statement = self._build_query(embedding, fetch, metadata_filters, **kwargs)
        # A plain connection, not an ORM session: the rows are read, never mapped to objects. The
        # service's store reads from the replica when there is one; a store on another engine
        # (the owner's, in `ils-rag bench tenant-context`) reads where it was pointed.
        engine = read_engine() if self._engine is get_engine() else self._engine
        with transaction_settings(**settings), engine.connect() as connection:
            rows = connection.execute(statement).all()
        rows = sorted(rows, key=lambda row: row.distance)[:limit]  # relaxed_order: nearly, not exactly, sorted
        skip = {"id", "node_id", "text", "metadata_", "distance"}
        return [DBEmbeddingRow(node_id=row.node_id, text=row.text, metadata=row.metadata_,
                               custom_fields={k: v for k, v in row._asdict().items() if k not in skip},
                               similarity=1 - row.distance)
                for row in rows]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        # IngestionPipeline calls delete(ref_doc_id) on upserts; the upstream version matches
        # the id alone, so scope it to the tenant the caller entered with core.db.tenant_scope.tenant().
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

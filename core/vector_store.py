"""The chunk store: LlamaIndex's PGVectorStore on our shared engine, with a tenant guard.

Migrations own the table (`data_chunks`), so the store never runs setup DDL. The guard
makes every read and delete that reaches SQL carry a `company_id` filter: PGVectorStore
itself would happily query or delete across tenants.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from llama_index.vector_stores.postgres import PGVectorStore

from core.database import current_company, get_async_engine, get_engine
from core.embeddings import configured_dimensions

CHUNK_TABLE = "chunks"  # PGVectorStore prefixes it: the SQL table is data_chunks
COMPANY_KEY = "company_id"
TEXT_SEARCH_CONFIG = "english"


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

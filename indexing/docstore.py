"""One company's LlamaIndex docstore in Postgres (data_docstore): the document hashes that
let a rerun skip unchanged parts, written in batches and read a whole run at a time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from llama_index.core.storage.kvstore.types import DEFAULT_BATCH_SIZE, DEFAULT_COLLECTION
from llama_index.storage.docstore.postgres import PostgresDocumentStore
from llama_index.storage.kvstore.postgres import PostgresKVStore
from sqlalchemy import VARCHAR, Column
from sqlalchemy.dialects.postgresql import insert

from core.db.engines import get_async_engine, get_engine
from core.db.tenant_scope import tenant

DOCSTORE_TABLE = "docstore"  # PostgresKVStore prefixes it: data_docstore (migration 0001)


def docstore_namespace(company_id: str) -> str:
    """The namespace's first segment is the row's company_id (a CHECK of migration 0012 holds them equal)."""
    return f"{company_id}/docstore"


def ref_doc_base(company_id: str, source_key: str) -> str:
    return f"{company_id}:{source_key}"


def namespace_company(namespace: str) -> str:
    return namespace.split("/", 1)[0]


class TenantKVStore(PostgresKVStore):
    """The docstore's key-value table with `company_id` in every statement (migration 0012).

    Upstream writes `(key, namespace, value)` and upserts on `(key, namespace)`; here every
    row also names its company (Citus routes an INSERT by the distribution column it carries)
    and the upsert targets `(company_id, key, namespace)`, the unique key Citus accepts. Reads
    and deletes filter on the company too, so each is a single-shard query there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "company_id" not in self._table_class.__table__.c:
            self._table_class.company_id = Column(VARCHAR(64), nullable=False)

    def put_all(self, kv_pairs: list[tuple[str, dict]], collection: str = DEFAULT_COLLECTION,
                batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self._initialize()
        company_id = namespace_company(collection)
        with self._session() as session:
            for i in range(0, len(kv_pairs), batch_size):
                rows = [{"company_id": company_id, "key": key, "namespace": collection, "value": value}
                        for key, value in kv_pairs[i:i + batch_size]]
                statement = insert(self._table_class).values(rows)
                statement = statement.on_conflict_do_update(index_elements=["company_id", "key", "namespace"],
                                                            set_={"value": statement.excluded.value})
                session.execute(statement)
                session.commit()

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        self._initialize()
        with self._session() as session:
            return session.scalar(sa.select(self._table_class.value).filter_by(
                company_id=namespace_company(collection), namespace=collection, key=key))

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        self._initialize()
        with self._session() as session:
            rows = session.execute(sa.select(self._table_class.key, self._table_class.value).filter_by(
                company_id=namespace_company(collection), namespace=collection)).all()
        return {row.key: row.value for row in rows}

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        self._initialize()
        with self._session() as session:
            result = session.execute(sa.delete(self._table_class).filter_by(
                company_id=namespace_company(collection), namespace=collection, key=key))
            session.commit()
        return bool(result.rowcount)


@lru_cache
def _kvstore() -> TenantKVStore:
    return TenantKVStore(table_name=DOCSTORE_TABLE, engine=get_engine(), async_engine=get_async_engine(),
                         perform_setup=False, use_jsonb=True)


# Docstore rows written per INSERT (and COMMIT). LlamaIndex's default is 1: one statement and
# one commit per chunk and namespace, which cost more than embedding the chunks once the ONNX
# runtime made embedding fast (README, *Ingestion*, has the `ils-rag bench ingest` figures).
DOCSTORE_BATCH = 500


class TenantDocstore(PostgresDocumentStore):
    """One company's docstore, able to read a whole run's document hashes in one query.

    Why: IngestionPipeline asks `get_document_hash` once per input document, each a round
    trip of its own; `prefetch_document_hashes` answers them from one SELECT. Writes and deletes drop the
    keys they touch, so a prefetched hash is never stale within the run.
    """

    def __init__(self, company_id: str) -> None:
        super().__init__(_kvstore(), namespace=docstore_namespace(company_id), batch_size=DOCSTORE_BATCH)
        self._company_id = company_id
        self._prefetched: dict[str, str | None] = {}

    def prefetch_document_hashes(self, doc_ids: Sequence[str]) -> None:
        with tenant(self._company_id), get_engine().connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT key, value->>'doc_hash' FROM data_docstore "
                "WHERE company_id = :c AND namespace = :ns AND key = ANY(CAST(:ids AS text[]))"),
                {"c": self._company_id, "ns": self._metadata_collection, "ids": list(doc_ids)}).all()
        found = dict(rows)
        self._prefetched.update({doc_id: found.get(doc_id) for doc_id in doc_ids})

    def get_document_hash(self, doc_id: str) -> str | None:
        if doc_id in self._prefetched:
            return self._prefetched[doc_id]
        return super().get_document_hash(doc_id)

    def set_document_hash(self, doc_id: str, doc_hash: str) -> None:
        self._prefetched.pop(doc_id, None)
        super().set_document_hash(doc_id, doc_hash)

    def set_document_hashes(self, doc_hashes: dict[str, str]) -> None:
        for doc_id in doc_hashes:
            self._prefetched.pop(doc_id, None)
        super().set_document_hashes(doc_hashes)

    def delete_document(self, doc_id: str, raise_error: bool = True) -> None:
        self._prefetched.pop(doc_id, None)
        super().delete_document(doc_id, raise_error=raise_error)

    def delete_ref_doc(self, ref_doc_id: str, raise_error: bool = True) -> None:
        self._prefetched.pop(ref_doc_id, None)
        super().delete_ref_doc(ref_doc_id, raise_error=raise_error)


def get_docstore(company_id: str) -> TenantDocstore:
    return TenantDocstore(company_id)

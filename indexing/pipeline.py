"""The indexing core: LlamaIndex's IngestionPipeline (splitter + embedder) writing to the
tenant-guarded PGVectorStore, with a per-company Postgres docstore, kept in step with our
`documents` registry.

Crash safety rests on one order of events per file:

1. the registry row is set to 'indexing' (committed) before anything is touched;
2. if the row was not 'indexed' before, everything previously written for it (chunks and
   docstore hashes) is deleted in one transaction, so the pipeline starts clean;
3. the pipeline writes the batch's chunks in one INSERT transaction, then the docstore
   hashes (so a hash never exists without its chunks);
4. only then is the row set to 'indexed'.

A SIGKILL anywhere leaves the row at 'indexing', and the next run redoes it from step 2:
no duplicates (chunk ids are also deterministic and UNIQUE per company), no orphans.

Docstore strategy: UPSERTS, not UPSERTS_AND_DELETE. The latter deletes every docstore
document missing from *the current run*, and we run the pipeline per batch of files (for
per-file failure isolation and bounded memory), so it would delete the rest of the
company's knowledge base. Files gone from a folder are removed explicitly (`purge`).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from llama_index.core import Document as LIDocument
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.storage.docstore.postgres import PostgresDocumentStore
from llama_index.storage.kvstore.postgres import PostgresKVStore
from sqlalchemy import select

from core.database import get_async_engine, get_engine, session_scope, tenant
from core.embeddings import get_embed_model
from core.errors import ServiceError
from core.vector_store import get_vector_store
from indexing.chunking import build_splitter
from indexing.models import Document
from indexing.readers import Part

logger = logging.getLogger(__name__)

DOCSTORE_TABLE = "docstore"  # PostgresKVStore prefixes it: data_docstore (migration 0001)
CHUNK_ID_NAMESPACE = uuid.UUID("5f1d3f64-5d5e-4d8e-9a53-1c9a4c2b7e10")
UPLOAD_PREFIX = "upload:"
LEGACY_PREFIX = "legacy:"
RESERVED_PREFIXES = (UPLOAD_PREFIX, LEGACY_PREFIX)
CHUNK_METADATA_KEYS = ("company_id", "source_document_id", "filename", "category", "uploaded_by", "is_active",
                       "page_label", "section")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docstore_namespace(company_id: str) -> str:
    """The namespace's first segment is what data_docstore.company_id is generated from."""
    return f"{company_id}/docstore"


def ref_doc_base(company_id: str, source_key: str) -> str:
    return f"{company_id}:{source_key}"


@lru_cache
def _kvstore() -> PostgresKVStore:
    return PostgresKVStore(table_name=DOCSTORE_TABLE, engine=get_engine(), async_engine=get_async_engine(),
                           perform_setup=False, use_jsonb=True)


# Docstore rows written per INSERT (and COMMIT). LlamaIndex's default is 1: one statement and
# one commit per chunk and namespace, which cost more than embedding the chunks once the ONNX
# runtime made embedding fast (`ils-rag bench ingest`: 0.69 of the bare model's speed).
DOCSTORE_BATCH = 500


class TenantDocstore(PostgresDocumentStore):
    """One company's docstore, able to read a whole run's document hashes in one query.

    Why: IngestionPipeline asks `get_document_hash` once per input document, each a round
    trip of its own (390 for the two sample folders, ~0.6 s of an 8 s ingestion);
    `prefetch_document_hashes` answers them from one SELECT. Writes and deletes drop the
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


def chunk_id(i: int, doc: BaseNode) -> str:
    """Deterministic chunk ids: re-running the same part can never insert a second copy
    (data_chunks has UNIQUE (company_id, node_id)); a changed part gets new ids."""
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"{doc.id_}\x00{doc.hash}\x00{i}"))


@lru_cache
def _splitter() -> Any:
    return build_splitter(get_embed_model(), id_func=chunk_id)


class AttachVector(TransformComponent):
    """Legacy migration: reuse a stored vector of the right width instead of re-embedding.

    Only used when the content is a single chunk, so the vector describes exactly that chunk.
    """

    vector: list[float]

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        if len(nodes) != 1:
            raise ValueError("a legacy vector can only stand for a single chunk")
        for node in nodes:
            node.embedding = list(self.vector)
        return nodes


def build_pipeline(company_id: str, transformations: list[TransformComponent] | None = None) -> IngestionPipeline:
    return IngestionPipeline(
        transformations=transformations or [_splitter(), get_embed_model()],
        vector_store=get_vector_store(),
        docstore=get_docstore(company_id),
        docstore_strategy=DocstoreStrategy.UPSERTS,
        disable_cache=True,  # the docstore already skips unchanged parts; the cache would only cost memory
    )


@dataclass
class Source:
    """One file or upload to index, already parsed into parts (or failed to parse)."""

    source_key: str
    filename: str
    data_hash: str
    size_bytes: int
    parts: list[Part] = field(default_factory=list)
    category: str | None = None
    keep_category: bool = False  # folder runs without --category keep what a PATCH set
    uploaded_by: str | None = None
    legacy_id: str | None = None
    vector: list[float] | None = None
    created_at: datetime | None = None
    is_active: bool | None = None  # None: keep the registry's value (True for new rows)


@dataclass
class Outcome:
    source_key: str
    document_id: str | None
    action: str  # indexed | updated | unchanged | failed
    chunks_embedded: int = 0
    chunk_count: int = 0
    code: str | None = None
    reason: str | None = None


@dataclass
class _RowState:
    id: str
    previous_status: str | None
    is_active: bool
    category: str | None


def document_lock_key(company_id: str, source_key: str) -> str:
    """The advisory-lock name of one document (hashed by Postgres into the lock id)."""
    return f"ils-doc|{company_id}|{source_key}"


@contextmanager
def document_locks(company_id: str, source_keys: Sequence[str]) -> Iterator[None]:
    """Serialise indexing of the same document across threads and processes (CLI vs server).

    Session-level advisory locks on one dedicated connection; they vanish with it, so a
    killed process never leaves a document locked.
    """
    with get_engine().connect() as connection:
        keys = sorted(set(source_keys))
        for key in keys:
            connection.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"),
                               {"k": document_lock_key(company_id, key)})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            connection.commit()


def _begin(company_id: str, sources: Sequence[Source]) -> dict[str, _RowState]:
    """Create or claim each source's registry row and mark it 'indexing' (step 1)."""
    states: dict[str, _RowState] = {}
    with session_scope() as session:
        for source in sources:
            row = session.scalar(select(Document).where(Document.company_id == company_id,
                                                        Document.source_key == source.source_key))
            previous = None
            if row is None:
                row = Document(company_id=company_id, id=str(uuid.uuid4()), source_key=source.source_key,
                               is_active=True if source.is_active is None else source.is_active,
                               chunk_count=0, created_at=source.created_at or datetime.now(UTC))
                session.add(row)
            else:
                previous = row.status
                if source.is_active is not None:
                    row.is_active = source.is_active
            row.filename = source.filename
            if not source.keep_category or previous is None:
                row.category = source.category
            row.uploaded_by = source.uploaded_by or row.uploaded_by
            row.legacy_id = source.legacy_id or row.legacy_id
            row.status = "indexing"
            row.error = None
            session.flush()
            states[source.source_key] = _RowState(row.id, previous, row.is_active, row.category)
    return states


def _chunk_ref_ids(connection: sa.Connection, company_id: str, document_id: str) -> list[str]:
    return list(connection.execute(sa.text(
        "SELECT DISTINCT metadata_->>'ref_doc_id' FROM data_chunks "
        "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"), {"c": company_id, "d": document_id},
    ).scalars())


def _delete_chunks_and_hashes(connection: sa.Connection, company_id: str, document_id: str,
                              ref_ids: Sequence[str], *, keep_ref_ids: Sequence[str] = ()) -> None:
    """Delete a document's chunks (all, or those of parts not in keep_ref_ids) and the
    docstore entries of `ref_ids`, in the caller's transaction.

    Plain SQL on purpose: the vector store and the docstore each commit on their own, and
    this must be one transaction with the registry change (see the module docstring).
    Every statement is scoped by company_id.
    """
    keep = list(keep_ref_ids)
    connection.execute(sa.text(
        "DELETE FROM data_chunks WHERE company_id = :c AND metadata_->>'source_document_id' = :d "
        "AND NOT (metadata_->>'ref_doc_id' = ANY(CAST(:keep AS text[])))"),
        {"c": company_id, "d": document_id, "keep": keep})
    ns = docstore_namespace(company_id)
    if ref_ids:
        connection.execute(sa.text(
            "DELETE FROM data_docstore WHERE company_id = :c AND namespace = ANY(CAST(:ns AS text[])) "
            "AND key = ANY(CAST(:ids AS text[]))"),
            {"c": company_id, "ns": [f"{ns}/data", f"{ns}/metadata", f"{ns}/ref_doc_info"], "ids": list(ref_ids)})


def _prepare_clean(company_id: str, sources: Sequence[Source], states: dict[str, _RowState],
                   part_ids: dict[str, list[str]]) -> None:
    """Step 2: start redone documents from nothing; drop parts a changed file no longer has."""
    with get_engine().begin() as connection:
        for source in sources:
            state = states[source.source_key]
            existing = _chunk_ref_ids(connection, company_id, state.id)
            wanted = part_ids[source.source_key]
            if state.previous_status != "indexed":
                _delete_chunks_and_hashes(connection, company_id, state.id, sorted(set(existing) | set(wanted)))
            else:
                stale = sorted(set(existing) - set(wanted))
                if stale:
                    _delete_chunks_and_hashes(connection, company_id, state.id, stale, keep_ref_ids=wanted)


def _part_ids(company_id: str, source: Source) -> list[str]:
    base = ref_doc_base(company_id, source.source_key)
    if len(source.parts) == 1:
        return [base]
    return [f"{base}#part-{n}" for n in range(1, len(source.parts) + 1)]


def _documents(company_id: str, source: Source, state: _RowState, ids: list[str]) -> list[LIDocument]:
    docs = []
    for part, doc_id in zip(source.parts, ids, strict=True):
        metadata: dict[str, Any] = {
            "company_id": company_id,
            "source_document_id": state.id,
            "filename": source.filename,
            "category": state.category,
            "uploaded_by": source.uploaded_by,
            "is_active": state.is_active,
            **part.metadata,
        }
        keys = list(metadata)
        # The embed text is the chunk text alone, so the chunk size is exactly what the
        # model reads (see indexing.chunking); retrieval reads metadata from its own columns.
        docs.append(LIDocument(id_=doc_id, text=part.text, metadata=metadata,
                               excluded_embed_metadata_keys=keys, excluded_llm_metadata_keys=keys))
    return docs


def _finish(company_id: str, sources: Sequence[Source], states: dict[str, _RowState]) -> dict[str, int]:
    """Step 4: the registry row becomes 'indexed' with its real chunk count."""
    ids = [states[s.source_key].id for s in sources]
    with session_scope() as session:
        counts = dict(session.execute(sa.text(
            "SELECT metadata_->>'source_document_id', count(*) FROM data_chunks "
            "WHERE company_id = :c AND metadata_->>'source_document_id' = ANY(CAST(:ids AS text[])) GROUP BY 1"),
            {"c": company_id, "ids": ids}).all())
        for source in sources:
            row = session.get(Document, (company_id, states[source.source_key].id))
            assert row is not None
            row.status = "indexed"
            row.error = None
            row.content_hash = source.data_hash
            row.size_bytes = source.size_bytes
            row.chunk_count = int(counts.get(row.id, 0))
            row.indexed_at = datetime.now(UTC)
    return {s.source_key: int(counts.get(states[s.source_key].id, 0)) for s in sources}


INDEXING_FAILED_MESSAGE = ("indexing failed because of an internal error; send the file again, and report it "
                           "if it keeps failing")


def safe_failure(error: Exception) -> tuple[str, str]:
    """(code, message) a client may see and `documents.error` may store: a ServiceError's own
    words, anything else one generic line. Exception text can hold SQL, parameters and class
    names; it goes to the log only (the caller logs it)."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    return "INDEXING_FAILED", INDEXING_FAILED_MESSAGE


def mark_failed(company_id: str, document_id: str, error: ServiceError | Exception) -> None:
    """A failed document keeps no chunks and no hashes, and says why (in safe words)."""
    code, message = safe_failure(error)
    with tenant(company_id), get_engine().begin() as connection:  # also called from background threads
        refs = _chunk_ref_ids(connection, company_id, document_id)
        _delete_chunks_and_hashes(connection, company_id, document_id, refs)
        connection.execute(sa.text(
            "UPDATE documents SET status = 'failed', error = :e, chunk_count = 0, updated_at = now() "
            "WHERE company_id = :c AND id = :d"), {"c": company_id, "d": document_id, "e": f"{code}: {message}"})


def index_sources(company_id: str, sources: Sequence[Source],
                  on_done: Callable[[Outcome], None] | None = None,
                  embed_model: BaseEmbedding | None = None) -> list[Outcome]:
    """Index parsed sources of one company as one pipeline run; isolate failures per source."""
    if not sources:
        return []
    with tenant(company_id), document_locks(company_id, [s.source_key for s in sources]):
        try:
            outcomes = _run(company_id, sources, embed_model)
        except Exception as exc:
            if len(sources) == 1:
                logger.warning("indexing %s failed: %s", sources[0].source_key, exc, exc_info=True)
                outcomes = [_failed(company_id, sources[0], exc)]
            else:
                outcomes = None
                logger.info("batch of %d failed (%s); retrying file by file", len(sources), exc)
    if outcomes is None:  # locks released: each retry takes its own
        outcomes = [o for s in sources for o in index_sources(company_id, [s], embed_model=embed_model)]
        return outcomes
    if on_done:
        for outcome in outcomes:
            on_done(outcome)
    return outcomes


def _failed(company_id: str, source: Source, exc: Exception) -> Outcome:
    with tenant(company_id), session_scope() as session:
        document_id = session.scalar(select(Document.id).where(Document.company_id == company_id,
                                                               Document.source_key == source.source_key))
    if document_id:
        mark_failed(company_id, document_id, exc)
    code, message = safe_failure(exc)
    return Outcome(source.source_key, document_id, "failed", code=code, reason=message)


def _run(company_id: str, sources: Sequence[Source], embed_model: BaseEmbedding | None = None) -> list[Outcome]:
    states = _begin(company_id, sources)
    part_ids = {s.source_key: _part_ids(company_id, s) for s in sources}
    _prepare_clean(company_id, sources, states, part_ids)
    documents = [d for s in sources for d in _documents(company_id, s, states[s.source_key], part_ids[s.source_key])]
    vectors = [s for s in sources if s.vector is not None]
    if vectors:
        if len(sources) != 1:
            raise ValueError("sources with legacy vectors are indexed one at a time")
        transformations = [_splitter(), AttachVector(vector=vectors[0].vector)]
    else:
        # embed_model: the same model behind a cache (the evaluation harness), never another model
        transformations = [_splitter(), embed_model] if embed_model is not None else None
    pipeline = build_pipeline(company_id, transformations)
    pipeline.docstore.prefetch_document_hashes([d.id_ for d in documents])
    nodes = pipeline.run(documents=documents, store_doc_text=False)
    embedded: dict[str, int] = {}
    for node in nodes:
        key = node.metadata.get("source_document_id")
        embedded[key] = embedded.get(key, 0) + 1
    counts = _finish(company_id, sources, states)
    outcomes = []
    for source in sources:
        state = states[source.source_key]
        action = "indexed" if state.previous_status is None else "updated"
        outcomes.append(Outcome(source.source_key, state.id, action, embedded.get(state.id, 0),
                                counts[source.source_key]))
    return outcomes


def purge_document(company_id: str, document_id: str) -> bool:
    """Delete a document, its chunks and its docstore entries in one transaction."""
    with tenant(company_id), get_engine().begin() as connection:
        refs = _chunk_ref_ids(connection, company_id, document_id)
        key = connection.execute(sa.text("SELECT source_key FROM documents WHERE company_id = :c AND id = :d"),
                                 {"c": company_id, "d": document_id}).scalar()
        if key is None:
            return False
        base = ref_doc_base(company_id, key)
        hashes = connection.execute(sa.text(
            "SELECT key FROM data_docstore WHERE company_id = :c AND namespace = :ns "
            "AND (key = :base OR starts_with(key, :prefix))"),
            {"c": company_id, "ns": f"{docstore_namespace(company_id)}/metadata", "base": base,
             "prefix": f"{base}#part-"}).scalars().all()
        _delete_chunks_and_hashes(connection, company_id, document_id, sorted(set(refs) | set(hashes)))
        connection.execute(sa.text("DELETE FROM documents WHERE company_id = :c AND id = :d"),
                           {"c": company_id, "d": document_id})
        return True


def set_chunk_metadata(connection: sa.Connection, company_id: str, document_id: str, key: str, value: Any) -> int:
    """Rewrite one metadata key on every chunk of a document, in the filterable column and
    in the serialised node (`_node_content`) that retrieval rebuilds nodes from; one UPDATE."""
    if key not in ("is_active", "category"):
        raise ValueError(f"chunk metadata key {key!r} is not patchable")
    result = connection.execute(sa.text(
        "UPDATE data_chunks SET metadata_ = jsonb_set(jsonb_set(metadata_, ARRAY[:k], CAST(:v AS jsonb)), "
        "'{_node_content}', to_jsonb(jsonb_set(CAST(metadata_->>'_node_content' AS jsonb), "
        "ARRAY['metadata', :k], CAST(:v AS jsonb))::text)) "
        "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
        {"c": company_id, "d": document_id, "k": key, "v": _json(value)})
    return int(result.rowcount or 0)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)

"""A document's registry row through one indexing: claimed ('indexing', committed before
anything is touched), finished ('indexed' with its real chunk count) or failed (no chunks,
a reason in safe words); and the advisory locks that keep two runs off the same document."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import select

from core.db.engines import get_engine, session_scope
from core.db.tenant_scope import tenant
from core.errors import ServiceError
from indexing.chunk_rows import chunk_ref_ids, delete_chunks_and_hashes
from indexing.models import Document
from indexing.sources import Source

logger = logging.getLogger(__name__)


@dataclass
class RowState:
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


def claim_documents(company_id: str, sources: Sequence[Source]) -> dict[str, RowState]:
    """Create or claim each source's registry row and mark it 'indexing' (step 1)."""
    states: dict[str, RowState] = {}
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
            states[source.source_key] = RowState(row.id, previous, row.is_active, row.category)
    return states


def finish_documents(company_id: str, sources: Sequence[Source], states: dict[str, RowState]) -> dict[str, int]:
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
        refs = chunk_ref_ids(connection, company_id, document_id)
        delete_chunks_and_hashes(connection, company_id, document_id, refs)
        connection.execute(sa.text(
            "UPDATE documents SET status = 'failed', error = :e, chunk_count = 0, updated_at = now() "
            "WHERE company_id = :c AND id = :d"), {"c": company_id, "d": document_id, "e": f"{code}: {message}"})

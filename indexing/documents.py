"""The document registry service behind the HTTP API: index an in-memory upload (inline, or
queued for an ingestion worker: indexing.queue), list, read, patch and delete a company's documents.

Every function takes the company id from the verified token (never from a request body)
and scopes every statement by it, so another company's document id is simply not found.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text

from core.db.engines import get_engine, session_scope
from core.db.owner import get_admin_engine
from core.db.tenant_scope import tenant
from core.errors import Conflict, NotFound, ServiceError
from core.settings import Settings
from indexing.chunk_rows import purge_document, set_chunk_metadata
from indexing.document_state import document_lock_key, document_locks, mark_failed
from indexing.models import Document
from indexing.pipeline import index_sources
from indexing.queue import enqueue, has_pending_job, wait_until_drained
from indexing.readers import (
    TEXT_PARSERS,
    ExtractionLimits,
    IngestError,
    check_container,
    check_extension,
    decode_text,
    read_parts,
    safe_source_key,
)
from indexing.sources import UPLOAD_PREFIX, Source, content_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadCheck:
    source_key: str
    filename: str


def check_upload(filename: str, data: bytes, max_bytes: int, limits: ExtractionLimits) -> UploadCheck:
    """The cheap checks every upload gets before it is accepted (inline or queued)."""
    name = safe_source_key(filename)
    if "/" in name:
        raise IngestError(f"{filename!r}: send a plain file name, without folders.", code="UNSAFE_FILENAME")
    suffix = check_extension(name)
    if len(data) > max_bytes:
        raise IngestError(f"{name!r} is larger than the {max_bytes // (1024 * 1024)} MB upload limit.",
                          code="PAYLOAD_TOO_LARGE", status_code=413)
    if not data or not data.strip():
        raise IngestError(f"{name!r} is empty.", code="EMPTY_FILE")
    if suffix in TEXT_PARSERS:  # a text format's bytes must decode now; binary ones are checked below
        decode_text(name, data)
    check_container(name, data, limits)  # a zip bomb is refused (413) here, not later in the background
    return UploadCheck(source_key=f"{UPLOAD_PREFIX}{name}", filename=name)


def _source(check: UploadCheck, data: bytes, category: str | None, uploaded_by: str | None,
            limits: ExtractionLimits) -> Source:
    return Source(source_key=check.source_key, filename=check.filename, data_hash=content_hash(data),
                  size_bytes=len(data), parts=read_parts(check.filename, data, limits), category=category,
                  uploaded_by=uploaded_by)


def index_upload(company_id: str, filename: str, data: bytes, *, settings: Settings, category: str | None = None,
                 uploaded_by: str | None = None, max_bytes: int = 1 << 62) -> Document:
    """Index one in-memory file now and return its registry row (status 'indexed'), under the
    caller's `settings` (extraction limits, chunk context).

    Raises IngestError (with a per-cause code) if the file cannot be indexed; then nothing
    of it is stored (a failed replacement keeps the previous version's chunks only if the
    failure happened before indexing started, i.e. while parsing).
    """
    limits = ExtractionLimits.of(settings)
    check = check_upload(filename, data, max_bytes, limits)
    source = _source(check, data, category, uploaded_by, limits)
    outcome = index_sources(company_id, [source], settings=settings)[0]
    if outcome.action == "failed":
        raise IngestError(outcome.reason or "indexing failed", code=outcome.code or "INDEXING_FAILED",
                          status_code=500 if outcome.code == "INDEXING_FAILED" else 422)
    return get_document(company_id, outcome.document_id or "")


def _text_name(filename: str) -> str:
    return filename if "." in filename.rsplit("/", 1)[-1] else f"{filename}.txt"


def index_text(company_id: str, filename: str, content: str, *, settings: Settings, category: str | None = None,
               uploaded_by: str | None = None) -> Document:
    """The seed's /api/rag/index-document: text content under a file name (.txt if none)."""
    return index_upload(company_id, _text_name(filename), content.encode("utf-8"), settings=settings,
                        category=category, uploaded_by=uploaded_by)


def queue_upload(company_id: str, filename: str, data: bytes, *, settings: Settings, category: str | None = None,
                 uploaded_by: str | None = None, max_bytes: int = 1 << 62) -> Document:
    """Accept a large upload: the row is 'queued' and its job is in the ingestion queue, in one
    transaction; a worker moves it to 'indexing' -> 'indexed' | 'failed' (with the reason), the
    client polls GET."""
    check = check_upload(filename, data, max_bytes, ExtractionLimits.of(settings))
    with tenant(company_id), session_scope() as session:
        row = session.scalar(select(Document).where(Document.company_id == company_id,
                                                    Document.source_key == check.source_key).with_for_update())
        if row is not None and row.status in ("queued", "indexing"):
            raise Conflict(f"{check.filename!r} is already being indexed; wait for it to finish.",
                           code="DOCUMENT_BUSY")
        if row is None:
            row = Document(company_id=company_id, id=str(uuid.uuid4()), source_key=check.source_key,
                           filename=check.filename, is_active=True, chunk_count=0, created_at=datetime.now(UTC))
            session.add(row)
        row.status = "queued"
        row.error = None
        row.category = category
        row.uploaded_by = uploaded_by
        session.flush()
        document_id = row.id
        enqueue(session.connection(), company_id, document_id, check.filename, data, category=category,
                uploaded_by=uploaded_by, max_attempts=settings.ingest_max_attempts)
    return get_document(company_id, document_id)


def queue_text(company_id: str, filename: str, content: str, *, settings: Settings, category: str | None = None,
               uploaded_by: str | None = None) -> Document:
    """The seed's /api/rag/index-document above the inline limit: queued like a large upload."""
    return queue_upload(company_id, _text_name(filename), content.encode("utf-8"), settings=settings,
                        category=category, uploaded_by=uploaded_by)


def recover_interrupted_uploads() -> int:
    """Fail uploads left 'queued' or 'indexing' with no job in the ingestion queue to finish them
    (inline uploads a killed process held in memory, or queued ones whose job is gone).

    Their bytes are gone, so they cannot be resumed; without this a client would poll
    forever and a re-upload would be refused as DOCUMENT_BUSY. Uploads with a pending job are
    the queue's (a dead worker's job is retried, see indexing.queue). Rows being indexed right now
    by another live process hold that document's advisory lock and are left alone. Folder
    ingests are not touched: the next `ils-rag ingest` redoes them (see indexing.pipeline).
    Returns how many uploads were marked failed.
    """
    with get_admin_engine().connect() as connection:  # a cross-company maintenance read
        rows = connection.execute(text(
            "SELECT company_id, id, source_key FROM documents "
            "WHERE status IN ('queued', 'indexing') AND source_key LIKE :prefix"),
            {"prefix": f"{UPLOAD_PREFIX}%"}).all()
    recovered = 0
    for company_id, document_id, source_key in rows:
        if has_pending_job(company_id, document_id):
            continue
        with get_engine().connect() as connection:
            free = connection.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                                      {"k": document_lock_key(company_id, source_key)}).scalar()
            if free:
                connection.execute(text("SELECT pg_advisory_unlock_all()"))
            connection.commit()
        if not free:
            continue
        mark_failed(company_id, document_id, ServiceError(
            "indexing was interrupted by a service restart; upload the file again.", code="INDEXING_INTERRUPTED"))
        recovered += 1
    if recovered:
        logger.warning("marked %d interrupted upload(s) as failed", recovered)
    return recovered


def wait_for_background(timeout_s: float = 300.0) -> None:
    """Tests and shutdown: block until the ingestion queue has no pending job."""
    wait_until_drained(timeout_s=timeout_s)


def get_document(company_id: str, document_id: str) -> Document:
    with tenant(company_id), session_scope() as session:
        row = session.get(Document, (company_id, document_id))
        if row is None:
            raise NotFound(f"no document {document_id!r} in your company", code="DOCUMENT_NOT_FOUND")
        return row


def list_documents(company_id: str, page: int, page_size: int) -> tuple[list[Document], int]:
    with tenant(company_id), session_scope() as session:
        total = session.scalar(select(func.count()).select_from(Document).where(Document.company_id == company_id))
        rows = list(session.scalars(select(Document).where(Document.company_id == company_id)
                                    .order_by(Document.created_at.desc(), Document.id)
                                    .offset((page - 1) * page_size).limit(page_size)))
        return rows, int(total or 0)


_UNSET = object()


def patch_document(company_id: str, document_id: str, *, category: object = _UNSET,
                   is_active: object = _UNSET) -> Document:
    """Change category and/or is_active on the row and on every chunk, in one transaction,
    so retrieval's is_active filter agrees with the registry at once."""
    source_key = get_document(company_id, document_id).source_key
    with tenant(company_id), document_locks(company_id, [source_key]), get_engine().begin() as connection:
        found = connection.execute(text("SELECT 1 FROM documents WHERE company_id = :c AND id = :d FOR UPDATE"),
                                   {"c": company_id, "d": document_id}).first()
        if found is None:
            raise NotFound(f"no document {document_id!r} in your company", code="DOCUMENT_NOT_FOUND")
        if category is not _UNSET:
            connection.execute(text("UPDATE documents SET category = :v, updated_at = now() "
                                    "WHERE company_id = :c AND id = :d"),
                               {"v": category, "c": company_id, "d": document_id})
            set_chunk_metadata(connection, company_id, document_id, "category", category)
        if is_active is not _UNSET:
            connection.execute(text("UPDATE documents SET is_active = :v, updated_at = now() "
                                    "WHERE company_id = :c AND id = :d"),
                               {"v": bool(is_active), "c": company_id, "d": document_id})
            set_chunk_metadata(connection, company_id, document_id, "is_active", bool(is_active))
    return get_document(company_id, document_id)


def delete_document(company_id: str, document_id: str) -> None:
    source_key = get_document(company_id, document_id).source_key
    with tenant(company_id), document_locks(company_id, [source_key]):
        deleted = purge_document(company_id, document_id)
    if not deleted:
        raise NotFound(f"no document {document_id!r} in your company", code="DOCUMENT_NOT_FOUND")


def patch_sentinel() -> object:
    return _UNSET

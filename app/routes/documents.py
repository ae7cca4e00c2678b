"""Knowledge-base documents: upload, the seed's index-document call, list, read, patch, delete.

The company always comes from the token. Small uploads are indexed inline; larger ones
are queued for an ingestion worker (indexing.queue; poll GET /api/documents/{id}).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.deps import AppSettings, CurrentUser, TenantSession, client_ip, require
from app.errors import error_response
from app.request_models import RequestModel
from auth import audit
from auth.permissions import Permission
from core.errors import ServiceError
from core.terminal import plural
from indexing import documents as service
from indexing.models import Document
from indexing.readers import SUPPORTED_EXTENSIONS
from retrieval.statements import precompute_document

router = APIRouter(tags=["documents"])
# Printable text only: Postgres text and jsonb cannot hold NUL, and control characters in a
# label shown to every colleague are never intended.
CATEGORY_PATTERN = r"^[^\x00-\x1f\x7f]*$"


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    document_id: str = Field(validation_alias="id")
    filename: str
    category: str | None
    status: Literal["queued", "indexing", "indexed", "failed"]
    error: str | None
    chunk_count: int
    is_active: bool
    size_bytes: int | None
    uploaded_by: str | None
    legacy_id: str | None
    indexed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class UploadResult(BaseModel):
    filename: str
    status: Literal["indexed", "queued", "failed"]
    document: DocumentOut | None = None
    error: str | None = None
    code: str | None = None


class UploadResponse(BaseModel):
    results: list[UploadResult]
    indexed: int
    queued: int
    failed: int


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    page: int
    page_size: int
    total: int


class IndexDocumentRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=512)
    content: str = Field(min_length=1)
    category: str | None = Field(default=None, max_length=100, pattern=CATEGORY_PATTERN)


class IndexDocumentResponse(BaseModel):
    document_id: str
    status: Literal["indexed", "queued"]


class DocumentPatch(RequestModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(default=None, max_length=100, pattern=CATEGORY_PATTERN)
    is_active: bool | None = None


def _out(row: Document) -> DocumentOut:
    return DocumentOut.model_validate(row)


def _audit(session: Session, request: Request, user: CurrentUser, action: str, target: str,
           details: dict[str, object]) -> None:
    """One audit_log row per upload, patch and deletion (who, what, from where), in the request's
    tenant session: it commits before the response is sent, like the rest of the request."""
    audit.record(session, user.company_id, user.id, action, target=target, details=details,
                 client_ip=client_ip(request), client_name=user.client_name)


@router.post("/api/documents", response_model=UploadResponse)
def upload_documents(
    request: Request,
    response: Response,
    settings: AppSettings,
    session: TenantSession,
    background: BackgroundTasks,
    files: list[UploadFile] = File(..., description=f"One or more files ({' '.join(SUPPORTED_EXTENSIONS)})"),
    category: str | None = Form(default=None, max_length=100, pattern=CATEGORY_PATTERN),
    user: CurrentUser = Depends(require(Permission.KNOWLEDGE_WRITE)),
) -> UploadResponse | JSONResponse:
    if len(files) > settings.max_upload_files:
        raise ServiceError(f"Send at most {plural(settings.max_upload_files, 'file')} per request (got {len(files)}).",
                           code="TOO_MANY_FILES", status_code=413)
    max_bytes = settings.max_upload_mb * 1024 * 1024
    results: list[UploadResult] = []
    errors: list[ServiceError] = []
    for upload in files:
        name = upload.filename or ""
        data = upload.file.read(max_bytes + 1)
        try:
            if len(data) > settings.upload_inline_max_kb * 1024:
                row = service.queue_upload(user.company_id, name, data, settings=settings, category=category,
                                           uploaded_by=user.id, max_bytes=max_bytes)
                results.append(UploadResult(filename=row.filename, status="queued", document=_out(row)))
            else:
                row = service.index_upload(user.company_id, name, data, settings=settings, category=category,
                                           uploaded_by=user.id, max_bytes=max_bytes)
                results.append(UploadResult(filename=row.filename, status="indexed", document=_out(row)))
                # after the response, like index-document's: the offline answerer's statement vectors
                background.add_task(precompute_document, user.company_id, row.id, settings.embedding_key)
        except ServiceError as exc:
            errors.append(exc)
            results.append(UploadResult(filename=name, status="failed", error=exc.message, code=exc.code))
    if len(files) == 1 and errors:
        raise errors[0]  # a single file gets its own status code (413, 415, 422...)
    for result in results:
        if result.document is not None:
            _audit(session, request, user, "documents.upload", result.document.document_id,
                   {"filename": result.filename, "status": result.status, "category": category})
    counts = {s: sum(1 for r in results if r.status == s) for s in ("indexed", "queued", "failed")}
    if counts["queued"]:
        response.status_code = 202
    elif errors and not counts["indexed"]:
        # every file failed: an error in the service's error shape, with the per-file results kept
        body = UploadResponse(results=results, **counts).model_dump(mode="json")
        return error_response(request, 422, f"None of the {plural(len(files), 'file')} could be indexed; see results.",
                              "UPLOAD_FAILED", **body)
    return UploadResponse(results=results, **counts)


@router.post("/api/rag/index-document", response_model=IndexDocumentResponse,
             responses={202: {"model": IndexDocumentResponse, "description": "Queued (above the inline limit)"}})
def index_document(body: IndexDocumentRequest, request: Request, response: Response, settings: AppSettings,
                   session: TenantSession, background: BackgroundTasks,
                   user: CurrentUser = Depends(require(Permission.KNOWLEDGE_WRITE))) -> IndexDocumentResponse:
    queued = len(body.content.encode("utf-8")) > settings.upload_inline_max_kb * 1024
    index = service.queue_text if queued else service.index_text
    row = index(user.company_id, body.filename, body.content, settings=settings, category=body.category,
                uploaded_by=user.id)
    status: Literal["indexed", "queued"] = "queued" if queued else "indexed"
    _audit(session, request, user, "documents.upload", row.id,
           {"filename": row.filename, "status": status, "category": body.category})
    if queued:
        response.status_code = 202
    else:  # after the response: the caller waits for its chunks, not for the offline answerer's vectors
        background.add_task(precompute_document, user.company_id, row.id, settings.embedding_key)
    return IndexDocumentResponse(document_id=row.id, status=status)


@router.get("/api/documents", response_model=DocumentPage)
def list_documents(page: int = Query(1, ge=1, le=100_000), page_size: int = Query(20, ge=1, le=100),
                   user: CurrentUser = Depends(require(Permission.KNOWLEDGE_READ))) -> DocumentPage:
    rows, total = service.list_documents(user.company_id, page, page_size)
    return DocumentPage(items=[_out(r) for r in rows], page=page, page_size=page_size, total=total)


@router.get("/api/documents/{document_id}", response_model=DocumentOut)
def get_document(document_id: str, user: CurrentUser = Depends(require(Permission.KNOWLEDGE_READ))) -> DocumentOut:
    return _out(service.get_document(user.company_id, document_id))


@router.patch("/api/documents/{document_id}", response_model=DocumentOut)
def patch_document(document_id: str, body: DocumentPatch, request: Request, session: TenantSession,
                   user: CurrentUser = Depends(require(Permission.KNOWLEDGE_WRITE))) -> DocumentOut:
    fields = body.model_fields_set
    if not fields:
        raise ServiceError("Send category and/or is_active.", code="VALIDATION_ERROR", status_code=422)
    if "is_active" in fields and body.is_active is None:
        raise ServiceError("is_active must be true or false.", code="VALIDATION_ERROR", status_code=422)
    unset = service.patch_sentinel()
    row = service.patch_document(user.company_id, document_id,
                                 category=body.category if "category" in fields else unset,
                                 is_active=body.is_active if "is_active" in fields else unset)
    _audit(session, request, user, "documents.update", row.id, body.model_dump(include=fields))
    return _out(row)


@router.delete("/api/documents/{document_id}", status_code=204)
def delete_document(document_id: str, request: Request, session: TenantSession,
                    user: CurrentUser = Depends(require(Permission.KNOWLEDGE_WRITE))) -> Response:
    service.delete_document(user.company_id, document_id)
    _audit(session, request, user, "documents.delete", document_id, {})
    return Response(status_code=204)

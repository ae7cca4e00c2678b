"""Uploads a killed process left 'queued'/'indexing' are failed at start-up with a reason."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa


def _stuck_upload(company_id: str, name: str, status: str) -> str:
    from core.db.engines import session_scope
    from core.db.tenant_scope import tenant
    from indexing.models import Document
    from indexing.sources import UPLOAD_PREFIX

    document_id = str(uuid.uuid4())
    with tenant(company_id), session_scope() as session:
        session.add(Document(company_id=company_id, id=document_id, source_key=f"{UPLOAD_PREFIX}{name}",
                             filename=name, is_active=True, chunk_count=0, status=status,
                             created_at=datetime.now(UTC)))
    return document_id


def test_interrupted_uploads_fail_with_a_reason_and_can_be_uploaded_again(client, company, make_user) -> None:
    from core.db.engines import get_engine
    from indexing.document_state import document_lock_key
    from indexing.documents import recover_interrupted_uploads
    from indexing.sources import UPLOAD_PREFIX

    _, admin = make_user(company, "admin")
    queued = _stuck_upload(company.id, "queued.txt", "queued")
    indexing = _stuck_upload(company.id, "indexing.txt", "indexing")
    busy = _stuck_upload(company.id, "busy.txt", "indexing")

    # Another live process is indexing `busy.txt` right now: it holds the document's lock.
    with get_engine().connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"),
                       {"k": document_lock_key(company.id, f"{UPLOAD_PREFIX}busy.txt")})
        holder.commit()
        assert recover_interrupted_uploads() >= 2
        holder.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        holder.commit()

    states = {d: client.get(f"/api/documents/{d}", headers=admin).json() for d in (queued, indexing, busy)}
    for document_id in (queued, indexing):
        assert states[document_id]["status"] == "failed"
        assert "INDEXING_INTERRUPTED" in states[document_id]["error"]
        assert "upload the file again" in states[document_id]["error"]
    assert states[busy]["status"] == "indexing"

    again = client.post("/api/documents", headers=admin, files=[(
        "files", ("queued.txt", io.BytesIO(b"Re-uploaded after the restart: opening hours 9 to 5."), "text/plain"))])
    assert again.status_code == 200, again.text
    assert again.json()["results"][0]["document"]["status"] == "indexed"

"""HTTP document API: uploads, the seed's index-document call, listing, patch, delete, isolation."""

from __future__ import annotations

import io
import os
import time

import sqlalchemy as sa


def _chunk_meta(company_id: str, document_id: str) -> list[dict]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:  # row-level security: the company's rows only
        return list(connection.execute(sa.text(
            "SELECT metadata_ FROM data_chunks WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
            {"c": company_id, "d": document_id}).scalars())


def _files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    return [("files", (name, io.BytesIO(data), "application/octet-stream")) for name, data in items]


def test_upload_list_get_patch_delete(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    _, staff = make_user(company, "staff")
    text = b"Our Riverside practice offers free parking behind the building for all patients."
    response = client.post("/api/documents", headers=admin, files=_files(("parking.txt", text)),
                           data={"category": "locations"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["indexed"] == 1 and body["failed"] == 0
    doc = body["results"][0]["document"]
    assert doc["status"] == "indexed" and doc["chunk_count"] == 1 and doc["category"] == "locations"
    doc_id = doc["document_id"]

    listing = client.get("/api/documents?page=1&page_size=10", headers=staff)
    assert listing.status_code == 200
    assert listing.json()["total"] == 1 and listing.json()["items"][0]["chunk_count"] == 1
    assert client.get(f"/api/documents/{doc_id}", headers=staff).json()["filename"] == "parking.txt"

    # staff may read but not write
    assert client.patch(f"/api/documents/{doc_id}", headers=staff, json={"is_active": False}).status_code == 403
    assert client.post("/api/documents", headers=staff, files=_files(("x.txt", b"hello there"))).status_code == 403

    patched = client.patch(f"/api/documents/{doc_id}", headers=admin, json={"is_active": False, "category": "misc"})
    assert patched.status_code == 200 and patched.json()["is_active"] is False
    import json

    for meta in _chunk_meta(company.id, doc_id):
        assert meta["is_active"] is False and meta["category"] == "misc"
        inner = json.loads(meta["_node_content"])["metadata"]
        assert inner["is_active"] is False and inner["category"] == "misc"
    assert client.patch(f"/api/documents/{doc_id}", headers=admin, json={}).status_code == 422

    assert client.delete(f"/api/documents/{doc_id}", headers=admin).status_code == 204
    assert _chunk_meta(company.id, doc_id) == []
    assert client.get(f"/api/documents/{doc_id}", headers=admin).status_code == 404


def test_index_document_seed_contract_and_isolation(client, make_company, make_user) -> None:
    a, b = make_company(), make_company()
    _, admin_a = make_user(a, "admin")
    _, admin_b = make_user(b, "admin")
    response = client.post("/api/rag/index-document", headers=admin_a,
                           json={"filename": "policy", "content": "Remakes are free within 60 days.",
                                 "category": "policy"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "indexed" and set(body) == {"document_id", "status"}
    doc_id = body["document_id"]
    assert _chunk_meta(a.id, doc_id)[0]["company_id"] == a.id
    # another company's id is not found, for every verb
    assert client.get(f"/api/documents/{doc_id}", headers=admin_b).status_code == 404
    assert client.patch(f"/api/documents/{doc_id}", headers=admin_b, json={"is_active": False}).status_code == 404
    assert client.delete(f"/api/documents/{doc_id}", headers=admin_b).status_code == 404
    assert client.get("/api/documents", headers=admin_b).json()["total"] == 0
    assert _chunk_meta(a.id, doc_id)[0]["is_active"] is True
    # a company_id in the body is refused, never used
    bad = client.post("/api/rag/index-document", headers=admin_a,
                      json={"filename": "x", "content": "y", "company_id": b.id})
    assert bad.status_code == 422
    assert client.post("/api/rag/index-document", headers=admin_a,
                       json={"filename": "x", "content": ""}).status_code == 422


def test_bad_uploads_each_get_their_code(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    cases = {
        "empty.txt": (b"", "EMPTY_FILE"),
        "junk.txt": (os.urandom(1024), "BINARY_CONTENT"),
        "latin.txt": ("Caf\xe9".encode("latin-1") * 10, "NOT_UTF8"),
        "broken.pdf": (b"%PDF-1.4 nonsense", "CORRUPTED_PDF"),
        "tool.exe": (b"MZ....", "UNSUPPORTED_FILE_TYPE"),
        "../etc/passwd.txt": (b"root", "UNSAFE_FILENAME"),
        "/abs/path.txt": (b"root", "UNSAFE_FILENAME"),
    }
    for name, (data, code) in cases.items():
        response = client.post("/api/documents", headers=admin, files=_files((name, data)))
        assert response.status_code in (413, 415, 422), (name, response.text)
        assert response.json()["code"] == code, (name, response.json())
    assert client.post("/api/documents", headers=admin, files=_files(("tool.exe", b"x"))).status_code == 415

    # a batch: per-file results, the good file still indexed
    batch = client.post("/api/documents", headers=admin, files=_files(
        ("good.md", b"# Hours\nOpen nine to five."), ("empty.txt", b""), ("../x.txt", b"x")))
    assert batch.status_code == 200
    results = {r["filename"]: r for r in batch.json()["results"]}
    assert results["good.md"]["status"] == "indexed"
    assert results["empty.txt"]["code"] == "EMPTY_FILE" and results["../x.txt"]["code"] == "UNSAFE_FILENAME"
    assert client.get("/api/documents", headers=admin).json()["total"] == 1


def test_upload_limits(client, company, make_user, app) -> None:
    _, admin = make_user(company, "admin")
    settings = app.state.settings
    old_mb, old_files = settings.max_upload_mb, settings.max_upload_files
    settings.max_upload_mb, settings.max_upload_files = 1, 2
    try:
        big = b"a" * (1024 * 1024 + 10)
        response = client.post("/api/documents", headers=admin, files=_files(("big.txt", big)))
        assert response.status_code == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"
        many = client.post("/api/documents", headers=admin,
                           files=_files(("a.txt", b"a a"), ("b.txt", b"b b"), ("c.txt", b"c c")))
        assert many.status_code == 413 and many.json()["code"] == "TOO_MANY_FILES"
    finally:
        settings.max_upload_mb, settings.max_upload_files = old_mb, old_files
    assert client.get("/api/documents", headers=admin).json()["total"] == 0


def test_large_upload_is_queued_then_indexed(client, company, make_user, app, samples_dir) -> None:
    _, admin = make_user(company, "admin")
    settings = app.state.settings
    old = settings.upload_inline_max_kb
    settings.upload_inline_max_kb = 1
    try:
        data = (samples_dir / "brightsight-optical" / "lens-coatings.md").read_bytes()
        response = client.post("/api/documents", headers=admin, files=_files(("coatings.md", data)))
        broken = client.post("/api/documents", headers=admin,
                             files=_files(("scan.pdf", b"%PDF-1.4\n" + b"x" * 4000)))
    finally:
        settings.upload_inline_max_kb = old
    assert response.status_code == 202, response.text
    doc = response.json()["results"][0]["document"]
    assert doc["status"] in ("queued", "indexing", "indexed")
    seen = {doc["status"]}
    deadline = time.monotonic() + 120
    while doc["status"] in ("queued", "indexing") and time.monotonic() < deadline:
        time.sleep(0.2)
        doc = client.get(f"/api/documents/{doc['document_id']}", headers=admin).json()
        seen.add(doc["status"])
    assert doc["status"] == "indexed" and doc["chunk_count"] > 1, doc
    assert len(_chunk_meta(company.id, doc["document_id"])) == doc["chunk_count"]

    from indexing.documents import wait_for_background

    wait_for_background()
    failed = client.get(f"/api/documents/{broken.json()['results'][0]['document']['document_id']}",
                        headers=admin).json()
    assert failed["status"] == "failed" and "CORRUPTED_PDF" in failed["error"]
    assert _chunk_meta(company.id, failed["document_id"]) == []

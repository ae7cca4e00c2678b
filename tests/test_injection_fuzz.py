"""Injection fuzz: hostile text through every text field of every endpoint, twice.

Each payload (quotes, comment markers, stacked statements, `%`, backslashes, NUL, long
unicode) goes into one text field at a time, with the rest of the request valid, and the
same request is then sent again, so uploads and index-document calls take the replace path
and deletes run on something that may already be gone. What must hold for every response:
no 5xx, no SQL or exception class name in the body, and company B's canary document is
never returned and B's rows in every table the fuzz could reach come out of the run byte for
byte unchanged.

An upload or index-document call whose value the service accepts must be accepted both times,
and the repeat (which carries a second version of the text) must replace the first: one
document row, holding the second version's chunks only. A value refused on purpose (a path in
a file name, NUL, an over-long name or category) must be a 4xx in the error shape both times.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from core.settings import get_settings
from indexing.readers import MAX_NAME_LENGTH

PAYLOADS = [
    "x'; SELECT 1; --",
    "a' OR '1'='1' --",
    "'); DELETE FROM documents; --",
    "/* c */ \" ` $$ ;",
    "100% %s %(x)s %%",
    "back\\slash \\' \\\\",
    "nul\x00byte",
    "ünïcødé ✓ 漢字 🙂" * 120,
]
LEAK = re.compile(r"psycopg|sqlalchemy|asyncpg|syntax error|Traceback|\bSELECT\b[^\"]{0,80}\bFROM\b|INSERT INTO|"
                  r"DELETE FROM|UPDATE \w+ SET|\b[A-Z]\w*(Error|Exception)\b|pg_catalog|ils_current_company")
PASSWORD = "correct horse battery"


# Tables holding company B's rows that any endpoint of the fuzz could write or delete.
CANARY_TABLES = ("documents", "data_chunks", "data_docstore", "users", "conversations", "messages", "audit_log",
                 "chunk_statements", "bm25_chunk_terms")
MAX_CATEGORY_CHARS = 100  # app.routes.documents: a category's max_length


@dataclass(frozen=True)
class Field:
    """One text field of one operation: how to send a request with `value` in it."""

    operation: str
    send: Callable[[TestClient, dict[str, str], str], Any]
    in_body: bool = True  # NUL in a body field must be a 422; in a path it may be 404


@dataclass(frozen=True)
class StoringField:
    """A text field of a call that stores a document: `send` also takes the version of the
    document's text, so a repeat stores a second version of the same document."""

    operation: str
    send: Callable[[TestClient, dict[str, str], str, str], Any]
    key: str  # "filename", "category" or "content"
    in_body: bool = True


def _json(method: str, path: str, template: dict[str, Any], key: str) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.request(method, path, json={**template, key: value}, headers=headers)
    return send


def _index_document(key: str) -> Callable:
    """POST /api/rag/index-document with `value` in `key`, and the text's version in the content."""
    def send(client: TestClient, headers: dict[str, str], value: str, version: str):
        body = {"filename": "guide.txt", "content": f"Varifocal lenses cost £300. {version}", "category": "lenses"}
        body[key] = f"{value} {version}" if key == "content" else value
        return client.post("/api/rag/index-document", json=body, headers=headers)
    return send


def _path(method: str, template: str, body: dict[str, Any] | None = None) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.request(method, template.format(urllib.parse.quote(value, safe="")), json=body,
                              headers=headers)
    return send


def _upload(key: str) -> Callable:
    """A multipart upload built by hand: HTTP clients percent-encode a NUL in a file name, and
    the fuzz must deliver the raw bytes, as a hostile client would."""
    def send(client: TestClient, headers: dict[str, str], value: str, version: str):
        name, category = (value + ".txt", "lenses") if key == "filename" else ("notes.txt", value)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{category}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: text/plain\r\n\r\nHostile file content about lenses. {version}\r\n"
                f"--{boundary}--\r\n").encode()
        return client.post("/api/documents", content=body,
                           headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    return send


def _form(path: str, template: dict[str, str], key: str) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.post(path, data={**template, key: value}, headers=headers)
    return send


def _fields(document_id: str, user_id: str) -> list[Field | StoringField]:
    login = {"email": "nobody@example.com", "password": "wrong password", "company": "nowhere"}
    user = {"email": f"new-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "role": "staff",
            "full_name": "New Person"}
    token = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x", "scope": "knowledge:read",
             "company_id": "x"}
    fields = [
        *(Field(f"login.{k}", _json("POST", "/api/auth/login", login, k)) for k in login),
        Field("refresh.refresh_token", _json("POST", "/api/auth/refresh", {}, "refresh_token")),
        Field("logout.refresh_token", _json("POST", "/api/auth/logout", {}, "refresh_token")),
        *(Field(f"password.{k}", _json("POST", "/api/auth/password",
                                       {"current_password": "wrong one", "new_password": "another long one"}, k))
          for k in ("current_password", "new_password")),
        *(Field(f"token.{k}", _form("/api/auth/token", token, k)) for k in token),
        *(Field(f"users.create.{k}", _json("POST", "/api/users", user, k)) for k in (*user, "company_id")),
        Field("users.list.company_id", lambda c, h, v: c.get("/api/users", params={"company_id": v}, headers=h)),
        Field("users.get.user_id", _path("GET", "/api/users/{}"), in_body=False),
        Field("users.patch.user_id", _path("PATCH", "/api/users/{}", {"is_active": True}), in_body=False),
        *(Field(f"users.patch.{k}", _path_body("PATCH", f"/api/users/{user_id}", k)) for k in ("role", "company_id")),
        *(Field(f"search.{k}", _json("POST", "/api/rag/search", {"query": "lens prices", "mode": "hybrid"}, k))
          for k in ("query", "mode", "company_id")),
        Field("embeddings.text", _json("POST", "/api/embeddings/generate", {}, "text")),
        *(Field(f"chat.{k}", _json("POST", "/api/chat", {"message": "What do varifocals cost?"}, k))
          for k in ("message", "conversationId")),
        Field("conversations.get", _path("GET", "/api/conversations/{}"), in_body=False),
        Field("conversations.delete", _path("DELETE", "/api/conversations/{}"), in_body=False),
        StoringField("documents.upload.filename", _upload("filename"), "filename"),
        StoringField("documents.upload.category", _upload("category"), "category"),
        *(StoringField(f"index-document.{k}", _index_document(k), k) for k in ("filename", "content", "category")),
        Field("documents.get", _path("GET", "/api/documents/{}"), in_body=False),
        Field("documents.patch.document_id", _path("PATCH", "/api/documents/{}", {"category": "x"}), in_body=False),
        Field("documents.patch.category", _path_body("PATCH", f"/api/documents/{document_id}", "category")),
        Field("documents.delete", _path("DELETE", "/api/documents/{}"), in_body=False),
    ]
    return fields


def _path_body(method: str, path: str, key: str) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.request(method, path, json={key: value}, headers=headers)
    return send


@pytest.fixture
def fuzz_client(app) -> Iterator[TestClient]:
    """The app with budgets wide enough that the fuzz is answered, not rate-limited."""
    from app.main import create_app
    from core.settings import get_settings

    settings = get_settings().model_copy(update={"search_rate_per_minute": 100_000, "chat_rate_per_minute": 100_000,
                                                 "login_max_failures_per_account": 100_000,
                                                 "login_max_failures_per_address": 100_000})
    yield TestClient(create_app(settings, prepare=False))


def _comparable(value: object) -> str:
    """A column value as text that compares by content (bytea comes back as a memoryview)."""
    return bytes(value).hex() if isinstance(value, memoryview | bytes) else str(value)


def _canary_rows(company_id: str) -> dict[str, list[str]]:
    """Every row of `company_id` in CANARY_TABLES, read by the owner (who sees all companies)."""
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        return {table: sorted(json.dumps([_comparable(v) for v in row]) for row in connection.execute(
                    sa.select(sa.text("*")).select_from(sa.table(table)).where(sa.column("company_id") == company_id)))
                for table in CANARY_TABLES}


def _refused_on_purpose(field: StoringField, payload: str) -> bool:
    """Whether the service refuses `payload` in `field` by its documented rules: NUL anywhere; a
    file name with a path separator (the upload's name and index-document's name are one file
    name, not a path) or over MAX_NAME_LENGTH characters; a category over its length limit."""
    if "\x00" in payload:
        return True
    if field.key == "filename":
        name = payload + ".txt" if field.operation.startswith("documents.upload") else payload
        return "/" in name or "\\" in name or len(name) > MAX_NAME_LENGTH
    if field.key == "category":
        return len(payload) > MAX_CATEGORY_CHARS
    return False


def _stored_document(response) -> str | None:
    """The id of the document an upload or index-document response says it stored."""
    body = response.json()
    return body["results"][0]["document"]["document_id"] if "results" in body else body.get("document_id")


def _replaced(company_id: str, document_id: str, first: str, repeat: str) -> str | None:
    """Why the repeat did not replace the first version (None when it did): one document row
    under the document's source key, indexed, and its chunks are the repeat's: the repeat's text
    is in them, the first's is not, and there are exactly as many as the row counts (the text's
    version is at its end, so a long text's other chunks are the same in both versions)."""
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT d.id, d.status, d.chunk_count FROM documents d JOIN documents same "
            "ON same.company_id = d.company_id AND same.source_key = d.source_key "
            "WHERE same.company_id = :c AND same.id = :d"), {"c": company_id, "d": document_id}).all()
        chunks = connection.execute(sa.text(
            "SELECT text FROM data_chunks WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
            {"c": company_id, "d": document_id}).scalars().all()
    if [tuple(r)[:2] for r in rows] != [(document_id, "indexed")]:
        return f"document rows {rows}"
    if any(first in c for c in chunks) or not any(repeat in c for c in chunks) or len(chunks) != rows[0][2]:
        return f"chunks are not the repeat's only: {rows[0][2]} counted, {[c[:80] for c in chunks]}"
    return None


def _without(text: str, payload: str) -> str:
    """The body minus echoes of the payload itself (a search echoing its query is not a leak)."""
    for form in {payload, json.dumps(payload)[1:-1], json.dumps(payload, ensure_ascii=False)[1:-1]}:
        text = text.replace(form, "")
    return text


def _seed_canary(company, make_user: Callable, canary: str) -> None:
    """Company B with rows in every canary table: a document (chunks, docstore hashes, BM25
    terms), a user who signed in (audit), and an answered chat (conversation, messages, the
    chunks' statement vectors)."""
    from auth.sessions import login
    from indexing.documents import index_text
    from retrieval.chat import ChatService

    user, _ = make_user(company, "admin", PASSWORD)
    login(user.email, PASSWORD, settings=get_settings())
    index_text(company.id, "canary.txt", f"{canary}: varifocal lenses cost £300 at B.", settings=get_settings())
    ChatService(company.id, user.id, settings=get_settings()).ask("What do varifocal lenses cost?")


def _check(response, where: str, payload: str, canary: str, b_id: str, in_body: bool) -> list[str]:
    """What every response must satisfy, whatever the field."""
    failures = []
    body = _without(response.text, payload)
    if response.status_code >= 500:
        failures.append(f"{where} 5xx {response.text[:200]}")
    if LEAK.search(body):
        failures.append(f"{where} leaks {LEAK.search(body).group(0)!r}: {body[:200]}")
    if canary in response.text or b_id in response.text:
        failures.append(f"{where} returned company B's data")
    if "\x00" in payload and in_body and response.status_code not in (401, 403, 413, 422):
        failures.append(f"{where} accepted a NUL byte")
    return failures


def _error_shaped(response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and {"error", "code", "request_id"} <= set(body)


def test_hostile_text_in_every_field_twice(fuzz_client, make_company, make_user, index_texts) -> None:
    from indexing.documents import index_text

    a, b = make_company("Fuzz A"), make_company("Fuzz B")
    admin, headers = make_user(a, "admin", PASSWORD)
    canary = f"canary-{uuid.uuid4().hex}"
    _seed_canary(b, make_user, canary)
    document = index_text(a.id, "own.txt", "Varifocal lenses cost £300 at A.", settings=get_settings())
    before = _canary_rows(b.id)
    assert all(before[table] for table in CANARY_TABLES), {t: len(rows) for t, rows in before.items()}
    failures: list[str] = []
    seen = stored = refused = 0
    for field in _fields(document.id, admin.id):
        for payload in PAYLOADS:
            if isinstance(field, StoringField):
                versions = {attempt: f"Edition {attempt}-{uuid.uuid4().hex[:12]}." for attempt in ("first", "repeat")}
                responses = {}
                for attempt, version in versions.items():
                    response = responses[attempt] = field.send(fuzz_client, headers, payload, version)
                    seen += 1
                    where = f"{field.operation} {attempt} {payload[:30]!r}: {response.status_code}"
                    failures += _check(response, where, payload, canary, b.id, field.in_body)
                where = f"{field.operation} {payload[:30]!r}"
                statuses = [r.status_code for r in responses.values()]
                if _refused_on_purpose(field, payload):
                    refused += 1
                    if not all(400 <= s < 500 and _error_shaped(r) for s, r in zip(statuses, responses.values(),
                                                                                     strict=True)):
                        failures.append(f"{where} should be refused with a 4xx error both times: {statuses}")
                    continue
                if not all(200 <= s < 300 for s in statuses):
                    failures.append(f"{where} should be accepted both times: {statuses} "
                                    f"{[r.text[:200] for r in responses.values()]}")
                    continue
                first_id, repeat_id = (_stored_document(r) for r in responses.values())
                if first_id != repeat_id:
                    failures.append(f"{where} stored a second document ({first_id}, {repeat_id})")
                elif problem := _replaced(a.id, repeat_id, versions["first"], versions["repeat"]):
                    failures.append(f"{where} repeat did not replace the first: {problem}")
                stored += 1
                continue
            for attempt in ("first", "repeat"):
                response = field.send(fuzz_client, headers, payload)
                seen += 1
                where = f"{field.operation} {attempt} {payload[:30]!r}: {response.status_code}"
                failures += _check(response, where, payload, canary, b.id, field.in_body)
    assert seen > 300
    assert failures == [], "\n".join(failures[:40])
    assert stored >= 20 and refused >= 10, (stored, refused)  # both halves of the rule were exercised
    assert _canary_rows(b.id) == before

"""Injection fuzz: hostile text through every text field of every endpoint, twice.

Each payload (quotes, comment markers, stacked statements, `%`, backslashes, NUL, long
unicode) goes into one text field at a time, with the rest of the request valid, and the
same request is then sent again, so uploads and index-document calls take the replace path
and deletes run on something that may already be gone. What must hold for every response:
no 5xx, no SQL or exception class name in the body, and company B's canary document is
never returned and comes out of the run byte for byte unchanged.
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


@dataclass(frozen=True)
class Field:
    """One text field of one operation: how to send a request with `value` in it."""

    operation: str
    send: Callable[[TestClient, dict[str, str], str], Any]
    in_body: bool = True  # NUL in a body field must be a 422; in a path it may be 404


def _json(method: str, path: str, template: dict[str, Any], key: str) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.request(method, path, json={**template, key: value}, headers=headers)
    return send


def _path(method: str, template: str, body: dict[str, Any] | None = None) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.request(method, template.format(urllib.parse.quote(value, safe="")), json=body,
                              headers=headers)
    return send


def _upload(key: str) -> Callable:
    """A multipart upload built by hand: HTTP clients percent-encode a NUL in a file name, and
    the fuzz must deliver the raw bytes, as a hostile client would."""
    def send(client: TestClient, headers: dict[str, str], value: str):
        name, category = (value + ".txt", "lenses") if key == "filename" else ("notes.txt", value)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{category}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: text/plain\r\n\r\nHostile file content about lenses.\r\n"
                f"--{boundary}--\r\n").encode()
        return client.post("/api/documents", content=body,
                           headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    return send


def _form(path: str, template: dict[str, str], key: str) -> Callable:
    def send(client: TestClient, headers: dict[str, str], value: str):
        return client.post(path, data={**template, key: value}, headers=headers)
    return send


def _fields(document_id: str, user_id: str) -> list[Field]:
    login = {"email": "nobody@example.com", "password": "wrong password", "company": "nowhere"}
    user = {"email": f"new-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "role": "staff",
            "full_name": "New Person"}
    index = {"filename": "guide.txt", "content": "Varifocal lenses cost £300.", "category": "lenses"}
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
        Field("documents.upload.filename", _upload("filename")),
        Field("documents.upload.category", _upload("category")),
        *(Field(f"index-document.{k}", _json("POST", "/api/rag/index-document", index, k)) for k in index),
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


def _canary_rows(company_id: str) -> dict[str, list[str]]:
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        return {table: sorted(json.dumps([str(v) for v in row]) for row in connection.execute(
                    sa.select(sa.text("*")).select_from(sa.table(table)).where(sa.column("company_id") == company_id)))
                for table in ("documents", "data_chunks", "data_docstore", "users")}


def _without(text: str, payload: str) -> str:
    """The body minus echoes of the payload itself (a search echoing its query is not a leak)."""
    for form in {payload, json.dumps(payload)[1:-1], json.dumps(payload, ensure_ascii=False)[1:-1]}:
        text = text.replace(form, "")
    return text


def test_hostile_text_in_every_field_twice(fuzz_client, make_company, make_user, index_texts) -> None:
    from indexing.documents import index_text

    a, b = make_company("Fuzz A"), make_company("Fuzz B")
    admin, headers = make_user(a, "admin", PASSWORD)
    canary = f"canary-{uuid.uuid4().hex}"
    index_text(b.id, "canary.txt", f"{canary}: varifocal lenses cost £300 at B.", settings=get_settings())
    document = index_text(a.id, "own.txt", "Varifocal lenses cost £300 at A.", settings=get_settings())
    before = _canary_rows(b.id)
    failures: list[str] = []
    seen = 0
    for field in _fields(document.id, admin.id):
        for payload in PAYLOADS:
            for attempt in ("first", "repeat"):
                response = field.send(fuzz_client, headers, payload)
                seen += 1
                where = f"{field.operation} {attempt} {payload[:30]!r}: {response.status_code}"
                body = _without(response.text, payload)
                if response.status_code >= 500:
                    failures.append(f"{where} 5xx {response.text[:200]}")
                if LEAK.search(body):
                    failures.append(f"{where} leaks {LEAK.search(body).group(0)!r}: {body[:200]}")
                if canary in response.text or b.id in response.text:
                    failures.append(f"{where} returned company B's data")
                if "\x00" in payload and field.in_body and response.status_code not in (401, 403, 413, 422):
                    failures.append(f"{where} accepted a NUL byte")
    assert seen > 300
    assert failures == [], "\n".join(failures[:40])
    assert _canary_rows(b.id) == before

"""Hostile and oversized input: every limit answers a clear 4xx in the error shape
`{error, code, request_id}`, per-user rate limits answer 429 with Retry-After, security
headers and CORS are what SECURITY.md says, secrets stay out of the logs, and uploads,
deletions and role changes leave audit rows."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from fastapi.testclient import TestClient

from app.logs import JsonFormatter, redact
from app.main import create_app
from core.errors import ConfigurationError
from core.settings import Settings


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "code", "request_id"}, body
    assert body["code"] == code, body
    assert body["error"] and body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture
def limited_client(app):
    """`limited_client(**settings)`: a client on an app built with its own settings (no lifespan:
    the session's database and model are already up)."""

    def _make(**overrides) -> TestClient:
        return TestClient(create_app(Settings(**overrides), prepare=False))

    return _make


# --- body size --------------------------------------------------------------------------------


def test_json_body_over_max_body_kb_is_413_before_parsing(client, admin_headers) -> None:
    body = json.dumps({"query": "x" * (300 * 1024)})  # default MAX_BODY_KB is 256
    r = client.post("/api/rag/search", content=body, headers={**admin_headers, "Content-Type": "application/json"})
    assert "MAX_BODY_KB" in assert_error(r, 413, "PAYLOAD_TOO_LARGE")["error"]


def test_chunked_body_without_length_is_counted_as_it_streams(limited_client, admin_headers) -> None:
    client = limited_client(max_body_kb=4)

    def chunks():
        yield b'{"query": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}'

    r = client.post("/api/rag/search", content=chunks(), headers={**admin_headers, "Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def test_body_limit_applies_without_a_token_too(client) -> None:
    r = client.post("/api/auth/login", content=b"{" + b" " * (400 * 1024) + b"}",
                    headers={"Content-Type": "application/json"})
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def test_upload_request_over_max_upload_request_mb_is_413(limited_client, admin_headers) -> None:
    client = limited_client(max_upload_request_mb=1, max_upload_mb=1)
    files = [("files", (f"f{i}.md", io.BytesIO(b"# x\n" + b"a" * 400_000), "text/markdown")) for i in range(3)]
    r = client.post("/api/documents", files=files, headers=admin_headers)
    assert "MAX_UPLOAD_REQUEST_MB" in assert_error(r, 413, "PAYLOAD_TOO_LARGE")["error"]


def test_single_file_over_max_upload_mb_is_413(limited_client, admin_headers) -> None:
    client = limited_client(max_upload_mb=1, max_upload_request_mb=5)
    big = b"# big\n" + b"word " * (1024 * 1024 // 5 + 10)
    r = client.post("/api/documents", files={"files": ("big.md", big, "text/markdown")}, headers=admin_headers)
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")


def test_too_many_files_per_upload(limited_client, admin_headers) -> None:
    client = limited_client(max_upload_files=2)
    files = [("files", (f"n{i}.md", b"# note\nhello", "text/markdown")) for i in range(3)]
    r = client.post("/api/documents", files=files, headers=admin_headers)
    assert "at most 2" in assert_error(r, 413, "TOO_MANY_FILES")["error"]


# --- query length, limit range, malformed bodies -------------------------------------------


def test_query_and_message_length(limited_client, admin_headers) -> None:
    client = limited_client(max_query_chars=50)
    r = client.post("/api/rag/search", json={"query": "q" * 51}, headers=admin_headers)
    assert "MAX_QUERY_CHARS" in assert_error(r, 422, "QUERY_TOO_LONG")["error"]
    r = client.post("/api/chat", json={"message": "m" * 51}, headers=admin_headers)
    assert_error(r, 422, "QUERY_TOO_LONG")
    r = client.post("/api/rag/search", json={"query": "   \n "}, headers=admin_headers)
    assert_error(r, 422, "EMPTY_QUERY")


@pytest.mark.parametrize("limit", [0, -1, 51, 10**12, "many", None, 2.5])
def test_search_limit_range(client, admin_headers, limit) -> None:
    r = client.post("/api/rag/search", json={"query": "frames", "limit": limit}, headers=admin_headers)
    body = assert_error(r, 422, "VALIDATION_ERROR")
    assert any(d["field"] == "limit" for d in body["details"])


@pytest.mark.parametrize("query", ["page=0", "page_size=0", "page_size=101", "page=abc", "page=1e9"])
def test_document_listing_paging_range(client, admin_headers, query) -> None:
    assert_error(client.get(f"/api/documents?{query}", headers=admin_headers), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("raw", [b"{", b"null", b"[]", b'{"query": 5}', b'{"query": "a", "extra": 1}',
                                 b"\xff\xfe\x00", b'{"query": "\\ud800"}'])
def test_malformed_json_is_422_not_500(client, admin_headers, raw) -> None:
    r = client.post("/api/rag/search", content=raw, headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert set(r.json()) >= {"error", "code", "request_id"}


def test_nul_bytes_and_control_characters_in_query(client, admin_headers) -> None:
    r = client.post("/api/rag/search", json={"query": "frames\x00\x01 ' OR 1=1 --"}, headers=admin_headers)
    assert assert_error(r, 422, "VALIDATION_ERROR")["details"][0]["field"] == "query"  # NUL: no text means it
    r = client.post("/api/rag/search", json={"query": "frames\x01 ' OR 1=1 --"}, headers=admin_headers)
    assert r.status_code == 200, r.text  # other control characters are just text


# --- rate limits ------------------------------------------------------------------------------


def test_search_rate_limit_per_user_is_429_with_retry_after(limited_client, company, make_user) -> None:
    client = limited_client(search_rate_per_minute=3)
    _, first = make_user(company, "staff")
    _, second = make_user(company, "staff")
    for _ in range(3):
        assert client.post("/api/rag/search", json={"query": "frames"}, headers=first).status_code == 200
    r = client.post("/api/rag/search", json={"query": "frames"}, headers=first)
    assert "SEARCH_RATE_PER_MINUTE" in assert_error(r, 429, "RATE_LIMITED")["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # embedding generation shares the search budget
    assert_error(client.post("/api/embeddings/generate", json={"text": "x"}, headers=first), 429, "RATE_LIMITED")
    # a colleague has a budget of their own
    assert client.post("/api/rag/search", json={"query": "frames"}, headers=second).status_code == 200


def test_chat_rate_limit_per_user_is_429_with_retry_after(limited_client, company, make_user) -> None:
    client = limited_client(chat_rate_per_minute=2)
    _, headers = make_user(company, "staff")
    for _ in range(2):
        assert client.post("/api/chat", json={"message": "opening hours?"}, headers=headers).status_code == 200
    r = client.post("/api/chat", json={"message": "opening hours?"}, headers=headers)
    assert "CHAT_RATE_PER_MINUTE" in assert_error(r, 429, "RATE_LIMITED")["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # searching is a separate budget
    assert client.post("/api/rag/search", json={"query": "hours"}, headers=headers).status_code == 200


def test_unauthenticated_calls_do_not_use_anyones_budget(limited_client, staff_headers) -> None:
    client = limited_client(search_rate_per_minute=1)
    for _ in range(3):
        assert_error(client.post("/api/rag/search", json={"query": "x"}), 401, "NOT_AUTHENTICATED")
    assert client.post("/api/rag/search", json={"query": "x"}, headers=staff_headers).status_code == 200


# --- security headers and CORS ----------------------------------------------------------------


def test_security_headers_on_api_responses(client, admin_headers) -> None:
    for response in (client.get("/health"), client.get("/api/documents", headers=admin_headers),
                     client.get("/api/nothing-here")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "strict-transport-security" not in response.headers  # plain HTTP: HSTS would be ignored


def test_hsts_over_https_only(app) -> None:
    with TestClient(app, base_url="https://testserver") as secure:
        assert secure.get("/health").headers["strict-transport-security"].startswith("max-age=")


def test_web_page_keeps_its_own_policy_and_docs_can_load(client) -> None:
    page = client.get("/app")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]  # the page's, not the API's
    assert page.headers["content-security-policy"].count("default-src") == 1
    docs = TestClient(create_app(client.app.state.settings.model_copy(update={"api_docs": True}),
                                 prepare=False)).get("/docs")
    assert docs.status_code == 200 and "script-src 'self'" in docs.headers["content-security-policy"]
    assert "cdn.jsdelivr.net" not in docs.headers["content-security-policy"]  # assets are served locally


def test_cors_closed_by_default(client) -> None:
    preflight = client.options("/api/rag/search", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_configured_origins(limited_client) -> None:
    client = limited_client(cors_origins="https://portal.practice.example")
    ok = client.options("/api/rag/search", headers={
        "Origin": "https://portal.practice.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://portal.practice.example"
    bad = client.options("/api/rag/search", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers


def test_wildcard_cors_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="CORS_ORIGINS"):
        create_app(Settings(cors_origins="*"), prepare=False)


# --- logs -------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Formats at emit time (in the request's context), as the service's handler does."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs():
    root = logging.getLogger()
    handler, previous = _Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_login_logs_no_secrets_and_lines_carry_request_user_company(client, company, make_user,
                                                                   captured_logs) -> None:
    password = f"pw-{uuid.uuid4().hex}-secret"
    user, _ = make_user(company, "admin", password=password)
    bad = client.post("/api/auth/login", json={"email": user.email, "password": password + "-wrong"})
    assert bad.status_code == 401
    login = client.post("/api/auth/login", json={"email": user.email, "password": password},
                        headers={"X-Request-ID": "login-trace-1"})
    assert login.status_code == 200, login.text
    tokens = login.json()
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {tokens['token']}",
                                             "X-Request-ID": "me-trace-1"})
    assert me.status_code == 200
    refreshed = client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200

    text = "\n".join(captured_logs.lines)
    assert captured_logs.lines, "nothing was logged"
    for secret in (password, tokens["token"], tokens["refresh_token"], refreshed.json()["token"],
                   refreshed.json()["refresh_token"]):
        assert secret not in text
    entries = [json.loads(line) for line in captured_logs.lines]
    access = [e for e in entries if e["logger"] == "ils_rag.access"]
    me_line = next(e for e in access if e.get("request_id") == "me-trace-1")
    assert me_line["user_id"] == user.id and me_line["company_id"] == company.id
    assert me_line["http"]["status"] == 200 and me_line["http"]["path"] == "/api/auth/me"
    assert any(e.get("request_id") == "login-trace-1" for e in access)


def test_redaction_of_tokens_passwords_and_dsns() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    line = redact(f"Authorization: Bearer {jwt} password=hunter2 postgresql://ils_app:s3cret@db/ils "
                  f'{{"refresh_token": "abc123"}} key sk-abcdefghijklmnop')
    for secret in (jwt, "hunter2", "s3cret", "abc123", "sk-abcdefghijklmnop"):
        assert secret not in line, line


def test_exception_tracebacks_are_redacted() -> None:
    formatter = JsonFormatter()
    try:
        raise RuntimeError("connect failed for postgresql://postgres:topsecret@host/db")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, __import__("sys").exc_info())
    assert "topsecret" not in formatter.format(record)


# --- audit trail ------------------------------------------------------------------------------


def _audit_actions(company_id: str) -> list[tuple[str, str | None, str | None]]:
    from auth.audit import list_entries
    from core.db.engines import session_scope
    from core.db.tenant_scope import tenant

    with tenant(company_id), session_scope() as session:
        return [(e.action, e.user_id, e.target) for e in list_entries(session, company_id)]


def test_uploads_patches_deletions_and_role_changes_are_audited(client, company, make_user) -> None:
    admin, headers = make_user(company, "admin")
    staff, _ = make_user(company, "staff")
    up = client.post("/api/documents", files={"files": ("policy.md", b"# Policy\nFrames are repaired free.",
                                                        "text/markdown")}, data={"category": "policy"},
                     headers=headers)
    assert up.status_code == 200, up.text
    document_id = up.json()["results"][0]["document"]["document_id"]
    seed = client.post("/api/rag/index-document", json={"filename": "hours", "content": "Open 9 to 5."},
                       headers=headers)
    assert seed.status_code == 200, seed.text
    assert client.patch(f"/api/documents/{document_id}", json={"is_active": False},
                        headers=headers).status_code == 200
    assert client.delete(f"/api/documents/{document_id}", headers=headers).status_code == 204
    assert client.patch(f"/api/users/{staff.id}", json={"role": "admin"}, headers=headers).status_code == 200

    actions = _audit_actions(company.id)
    assert ("documents.upload", admin.id, document_id) in actions
    assert ("documents.upload", admin.id, seed.json()["document_id"]) in actions
    assert ("documents.update", admin.id, document_id) in actions
    assert ("documents.delete", admin.id, document_id) in actions
    assert ("users.role_change", admin.id, staff.id) in actions
    # a refused deletion (someone else's id) leaves no row claiming it happened
    assert client.delete(f"/api/documents/{uuid.uuid4()}", headers=headers).status_code == 404
    assert len(_audit_actions(company.id)) == len(actions)


# --- NUL characters (found by the schema fuzz: Postgres text/jsonb cannot hold them) -----------


@pytest.fixture
def lenient_client(app):
    """Server errors come back as responses (as they would to a real client), not raised."""
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("post", "/api/chat", {"json": {"message": "hello\u0000there"}}),
    ("post", "/api/chat", {"json": {"message": "hello", "conversationId": "a\u0000b"}}),
    ("get", "/api/conversations/a%00b", {}),
    ("get", "/api/documents/a%00b", {}),
    ("delete", "/api/documents/a%00b", {}),
    ("patch", "/api/users/a%00b", {"json": {"role": "admin"}}),
    ("post", "/api/auth/login", {"json": {"email": "a\u0000@x.com", "password": "p"}}),
    ("post", "/api/users", {"json": {"email": "n@x.com", "password": "password123", "full_name": "a\u0000"}}),
    ("post", "/api/rag/index-document", {"json": {"filename": "a", "content": "hi", "category": "x\u0000y"}}),
    ("post", "/api/rag/index-document", {"json": {"filename": "c", "content": "x" * 9000 + "\u0000"}}),
    ("post", "/api/documents", {"files": {"files": ("d.md", b"# t\nhello", "text/markdown")},
                                "data": {"category": "p\x00q"}}),
    ("post", "/api/documents", {"files": {"files": ("late.txt", b"x" * 9000 + b"\x00", "text/plain")}}),
])
def test_nul_characters_anywhere_are_4xx(lenient_client, admin_headers, method, path, kwargs) -> None:
    r = getattr(lenient_client, method)(path, headers=admin_headers, **kwargs)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) >= {"error", "code", "request_id"}


def test_every_failed_multi_file_upload_is_still_in_the_error_shape(client, admin_headers) -> None:
    files = [("files", ("a.exe", b"MZ", "application/octet-stream")), ("files", ("b.txt", b"", "text/plain"))]
    body = assert_error(client.post("/api/documents", files=files, headers=admin_headers), 422, "UPLOAD_FAILED")
    assert [r["code"] for r in body["results"]] == ["UNSUPPORTED_FILE_TYPE", "EMPTY_FILE"]
    assert body["failed"] == 2 and body["indexed"] == 0


# --- JWT_SECRET rotation (SECURITY.md) --------------------------------------------------------


def test_jwt_rotation_previous_secrets_verify_but_never_sign() -> None:
    from auth.tokens import decode_access_token, issue_access_token
    from core.errors import Unauthorized

    old, new = "old-secret-" + "o" * 40, "new-secret-" + "n" * 40
    claims = {"user_id": str(uuid.uuid4()), "company_id": str(uuid.uuid4()), "email": "a@b.example",
              "role": "staff", "permissions": ["knowledge:read"]}
    old_token, _ = issue_access_token(**claims, settings=Settings(jwt_secret=old))
    rotating = Settings(jwt_secret=new, jwt_previous_secrets=old)
    assert decode_access_token(old_token, rotating).user_id == claims["user_id"]  # grace period
    new_token, _ = issue_access_token(**claims, settings=rotating)
    assert decode_access_token(new_token, Settings(jwt_secret=new)).user_id == claims["user_id"]  # signed with new
    with pytest.raises(Unauthorized):
        decode_access_token(new_token, Settings(jwt_secret=old))
    with pytest.raises(Unauthorized):  # rotation finished: the old secret is gone
        decode_access_token(old_token, Settings(jwt_secret=new))

"""Errors that say what to fix and nothing more: a 500 is one generic line and its request id
(the detail only in the log), stored document errors are safe words, JWT failures name the
check that failed in our words, a malformed or unknown company in a token is a 401, NUL in any
text field is a 422, and the API docs are served only where they are meant to be."""

from __future__ import annotations

import io
import logging
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from jose import jwt
from pydantic import BaseModel

from app.main import create_app
from app.request_models import RequestModel
from auth.permissions import permissions_for
from auth.tokens import resolve_jwt_secret
from core.settings import get_settings

# Library and database internals that must never reach a response body.
LEAKS = ("Traceback", "sqlalchemy", "psycopg", "SELECT", "RuntimeError", "ProgrammingError", "jose",
         "Signature verification failed", "Invalid audience", "Invalid issuer", "missing required key")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)


# --- 500s --------------------------------------------------------------------------------------


@pytest.fixture
def faulty_client(database) -> TestClient:
    """An app with two routes that fail the way a bug would: raw database and Python errors."""
    app = create_app(get_settings(), prepare=False)

    def database_bug() -> None:
        raise sa.exc.ProgrammingError("SELECT secret FROM users WHERE x = 'y'", {"x": "y"},
                                      Exception('relation "users" does not exist'))

    def python_bug() -> None:
        raise RuntimeError("SELECT password_hash FROM users; -- internal detail")

    app.add_api_route("/test-faults/database", database_bug)
    app.add_api_route("/test-faults/python", python_bug)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/test-faults/database", "/test-faults/python"])
def test_a_500_says_only_internal_error_and_its_request_id(faulty_client, caplog, path: str) -> None:
    with caplog.at_level(logging.ERROR, logger="ils_rag.errors"):
        response = faulty_client.get(path, headers={"X-Request-ID": f"req-{uuid.uuid4().hex[:8]}"})
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "INTERNAL_ERROR" and body["request_id"].startswith("req-")
    assert set(body) == {"error", "code", "request_id"}
    _assert_clean(response.text)
    assert "SELECT" in caplog.text  # the detail is in the log, for whoever has the request id


def test_stored_document_errors_never_hold_exception_text(client, company, make_user) -> None:
    from core.db.tenant_scope import tenant
    from indexing.pipeline import mark_failed

    _, admin = make_user(company, "admin")
    upload = client.post("/api/documents", headers=admin,
                         files=[("files", ("hours.txt", io.BytesIO(b"We open at nine on weekdays."), "text/plain"))])
    document_id = upload.json()["results"][0]["document"]["document_id"]
    with tenant(company.id):
        mark_failed(company.id, document_id, sa.exc.ProgrammingError(
            "DELETE FROM data_chunks WHERE ref_doc_id = 'x'", {}, Exception("syntax error at or near")))
    stored = client.get(f"/api/documents/{document_id}", headers=admin).json()
    assert stored["status"] == "failed" and stored["error"].startswith("INDEXING_FAILED")
    _assert_clean(stored["error"])
    assert "DELETE" not in stored["error"] and "syntax" not in stored["error"]


# --- JWT failures in our words -------------------------------------------------------------------


def _claims(company, user, **changes: Any) -> dict[str, Any]:
    settings, now = get_settings(), int(time.time())
    claims = {"userId": user.id, "sub": user.id, "companyId": company.id, "email": user.email, "role": user.role,
              "permissions": permissions_for(user.role), "iat": now, "nbf": now, "exp": now + 600,
              "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "jti": str(uuid.uuid4()), "typ": "access"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(claims: dict[str, Any], key: str | None = None) -> str:
    return jwt.encode(claims, key or resolve_jwt_secret(get_settings()), algorithm="HS256")


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({"aud": "another-api"}, None, "wrong audience"),
    ({"iss": "someone-else"}, None, "wrong issuer"),
    ({}, "another-secret-" + "z" * 40, "bad signature"),
    ({"exp": None}, None, "missing claim exp"),
    ({"aud": None}, None, "missing claim aud"),
    ({"iat": None}, None, "missing claim iat"),
    ({"nbf": int(time.time()) + 3600}, None, "not valid yet"),
    ({"exp": "tomorrow"}, None, "exp claim is not a number"),
])
def test_jwt_failures_name_the_check_that_failed(client, company, make_user, changes, key, reason) -> None:
    user, _ = make_user(company, "staff")
    response = client.get("/api/auth/me", headers=_bearer(_signed(_claims(company, user, **changes), key)))
    assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN", response.text
    assert reason in response.json()["error"]
    _assert_clean(response.text)


def test_a_garbled_token_is_malformed_not_a_library_message(client) -> None:
    for token in ("not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ", "eyJ.eyJ.sig"):
        response = client.get("/api/auth/me", headers=_bearer(token))
        assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
        _assert_clean(response.text)


@pytest.mark.parametrize("company_id", ["x'; DROP TABLE users; --", "a" * 65, "../other", "c\u00e9", {"id": 1},
                                        ["a"], 12.5, True, "a b"])
def test_a_malformed_company_id_is_401_never_500(client, company, make_user, company_id) -> None:
    user, _ = make_user(company, "admin")
    token = _signed(_claims(company, user, companyId=company_id))
    for method, path in (("GET", "/api/auth/me"), ("POST", "/api/rag/search"), ("GET", "/api/documents")):
        response = client.request(method, path, headers=_bearer(token), json={"query": "hours"})
        assert response.status_code == 401, (company_id, path, response.text)
        assert response.json()["code"] == "INVALID_TOKEN"
        _assert_clean(response.text)


def test_a_token_for_an_unknown_company_is_401_unknown_company(client, company, make_user) -> None:
    user, _ = make_user(company, "admin")
    token = _signed(_claims(company, user, companyId=str(uuid.uuid4())))
    for method, path in (("GET", "/api/auth/me"), ("POST", "/api/rag/search"), ("GET", "/api/documents")):
        response = client.request(method, path, headers=_bearer(token), json={"query": "hours"})
        assert response.status_code == 401 and response.json()["code"] == "UNKNOWN_COMPANY", response.text


# --- NUL in any text field -----------------------------------------------------------------------


def test_every_request_body_model_shares_the_nul_rule() -> None:
    from fastapi.routing import APIRoute

    from app.main import ROUTERS

    bodies = []
    for route in (route for router in ROUTERS for route in router.routes):
        if isinstance(route, APIRoute) and route.body_field is not None:
            annotation = route.body_field.field_info.annotation
            for model in getattr(annotation, "__args__", (annotation,)):
                if isinstance(model, type) and issubclass(model, BaseModel):
                    bodies.append((route.path, model))
    assert bodies, "no JSON bodies found"
    form_bodies = {path for path, model in bodies if not issubclass(model, RequestModel)
                   and model.__name__.startswith("Body_")}  # FastAPI's own models of Form/File parameters
    strays = [(path, model.__name__) for path, model in bodies
              if not issubclass(model, RequestModel) and path not in form_bodies]
    assert strays == [], f"request bodies must derive from app.request_models.RequestModel: {strays}"


def test_nul_in_any_text_field_is_422(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    calls = [
        ("POST", "/api/rag/search", {"json": {"query": "frames\x00"}}),
        ("POST", "/api/rag/search", {"json": {"query": "frames", "company_id": "a\x00"}}),
        ("POST", "/api/chat", {"json": {"message": "hi\x00there"}}),
        ("POST", "/api/embeddings/generate", {"json": {"text": "x\x00"}}),
        ("POST", "/api/auth/login", {"json": {"email": "a\x00@example.com", "password": "whatever"}}),
        ("POST", "/api/users", {"json": {"email": "new@example.com", "password": PASSWORD_OK, "full_name": "A\x00"}}),
        ("POST", "/api/rag/index-document", {"json": {"filename": "a.txt", "content": "text\x00more"}}),
        ("GET", "/api/users", {"params": {"company_id": "x\x00"}}),
        ("GET", "/api/documents", {"params": {"page": "1\x00"}}),
        ("POST", "/api/documents", {"files": [("files", ("ok.txt", io.BytesIO(b"fine text"), "text/plain"))],
                                    "data": {"category": "a\x00b"}}),
    ]
    for method, path, kwargs in calls:
        response = client.request(method, path, headers=admin, **kwargs)
        assert response.status_code == 422, (path, kwargs, response.text)
        assert response.json()["code"] in ("VALIDATION_ERROR", "INVALID_CHARACTERS"), response.text
    assert client.get("/api/documents", headers=admin).json()["total"] == 0  # nothing was stored


PASSWORD_OK = "a long enough password"


# --- API docs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "served"), [
    ({"environment": "production"}, False),
    ({"environment": "test"}, False),
    ({"environment": "development"}, True),
    ({"environment": "production", "api_docs": True}, True),
    ({"environment": "development", "api_docs": False}, False),
])
def test_api_docs_are_served_only_in_development_or_when_turned_on(database, overrides, served) -> None:
    client = TestClient(create_app(get_settings().model_copy(update=overrides), prepare=False))
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == (200 if served else 404), (path, overrides)
    assert client.get("/health").status_code in (200, 503)  # the API itself is unaffected

"""Service clients and the client-credentials grant (`POST /api/auth/token`): scopes, company
limits, revocation on the next request, throttled guessing, hashed secrets, audit rows."""

from __future__ import annotations

import base64
import hashlib

import pytest
import sqlalchemy as sa

from auth import clients
from core.db.engines import session_scope
from core.db.owner import admin_session_scope
from core.db.tenant_scope import tenant
from core.settings import get_settings

TOKEN_URL = "/api/auth/token"


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.fixture(autouse=True)
def _fresh_limiters():
    """Failed exchanges of other tests share the TestClient's address; each test starts clean."""
    clients.client_limiters(get_settings()).reset()
    yield
    clients.client_limiters(get_settings()).reset()


@pytest.fixture
def make_client(database: str):
    def _make(scopes: str, companies: list[str] | None = None, *, all_companies: bool = False,
              name: str | None = None) -> clients.CreatedClient:
        import uuid

        with admin_session_scope() as session:
            return clients.create_client(session, name or f"node-{uuid.uuid4().hex[:8]}", scopes,
                                         companies=companies, all_companies=all_companies)

    return _make


def _token(client, created: clients.CreatedClient, **form: str) -> dict:
    response = client.post(TOKEN_URL, data={"grant_type": "client_credentials", **form},
                           headers=_basic(created.id, created.secret))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def _bearer(token: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_scopes_become_permissions_and_nothing_more(client, company, make_client, index_texts):
    index_texts(company, [("a.md", "Anti-reflective coating reduces glare at night.", None)])
    created = make_client("knowledge:read", [company.id])
    token = _token(client, created)
    assert token["scope"] == "knowledge:read" and token["company_id"] == company.id
    assert token["token_type"] == "Bearer" and 0 < token["expires_in"] <= 15 * 60

    found = client.post("/api/rag/search", json={"query": "glare coating", "threshold": 0}, headers=_bearer(token))
    assert found.status_code == 200 and found.json()["total_found"] == 1
    write = client.post("/api/rag/index-document", json={"filename": "x.md", "content": "new text"},
                        headers=_bearer(token))
    assert write.status_code == 403 and write.json()["code"] == "FORBIDDEN"

    widened = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "scope": "knowledge:write"},
                          headers=_basic(created.id, created.secret))
    assert widened.status_code == 403 and widened.json()["code"] == "INVALID_SCOPE"
    bogus = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "scope": "admin:everything"},
                        headers=_basic(created.id, created.secret))
    assert bogus.status_code == 400 and bogus.json()["code"] == "INVALID_SCOPE"


def test_a_narrower_scope_can_be_asked_for(client, company, make_client):
    created = make_client("knowledge:read,knowledge:write", [company.id])
    token = _token(client, created, scope="knowledge:read")
    assert token["scope"] == "knowledge:read"
    write = client.post("/api/rag/index-document", json={"filename": "x.md", "content": "new text"},
                        headers=_bearer(token))
    assert write.status_code == 403


def test_company_limits(client, make_company, make_client, index_texts):
    first, second, third = make_company(), make_company(), make_company()
    index_texts(first, [("first.md", "Progressive lenses for first practice patients.", None)])
    index_texts(second, [("second.md", "Progressive lenses for second practice patients.", None)])
    pair = make_client("knowledge:read", [first.id, second.slug])  # ids or slugs

    needs_company = client.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                                headers=_basic(pair.id, pair.secret))
    assert needs_company.status_code == 400 and needs_company.json()["code"] == "COMPANY_REQUIRED"
    outside = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "company_id": third.id},
                          headers=_basic(pair.id, pair.secret))
    assert outside.status_code == 403 and outside.json()["code"] == "COMPANY_NOT_ALLOWED"

    for company, filename in ((first, "first.md"), (second, "second.md")):
        token = _token(client, pair, company_id=company.id)
        assert token["company_id"] == company.id
        results = client.post("/api/rag/search", json={"query": "progressive lenses", "threshold": 0},
                              headers=_bearer(token)).json()["results"]
        assert [r["filename"] for r in results] == [filename]
        # The token is for one company: naming another in the body is refused.
        other = client.post("/api/rag/search", json={"query": "lenses", "company_id": third.id},
                            headers=_bearer(token))
        assert other.status_code == 403

    everywhere = make_client("knowledge:read", all_companies=True)
    assert _token(client, everywhere, company_id=third.id)["company_id"] == third.id
    unknown = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "company_id": "no-such-company"},
                          headers=_basic(everywhere.id, everywhere.secret))
    assert unknown.status_code == 400 and unknown.json()["code"] == "UNKNOWN_COMPANY"


def test_revocation_takes_effect_on_the_next_request(client, company, make_client):
    created = make_client("knowledge:read", [company.id])
    token = _token(client, created)
    assert client.post("/api/rag/search", json={"query": "anything"}, headers=_bearer(token)).status_code == 200

    with admin_session_scope() as session:
        clients.revoke_client(session, created.name)

    refused = client.post("/api/rag/search", json={"query": "anything"}, headers=_bearer(token))
    assert refused.status_code == 401 and refused.json()["code"] == "CLIENT_REVOKED"
    assert "invalid_token" in refused.headers["www-authenticate"]
    again = client.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                        headers=_basic(created.id, created.secret))
    assert again.status_code == 401 and again.json()["code"] == "INVALID_CLIENT"
    # The name is free again for a new credential.
    renewed = make_client("knowledge:read", [company.id], name=created.name)
    assert renewed.id != created.id and _token(client, renewed)["company_id"] == company.id


def test_guessing_a_secret_is_throttled(client, company, make_client):
    created = make_client("knowledge:read", [company.id])
    limit = clients.client_limiters(get_settings()).client.limit
    for _ in range(limit):
        wrong = client.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                            headers=_basic(created.id, "not-the-secret"))
        assert wrong.status_code == 401 and wrong.json()["code"] == "INVALID_CLIENT"
    blocked = client.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                          headers=_basic(created.id, created.secret))  # even the right secret waits now
    assert blocked.status_code == 429 and blocked.json()["code"] == "RATE_LIMITED"
    assert int(blocked.headers["retry-after"]) >= 1


def test_guessing_client_ids_is_throttled_per_address(client, make_client):
    limit = clients.client_limiters(get_settings()).address.limit
    statuses = [client.post(TOKEN_URL, data={"grant_type": "client_credentials"},
                            headers=_basic(f"svc-guess-{n}", "nothing")).status_code for n in range(limit + 1)]
    assert statuses[:limit] == [401] * limit and statuses[-1] == 429


def test_form_credentials_and_malformed_requests(client, company, make_client):
    created = make_client("knowledge:read", [company.id])
    form = client.post(TOKEN_URL, data={"grant_type": "client_credentials", "client_id": created.id,
                                        "client_secret": created.secret})
    assert form.status_code == 200
    for data, headers, status, code in [
        ({"grant_type": "password"}, _basic(created.id, created.secret), 400, "UNSUPPORTED_GRANT_TYPE"),
        ({}, _basic(created.id, created.secret), 400, "UNSUPPORTED_GRANT_TYPE"),
        ({"grant_type": "client_credentials"}, {}, 401, "INVALID_CLIENT"),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!!"}, 401, "INVALID_CLIENT"),
        ({"grant_type": "client_credentials", "client_secret": created.secret}, _basic(created.id, created.secret),
         400, "INVALID_REQUEST"),
        ({"grant_type": "client_credentials", "company_id": "x' OR 1=1 --"}, _basic(created.id, created.secret),
         403, "COMPANY_NOT_ALLOWED"),
    ]:
        response = client.post(TOKEN_URL, data=data, headers=headers)
        assert (response.status_code, response.json()["code"]) == (status, code), (data, response.text)


def test_secrets_are_stored_hashed_and_exchanges_audited(client, company, make_client):
    created = make_client("knowledge:read", [company.id])
    with admin_session_scope() as session:
        stored = session.execute(sa.text("SELECT secret_hash FROM service_clients WHERE id = :id"),
                                 {"id": created.id}).scalar_one()
    assert created.secret not in stored and stored == hashlib.sha256(created.secret.encode()).hexdigest()

    _token(client, created)
    with tenant(company.id), session_scope() as session:
        rows = session.execute(sa.text("SELECT user_id, target, details FROM audit_log WHERE company_id = :c "
                                       "AND action = :a"), {"c": company.id, "a": clients.CLIENT_TOKEN}).all()
    assert [(r.user_id, r.target, r.details["client"]) for r in rows] == [(created.id, created.name, created.name)]


def test_every_write_by_a_client_is_audited_with_its_name(client, company, make_client, make_user):
    """Not only the exchange: each upload, update, deletion and user change the client makes
    names it in the audit log, beside its id."""
    created = make_client("knowledge:write,users:manage", [company.id])
    headers = _bearer(_token(client, created))
    indexed = client.post("/api/rag/index-document", json={"filename": "a.md", "content": "Frames from £49."},
                          headers=headers)
    assert indexed.status_code == 200, indexed.text
    uploaded = client.post("/api/documents", files={"files": ("b.md", b"Lens cloths are free.", "text/markdown")},
                           headers=headers)
    assert uploaded.status_code == 200, uploaded.text
    document_id = indexed.json()["document_id"]
    assert client.patch(f"/api/documents/{document_id}", json={"category": "pricing"},
                        headers=headers).status_code == 200
    assert client.delete(f"/api/documents/{document_id}", headers=headers).status_code == 204
    make_user(company, "admin")  # so the new admin below is not the last one
    person = client.post("/api/users", json={"email": "new-admin@example.com", "password": "correct horse battery",
                                             "role": "admin"}, headers=headers)
    assert person.status_code == 201, person.text
    assert client.patch(f"/api/users/{person.json()['id']}", json={"role": "staff"},
                        headers=headers).status_code == 200
    assert client.patch(f"/api/users/{person.json()['id']}", json={"is_active": False},
                        headers=headers).status_code == 200

    with tenant(company.id), session_scope() as session:
        rows = session.execute(sa.text("SELECT action, user_id, details FROM audit_log WHERE company_id = :c "
                                       "ORDER BY id"), {"c": company.id}).all()
    written = [row for row in rows if row.action != clients.CLIENT_TOKEN and row.user_id == created.id]
    assert [row.action for row in written] == ["documents.upload", "documents.upload", "documents.update",
                                               "documents.delete", "users.create", "users.role_change",
                                               "users.deactivate"]
    assert all(row.details["client"] == created.name for row in written), [row.details for row in written]
    # what each row said before is kept beside the name
    assert written[0].details["filename"] == "a.md" and written[4].details["email"] == "new-admin@example.com"
    # a person's rows carry no client
    assert all("client" not in (row.details or {}) for row in rows if row.user_id != created.id)


def test_the_service_role_cannot_create_or_revoke_clients(database: str, make_client, company):
    created = make_client("knowledge:read", [company.id])
    for statement in ("INSERT INTO service_clients (id, name, secret_hash, scopes, all_companies) "
                      "VALUES ('svc-x', 'x', 'h', '{knowledge:read}', true)",
                      "UPDATE service_clients SET revoked_at = NULL, all_companies = true"):
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), session_scope() as session:
            session.execute(sa.text(statement))
    with session_scope() as session:  # ... but can read them (to check secrets and revocation)
        assert session.execute(sa.text("SELECT name FROM service_clients WHERE id = :id"),
                               {"id": created.id}).scalar_one() == created.name


def test_create_refuses_bad_input(database: str, company):
    from core.errors import ServiceError

    with admin_session_scope() as session:
        for kwargs in ({"name": "ok", "scopes": "knowledge:read"},  # neither companies nor all
                       {"name": "ok", "scopes": "knowledge:read", "companies": [company.id], "all_companies": True},
                       {"name": "bad name!", "scopes": "knowledge:read", "companies": [company.id]},
                       {"name": "ok", "scopes": "root", "companies": [company.id]},
                       {"name": "ok", "scopes": "knowledge:read", "companies": ["no-such-company"]}):
            with pytest.raises(ServiceError):
                clients.create_client(session, **kwargs)


def test_a_verify_only_service_cannot_issue_client_tokens(company, make_client) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from core.errors import ServiceError
    from core.settings import Settings

    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    created = make_client("knowledge:read", [company.id])
    with pytest.raises(ServiceError) as refused:
        clients.exchange(created.id, created.secret, settings=Settings(jwt_algorithm="ES256", jwt_public_key=public))
    assert (refused.value.status_code, refused.value.code) == (503, "TOKEN_ISSUING_UNAVAILABLE")

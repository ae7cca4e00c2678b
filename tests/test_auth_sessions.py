"""Sign-in over HTTP: login, refresh rotation and family revocation, logout, deactivation,
brute-force limits, user management within one company, the audit trail and the CLI."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from auth import audit
from auth.models import RefreshToken
from auth.passwords import hash_password
from auth.rate_limit import RateLimited, SlidingWindowLimiter
from auth.sessions import login_limiters
from auth.tokens import decode_access_token, issue_access_token
from auth.users import create_user, get_user
from core.db.engines import session_scope
from core.db.tenant_scope import tenant
from core.settings import Settings, get_settings

PASSWORD = "correct horse battery"
LOGIN, REFRESH, LOGOUT, ME = "/api/auth/login", "/api/auth/refresh", "/api/auth/logout", "/api/auth/me"


@pytest.fixture(autouse=True)
def _fresh_limits():
    """Failed-login counters are per process; keep one test's failures out of the next."""
    yield
    login_limiters(get_settings()).reset()


def _login(client, email: str, password: str = PASSWORD, **extra: str):
    return client.post(LOGIN, json={"email": email, "password": password, **extra})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _audit(company_id: str, action: str) -> list:
    with tenant(company_id), session_scope() as session:
        return audit.list_entries(session, company_id, action)


# --- login -----------------------------------------------------------------------------------

def test_login_returns_the_seed_shape_and_a_working_token(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    response = _login(client, user.email.upper())  # emails are case-insensitive
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == {"id": user.id, "email": user.email, "role": "staff", "companyId": company.id}
    assert body["expires_in"] == 15 * 60 and body["refresh_token"] and body["token_type"] == "Bearer"
    me = client.get(ME, headers=_bearer(body["token"])).json()
    assert me["id"] == user.id and me["companyId"] == company.id
    assert me["permissions"] == ["chat:use", "knowledge:read"]
    [entry] = _audit(company.id, audit.LOGIN)
    assert entry.user_id == user.id and entry.client_ip == "testclient"


def test_wrong_password_and_unknown_email_fail_alike(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    wrong = _login(client, user.email, "not the password")
    unknown = _login(client, f"nobody-{uuid.uuid4().hex[:6]}@example.com")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.json()["code"] == "INVALID_CREDENTIALS"
    assert wrong.json()["error"] == unknown.json()["error"]
    [entry] = _audit(company.id, audit.LOGIN_FAILED)
    assert entry.user_id == user.id and entry.details == {"reason": "bad_password"}


def test_bad_login_bodies_are_422(client) -> None:
    assert client.post(LOGIN, json={"email": "a@b.example"}).status_code == 422
    assert client.post(LOGIN, json={"email": "a@b.example", "password": "x" * 5000}).status_code == 422
    assert client.post(LOGIN, content=b"not json", headers={"Content-Type": "application/json"}).status_code == 422


def test_same_email_in_two_companies_needs_the_company_slug(client, make_company) -> None:
    first, second = make_company("First"), make_company("Second")
    email = f"shared-{uuid.uuid4().hex[:6]}@example.com"
    with tenant(first.id), session_scope() as session:  # row-level security: one company per transaction
        a = create_user(session, first.id, email, PASSWORD, "staff")
    with tenant(second.id), session_scope() as session:
        b = create_user(session, second.id, email, PASSWORD, "admin")
    ambiguous = _login(client, email)
    assert ambiguous.status_code == 409 and ambiguous.json()["code"] == "COMPANY_REQUIRED"
    assert first.slug in ambiguous.json()["error"]
    assert _login(client, email, company=first.slug).json()["user"]["id"] == a.id
    assert _login(client, email, company=second.slug).json()["user"]["id"] == b.id
    assert _login(client, email, "wrong password", company=second.slug).status_code == 401
    with tenant(second.id), session_scope() as session:  # different passwords: the matching one wins
        get_user(session, second.id, b.id).password_hash = hash_password("second password here")
    assert _login(client, email).json()["user"]["companyId"] == first.id
    assert _login(client, email, "second password here").json()["user"]["companyId"] == second.id


# --- refresh rotation ------------------------------------------------------------------------

def test_refresh_rotates_and_reuse_revokes_the_whole_family(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    first = _login(client, user.email).json()
    second = client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["token"] != first["token"]
    assert second["user"]["id"] == user.id
    assert client.get(ME, headers=_bearer(second["token"])).status_code == 200

    reuse = client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and reuse.json()["code"] == "INVALID_TOKEN"
    revoked = client.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert revoked.status_code == 401 and revoked.json()["code"] == "INVALID_TOKEN"
    [entry] = _audit(company.id, audit.REFRESH_REUSE)
    assert entry.user_id == user.id and entry.details["revoked"] >= 1


def test_other_sessions_survive_a_family_revocation(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    laptop = _login(client, user.email).json()
    phone = _login(client, user.email).json()
    client.post(REFRESH, json={"refresh_token": laptop["refresh_token"]})
    client.post(REFRESH, json={"refresh_token": laptop["refresh_token"]})  # re-use: laptop family revoked
    assert client.post(REFRESH, json={"refresh_token": phone["refresh_token"]}).status_code == 200


def test_refresh_works_after_the_access_token_expired(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    pair = _login(client, user.email).json()
    expired, _ = issue_access_token(user_id=user.id, company_id=company.id, email=user.email, role="staff",
                                    permissions=[], settings=Settings(access_token_minutes=-5))
    assert client.get(ME, headers=_bearer(expired)).json()["code"] == "TOKEN_EXPIRED"
    response = client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}, headers=_bearer(expired))
    assert response.status_code == 200, response.text


def test_tokens_of_one_kind_never_pass_as_the_other(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    pair = _login(client, user.email).json()
    as_refresh = client.post(REFRESH, json={"refresh_token": pair["token"]})
    assert as_refresh.status_code in (401, 422)
    assert as_refresh.json()["code"] in ("INVALID_TOKEN", "VALIDATION_ERROR")
    as_access = client.get(ME, headers=_bearer(pair["refresh_token"]))
    assert as_access.status_code == 401 and as_access.json()["code"] == "INVALID_TOKEN"


def test_forged_refresh_tokens_fail_without_touching_the_real_one(client, company, make_user, make_company) -> None:
    user, _ = make_user(company, "staff")
    real = _login(client, user.email).json()["refresh_token"]
    company_id, jti, secret = real.split(".")
    other = make_company("Other")
    forgeries = [f"{company_id}.{jti}.{'A' * len(secret)}", f"{other.id}.{jti}.{secret}",
                 f"{company_id}.{uuid.uuid4()}.{secret}", "garbage", f"{company_id}'--.{jti}.{secret}", ""]
    for forged in forgeries:
        response = client.post(REFRESH, json={"refresh_token": forged})
        assert response.status_code in (401, 422), (forged, response.text)
    assert client.post(REFRESH, json={"refresh_token": real}).status_code == 200


def test_expired_refresh_token_is_refused(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    token = _login(client, user.email).json()["refresh_token"]
    with tenant(company.id), session_scope() as session:
        session.execute(update(RefreshToken).where(RefreshToken.company_id == company.id,
                                                   RefreshToken.user_id == user.id)
                        .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    response = client.post(REFRESH, json={"refresh_token": token})
    assert response.status_code == 401 and response.json()["code"] == "TOKEN_EXPIRED"


def test_refresh_tokens_are_stored_hashed(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    token = _login(client, user.email).json()["refresh_token"]
    with tenant(company.id), session_scope() as session:
        rows = session.query(RefreshToken).filter_by(company_id=company.id, user_id=user.id).all()
    assert len(rows) == 1 and rows[0].token_hash != token and token.split(".")[2] not in rows[0].token_hash


def test_logout_revokes_and_is_idempotent(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    token = _login(client, user.email).json()["refresh_token"]
    assert client.post(LOGOUT, json={"refresh_token": token}).json() == {"status": "logged_out"}
    response = client.post(REFRESH, json={"refresh_token": token})
    assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
    assert client.post(LOGOUT, json={"refresh_token": token}).status_code == 200
    assert client.post(LOGOUT, json={"refresh_token": "nonsense"}).status_code == 401
    assert len(_audit(company.id, audit.LOGOUT)) == 2


# --- deactivation and roles --------------------------------------------------------------------

def test_deactivated_user_cannot_refresh_or_log_in(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    user, _ = make_user(company, "staff")
    pair = _login(client, user.email).json()
    response = client.patch(f"/api/users/{user.id}", json={"is_active": False}, headers=admin)
    assert response.status_code == 200 and response.json()["is_active"] is False
    refreshed = client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401
    login = _login(client, user.email)
    assert login.status_code == 401 and login.json()["code"] == "ACCOUNT_DISABLED"
    assert _login(client, user.email, "wrong password").json()["code"] == "INVALID_CREDENTIALS"
    [entry] = _audit(company.id, audit.USER_DEACTIVATED)
    assert entry.target == user.id and entry.details["revoked_refresh_tokens"] == 1

    assert client.patch(f"/api/users/{user.id}", json={"is_active": True}, headers=admin).status_code == 200
    assert _login(client, user.email).status_code == 200


def test_role_change_is_audited_and_reaches_the_next_refresh(client, company, make_user) -> None:
    admin_user, admin = make_user(company, "admin")
    user, _ = make_user(company, "staff")
    pair = _login(client, user.email).json()
    response = client.patch(f"/api/users/{user.id}", json={"role": "admin"}, headers=admin)
    assert response.status_code == 200 and response.json()["role"] == "admin"
    refreshed = client.post(REFRESH, json={"refresh_token": pair["refresh_token"]}).json()
    assert "users:manage" in decode_access_token(refreshed["token"], settings=get_settings()).permissions
    [entry] = _audit(company.id, audit.ROLE_CHANGED)
    assert entry.user_id == admin_user.id and entry.details == {"email": user.email, "from": "staff", "to": "admin"}


def test_the_last_active_admin_cannot_be_removed(client, company, make_user) -> None:
    admin_user, admin = make_user(company, "admin")
    for change in ({"is_active": False}, {"role": "staff"}):
        response = client.patch(f"/api/users/{admin_user.id}", json=change, headers=admin)
        assert response.status_code == 409 and response.json()["code"] == "LAST_ADMIN"
    make_user(company, "admin")
    assert client.patch(f"/api/users/{admin_user.id}", json={"role": "staff"}, headers=admin).status_code == 200


# --- user management, permissions and tenancy --------------------------------------------------

def test_admin_manages_users_of_their_own_company(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    email = f"new-{uuid.uuid4().hex[:6]}@example.com"
    created = client.post("/api/users", json={"email": email, "password": "long enough pw", "role": "staff",
                                              "full_name": "New Person"}, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["company_id"] == company.id and created.json()["full_name"] == "New Person"
    listed = client.get("/api/users", headers=admin).json()["users"]
    assert email in {u["email"] for u in listed} and {u["company_id"] for u in listed} == {company.id}
    assert client.get(f"/api/users/{created.json()['id']}", headers=admin).json()["email"] == email
    assert _login(client, email, "long enough pw").status_code == 200
    duplicate = client.post("/api/users", json={"email": email, "password": "long enough pw"}, headers=admin)
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "USER_EXISTS"
    assert _audit(company.id, audit.USER_CREATED)[0].target == created.json()["id"]


@pytest.mark.parametrize("body", [
    {"email": "x@example.com", "password": "short"},
    {"email": "not-an-email", "password": "long enough pw"},
    {"email": "x@example.com", "password": "long enough pw", "role": "superuser"},
    {"email": "x@example.com", "password": "long enough pw", "is_admin": True},
])
def test_bad_user_bodies_are_422(client, admin_headers, body) -> None:
    response = client.post("/api/users", json=body, headers=admin_headers)
    assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR"


def test_patch_rejects_unknown_fields_and_bad_roles(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    user, _ = make_user(company, "staff")
    assert client.patch(f"/api/users/{user.id}", json={"password": "new password 1"}, headers=admin).status_code == 422
    assert client.patch(f"/api/users/{user.id}", json={"role": "root"}, headers=admin).status_code == 422


def test_staff_cannot_call_write_endpoints(client, company, make_user) -> None:
    user, staff = make_user(company, "staff")
    calls = [client.get("/api/users", headers=staff),
             client.post("/api/users", json={"email": "y@example.com", "password": "long enough pw"}, headers=staff),
             client.patch(f"/api/users/{user.id}", json={"role": "admin"}, headers=staff)]
    for response in calls:
        assert response.status_code == 403 and response.json()["code"] == "FORBIDDEN", response.text
    assert client.get(ME, headers=staff).status_code == 200


def test_company_a_cannot_reach_company_b(client, make_company, make_user) -> None:
    company_a, company_b = make_company("A"), make_company("B")
    _, admin_a = make_user(company_a, "admin")
    user_b, _ = make_user(company_b, "staff")
    for response in (
        client.get("/api/users", params={"company_id": company_b.id}, headers=admin_a),
        client.post("/api/users", json={"email": "z@example.com", "password": "long enough pw",
                                        "company_id": company_b.id}, headers=admin_a),
        client.patch(f"/api/users/{user_b.id}", json={"is_active": False, "company_id": company_b.id},
                     headers=admin_a),
    ):
        assert response.status_code == 403 and response.json()["code"] == "FORBIDDEN", response.text
    for response in (client.patch(f"/api/users/{user_b.id}", json={"is_active": False}, headers=admin_a),
                     client.get(f"/api/users/{user_b.id}", headers=admin_a)):
        assert response.status_code == 404 and response.json()["code"] == "USER_NOT_FOUND"
    assert user_b.id not in {u["id"] for u in client.get("/api/users", headers=admin_a).json()["users"]}
    assert client.get("/api/users", params={"company_id": company_a.id}, headers=admin_a).status_code == 200
    with tenant(company_b.id), session_scope() as session:
        assert get_user(session, company_b.id, user_b.id).is_active is True


# --- brute force ---------------------------------------------------------------------------------

def test_sixth_wrong_password_within_a_minute_is_429(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    for _ in range(5):
        assert _login(client, user.email, "wrong password").status_code == 401
    sixth = _login(client, user.email, "wrong password")
    assert sixth.status_code == 429, sixth.text
    assert sixth.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(sixth.headers["Retry-After"]) <= 60
    assert _login(client, user.email).status_code == 429  # even the right password, while locked
    other, _ = make_user(company, "staff")
    assert _login(client, other.email).status_code == 200  # per account: others are unaffected


def test_failed_logins_are_limited_per_client_address(database) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = Settings(login_max_failures_per_address=3)
    app = create_app(settings, prepare=False)
    attacker = TestClient(app, client=("203.0.113.7", 40000))
    for i in range(3):  # a different account each time: only the address limit can catch this
        assert _login(attacker, f"spray-{i}-{uuid.uuid4().hex[:6]}@example.com", "guess").status_code == 401
    blocked = _login(attacker, f"spray-x-{uuid.uuid4().hex[:6]}@example.com", "guess")
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    neighbour = TestClient(app, client=("203.0.113.8", 40000))
    assert _login(neighbour, f"other-{uuid.uuid4().hex[:6]}@example.com", "guess").status_code == 401
    login_limiters(settings).reset()


def test_sliding_window_limiter() -> None:
    now = [1000.0]
    limiter = SlidingWindowLimiter(3, 60, clock=lambda: now[0], max_keys=10)
    for _ in range(3):
        limiter.attempt("k")
    with pytest.raises(RateLimited) as caught:
        limiter.attempt("k")
    assert caught.value.headers["Retry-After"] == "60" and caught.value.status_code == 429
    now[0] += 30
    assert limiter.retry_after("k") == pytest.approx(30)
    now[0] += 30.5  # the first events left the window
    assert limiter.retry_after("k") == 0
    limiter.attempt("k")
    limiter.hit("other")
    limiter.reset("k")
    assert limiter.retry_after("k") == 0
    for i in range(50):  # attacker-chosen keys never grow it beyond max_keys
        limiter.hit(f"key-{i}")
    assert len(limiter._events) <= 10


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_deactivates_and_reactivates_a_user(client, company, make_user) -> None:
    from typer.testing import CliRunner

    from app.cli import app as cli_app

    user, _ = make_user(company, "staff")
    runner = CliRunner()
    result = runner.invoke(cli_app, ["users", "deactivate", "--company", company.slug, "--email", user.email])
    assert result.exit_code == 0, result.output
    assert _login(client, user.email).json()["code"] == "ACCOUNT_DISABLED"
    result = runner.invoke(cli_app, ["users", "deactivate", "--company", company.slug, "--email", user.email,
                                     "--reactivate"])
    assert result.exit_code == 0, result.output
    assert _login(client, user.email).status_code == 200
    assert [e.user_id for e in _audit(company.id, audit.USER_DEACTIVATED)] == [None]

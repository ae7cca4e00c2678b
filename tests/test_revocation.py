"""Authority ends when it is withdrawn: logout, a revoked refresh family, deactivation, a role
change and a password change each make the user's existing access tokens fail on their next
request with 401 TOKEN_REVOKED, and a token naming a user or company that does not exist is
refused."""

from __future__ import annotations

import uuid

import pytest

from auth.permissions import permissions_for
from auth.sessions import login_limiters
from auth.tokens import decode_access_token, issue_access_token
from core.settings import get_settings

PASSWORD = "correct horse battery"
ME, USERS = "/api/auth/me", "/api/users"


@pytest.fixture(autouse=True)
def _fresh_limits():
    yield
    login_limiters(get_settings()).reset()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sign_in(client, email: str, password: str = PASSWORD) -> dict:
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def _works(client, token: str) -> bool:
    response = client.get(ME, headers=_bearer(token))
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def _assert_revoked(client, token: str, path: str = ME) -> None:
    response = client.get(path, headers=_bearer(token))
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "TOKEN_REVOKED" and body["request_id"], body
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_tokens_from_a_sign_in_name_their_session_and_epoch(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    session = _sign_in(client, user.email)
    claims = decode_access_token(session["token"], settings=get_settings())
    assert claims.session_id and claims.auth_epoch == 0
    refreshed = client.post("/api/auth/refresh", json={"refresh_token": session["refresh_token"]}).json()
    # one family per sign-in
    assert decode_access_token(refreshed["token"], settings=get_settings()).session_id == claims.session_id


def test_logout_ends_that_sign_ins_access_tokens_only(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    phone, laptop = _sign_in(client, user.email), _sign_in(client, user.email)
    assert _works(client, phone["token"]) and _works(client, laptop["token"])
    assert client.post("/api/auth/logout", json={"refresh_token": phone["refresh_token"]}).status_code == 200
    _assert_revoked(client, phone["token"])
    _assert_revoked(client, phone["token"], "/api/documents")  # every route, not just /me
    assert _works(client, laptop["token"])  # the other sign-in is untouched


def test_refresh_token_reuse_revokes_every_access_token_of_the_family(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    first = _sign_in(client, user.email)
    second = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    assert _works(client, first["token"]) and _works(client, second["token"])
    replay = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})  # a stolen copy
    assert replay.status_code == 401
    _assert_revoked(client, first["token"])
    _assert_revoked(client, second["token"])


def test_deactivation_ends_access_tokens_and_reactivation_does_not_revive_them(client, company,
                                                                              make_user) -> None:
    _, admin = make_user(company, "admin")
    user, platform_style = make_user(company, "staff")  # a token issued outside a sign-in (no sid/ver)
    session = _sign_in(client, user.email)
    assert client.patch(f"{USERS}/{user.id}", headers=admin, json={"is_active": False}).status_code == 200
    _assert_revoked(client, session["token"])
    _assert_revoked(client, platform_style["Authorization"].split()[1])
    assert client.patch(f"{USERS}/{user.id}", headers=admin, json={"is_active": True}).status_code == 200
    _assert_revoked(client, session["token"])  # the epoch moved: old tokens stay dead
    assert _works(client, _sign_in(client, user.email)["token"])


def test_a_demoted_admin_cannot_use_the_old_admin_token(client, company, make_user) -> None:
    _, boss = make_user(company, "admin")
    demoted, _ = make_user(company, "admin")
    old = _sign_in(client, demoted.email)
    assert client.get(USERS, headers=_bearer(old["token"])).status_code == 200
    assert client.patch(f"{USERS}/{demoted.id}", headers=boss, json={"role": "staff"}).status_code == 200
    create = client.post(USERS, headers=_bearer(old["token"]),
                         json={"email": f"new-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD,
                               "role": "admin"})
    assert create.status_code == 401 and create.json()["code"] == "TOKEN_REVOKED"
    _assert_revoked(client, old["token"])
    # The sign-in itself survives a role change: a refresh hands out a staff token.
    fresh = client.post("/api/auth/refresh", json={"refresh_token": old["refresh_token"]}).json()
    assert fresh["user"]["role"] == "staff" and _works(client, fresh["token"])
    assert client.get(USERS, headers=_bearer(fresh["token"])).status_code == 403


def test_a_token_without_an_epoch_is_refused_once_the_role_changed(client, company, make_user) -> None:
    _, boss = make_user(company, "admin")
    user, platform_style = make_user(company, "admin")  # the platform's tokens carry no `ver`
    assert client.patch(f"{USERS}/{user.id}", headers=boss, json={"role": "staff"}).status_code == 200
    _assert_revoked(client, platform_style["Authorization"].split()[1])


def test_password_change_ends_every_session_and_returns_a_new_one(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    here, elsewhere = _sign_in(client, user.email), _sign_in(client, user.email)
    new_password = "a much better passphrase"
    wrong = client.post("/api/auth/password", headers=_bearer(here["token"]),
                        json={"current_password": "not it at all", "new_password": new_password})
    assert wrong.status_code == 401 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    assert _works(client, here["token"])  # a wrong current password changes nothing

    changed = client.post("/api/auth/password", headers=_bearer(here["token"]),
                          json={"current_password": PASSWORD, "new_password": new_password})
    assert changed.status_code == 200, changed.text
    _assert_revoked(client, here["token"])
    _assert_revoked(client, elsewhere["token"])
    assert client.post("/api/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}).status_code == 401
    assert _works(client, changed.json()["token"])
    assert client.post("/api/auth/login", json={"email": user.email, "password": PASSWORD}).status_code == 401
    assert _works(client, _sign_in(client, user.email, new_password)["token"])


def test_a_short_new_password_is_refused(client, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    session = _sign_in(client, user.email)
    response = client.post("/api/auth/password", headers=_bearer(session["token"]),
                           json={"current_password": PASSWORD, "new_password": "short"})
    assert response.status_code == 422
    assert _works(client, session["token"])


def test_a_token_naming_a_user_that_does_not_exist_is_refused(client, company) -> None:
    token, _ = issue_access_token(user_id=str(uuid.uuid4()), company_id=company.id, email="ghost@example.com",
                                  role="admin", permissions=permissions_for("admin"), settings=get_settings())
    for path in (ME, USERS, "/api/documents"):
        response = client.get(path, headers=_bearer(token))
        assert response.status_code == 401 and response.json()["code"] == "UNKNOWN_USER", response.text


def test_a_token_for_a_company_that_does_not_exist_is_refused(client, company, make_user) -> None:
    user, _ = make_user(company, "admin")
    token, _ = issue_access_token(user_id=user.id, company_id=str(uuid.uuid4()), email=user.email, role="admin",
                                  permissions=permissions_for("admin"), settings=get_settings())
    response = client.post("/api/rag/search", headers=_bearer(token), json={"query": "opening hours"})
    assert response.status_code == 401 and response.json()["code"] == "UNKNOWN_COMPANY", response.text


def test_withdrawing_one_users_authority_leaves_another_companys_tokens_alone(client, make_company,
                                                                             make_user) -> None:
    a, b = make_company(), make_company()
    _, admin_a = make_user(a, "admin")
    user_a, _ = make_user(a, "staff")
    user_b, _ = make_user(b, "staff")
    session_a, session_b = _sign_in(client, user_a.email), _sign_in(client, user_b.email)
    assert client.patch(f"{USERS}/{user_a.id}", headers=admin_a, json={"is_active": False}).status_code == 200
    _assert_revoked(client, session_a["token"])
    assert _works(client, session_b["token"])


def test_a_platform_token_without_a_role_claim_is_judged_by_the_user_row(client, company, make_user) -> None:
    import time

    from jose import jwt

    from auth.tokens import resolve_jwt_secret
    from core.settings import get_settings

    _, boss = make_user(company, "admin")
    user, _ = make_user(company, "staff")
    settings, now = get_settings(), int(time.time())
    claims = {"userId": user.id, "companyId": company.id, "permissions": ["knowledge:read"], "iat": now,
              "exp": now + 600, "iss": settings.jwt_issuer, "aud": settings.jwt_audience}
    token = jwt.encode(claims, resolve_jwt_secret(get_settings()), algorithm="HS256")
    assert _works(client, token)
    assert client.patch(f"{USERS}/{user.id}", headers=boss, json={"is_active": False}).status_code == 200
    _assert_revoked(client, token)

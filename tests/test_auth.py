"""Access tokens: every bad token is a 401 with its code (never a 500), platform interop
with PyJWT (HS256, RS256, ES256), algorithm confusion, and secret configuration at start-up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from auth.tokens import (
    LEEWAY_S,
    _development_secret,
    check_auth_configuration,
    decode_access_token,
    issue_access_token,
    resolve_jwt_secret,
)
from core.errors import ConfigurationError, Unauthorized
from core.settings import PLACEHOLDER_SECRET, Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
ME = "/api/auth/me"
JWT_SHAPED = r"[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,40}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict, claims: dict, key: bytes | None) -> str:
    """A token built by hand: `alg: none` (key None) or HMAC-SHA256 with any bytes as key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = "" if key is None else _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


def _seed_claims(user_id: str = "u-1", company_id: str = "c-1", **overrides: object) -> dict:
    """The claim set the ILS platform's Node backend signs (no sub, jti or typ)."""
    now = int(time.time())
    claims = {"userId": user_id, "companyId": company_id, "email": "someone@example.com", "role": "admin",
              "permissions": ["knowledge:read", "knowledge:write", "chat:use", "users:manage"],
              "iat": now, "exp": now + 600, "iss": "ils-platform", "aud": "ils-api"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _secret() -> str:
    return resolve_jwt_secret(get_settings())


def _hs(claims: dict, secret: str | None = None, headers: dict | None = None) -> str:
    return pyjwt.encode(claims, secret or _secret(), algorithm="HS256", headers=headers)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response, code: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["error"] and body["request_id"]
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- the bad-token matrix over HTTP ----------------------------------------------------------

def _now() -> int:
    return int(time.time())


BAD_TOKENS = {
    "alg none": lambda: _hand_signed({"alg": "none", "typ": "JWT"}, _seed_claims(), None),
    "alg none uppercase": lambda: _hand_signed({"alg": "NONE", "typ": "JWT"}, _seed_claims(), None),
    "bad signature": lambda: _hs(_seed_claims(), secret="another-secret-that-is-long-enough-123456"),
    "signature stripped": lambda: _hs(_seed_claims()).rsplit(".", 1)[0] + ".",
    "payload swapped": lambda: ".".join([_hs(_seed_claims()).split(".")[0],
                                         _b64(json.dumps(_seed_claims(role="admin", companyId="c-2")).encode()),
                                         _hs(_seed_claims()).split(".")[2]]),
    "wrong issuer": lambda: _hs(_seed_claims(iss="someone-else")),
    "wrong audience": lambda: _hs(_seed_claims(aud="other-api")),
    "missing aud": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "aud"}),
    "missing iss": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "iss"}),
    "missing exp": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "exp"}),
    "missing iat": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "iat"}),
    "missing companyId": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "companyId"}),
    "empty companyId": lambda: _hs(_seed_claims(companyId="")),
    "missing userId and sub": lambda: _hs({k: v for k, v in _seed_claims().items() if k != "userId"}),
    "userId and sub disagree": lambda: _hs(_seed_claims(sub="someone-else")),
    "nbf in the future": lambda: _hs(_seed_claims(nbf=_now() + 600)),
    "iat in the future": lambda: _hs(_seed_claims(iat=_now() + 600, exp=_now() + 1200)),
    "exp not a number": lambda: _hs(_seed_claims(exp="tomorrow")),
    "refresh typ": lambda: _hs(_seed_claims(typ="refresh")),
    "permissions not a list": lambda: _hs(_seed_claims(permissions="users:manage")),
    "garbage": lambda: "not-a-jwt",
    "three garbage parts": lambda: "a.b.c",
    "bad base64": lambda: "eyJ!!!.eyJ###.sig",
    "json array payload": lambda: _hand_signed({"alg": "HS256", "typ": "JWT"}, [1, 2], _secret().encode()),
    "huge": lambda: "a" * 20_000,
    "expired and bad signature": lambda: _hs(_seed_claims(exp=_now() - 3600),
                                             secret="another-secret-that-is-long-enough-123456"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_is_401_invalid_token(client, case: str) -> None:
    _assert_401(client.get(ME, headers=_bearer(BAD_TOKENS[case]())), "INVALID_TOKEN")


def test_expired_token_is_401_token_expired_in_the_seeds_shape(client) -> None:
    response = client.get(ME, headers=_bearer(_hs(_seed_claims(iat=_now() - 3600, exp=_now() - LEEWAY_S - 60))))
    _assert_401(response, "TOKEN_EXPIRED")
    assert response.json()["error"] == "Token expired"


@pytest.fixture
def known(company, make_user) -> dict[str, str]:
    """The ids of a user that exists (tokens naming anyone else are refused: UNKNOWN_USER)."""
    user, _ = make_user(company, "admin")
    return {"user_id": user.id, "company_id": company.id}


def test_leeway_accepts_a_token_that_expired_seconds_ago(client, known) -> None:
    response = client.get(ME, headers=_bearer(_hs(_seed_claims(**known, iat=_now() - 600, exp=_now() - 5))))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token {t}", "Basic dXNlcjpwYXNz", "{t}",
                                    "bearer{t}"])
def test_missing_or_non_bearer_header_is_401_not_authenticated(client, header: str | None) -> None:
    token = _hs(_seed_claims())
    headers = {} if header is None else {"Authorization": header.format(t=token)}
    _assert_401(client.get(ME, headers=headers), "NOT_AUTHENTICATED")


def test_lowercase_bearer_scheme_is_accepted(client, known) -> None:
    assert client.get(ME, headers={"Authorization": f"bearer {_hs(_seed_claims(**known))}"}).status_code == 200


def test_missing_aud_is_refused_by_decode_itself() -> None:
    """python-jose skips the audience check when `aud` is absent unless it is required."""
    token = _hs({k: v for k, v in _seed_claims().items() if k != "aud"})
    with pytest.raises(Unauthorized) as caught:
        decode_access_token(token, settings=get_settings())
    assert caught.value.code == "INVALID_TOKEN"


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=300), st.from_regex(JWT_SHAPED)))
def test_arbitrary_strings_never_escape_as_anything_but_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        decode_access_token(token, settings=get_settings())
    assert caught.value.code in ("INVALID_TOKEN", "TOKEN_EXPIRED")


# --- interop: tokens minted by the platform with another library --------------------------------

def test_pyjwt_token_with_the_seeds_claims_is_accepted(client, company, known) -> None:
    token = _hs(_seed_claims(**known))
    response = client.get(ME, headers=_bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == known["user_id"] and body["companyId"] == company.id and body["role"] == "admin"
    assert "users:manage" in body["permissions"]
    # ...and it works on a real endpoint of its company.
    assert client.get("/api/users", headers=_bearer(token)).status_code == 200


def test_our_tokens_verify_with_pyjwt_and_carry_the_seed_claims() -> None:
    token, lifetime = issue_access_token(user_id="u-9", company_id="c-9", email="a@b.example", role="staff",
                                         permissions=["chat:use"], settings=get_settings())
    claims = pyjwt.decode(token, _secret(), algorithms=["HS256"], audience="ils-api", issuer="ils-platform")
    assert {"userId", "companyId", "email", "role", "permissions", "iat", "exp", "iss", "aud", "jti", "typ",
            "sub", "nbf"} <= set(claims)
    assert claims["typ"] == "access" and claims["userId"] == claims["sub"] == "u-9"
    assert lifetime == 15 * 60 and claims["exp"] - claims["iat"] == lifetime


# --- asymmetric keys and algorithm confusion -------------------------------------------------

def _pem_pair(private_key) -> tuple[str, str]:
    private = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def rs256_settings(rsa_keys) -> Settings:
    """Verify-only, as when the platform signs with its private key and gives us the public one."""
    return Settings(jwt_algorithm="RS256", jwt_public_key=rsa_keys[1], jwt_private_key=None)


def test_rs256_platform_token_is_accepted(rsa_keys, rs256_settings) -> None:
    token = pyjwt.encode(_seed_claims(), rsa_keys[0], algorithm="RS256")
    claims = decode_access_token(token, rs256_settings)
    assert claims.user_id == "u-1" and claims.company_id == "c-1"


def test_hs256_token_signed_with_the_public_key_is_refused_when_rs256_is_configured(rsa_keys, rs256_settings,
                                                                                       known) -> None:
    """Algorithm confusion: the public key is public, so an HMAC made with it proves nothing."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    forged = _hand_signed({"alg": "HS256", "typ": "JWT"}, _seed_claims(), rsa_keys[1].encode())
    also_forged = _hs(_seed_claims())  # signed with JWT_SECRET, which RS256 mode must ignore
    for token in (forged, also_forged):
        with pytest.raises(Unauthorized) as caught:
            decode_access_token(token, rs256_settings)
        assert caught.value.code == "INVALID_TOKEN"
    rs_client = TestClient(create_app(rs256_settings, prepare=False))
    for token in (forged, also_forged, _hand_signed({"alg": "none"}, _seed_claims(), None)):
        _assert_401(rs_client.get(ME, headers=_bearer(token)), "INVALID_TOKEN")
    good = pyjwt.encode(_seed_claims(**known), rsa_keys[0], algorithm="RS256")
    assert rs_client.get(ME, headers=_bearer(good)).status_code == 200


def test_rs256_verify_only_mode_refuses_login_with_a_clear_error(rs256_settings, database) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    response = TestClient(create_app(rs256_settings, prepare=False)).post(
        "/api/auth/login", json={"email": "x@example.com", "password": "whatever-password"})
    assert response.status_code == 503 and response.json()["code"] == "LOGIN_UNAVAILABLE"


def test_rs256_with_a_private_key_issues_tokens_that_verify(rsa_keys) -> None:
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=rsa_keys[1], jwt_private_key=rsa_keys[0])
    token, _ = issue_access_token(user_id="u", company_id="c", email="e@x.example", role="staff",
                                  permissions=[], settings=settings)
    assert decode_access_token(token, settings).user_id == "u"
    assert pyjwt.decode(token, rsa_keys[1], algorithms=["RS256"], audience="ils-api")["companyId"] == "c"
    with pytest.raises(Unauthorized):
        decode_access_token(token, settings=get_settings())  # the HS256 service does not accept it


def test_es256_platform_token_is_accepted_and_other_keys_are_not() -> None:
    private, public = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    other_private, _ = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    settings = Settings(jwt_algorithm="ES256", jwt_public_key=public)
    assert decode_access_token(pyjwt.encode(_seed_claims(), private, algorithm="ES256"), settings).role == "admin"
    with pytest.raises(Unauthorized):
        decode_access_token(pyjwt.encode(_seed_claims(), other_private, algorithm="ES256"), settings)


# --- secret configuration ----------------------------------------------------------------------

def test_placeholder_short_and_missing_secrets_are_refused_outside_development(tmp_path) -> None:
    for environment in ("production", "test", "development"):
        for bad in (PLACEHOLDER_SECRET, "short-secret"):
            with pytest.raises(ConfigurationError):
                check_auth_configuration(Settings(environment=environment, jwt_secret=bad, data_dir=tmp_path))
    for environment in ("production", "test"):
        with pytest.raises(ConfigurationError, match="JWT_SECRET must be set"):
            check_auth_configuration(Settings(environment=environment, jwt_secret=None, data_dir=tmp_path))
    check_auth_configuration(Settings(environment="production", jwt_secret="s" * 32, data_dir=tmp_path))


def test_asymmetric_configuration_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="JWT_PUBLIC_KEY"):
        check_auth_configuration(Settings(jwt_algorithm="RS256", jwt_public_key=None, data_dir=tmp_path))
    with pytest.raises(ConfigurationError, match="not a valid PEM"):
        check_auth_configuration(Settings(jwt_algorithm="RS256", jwt_public_key="-----BEGIN nonsense",
                                          data_dir=tmp_path))


def test_development_secret_is_generated_once_with_mode_0600(tmp_path) -> None:
    settings = Settings(environment="development", jwt_secret=None, data_dir=tmp_path)
    first = resolve_jwt_secret(settings)
    path = tmp_path / "jwt_secret"
    assert len(first.encode()) >= 32 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token, _ = issue_access_token(user_id="u", company_id="c", email="", role="staff", permissions=[],
                                  settings=settings)
    _development_secret.cache_clear()  # as after a restart
    assert resolve_jwt_secret(settings) == first
    assert decode_access_token(token, settings).user_id == "u"  # sessions survive the restart


def _serve(env_overrides: dict[str, str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    env.update({"DATA_DIR": str(tmp_path), "PORT": "0", **env_overrides})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    return result, time.monotonic() - started


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"ENVIRONMENT": "production", "JWT_SECRET": PLACEHOLDER_SECRET}, "placeholder"),
    ({"ENVIRONMENT": "production"}, "JWT_SECRET must be set"),
    ({"ENVIRONMENT": "production", "JWT_SECRET": "too-short"}, "shorter than 32 bytes"),
])
def test_server_exits_with_a_one_line_message_on_a_bad_secret(tmp_path, overrides, expected) -> None:
    result, elapsed = _serve(overrides, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert elapsed < 30
    assert not (tmp_path / "pg").exists()  # refused before starting a database


def test_unique_jti_per_token() -> None:
    tokens = {issue_access_token(user_id="u", company_id="c", email="", role="staff", permissions=[],
                                 settings=get_settings())[0]
              for _ in range(3)}
    assert len({pyjwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}) == 3
    assert str(uuid.UUID(pyjwt.decode(tokens.pop(), options={"verify_signature": False})["jti"]))

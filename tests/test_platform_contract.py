"""The platform token contract of docs/platform.md, claim by claim: what a platform-signed JWT
must carry, the role -> permission mapping for tokens without `permissions` (and its setting),
clock-skew leeway, HS256 / RS256 / ES256 set-ups, and what each refusal looks like."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from auth.tokens import LEEWAY_S, decode_access_token
from core.errors import Unauthorized
from core.settings import Settings

SECRET = os.environ["JWT_SECRET"]


def platform_claims(company_id: str, user_id: str, **overrides: Any) -> dict[str, Any]:
    """The plan's JWTService.generateToken payload, with its issuer and audience."""
    now = int(time.time())
    claims = {"userId": user_id, "companyId": company_id, "email": "optom@example.com", "role": "staff",
              "permissions": ["knowledge:read"], "iat": now, "exp": now + 600, "iss": "ils-platform",
              "aud": "ils-api", **overrides}
    return {name: value for name, value in claims.items() if value is not None}


def bearer(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, key, algorithm=algorithm)}"}


@pytest.fixture
def staff(company, make_user):
    return make_user(company, "staff")[0]


@pytest.fixture
def admin(company, make_user):
    return make_user(company, "admin")[0]


def search(client, headers: dict[str, str]):
    return client.post("/api/rag/search", json={"query": "progressive lenses"}, headers=headers)


def test_the_plans_token_is_accepted(client, company, staff) -> None:
    response = search(client, bearer(platform_claims(company.id, staff.id)))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "companyId"])
def test_each_required_claim_is_required(client, company, staff, missing: str) -> None:
    response = search(client, bearer(platform_claims(company.id, staff.id, **{missing: None})))
    assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
    assert set(response.json()) >= {"error", "code", "request_id"}
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_user_id_is_required_as_userId_or_sub(client, company, staff) -> None:
    assert search(client, bearer(platform_claims(company.id, staff.id, userId=None))).status_code == 401
    assert search(client, bearer(platform_claims(company.id, None, sub=staff.id))).status_code == 200
    disagree = search(client, bearer(platform_claims(company.id, staff.id, sub="someone-else")))
    assert disagree.status_code == 401 and "disagree" in disagree.json()["error"]


def test_wrong_issuer_audience_or_secret_is_refused(client, company, staff) -> None:
    for headers in (bearer(platform_claims(company.id, staff.id, iss="someone-else")),
                    bearer(platform_claims(company.id, staff.id, aud="another-api")),
                    bearer(platform_claims(company.id, staff.id), key="another-secret-" + "y" * 40)):
        response = search(client, headers)
        assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"


def test_unknown_company_and_user_are_refused_not_served_empty(client, company, staff) -> None:
    unknown = search(client, bearer(platform_claims("no-such-practice", staff.id)))
    assert unknown.status_code == 401 and unknown.json()["code"] == "UNKNOWN_COMPANY"
    stranger = search(client, bearer(platform_claims(company.id, "no-such-user")))
    assert stranger.status_code == 401 and stranger.json()["code"] == "UNKNOWN_USER"


def test_a_role_without_permissions_gets_the_default_mapping(client, company, staff, admin) -> None:
    staff_only_role = bearer(platform_claims(company.id, staff.id, permissions=None))
    assert search(client, staff_only_role).status_code == 200
    write = client.post("/api/rag/index-document", json={"filename": "a.md", "content": "Frames from £49."},
                        headers=staff_only_role)
    assert write.status_code == 403 and write.json()["code"] == "FORBIDDEN"
    admin_only_role = bearer(platform_claims(company.id, admin.id, role="admin", permissions=None))
    write = client.post("/api/rag/index-document", json={"filename": "a.md", "content": "Frames from £49."},
                        headers=admin_only_role)
    assert write.status_code == 200, write.text
    # An explicit empty list is the platform saying "nothing": it is not replaced by the mapping.
    nothing = search(client, bearer(platform_claims(company.id, staff.id, permissions=[])))
    assert nothing.status_code == 403


def test_a_platform_role_gets_exactly_its_mapped_access(client, company, staff, admin) -> None:
    """A role that is not ours is not compared with the user's row (auth.revocation): the
    setting alone decides what it may do, for a staff user and an admin user alike."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    mapped_app = create_app(Settings(platform_role_permissions={"optometrist": ["knowledge:read"]}), prepare=False)
    document = {"filename": "a.md", "content": "Frames from £49."}
    mapped = TestClient(mapped_app)  # no lifespan: the session's app already runs the service's duties
    for user in (staff, admin):
        optometrist = bearer(platform_claims(company.id, user.id, role="optometrist", permissions=None))
        assert search(mapped, optometrist).status_code == 200
        write = mapped.post("/api/rag/index-document", json=document, headers=optometrist)
        assert write.status_code == 403 and write.json()["code"] == "FORBIDDEN"
        me = mapped.get("/api/auth/me", headers=optometrist)
        assert me.status_code == 200 and me.json()["permissions"] == ["knowledge:read"], me.text

    # The session's app has no PLATFORM_ROLE_PERMISSIONS: the same token is signed, its user
    # stands, and it may do nothing.
    unmapped = bearer(platform_claims(company.id, staff.id, role="optometrist", permissions=None))
    refused = search(client, unmapped)
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    assert client.post("/api/rag/index-document", json=document, headers=unmapped).status_code == 403


def test_a_company_id_is_what_companies_here_can_have() -> None:
    """Letters, digits and dashes, as `companies create --id` accepts: anything else is malformed."""
    settings = Settings(jwt_secret=SECRET)
    for good in ("7d1c2a8e-5b7f-4a7e-9d61-0f3b2c9e4a10", 42, "Practice-7"):
        decoded = decode_access_token(jwt.encode(platform_claims(good, "u1"), SECRET), settings)
        assert decoded.company_id == str(good)
    for bad in ("a_b", "a b", "a/b", "x" * 65):
        with pytest.raises(Unauthorized) as refused:
            decode_access_token(jwt.encode(platform_claims(bad, "u1"), SECRET), settings)
        assert refused.value.code == "INVALID_TOKEN"


def test_the_mapping_is_extended_by_a_setting() -> None:
    settings = Settings(platform_role_permissions={"optometrist": ["knowledge:read", "chat:use"],
                                                   "staff": ["knowledge:read"]})
    claims = platform_claims("c1", "u1", role="optometrist", permissions=None)
    assert decode_access_token(jwt.encode(claims, SECRET), settings).permissions == ("chat:use", "knowledge:read")
    overridden = platform_claims("c1", "u1", role="staff", permissions=None)
    assert decode_access_token(jwt.encode(overridden, SECRET), settings).permissions == ("knowledge:read",)
    unknown_role = platform_claims("c1", "u1", role="receptionist", permissions=None)
    assert decode_access_token(jwt.encode(unknown_role, SECRET), settings).permissions == ()


def test_a_mapping_naming_unknown_permissions_stops_the_service_at_start() -> None:
    from auth.tokens import check_auth_configuration
    from core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="PLATFORM_ROLE_PERMISSIONS"):
        check_auth_configuration(Settings(jwt_secret=SECRET, platform_role_permissions={"x": ["root"]}))


def test_clock_skew_leeway() -> None:
    settings = Settings(jwt_secret=SECRET)
    now = int(time.time())
    inside, outside = LEEWAY_S - 10, LEEWAY_S + 10

    def decode(**claims: Any):
        return decode_access_token(jwt.encode(platform_claims("c1", "u1", **claims), SECRET), settings)

    assert decode(exp=now - inside).company_id == "c1"  # expired by less than the leeway
    with pytest.raises(Unauthorized) as expired:
        decode(exp=now - outside)
    assert expired.value.code == "TOKEN_EXPIRED"
    assert decode(iat=now + inside, nbf=now + inside).company_id == "c1"  # the platform's clock runs ahead
    for future in ({"iat": now + outside}, {"nbf": now + outside}):
        with pytest.raises(Unauthorized) as early:
            decode(**future)
        assert early.value.code == "INVALID_TOKEN"


def _pem_pair(private_key: Any) -> tuple[str, str]:
    private = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_setups_verify_the_platforms_signature_only(algorithm: str) -> None:
    key = rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    private, public = _pem_pair(key)
    settings = Settings(jwt_algorithm=algorithm, jwt_public_key=public)  # verify-only: no private key
    claims = platform_claims("c1", "u1")
    assert decode_access_token(jwt.encode(claims, private, algorithm=algorithm), settings).user_id == "u1"

    other_private, _ = _pem_pair(rsa.generate_private_key(65537, 2048) if algorithm == "RS256"
                                 else ec.generate_private_key(ec.SECP256R1()))
    for forged in (jwt.encode(claims, other_private, algorithm=algorithm),  # someone else's key
                   jwt.encode(claims, SECRET, algorithm="HS256")):  # an HS256 token where a signature is due
        with pytest.raises(Unauthorized) as refused:
            decode_access_token(forged, settings)
        assert refused.value.code == "INVALID_TOKEN"

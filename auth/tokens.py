"""Access tokens with python-jose, in the ILS platform's claim set.

Claims: userId, companyId, email, role, permissions, iat, exp, iss, aud (the seed's), plus
sub, jti and typ. Decoding always names the algorithms, issuer and audience, and requires
the claims python-jose would otherwise treat as optional.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jose import ExpiredSignatureError, JWTError, jwt

from core.errors import ConfigurationError, Unauthorized
from core.settings import PLACEHOLDER_SECRET, Settings, get_settings

ACCESS_TYPE = "access"
MIN_SECRET_BYTES = 32
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "companyId")


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    company_id: str
    email: str
    role: str
    permissions: tuple[str, ...]
    jti: str | None
    token_type: str
    expires_at: datetime


def validate_secret(settings: Settings) -> None:
    """Refuse to run with a missing, short or placeholder secret outside development."""
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if settings.jwt_algorithm != "HS256" and settings.jwt_public_key:
        return
    if secret == PLACEHOLDER_SECRET:
        raise ConfigurationError("JWT_SECRET is the seed's placeholder; set a random secret of 32+ bytes "
                                 "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`).")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes "
                                 "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`).")


def _signing_key(settings: Settings) -> str:
    if settings.jwt_algorithm == "HS256":
        validate_secret(settings)
        return settings.jwt_secret.get_secret_value()  # type: ignore[union-attr]
    if not settings.jwt_private_key:
        raise ConfigurationError(f"JWT_ALGORITHM={settings.jwt_algorithm} needs JWT_PRIVATE_KEY to issue tokens.")
    return settings.jwt_private_key


def _verification_key(settings: Settings) -> str:
    if settings.jwt_algorithm == "HS256":
        return settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if not settings.jwt_public_key:
        raise ConfigurationError(f"JWT_ALGORITHM={settings.jwt_algorithm} needs JWT_PUBLIC_KEY.")
    return settings.jwt_public_key


def issue_access_token(*, user_id: str, company_id: str, email: str, role: str, permissions: list[str],
                       settings: Settings | None = None) -> tuple[str, int]:
    """Returns the token and its lifetime in seconds."""
    settings = settings or get_settings()
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims: dict[str, Any] = {
        "userId": user_id, "sub": user_id, "companyId": company_id, "email": email, "role": role,
        "permissions": permissions, "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()), "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
        "jti": str(uuid.uuid4()), "typ": ACCESS_TYPE,
    }
    return jwt.encode(claims, _signing_key(settings), algorithm=settings.jwt_algorithm), int(lifetime.total_seconds())


def decode_access_token(token: str, settings: Settings | None = None) -> TokenClaims:
    settings = settings or get_settings()
    try:
        claims = jwt.decode(
            token, _verification_key(settings), algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
            options={"require_exp": True, "require_iat": True, "require_aud": True, "require_iss": True,
                     "leeway": 30},
        )
    except ExpiredSignatureError as exc:
        raise Unauthorized("Token expired", code="TOKEN_EXPIRED") from exc
    except (JWTError, ValueError, TypeError) as exc:
        raise Unauthorized("Invalid authentication token", code="INVALID_TOKEN") from exc
    user_id = claims.get("userId") or claims.get("sub")
    missing = [name for name in REQUIRED_CLAIMS if not claims.get(name)]
    if missing or not user_id:
        raise Unauthorized("Invalid authentication token: missing claims", code="INVALID_TOKEN")
    token_type = claims.get("typ", ACCESS_TYPE)  # platform tokens predate typ: they are access tokens
    if token_type != ACCESS_TYPE:
        raise Unauthorized("Invalid authentication token: not an access token", code="INVALID_TOKEN")
    permissions = claims.get("permissions") or []
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise Unauthorized("Invalid authentication token: bad permissions claim", code="INVALID_TOKEN")
    return TokenClaims(
        user_id=str(user_id), company_id=str(claims["companyId"]), email=str(claims.get("email", "")),
        role=str(claims.get("role", "")), permissions=tuple(permissions), jti=claims.get("jti"),
        token_type=token_type, expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
    )

"""Access tokens with python-jose, in the ILS platform's claim set.

Claims: userId, companyId, email, role, permissions, iat, exp, iss, aud (the seed's), plus
sub, jti, nbf and typ. Tokens this service issues at sign-in also carry `sid` (the refresh-token
family of that sign-in) and `ver` (the user's auth epoch when it was issued): auth.revocation
checks both on every request, so a logout, a revoked family, a deactivation, a role or a
password change ends the token at once instead of at `exp`.

Decoding always names the one configured algorithm, the issuer and the audience, and
requires the claims python-jose would otherwise treat as optional (python-jose 3.5 skips
the audience check entirely when a token has no `aud`, and never looks at an
`iat` in the future; both are guarded here).

The HS256 secret comes from JWT_SECRET; in development without one, a random secret is
generated once and kept in DATA_DIR/jwt_secret (mode 0600) so restarts keep sessions valid.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from jose import ExpiredSignatureError, JOSEError, jwk, jwt

from auth.permissions import Permission, platform_role_permissions
from core.errors import ConfigurationError, Unauthorized
from core.settings import PLACEHOLDER_SECRET, Settings

logger = logging.getLogger(__name__)

ACCESS_TYPE = "access"
REFRESH_TYPE = "refresh"  # refresh tokens are opaque (auth.sessions); the name keeps kinds distinct
ALLOWED_ALGORITHMS = frozenset({"HS256", "RS256", "ES256"})
MIN_SECRET_BYTES = 32
LEEWAY_S = 30
MAX_TOKEN_CHARS = 8192  # a bearer token longer than this is refused before any parsing
SECRET_FILE_NAME = "jwt_secret"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "companyId")
# Company ids (and sign-in family ids) are generated ids: anything else in a signed token is
# refused before it reaches a query, a log line or the tenant context.
PLAIN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A company id here (auth.users creates no other): the platform's UUIDs and numbers. A `companyId`
# outside it is a malformed token (401 INVALID_TOKEN), not a practice that might exist.
COMPANY_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
MAX_AUTH_EPOCH = 2**31 - 1  # users.auth_epoch is an integer column
# What python-jose's messages mean, in our words (its own text never reaches a client).
_JOSE_REASONS = (
    ("signature verification failed", "bad signature"),
    ("alg value is not allowed", "signing algorithm not accepted"),
    ("no algorithm was specified", "signing algorithm not accepted"),
    ("audience", "wrong audience"),
    ("issuer", "wrong issuer"),
    ("not yet valid", "not valid yet (nbf is in the future)"),
    ("(iat)", "iat claim is not a number"),
    ("(exp)", "exp claim is not a number"),
    ("(nbf)", "nbf claim is not a number"),
    ("subject", "bad sub claim"),
    ("jwt id", "bad jti claim"),
    ("claim format", "bad aud claim"),
)
_MISSING_CLAIM = re.compile(r'missing required key "([A-Za-z]{1,16})"')
_SECRET_HINT = "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"


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
    client_id: str | None = None  # set on service-client tokens (auth.clients): checked live per request
    session_id: str | None = None  # `sid`: the sign-in's refresh-token family (our tokens only)
    auth_epoch: int | None = None  # `ver`: users.auth_epoch when issued (our tokens only)


# --- configuration -------------------------------------------------------------------------


def _configured_secret(settings: Settings) -> str | None:
    if settings.jwt_secret is None:
        return None
    value = settings.jwt_secret.get_secret_value()
    return value if value.strip() else None


def _check_secret_strength(secret: str, source: str) -> None:
    if secret == PLACEHOLDER_SECRET:
        raise ConfigurationError(f"{source} is the seed's placeholder secret; set a random secret of "
                                 f"{MIN_SECRET_BYTES}+ bytes {_SECRET_HINT}.")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"{source} is shorter than {MIN_SECRET_BYTES} bytes; set a random secret "
                                 f"{_SECRET_HINT}.")


@lru_cache
def _development_secret(path: Path) -> str:
    """Read, or create once, the development secret file (0600). Cached per path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two workers starting together cannot both write a different secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        secret = path.read_text().strip()
        _check_secret_strength(secret, str(path))
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    logger.warning("JWT_SECRET is not set: generated a development secret in %s", path)
    return secret


def resolve_jwt_secret(settings: Settings) -> str:
    """The HS256 secret to sign and verify with; raises ConfigurationError when unusable.

    JWT_SECRET wins; outside development it is required. In development without one, the
    secret lives in DATA_DIR/jwt_secret, generated on first use.
    """
    secret = _configured_secret(settings)
    if secret is not None:
        _check_secret_strength(secret, "JWT_SECRET")
        return secret
    if settings.environment != "development":
        raise ConfigurationError(f"JWT_SECRET must be set when ENVIRONMENT={settings.environment} "
                                 f"(at least {MIN_SECRET_BYTES} bytes) {_SECRET_HINT}.")
    return _development_secret(settings.data_dir.resolve() / SECRET_FILE_NAME)


def _construct_key(pem: str, algorithm: str, name: str) -> None:
    try:
        jwk.construct(pem, algorithm)
    except (JOSEError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{name} is not a valid PEM key for JWT_ALGORITHM={algorithm} ({exc}).") from exc


def check_auth_configuration(settings: Settings) -> None:
    """Start-up check: everything token signing and verification needs, or a one-line error."""
    known = {p.value for p in Permission}
    for role, names in settings.platform_role_permissions.items():
        if unknown := [name for name in names if name not in known]:
            raise ConfigurationError(f"PLATFORM_ROLE_PERMISSIONS[{role!r}] names unknown permissions "
                                     f"{', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    if settings.jwt_algorithm not in ALLOWED_ALGORITHMS:  # pragma: no cover - Literal in Settings
        raise ConfigurationError(f"JWT_ALGORITHM must be one of {', '.join(sorted(ALLOWED_ALGORITHMS))}.")
    if _configured_secret(settings) == PLACEHOLDER_SECRET:
        raise ConfigurationError(f"JWT_SECRET is the seed's placeholder secret; set a random secret of "
                                 f"{MIN_SECRET_BYTES}+ bytes {_SECRET_HINT}.")
    if settings.jwt_algorithm == "HS256":
        resolve_jwt_secret(settings)
        return
    if not settings.jwt_public_key:
        raise ConfigurationError(f"JWT_ALGORITHM={settings.jwt_algorithm} needs JWT_PUBLIC_KEY (PEM) to verify tokens.")
    _construct_key(settings.jwt_public_key, settings.jwt_algorithm, "JWT_PUBLIC_KEY")
    if settings.jwt_private_key:
        _construct_key(settings.jwt_private_key, settings.jwt_algorithm, "JWT_PRIVATE_KEY")


def can_issue_tokens(settings: Settings) -> bool:
    """False in verify-only mode (RS256/ES256 with the platform's public key and no private key)."""
    return settings.jwt_algorithm == "HS256" or bool(settings.jwt_private_key)


def _signing_key(settings: Settings) -> str:
    if settings.jwt_algorithm == "HS256":
        return resolve_jwt_secret(settings)
    if not settings.jwt_private_key:
        raise ConfigurationError(f"JWT_ALGORITHM={settings.jwt_algorithm} needs JWT_PRIVATE_KEY to issue tokens.")
    return settings.jwt_private_key


def _verification_key(settings: Settings) -> str | list[str]:
    if settings.jwt_algorithm == "HS256":
        # During a rotation JWT_PREVIOUS_SECRETS still verify (python-jose tries each key of a
        # list); only JWT_SECRET ever signs (see SECURITY.md).
        previous = [s.get_secret_value() for s in settings.jwt_previous_secrets if s.get_secret_value()]
        current = resolve_jwt_secret(settings)
        return [current, *previous] if previous else current
    if not settings.jwt_public_key:
        raise ConfigurationError(f"JWT_ALGORITHM={settings.jwt_algorithm} needs JWT_PUBLIC_KEY.")
    return settings.jwt_public_key


# --- access tokens -------------------------------------------------------------------------


def issue_access_token(*, user_id: str, company_id: str, email: str, role: str, permissions: list[str],
                       settings: Settings,
                       extra_claims: dict[str, Any] | None = None,
                       session_id: str | None = None, auth_epoch: int | None = None) -> tuple[str, int]:
    """Returns the token and its lifetime in seconds. `extra_claims` (e.g. a service client's
    `client_id`) never override the contract's own claims.

    `session_id` (the refresh family) and `auth_epoch` (users.auth_epoch now) bind the token to
    the sign-in and to the user's current authority; auth.revocation checks both per request.
    """
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims: dict[str, Any] = {
        "userId": user_id, "sub": user_id, "companyId": company_id, "email": email, "role": role,
        "permissions": list(permissions), "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()), "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
        "jti": str(uuid.uuid4()), "typ": ACCESS_TYPE,
    }
    if session_id is not None:
        claims["sid"] = session_id
    if auth_epoch is not None:
        claims["ver"] = auth_epoch
    claims = {**(extra_claims or {}), **claims}
    return jwt.encode(claims, _signing_key(settings), algorithm=settings.jwt_algorithm), int(lifetime.total_seconds())


def _invalid(reason: str) -> Unauthorized:
    return Unauthorized(f"Invalid authentication token: {reason}", code="INVALID_TOKEN")


def _reason(exc: Exception) -> str:
    """Which check failed, in our words; never the library's text (it names internals)."""
    text = str(exc).lower()
    missing = _MISSING_CLAIM.search(str(exc))
    if missing:
        return f"missing claim {missing.group(1)}"
    for needle, reason in _JOSE_REASONS:
        if needle in text:
            return reason
    return "malformed token"


def _identifier(value: object) -> str | None:
    """A user or company id as a non-empty string (the platform may send integers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def decode_access_token(token: str, settings: Settings) -> TokenClaims:
    """Verify an access token (ours or the platform's) and return its claims.

    Raises Unauthorized: TOKEN_EXPIRED for an expired but otherwise genuine token,
    INVALID_TOKEN for everything else. Never lets a parsing error escape as a 500.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise _invalid("malformed token")
    key = _verification_key(settings)
    try:
        claims = jwt.decode(
            token, key, algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
            options={"require_exp": True, "require_iat": True, "require_aud": True, "require_iss": True,
                     "verify_nbf": True, "leeway": LEEWAY_S},
        )
    except ExpiredSignatureError as exc:
        raise Unauthorized("Token expired", code="TOKEN_EXPIRED") from exc
    except (JOSEError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise _invalid(_reason(exc)) from exc
    if not isinstance(claims, dict):
        raise _invalid("claims are not an object")

    missing = [name for name in REQUIRED_CLAIMS if claims.get(name) in (None, "", [])]
    if missing:
        raise _invalid(f"missing claim {', '.join(missing)}")
    # Belt and braces for python-jose skipping the audience check when `aud` is absent.
    audience = claims["aud"]
    if not (audience == settings.jwt_audience or (isinstance(audience, list) and settings.jwt_audience in audience)):
        raise _invalid("wrong audience")
    if int(claims["iat"]) > time.time() + LEEWAY_S:  # python-jose only checks that iat is a number
        raise _invalid("issued in the future")

    user_id, subject = _identifier(claims.get("userId")), _identifier(claims.get("sub"))
    if not (user_id or subject):
        raise _invalid("missing claims userId/sub")
    if user_id and subject and user_id != subject:
        raise _invalid("userId and sub disagree")
    company_id = _identifier(claims["companyId"])
    if company_id is None or not COMPANY_ID_RE.match(company_id):
        raise _invalid("malformed companyId claim (not a plain id)")

    token_type = claims.get("typ", ACCESS_TYPE)  # platform tokens predate typ: they are access tokens
    if token_type != ACCESS_TYPE:
        raise _invalid("not an access token")
    permissions = claims.get("permissions") or []
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise _invalid("bad permissions claim")
    email, role, jti = claims.get("email", ""), claims.get("role", ""), claims.get("jti")
    if not isinstance(email, str) or not isinstance(role, str) or not (jti is None or isinstance(jti, str)):
        raise _invalid("bad email, role or jti claim")
    if "permissions" not in claims and role:  # a role alone: the documented mapping (docs/platform.md)
        permissions = platform_role_permissions(role, settings.platform_role_permissions)
    client_id = claims.get("client_id")
    if client_id is not None and not (isinstance(client_id, str) and client_id):
        raise _invalid("bad client_id claim")
    session_id, auth_epoch = claims.get("sid"), claims.get("ver")
    if session_id is not None and not (isinstance(session_id, str) and PLAIN_ID.match(session_id)):
        raise _invalid("malformed sid claim")
    if auth_epoch is not None and (isinstance(auth_epoch, bool) or not isinstance(auth_epoch, int)
                                   or not 0 <= auth_epoch <= MAX_AUTH_EPOCH):
        raise _invalid("malformed ver claim")
    return TokenClaims(
        user_id=str(user_id or subject), company_id=company_id, email=email, role=role,
        permissions=tuple(permissions), jti=jti, token_type=token_type,
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC), client_id=client_id,
        session_id=session_id, auth_epoch=auth_epoch,
    )

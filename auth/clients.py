"""Service credentials: OAuth 2.0 client credentials (RFC 6749 §4.4) for backends.

A backend that acts for many practices (the ILS platform's Node service: background jobs,
index-document calls) gets a client id and secret of its own instead of holding the
platform's signing key. It exchanges them at `POST /api/auth/token` for a short-lived access
token for ONE company at a time, chosen per token within the companies the client may act
for, and with at most the scopes it was created with.

Why these choices:
- The secret is 256 random bits; only its SHA-256 is stored and compared in constant time
  (a slow hash protects low-entropy passwords, not random keys, and would hand every failed
  attempt an argon2-sized memory bill).
- The table is the operator's (migration 0007): the service role can only read it, so
  creating and revoking clients happens in the CLI as the owner.
- Tokens name the client (`client_id` claim, and `sub`/`userId` = the client id), and every
  request with one re-reads the client's row (`check_client_token`): revoking a client ends
  its tokens on their next request, not when they expire.
- Failed exchanges are throttled per client id and per address with the sign-in limits.
- Every successful exchange is written to the chosen company's audit log with the client's name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import ARRAY, Boolean, DateTime, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from auth import audit
from auth.models import Company
from auth.permissions import Permission
from auth.rate_limit import RateLimited, RateLimiter, limiter_for
from auth.tokens import can_issue_tokens, issue_access_token
from core.db.engines import Base, session_scope
from core.db.tenant_scope import tenant
from core.errors import Conflict, Forbidden, NotFound, ServiceError, Unauthorized
from core.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_TOKEN = "auth.client_token"  # audit action of a successful exchange
SERVICE_ROLE = "service"  # the `role` claim of client tokens (permissions come from the scopes)
CLIENT_ID_PREFIX = "svc-"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SECRET_CHARS = 256
INVALID_CLIENT = "Invalid client credentials"
SCOPES = tuple(p.value for p in Permission)


class ServiceClient(Base):
    """A row of `service_clients` (migration 0007)."""

    __tablename__ = "service_clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    all_companies: Mapped[bool] = mapped_column(Boolean, default=False)
    companies: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def may_act_for(self, company_id: str) -> bool:
        return self.all_companies or company_id in self.companies


@dataclass(frozen=True)
class CreatedClient:
    id: str
    name: str
    secret: str  # shown once; only its hash is kept
    scopes: tuple[str, ...]
    all_companies: bool
    companies: tuple[str, ...]


@dataclass(frozen=True)
class ClientToken:
    access_token: str
    expires_in: int
    scopes: tuple[str, ...]
    company_id: str
    client_name: str


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    """Scopes from `a,b` / `a b` or a list; each must be one of our permissions."""
    items = re.split(r"[\s,]+", raw) if isinstance(raw, str) else list(raw)
    scopes = sorted({item.strip() for item in items if item.strip()})
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise ServiceError(f"scopes must be one or more of {', '.join(SCOPES)}"
                           + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                           code="INVALID_SCOPE", status_code=400)
    return scopes


# --- operator side (owner session: CLI) -----------------------------------------------------


def _resolve_companies(session: Session, refs: list[str]) -> list[str]:
    """Company ids from ids or slugs; every one must exist."""
    ids: list[str] = []
    for ref in refs:
        company = session.scalar(select(Company).where((Company.id == ref) | (Company.slug == ref)))
        if company is None:
            raise NotFound(f"no company with id or slug {ref!r} (see `ils-rag companies list`)",
                           code="COMPANY_NOT_FOUND")
        if company.id not in ids:
            ids.append(company.id)
    return ids


def create_client(session: Session, name: str, scopes: str | list[str], *, companies: list[str] | None = None,
                  all_companies: bool = False) -> CreatedClient:
    """Create a client (owner session); the returned secret is never stored nor shown again."""
    if not NAME_RE.match(name):
        raise ServiceError("client name must be 1-100 letters, digits, dots, dashes or underscores",
                           code="VALIDATION_ERROR", status_code=422)
    granted = parse_scopes(scopes)
    if all_companies == bool(companies):
        raise ServiceError("give either one or more companies or all companies", code="VALIDATION_ERROR",
                           status_code=422)
    company_ids = [] if all_companies else _resolve_companies(session, companies or [])
    if session.scalar(select(ServiceClient).where(ServiceClient.name == name, ServiceClient.revoked_at.is_(None))):
        raise Conflict(f"a client named {name!r} exists; revoke it first", code="CLIENT_EXISTS")
    secret = secrets.token_urlsafe(32)
    client = ServiceClient(id=CLIENT_ID_PREFIX + secrets.token_hex(12), name=name, secret_hash=_hash_secret(secret),
                           scopes=granted, all_companies=all_companies, companies=company_ids)
    session.add(client)
    session.flush()
    logger.info("service client created: %s (%s)", name, client.id)
    return CreatedClient(id=client.id, name=name, secret=secret, scopes=tuple(granted), all_companies=all_companies,
                         companies=tuple(company_ids))


def list_clients(session: Session, *, include_revoked: bool = False) -> list[ServiceClient]:
    query = select(ServiceClient).order_by(ServiceClient.name, ServiceClient.created_at)
    if not include_revoked:
        query = query.where(ServiceClient.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_client(session: Session, ref: str) -> ServiceClient:
    """Revoke a live client by name or id (owner session); its tokens stop on their next request."""
    client = session.scalar(select(ServiceClient).where(
        (ServiceClient.name == ref) | (ServiceClient.id == ref), ServiceClient.revoked_at.is_(None)))
    if client is None:
        raise NotFound(f"no live client named {ref!r} (see `ils-rag clients list`)", code="CLIENT_NOT_FOUND")
    client.revoked_at = _now()
    session.flush()
    logger.info("service client revoked: %s (%s)", client.name, client.id)
    return client


def rename_company_in_clients(session: Session, old_id: str, new_id: str) -> int:
    """Follow a company's id change in every client allowed to act for it (owner session)."""
    result = session.execute(update(ServiceClient).where(ServiceClient.companies.any(old_id)).values(
        companies=func.array_replace(ServiceClient.companies, old_id, new_id)))
    return result.rowcount or 0


# --- service side (the token endpoint and every request) ------------------------------------


@dataclass(frozen=True)
class ClientLimiters:
    client: RateLimiter
    address: RateLimiter

    def reset(self) -> None:
        self.client.reset()
        self.address.reset()


@lru_cache
def _limiters(storage: str, per_client: int, per_address: int, window_s: int) -> ClientLimiters:
    return ClientLimiters(limiter_for(storage, "client.id", per_client, window_s),
                          limiter_for(storage, "client.address", per_address, window_s))


def client_limiters(settings: Settings) -> ClientLimiters:
    """Failed exchanges are throttled with the sign-in limits (LOGIN_MAX_FAILURES_*)."""
    return _limiters(settings.rate_limit_storage, settings.login_max_failures_per_account,
                     settings.login_max_failures_per_address, settings.login_failure_window_s)


def _load_client(session: Session, client_id: str) -> ServiceClient | None:
    if not _CLIENT_ID_RE.match(client_id):
        return None
    return session.get(ServiceClient, client_id)


def _choose_company(client: ServiceClient, company_id: str | None) -> str:
    if not company_id:
        if client.all_companies or len(client.companies) != 1:
            raise ServiceError("company_id is required: this client may act for more than one company",
                               code="COMPANY_REQUIRED", status_code=400)
        company_id = client.companies[0]
    if not client.may_act_for(company_id):
        raise Forbidden("this client may not act for that company", code="COMPANY_NOT_ALLOWED")
    return company_id


def exchange(client_id: str, client_secret: str, *, company_id: str | None = None, scope: str | None = None,
             client_ip: str | None = None, settings: Settings) -> ClientToken:
    """Client credentials -> an access token for one company; raises 401 INVALID_CLIENT,
    429 when throttled, 400/403 for a company or scope the client may not have."""
    if not can_issue_tokens(settings):
        raise ServiceError("This service only verifies platform-issued tokens (JWT_ALGORITHM="
                           f"{settings.jwt_algorithm} without JWT_PRIVATE_KEY), so it cannot issue client tokens.",
                           code="TOKEN_ISSUING_UNAVAILABLE", status_code=503)
    limiters = client_limiters(settings)
    client_key, address_key = f"client:{client_id}", f"address:{client_ip or 'unknown'}"
    wait = max(limiters.client.retry_after(client_key), limiters.address.retry_after(address_key))
    if wait > 0:
        raise RateLimited("Too many failed client authentications; wait for the time in Retry-After.", wait)

    presented = _hash_secret(client_secret[:MAX_SECRET_CHARS])
    with session_scope() as session:
        client = _load_client(session, client_id)
        stored = client.secret_hash if client is not None else _hash_secret(secrets.token_urlsafe(32))
        if client is None or not hmac.compare_digest(stored, presented) or client.revoked_at is not None:
            limiters.client.hit(client_key)
            limiters.address.hit(address_key)
            logger.warning("client authentication failed for client id %r from %s", client_id[:64], client_ip)
            raise Unauthorized(INVALID_CLIENT, code="INVALID_CLIENT", headers={"WWW-Authenticate": "Basic"})
        granted = list(client.scopes) if scope is None or not scope.strip() else parse_scopes(scope)
        extra = [s for s in granted if s not in client.scopes]
        if extra:
            raise Forbidden(f"this client was not granted {', '.join(extra)}", code="INVALID_SCOPE")
        chosen = _choose_company(client, company_id)
        name, cid = client.name, client.id

    # The service role sees a company's row only inside that company's tenant; the audit row is
    # written in the same transaction, so no token leaves without its audit row.
    with tenant(chosen), session_scope() as session:
        company = session.get(Company, chosen)
        if company is None or not company.is_active:
            raise ServiceError("no active company has that id", code="UNKNOWN_COMPANY", status_code=400)
        audit.record(session, chosen, cid, CLIENT_TOKEN, target=name,
                     details={"client": name, "scopes": granted}, client_ip=client_ip)
        token, lifetime = issue_access_token(user_id=cid, company_id=chosen, email="", role=SERVICE_ROLE,
                                             permissions=granted, settings=settings, extra_claims={"client_id": cid})
    return ClientToken(access_token=token, expires_in=lifetime, scopes=tuple(granted), company_id=chosen,
                       client_name=name)


def check_client_token(client_id: str, company_id: str) -> str:
    """Every request with a client token: the client must still be live and allowed for the
    token's company. Returns the client's name (for logs); raises 401 CLIENT_REVOKED."""
    with session_scope() as session:
        client = _load_client(session, client_id)
        if client is None or client.revoked_at is not None or not client.may_act_for(company_id):
            raise Unauthorized("This service client was revoked or may no longer act for this company",
                               code="CLIENT_REVOKED")
        return client.name

"""Sign-in sessions: login, refresh-token rotation with re-use detection, logout.

Refresh tokens are opaque: `<company_id>.<jti>.<secret>`, 256 random bits in the secret.
Only a SHA-256 of the whole token is stored (a fast hash is enough for 256-bit random
values; argon2 is for low-entropy passwords). The company and jti in the token let the row
be found by its primary key inside `tenant(company_id)`, and the hash is compared in
constant time. Refresh tokens are not JWTs, so they can never pass as access tokens and
access tokens can never pass as refresh tokens.

Every refresh rotates: the presented token is marked used and a new one of the same
family is issued. Presenting a used token again means it was copied: the whole family
(every session descended from that login) is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from auth import audit
from auth.models import Company, RefreshToken, User
from auth.passwords import MIN_PASSWORD_LENGTH, hash_password, needs_rehash, verify_password
from auth.permissions import permissions_for
from auth.rate_limit import RateLimiter, Reservation, limiter_for, reserve_failures
from auth.revocation import bump_auth_epoch
from auth.tokens import can_issue_tokens, issue_access_token
from core.db.connections import is_unavailable
from core.db.engines import get_auth_engine, session_scope
from core.db.tenant_scope import tenant
from core.errors import Conflict, DatabaseUnavailable, ServiceError, Unauthorized
from core.settings import Settings

logger = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"^([A-Za-z0-9-]{1,64})\.([A-Za-z0-9-]{1,64})\.([A-Za-z0-9_-]{40,100})$")
INVALID_CREDENTIALS = "Invalid email or password"


@dataclass(frozen=True)
class SessionTokens:
    """What login and refresh hand back (the API's response, before serialisation)."""

    access_token: str
    refresh_token: str
    expires_in: int
    user_id: str
    email: str
    role: str
    company_id: str


@dataclass(frozen=True)
class _Candidate:
    """A user row read before the company is known (no ORM object leaves its session)."""

    company_id: str
    company_slug: str
    company_active: bool
    user_id: str
    email: str
    role: str
    is_active: bool
    password_hash: str


# --- rate limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimiters:
    account: RateLimiter
    address: RateLimiter

    def reset(self) -> None:
        self.account.reset()
        self.address.reset()


@lru_cache
def _limiters(storage: str, per_account: int, per_address: int, window_s: int) -> LoginLimiters:
    return LoginLimiters(limiter_for(storage, "login.account", per_account, window_s),
                         limiter_for(storage, "login.address", per_address, window_s))


def login_limiters(settings: Settings) -> LoginLimiters:
    """The failed-login counters for these settings, shared by every process when
    RATE_LIMIT_STORAGE is shared (see auth.rate_limit)."""
    return _limiters(settings.rate_limit_storage, settings.login_max_failures_per_account,
                     settings.login_max_failures_per_address, settings.login_failure_window_s)


def _account_key(email: str) -> str:
    return f"account:{email}"  # per email whatever the company or address, so spraying addresses does not help


def _address_key(client_ip: str | None) -> str:
    return f"address:{client_ip or 'unknown'}"


_TOO_MANY = "Too many failed sign-in attempts; wait for the time in Retry-After, then try again."


def _reserve_attempt(limiters: LoginLimiters, email: str, client_ip: str | None) -> Reservation:
    """Count this attempt as a failure before any password work (429 when either budget is
    spent): checking first and recording after the argon2 check would let every attempt in
    flight pass the check. A successful attempt gives its reservation back."""
    return reserve_failures(((limiters.account, _account_key(email)), (limiters.address, _address_key(client_ip))),
                            _TOO_MANY)


# --- refresh tokens --------------------------------------------------------------------------


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _new_refresh_token(session: Session, company_id: str, user_id: str, family_id: str,
                       settings: Settings) -> str:
    jti = str(uuid.uuid4())
    token = f"{company_id}.{jti}.{secrets.token_urlsafe(32)}"
    session.add(RefreshToken(company_id=company_id, id=jti, family_id=family_id, user_id=user_id,
                             token_hash=_hash_token(token),
                             expires_at=_now() + timedelta(days=settings.refresh_token_days)))
    session.flush()
    return token


def _parse_refresh_token(token: str) -> tuple[str, str]:
    match = _TOKEN_RE.match(token or "")
    if not match:
        raise Unauthorized("Invalid refresh token", code="INVALID_TOKEN")
    return match.group(1), match.group(2)


def _load_refresh_row(session: Session, company_id: str, jti: str, token: str) -> RefreshToken:
    # FOR UPDATE: two concurrent refreshes with one token serialise, and the second one
    # sees the first's used_at (re-use) instead of both rotating.
    row = session.scalar(select(RefreshToken).where(RefreshToken.company_id == company_id,
                                                    RefreshToken.id == jti).with_for_update())
    if row is None or not hmac.compare_digest(row.token_hash, _hash_token(token)):
        raise Unauthorized("Invalid refresh token", code="INVALID_TOKEN")
    return row


def _revoke_family(session: Session, company_id: str, family_id: str) -> int:
    result = session.execute(update(RefreshToken).where(
        RefreshToken.company_id == company_id, RefreshToken.family_id == family_id,
        RefreshToken.revoked_at.is_(None)).values(revoked_at=_now()))
    return result.rowcount or 0


def revoke_user_tokens(session: Session, company_id: str, user_id: str) -> int:
    """Revoke every refresh token of a user (deactivation); returns how many."""
    result = session.execute(update(RefreshToken).where(
        RefreshToken.company_id == company_id, RefreshToken.user_id == user_id,
        RefreshToken.revoked_at.is_(None)).values(revoked_at=_now()))
    return result.rowcount or 0


def _purge_expired(session: Session, company_id: str, user_id: str) -> None:
    """Used and revoked rows are kept until they expire (for re-use detection), then dropped."""
    session.query(RefreshToken).filter(RefreshToken.company_id == company_id, RefreshToken.user_id == user_id,
                                       RefreshToken.expires_at < _now()).delete(synchronize_session=False)


def _issue(session: Session, user: User, family_id: str, settings: Settings) -> SessionTokens:
    refresh = _new_refresh_token(session, user.company_id, user.id, family_id, settings)
    access, lifetime = issue_access_token(user_id=user.id, company_id=user.company_id, email=user.email,
                                          role=user.role, permissions=permissions_for(user.role), settings=settings,
                                          session_id=family_id, auth_epoch=user.auth_epoch)
    return SessionTokens(access_token=access, refresh_token=refresh, expires_in=lifetime, user_id=user.id,
                         email=user.email, role=user.role, company_id=user.company_id)


def _require_issuer(settings: Settings) -> None:
    if not can_issue_tokens(settings):
        raise ServiceError("This service only verifies platform-issued tokens (no JWT_PRIVATE_KEY for "
                           f"JWT_ALGORITHM={settings.jwt_algorithm}); sign in through the ILS platform.",
                           code="LOGIN_UNAVAILABLE", status_code=503)


# --- login -----------------------------------------------------------------------------------


def _candidates(email: str, company_slug: str | None) -> list[_Candidate]:
    # The one cross-company read: the company is what we are trying to find out. Row-level
    # security hides `users` outside a tenant, so it goes through the narrow SECURITY
    # DEFINER function of migration 0002 (by exact email only, sign-in columns only), on the
    # sign-in role's own connection: the request role may not call it (migration 0004).
    slug = company_slug.strip().lower() if company_slug else None
    try:
        with get_auth_engine().connect() as connection:
            rows = connection.execute(text("SELECT * FROM ils_login_candidates(:email, :slug)"),
                                      {"email": email, "slug": slug}).all()
    except (DBAPIError, PoolTimeoutError) as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        raise
    return [_Candidate(company_id=r.company_id, company_slug=r.company_slug, company_active=r.company_active,
                       user_id=r.user_id, email=r.email, role=r.role, is_active=r.is_active,
                       password_hash=r.password_hash) for r in rows]


def login(email: str, password: str, *, company_slug: str | None = None, client_ip: str | None = None,
          settings: Settings) -> SessionTokens:
    """Check a password and open a new session (a new refresh-token family).

    Every failure looks the same to the caller (one message, one argon2 verification at
    least), failures are counted per email and per client address, and once either is over
    its limit the attempt is refused with 429 before any password work is done. The count
    is taken before the password check (`_reserve_attempt`), so parallel guesses cannot
    outrun it: at most LOGIN_MAX_FAILURES_PER_ACCOUNT password checks per window.
    """
    _require_issuer(settings)
    email = email.strip().lower()
    limiters = login_limiters(settings)
    reservation = _reserve_attempt(limiters, email, client_ip)
    try:
        candidates = _candidates(email, company_slug)
        if not candidates:
            verify_password(password, None)  # the same argon2 work as for a real account
            matched: list[_Candidate] = []
        else:
            matched = [c for c in candidates if verify_password(password, c.password_hash)]
    except BaseException:  # an outage is not a wrong guess
        reservation.release()
        raise

    if not matched:  # the reservation stays: it is this failure's record
        for candidate in candidates:
            with tenant(candidate.company_id), session_scope() as session:
                audit.record(session, candidate.company_id, candidate.user_id, audit.LOGIN_FAILED,
                             target=candidate.email, details={"reason": "bad_password"}, client_ip=client_ip)
        logger.info("failed sign-in for %s from %s", email, client_ip)
        raise Unauthorized(INVALID_CREDENTIALS, code="INVALID_CREDENTIALS")
    reservation.release()
    if len(matched) > 1:
        raise Conflict("This email signs in to several practices; send `company` with the practice's slug "
                       f"(one of: {', '.join(c.company_slug for c in matched)}).", code="COMPANY_REQUIRED")

    candidate = matched[0]
    limiters.account.reset(_account_key(email))
    with tenant(candidate.company_id), session_scope() as session:
        user = session.get(User, (candidate.company_id, candidate.user_id), with_for_update=True)
        if user is None or not user.is_active or not candidate.company_active:
            audit.record(session, candidate.company_id, candidate.user_id, audit.LOGIN_FAILED,
                         target=candidate.email, details={"reason": "account_disabled"}, client_ip=client_ip)
            disabled = True
        else:
            disabled = False
            if needs_rehash(candidate.password_hash):  # the request role cannot read the column back
                user.password_hash = hash_password(password)
            user.last_login_at = _now()
            _purge_expired(session, user.company_id, user.id)
            tokens = _issue(session, user, family_id=str(uuid.uuid4()), settings=settings)
            audit.record(session, user.company_id, user.id, audit.LOGIN, target=user.email, client_ip=client_ip)
    if disabled:  # raised after the block so the audit row commits
        raise Unauthorized("This account or practice is deactivated; ask your practice's admin.",
                           code="ACCOUNT_DISABLED")
    return tokens


# --- refresh and logout ----------------------------------------------------------------------


def refresh(token: str, *, client_ip: str | None = None, settings: Settings) -> SessionTokens:
    """Rotate a refresh token: the presented one is spent, a new pair is returned.

    Works after the access token expired (only the refresh token is needed). Re-use of a
    spent token revokes its whole family, including the token that replaced it.
    """
    _require_issuer(settings)
    company_id, jti = _parse_refresh_token(token)
    failure: Unauthorized | None = None
    with tenant(company_id), session_scope() as session:
        row = _load_refresh_row(session, company_id, jti, token)
        now = _now()
        if row.revoked_at is not None:
            failure = Unauthorized("Refresh token revoked; sign in again", code="INVALID_TOKEN")
        elif row.used_at is not None:
            revoked = _revoke_family(session, company_id, row.family_id)
            audit.record(session, company_id, row.user_id, audit.REFRESH_REUSE, target=row.family_id,
                         details={"jti": row.id, "revoked": revoked}, client_ip=client_ip)
            logger.warning("refresh token re-use in company %s family %s: family revoked", company_id, row.family_id)
            failure = Unauthorized("Refresh token already used; every session from that sign-in was revoked. "
                                   "Sign in again", code="INVALID_TOKEN")
        elif row.expires_at <= now:
            failure = Unauthorized("Refresh token expired; sign in again", code="TOKEN_EXPIRED")
        else:
            user = session.get(User, (company_id, row.user_id))
            company = session.get(Company, company_id)
            if user is None or not user.is_active or company is None or not company.is_active:
                _revoke_family(session, company_id, row.family_id)
                failure = Unauthorized("This account or practice is deactivated; ask your practice's admin.",
                                       code="ACCOUNT_DISABLED")
            else:
                row.used_at = now
                tokens = _issue(session, user, family_id=row.family_id, settings=settings)
    if failure is not None:  # raised after the block so revocations and audit rows commit
        raise failure
    return tokens


def logout(token: str, *, client_ip: str | None = None) -> None:
    """Revoke the presented refresh token's family (that sign-in, on every rotation). Idempotent."""
    company_id, jti = _parse_refresh_token(token)
    with tenant(company_id), session_scope() as session:
        row = _load_refresh_row(session, company_id, jti, token)
        _revoke_family(session, company_id, row.family_id)
        audit.record(session, company_id, row.user_id, audit.LOGOUT, target=row.family_id, client_ip=client_ip)


# --- password change -------------------------------------------------------------------------


def _stored_hash(company_id: str, user_id: str) -> str | None:
    # On the sign-in role's connection: the request role cannot read password hashes.
    try:
        with get_auth_engine().connect() as connection:
            return connection.execute(text("SELECT ils_password_hash(:c, :u)"),
                                      {"c": company_id, "u": user_id}).scalar()
    except (DBAPIError, PoolTimeoutError) as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        raise


def change_password(company_id: str, user_id: str, current_password: str, new_password: str, *,
                    client_ip: str | None = None, settings: Settings) -> SessionTokens:
    """Replace a user's password after checking the current one, and end every session they had.

    A password change is what someone does when they fear the old one leaked: every refresh
    token of the user is revoked and the auth epoch moves, so every access token issued so far
    fails on its next request. The caller gets a new sign-in (a new family) in return. Wrong
    current passwords count against the same per-account budget as failed sign-ins.
    """
    _require_issuer(settings)
    if len(new_password) < MIN_PASSWORD_LENGTH:
        raise ServiceError(f"The new password must be at least {MIN_PASSWORD_LENGTH} characters.",
                           code="VALIDATION_ERROR", status_code=422)
    with tenant(company_id), session_scope() as session:
        user = session.get(User, (company_id, user_id))
        email = user.email if user is not None else None
    if email is None:
        raise Unauthorized("This token names a user that does not exist in its practice.", code="UNKNOWN_USER")
    limiters = login_limiters(settings)
    reservation = _reserve_attempt(limiters, email, client_ip)
    try:
        correct = verify_password(current_password, _stored_hash(company_id, user_id))
    except BaseException:
        reservation.release()
        raise
    if not correct:
        with tenant(company_id), session_scope() as session:
            audit.record(session, company_id, user_id, audit.LOGIN_FAILED, target=email,
                         details={"reason": "bad_password", "during": "password_change"}, client_ip=client_ip)
        raise Unauthorized("The current password is wrong.", code="INVALID_CREDENTIALS")
    reservation.release()
    new_hash = hash_password(new_password)
    with tenant(company_id), session_scope() as session:
        user = session.get(User, (company_id, user_id), with_for_update=True)
        if user is None or not user.is_active:
            raise Unauthorized("This account or practice is deactivated; ask your practice's admin.",
                               code="ACCOUNT_DISABLED")
        user.password_hash = new_hash
        revoked = revoke_user_tokens(session, company_id, user_id)
        bump_auth_epoch(session, company_id, user_id)
        session.refresh(user, ["auth_epoch"])
        tokens = _issue(session, user, family_id=str(uuid.uuid4()), settings=settings)
        audit.record(session, company_id, user_id, audit.PASSWORD_CHANGED, target=email,
                     details={"revoked_refresh_tokens": revoked}, client_ip=client_ip)
    return tokens

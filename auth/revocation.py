"""Is the authority an access token claims still there? One read per authenticated request.

Access tokens are JWTs that live ACCESS_TOKEN_MINUTES; checking only their signature would
let a signed-out, deactivated or demoted user keep acting until `exp`. So every request
reads, in one statement inside the token's company (row-level security applies):

- the company: missing -> 401 UNKNOWN_COMPANY (a token for a practice that does not exist
  must not be served empty results), deactivated -> 401 TOKEN_REVOKED;
- the user (not for service-client tokens, whose liveness auth.clients checks): missing ->
  401 UNKNOWN_USER; deactivated, another role than the token says, or another `auth_epoch`
  than its `ver` claim -> 401 TOKEN_REVOKED. Deactivation, role and password changes bump
  the epoch (`bump_auth_epoch`), so reactivating a user does not revive old tokens;
- the sign-in (`sid`, the refresh-token family): no unrevoked row left -> 401
  TOKEN_REVOKED. Logout and refresh-token re-use detection revoke the family's rows
  (auth.sessions), which is all it takes.

The state is keyed by what the token names (company, user, family), never by a hash of the
token's text, which could be re-encoded. Tokens without `sid`/`ver` (the platform's own,
or issued outside a sign-in) get the company and user checks only. Measured cost: see
README ("Revocation check").
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from auth.models import User
from core.database import get_engine, is_unavailable, tenant
from core.errors import DatabaseUnavailable, Unauthorized

REVOKED = "TOKEN_REVOKED"

_STATE = sa.text(
    "SELECT c.is_active AS company_active, u.id IS NOT NULL AS user_found, u.is_active AS user_active, "
    "u.role AS role, u.auth_epoch AS auth_epoch, "
    "CASE WHEN CAST(:sid AS text) IS NULL THEN true ELSE EXISTS ("
    "  SELECT 1 FROM refresh_tokens r WHERE r.company_id = :c AND r.family_id = CAST(:sid AS text) "
    "  AND r.revoked_at IS NULL) END AS session_live "
    "FROM companies c LEFT JOIN users u ON u.company_id = c.id AND u.id = :u "
    "WHERE c.id = :c")


def _revoked(why: str) -> Unauthorized:
    return Unauthorized(f"This token was revoked ({why}); sign in again.", code=REVOKED)


def check_token_authority(*, company_id: str, user_id: str, role: str, session_id: str | None,
                          auth_epoch: int | None, service_client: bool = False) -> None:
    """Raise Unauthorized unless the token's company, user and sign-in still stand as it says."""
    try:
        with tenant(company_id), get_engine().connect() as connection:
            state = connection.execute(_STATE, {"c": company_id, "u": user_id, "sid": session_id}).first()
    except (DBAPIError, PoolTimeoutError) as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        raise
    if state is None:
        raise Unauthorized("This token names a practice that does not exist.", code="UNKNOWN_COMPANY")
    if not state.company_active:
        raise _revoked("the practice is deactivated")
    if not service_client:
        if not state.user_found:
            raise Unauthorized("This token names a user that does not exist in its practice.",
                               code="UNKNOWN_USER")
        if not state.user_active:
            raise _revoked("the account is deactivated")
        if state.role != role:
            raise _revoked("the account's role changed")
        if auth_epoch is not None and state.auth_epoch != auth_epoch:
            raise _revoked("the account's access changed: a role change, a password change or a deactivation")
    if not state.session_live:
        raise _revoked("signed out")


def bump_auth_epoch(session: Session, company_id: str, user_id: str) -> None:
    """End every access token issued to this user so far (in the caller's transaction)."""
    session.execute(sa.update(User).where(User.company_id == company_id, User.id == user_id)
                    .values(auth_epoch=User.auth_epoch + 1))

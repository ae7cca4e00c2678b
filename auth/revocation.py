"""Is the authority an access token claims still there? One read per authenticated request.

Access tokens are JWTs that live ACCESS_TOKEN_MINUTES; checking only their signature would
let a signed-out, deactivated or demoted user keep acting until `exp`. So every request
reads, in one statement (`ils_token_state`, migration 0005, executed by the sign-in role
`ils_auth` only, never by the request role):

- the company: missing -> 401 UNKNOWN_COMPANY (a token for a practice that does not exist
  must not be served empty results), deactivated -> 401 TOKEN_REVOKED;
- the user (not for service-client tokens, whose liveness auth.clients checks): missing ->
  401 UNKNOWN_USER; deactivated, another role than the token's (when it names one of ours,
  admin or staff), or another `auth_epoch` than its `ver` claim -> 401 TOKEN_REVOKED.
  Deactivation, role and password changes bump the epoch (`bump_auth_epoch`), so
  reactivating a user does not revive old tokens;
- the sign-in (`sid`, the refresh-token family): no unrevoked row left -> 401
  TOKEN_REVOKED. Logout and refresh-token re-use detection revoke the family's rows
  (auth.sessions), which is all it takes.

The state is keyed by what the token names (company, user, family), never by a hash of the
token's text, which could be re-encoded. Tokens without `sid`/`ver` (the platform's own,
or issued outside a sign-in) get the company and user checks only. Measured cost: README,
Performance, "Revocation check" (`ils-rag bench auth`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from auth.models import User
from auth.permissions import ROLES
from core.db.connections import is_unavailable
from core.db.engines import get_auth_engine
from core.errors import DatabaseUnavailable, Unauthorized

REVOKED = "TOKEN_REVOKED"

# Migration 0005: a SECURITY DEFINER function only the sign-in role may execute.
_STATE = sa.text("SELECT * FROM ils_token_state(:c, :u, :sid)")


def _revoked(why: str) -> Unauthorized:
    return Unauthorized(f"This token was revoked ({why}); sign in again.", code=REVOKED)


def check_token_authority(*, company_id: str, user_id: str, role: str, session_id: str | None,
                          auth_epoch: int | None, service_client: bool = False) -> None:
    """Raise Unauthorized unless the token's company, user and sign-in still stand as it says."""
    try:
        # One autocommit statement on the sign-in role's connection: no BEGIN/ROLLBACK and no
        # tenant claim to prove, which is what keeps the check within its 1 ms budget.
        with get_auth_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
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
        # Only a role of ours can contradict the row: a token without one, or with a platform role
        # (PLATFORM_ROLE_PERMISSIONS), is judged by the row's other columns.
        if role in ROLES and state.role != role:
            raise _revoked("the account's role changed")
        if auth_epoch is not None and state.auth_epoch != auth_epoch:
            raise _revoked("the account's access changed: a role change, a password change or a deactivation")
    if not state.session_live:
        raise _revoked("signed out")


def bump_auth_epoch(session: Session, company_id: str, user_id: str) -> None:
    """End every access token issued to this user so far (in the caller's transaction)."""
    session.execute(sa.update(User).where(User.company_id == company_id, User.id == user_id)
                    .values(auth_epoch=User.auth_epoch + 1))

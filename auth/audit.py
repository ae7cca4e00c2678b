"""The audit trail: one row in `audit_log` per security-relevant action, per company.

Any package may record actions (document deletions, role changes...):
`record(session, company_id, user_id, "documents.delete", target=document_id)`. The row is
written in the caller's transaction, so it commits or rolls back with the change it describes;
open that session inside `core.db.tenant_scope.tenant(company_id)`.

When a service client acted, `user_id` is its client id and `client_name` its name: every row
it causes says `details.client`, as its token exchanges (auth.clients) do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth.models import AuditLog

# Action names used by auth; other packages add their own "<area>.<verb>" names.
LOGIN = "auth.login"
LOGIN_FAILED = "auth.login_failed"
LOGOUT = "auth.logout"
PASSWORD_CHANGED = "auth.password_change"
REFRESH_REUSE = "auth.refresh_reuse"
USER_CREATED = "users.create"
ROLE_CHANGED = "users.role_change"
USER_DEACTIVATED = "users.deactivate"
USER_REACTIVATED = "users.reactivate"

_MAX_TARGET = 512
_MAX_IP = 64


def record(session: Session, company_id: str, user_id: str | None, action: str, target: str | None = None,
           details: dict[str, Any] | None = None, client_ip: str | None = None,
           client_name: str | None = None) -> AuditLog:
    """Add an audit row to `session` (flushed, not committed).

    `client_name`: the service client's name when one acted. Its id (`svc-...`, in `user_id`) is
    opaque to whoever reads the log, and a revoked client's id names nothing any more; the name
    is the one the operator chose and the request logs show, so the row says who acted."""
    if client_name:
        details = {**(details or {}), "client": client_name}
    entry = AuditLog(company_id=company_id, user_id=user_id, action=action,
                     target=target[:_MAX_TARGET] if target else None, details=details,
                     client_ip=client_ip[:_MAX_IP] if client_ip else None)
    session.add(entry)
    session.flush()
    return entry


def list_entries(session: Session, company_id: str, action: str | None = None, limit: int = 100) -> list[AuditLog]:
    """Newest first, one company only."""
    query = select(AuditLog).where(AuditLog.company_id == company_id)
    if action:
        query = query.where(AuditLog.action == action)
    return list(session.scalars(query.order_by(AuditLog.id.desc()).limit(limit)))

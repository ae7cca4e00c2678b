"""FastAPI dependencies: the app's settings, the current user and company (from the token,
never the body), per-route permission checks, and the caller's tenant session.

The composition root: `create_app` builds the settings once and keeps them on the app;
routes take them as `settings: AppSettings` and hand them down as arguments."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import contextmanager_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.logs import bind_log_context
from app.request_models import NUL_ERROR, holds_nul
from auth.clients import check_client_token
from auth.permissions import Permission
from auth.revocation import check_token_authority
from auth.tokens import decode_access_token
from core.db.engines import session_scope
from core.db.tenant_scope import tenant
from core.errors import Forbidden, ServiceError, Unauthorized
from core.settings import Settings, get_settings

# auto_error=False: FastAPI's own error for a missing or non-Bearer header is a 403 (older
# releases) or a bare 401 without our code; we answer 401 NOT_AUTHENTICATED ourselves.
_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/auth/login")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class CurrentUser:
    id: str
    company_id: str
    email: str
    role: str
    permissions: frozenset[str]
    # A service client's name (its id is `id`): audit rows carry it, so they say who acted.
    client_name: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission.value in self.permissions


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (tests build apps with their own)."""
    return getattr(request.app.state, "settings", None) or get_settings()


def client_ip(request: Request) -> str | None:
    """The peer address (uvicorn resolves X-Forwarded-For only from its trusted proxies)."""
    return request.client.host if request.client else None


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def reject_nul_parameters(request: Request) -> None:
    """Installed on the whole app: NUL in a query, path or form value (or an uploaded file's name)
    is a 422, like NUL in a JSON body (app.request_models). FastAPI has parsed a route's form
    before its dependencies run, so reading it here costs nothing more."""
    values = [*request.query_params.multi_items(), *request.path_params.items()]
    if request.headers.get("content-type", "").lower().startswith(_FORM_TYPES):
        for name, value in (await request.form()).multi_items():
            values.append((name, value if isinstance(value, str) else (getattr(value, "filename", None) or "")))
    bad = sorted({name for name, value in values if holds_nul(name) or holds_nul(value)})
    if bad:
        raise ServiceError(f"Invalid request: {', '.join(bad)} {NUL_ERROR}", code="VALIDATION_ERROR",
                           status_code=422)


def get_current_user(request: Request,
                     credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> CurrentUser:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <token>` from POST /api/auth/login",
                           code="NOT_AUTHENTICATED", headers=_CHALLENGE)
    try:
        claims = decode_access_token(credentials.credentials, get_app_settings(request))
        # Signed is not enough: the company, the user's standing and the sign-in must still exist.
        check_token_authority(company_id=claims.company_id, user_id=claims.user_id, role=claims.role,
                              session_id=claims.session_id, auth_epoch=claims.auth_epoch,
                              service_client=claims.client_id is not None)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        raise
    client_name = None
    if claims.client_id is not None:  # a service client's token dies with the client, not at exp
        try:
            client_name = check_client_token(claims.client_id, claims.company_id)
        except Unauthorized as exc:
            exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
            raise
        bind_log_context(client=client_name)
    bind_log_context(user_id=claims.user_id, company_id=claims.company_id)  # every log line of the request
    return CurrentUser(id=claims.user_id, company_id=claims.company_id, email=claims.email, role=claims.role,
                       permissions=frozenset(claims.permissions), client_name=client_name)


def require(permission: Permission) -> Callable[..., CurrentUser]:
    """`user: CurrentUser = Depends(require(Permission.KNOWLEDGE_WRITE))` on a route."""

    def dependency(user: CurrentUser = Depends(get_current_user)) -> CurrentUser:
        if not user.can(permission):
            raise Forbidden(f"This action needs the {permission.value} permission", code="FORBIDDEN")
        return user

    return dependency


def check_company(user: CurrentUser, company_id: str | None) -> str:
    """A company_id sent by the client must be the token's own; absent, the token's is used."""
    if company_id is not None and company_id != user.company_id:
        raise Forbidden("company_id does not match your token's company", code="FORBIDDEN")
    return user.company_id


AppSettings = Annotated[Settings, Depends(get_app_settings)]


async def tenant_session(user: CurrentUser = Depends(get_current_user)) -> AsyncIterator[Session]:
    """The caller's company as the tenant of one database session, committed when the route
    returns and rolled back when it raises.

    Async on purpose: the tenant is a context variable, and one set here, in the request's own
    context, is what the route's worker thread inherits (a sync dependency would set it in a
    thread of its own). The session's opening and closing run in the thread pool."""
    with tenant(user.company_id):
        async with contextmanager_in_threadpool(session_scope()) as session:
            yield session


# scope="function": the commit happens before the response is sent, so a client never sees a
# success whose data did not commit.
TenantSession = Annotated[Session, Depends(tenant_session, scope="function")]

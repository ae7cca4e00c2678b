"""Sign-in: `POST /api/auth/login`, `/refresh`, `/logout`, `GET /api/auth/me` (the seed's contract,
with the refresh token the seed lacked). Logic lives in auth.sessions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from app.deps import CurrentUser, client_ip, get_app_settings, get_current_user
from auth import sessions
from auth.users import find_user
from core.database import session_scope, tenant
from core.settings import Settings

router = APIRouter(prefix="/api/auth", tags=["auth"])

_ERRORS = {401: {"description": "INVALID_CREDENTIALS, INVALID_TOKEN, TOKEN_EXPIRED or ACCOUNT_DISABLED"}}


class LoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)  # bounded: argon2 hashes every byte
    company: str | None = Field(default=None, max_length=64,
                                description="Practice slug; needed only when the email exists in several.")


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=512)


class SessionUser(BaseModel):
    id: str
    email: str
    role: str
    companyId: str  # the seed's spelling


class TokenResponse(BaseModel):
    token: str = Field(description="Access token (JWT); send as `Authorization: Bearer <token>`.")
    refresh_token: str = Field(description="Single-use: POST it to /api/auth/refresh for a new pair.")
    expires_in: int = Field(description="Access token lifetime in seconds.")
    token_type: str = "Bearer"
    user: SessionUser


class LogoutResponse(BaseModel):
    status: str = "logged_out"


class MeResponse(BaseModel):
    id: str
    email: str
    role: str
    companyId: str
    permissions: list[str]
    full_name: str | None = None


def _response(tokens: sessions.SessionTokens) -> TokenResponse:
    return TokenResponse(token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in,
                         user=SessionUser(id=tokens.user_id, email=tokens.email, role=tokens.role,
                                          companyId=tokens.company_id))


@router.post("/login", response_model=TokenResponse,
             responses={**_ERRORS, 409: {"description": "COMPANY_REQUIRED"}, 429: {"description": "Retry-After"}})
def login(body: LoginRequest, request: Request, settings: Settings = Depends(get_app_settings)) -> TokenResponse:
    """`company` is needed only when the email belongs to several practices (409 COMPANY_REQUIRED)."""
    # A sync route: FastAPI runs it in its thread pool, so argon2 never blocks the event loop.
    tokens = sessions.login(body.email, body.password, company_slug=body.company, client_ip=client_ip(request),
                            settings=settings)
    return _response(tokens)


@router.post("/refresh", response_model=TokenResponse, responses=_ERRORS)
def refresh(body: RefreshRequest, request: Request, settings: Settings = Depends(get_app_settings)) -> TokenResponse:
    """Needs only the refresh token, so it works after the access token expired."""
    return _response(sessions.refresh(body.refresh_token, client_ip=client_ip(request), settings=settings))


@router.post("/logout", response_model=LogoutResponse, responses=_ERRORS)
def logout(body: RefreshRequest, request: Request) -> LogoutResponse:
    sessions.logout(body.refresh_token, client_ip=client_ip(request))
    return LogoutResponse()


@router.get("/me", response_model=MeResponse, responses={401: {"description": "NOT_AUTHENTICATED etc."}})
def me(user: CurrentUser = Depends(get_current_user)) -> MeResponse:
    """The token's identity; full_name when the user is one of ours (platform tokens may not be)."""
    with tenant(user.company_id), session_scope() as session:
        row = find_user(session, user.company_id, user.id)
        full_name = row.full_name if row else None
    return MeResponse(id=user.id, email=user.email, role=user.role, companyId=user.company_id,
                      permissions=sorted(user.permissions), full_name=full_name)

"""Sign-in: `POST /api/auth/login`, `/refresh`, `/logout`, `GET /api/auth/me` (the seed's contract,
with the refresh token the seed lacked). Logic lives in auth.sessions."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.deps import AppSettings, CurrentUser, TenantSession, client_ip, get_current_user
from app.request_models import RequestModel
from auth import sessions
from auth.users import find_user
from core.errors import Unauthorized
from core.settings import Settings

router = APIRouter(prefix="/api/auth", tags=["auth"])

# The web page keeps its refresh token in this cookie, never in JavaScript: HttpOnly (no script
# can read it), SameSite=Strict (no other site's request carries it), and scoped to /api/auth so
# only refresh and logout ever receive it. The JSON body keeps refresh_token for the Node platform.
REFRESH_COOKIE = "ils_refresh"
REFRESH_COOKIE_PATH = "/api/auth"

_ERRORS = {401: {"description": "INVALID_CREDENTIALS, INVALID_TOKEN, TOKEN_EXPIRED, TOKEN_REVOKED or "
                                "ACCOUNT_DISABLED"}}


class LoginRequest(RequestModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)  # bounded: argon2 hashes every byte
    company: str | None = Field(default=None, max_length=64,
                                description="Practice slug; needed only when the email exists in several.")


class RefreshRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(
        default=None, min_length=1, max_length=512,
        description=f"Optional when the browser sends the {REFRESH_COOKIE} cookie; the body wins when both come.")


class PasswordChangeRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


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


def _is_https(request: Request) -> bool:
    """Secure cookies only over HTTPS (directly, or behind a proxy that says so). X-Forwarded-Proto
    is believed from anyone here: all it can do is make the cookie stricter."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _set_refresh_cookie(response: Response, request: Request, tokens: sessions.SessionTokens,
                        settings: Settings) -> None:
    response.set_cookie(REFRESH_COOKIE, tokens.refresh_token, max_age=settings.refresh_token_days * 86400,
                        path=REFRESH_COOKIE_PATH, httponly=True, secure=_is_https(request), samesite="strict")


def _clear_refresh_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, httponly=True, secure=_is_https(request),
                           samesite="strict")


def _presented_token(body: RefreshRequest | None, request: Request) -> tuple[str, bool]:
    """The refresh token from the body, else the cookie; and whether it came from the cookie."""
    if body is not None and body.refresh_token:
        return body.refresh_token, False
    cookie = request.cookies.get(REFRESH_COOKIE, "")
    if cookie and len(cookie) <= 512:
        return cookie, True
    raise Unauthorized("No refresh token: send {\"refresh_token\": ...} or sign in again", code="NOT_AUTHENTICATED")


def _with_cleared_cookie(exc: Unauthorized, request: Request) -> Unauthorized:
    """A refused cookie is dead: the error response deletes it so the browser stops sending it."""
    scratch = Response()
    _clear_refresh_cookie(scratch, request)
    exc.headers["set-cookie"] = scratch.headers["set-cookie"]
    return exc


@router.post("/login", response_model=TokenResponse,
             responses={**_ERRORS, 409: {"description": "COMPANY_REQUIRED"}, 429: {"description": "Retry-After"}})
def login(body: LoginRequest, request: Request, response: Response,
          settings: AppSettings) -> TokenResponse:
    """`company` is needed only when the email belongs to several practices (409 COMPANY_REQUIRED).
    Also sets the refresh token as an HttpOnly cookie for the web page."""
    # A sync route: FastAPI runs it in its thread pool, so argon2 never blocks the event loop.
    tokens = sessions.login(body.email, body.password, company_slug=body.company, client_ip=client_ip(request),
                            settings=settings)
    _set_refresh_cookie(response, request, tokens, settings)
    return _response(tokens)


@router.post("/refresh", response_model=TokenResponse, responses=_ERRORS)
def refresh(request: Request, response: Response, settings: AppSettings,
            body: RefreshRequest | None = Body(default=None)) -> TokenResponse:
    """Needs only the refresh token (body, or the web page's cookie), so it works after the
    access token expired. The rotated token is returned and set in the cookie."""
    token, from_cookie = _presented_token(body, request)
    try:
        tokens = sessions.refresh(token, client_ip=client_ip(request), settings=settings)
    except Unauthorized as exc:
        raise (_with_cleared_cookie(exc, request) if from_cookie else exc) from None
    _set_refresh_cookie(response, request, tokens, settings)
    return _response(tokens)


@router.post("/logout", response_model=LogoutResponse, responses=_ERRORS)
def logout(request: Request, response: Response, body: RefreshRequest | None = Body(default=None)) -> LogoutResponse:
    """Revokes the presented refresh token's sign-in and clears the cookie (also when refused)."""
    token, _ = _presented_token(body, request)
    try:
        sessions.logout(token, client_ip=client_ip(request))
    except Unauthorized as exc:
        raise _with_cleared_cookie(exc, request) from None
    _clear_refresh_cookie(response, request)
    return LogoutResponse()


@router.post("/password", response_model=TokenResponse,
             responses={**_ERRORS, 422: {"description": "VALIDATION_ERROR"}, 429: {"description": "Retry-After"}})
def change_password(body: PasswordChangeRequest, request: Request, response: Response, settings: AppSettings,
                    user: CurrentUser = Depends(get_current_user)) -> TokenResponse:
    """Change your own password. Every other session and access token of yours ends at once
    (401 TOKEN_REVOKED on their next request); this call returns a new pair."""
    tokens = sessions.change_password(user.company_id, user.id, body.current_password, body.new_password,
                                      client_ip=client_ip(request), settings=settings)
    _set_refresh_cookie(response, request, tokens, settings)
    return _response(tokens)


@router.get("/me", response_model=MeResponse, responses={401: {"description": "NOT_AUTHENTICATED etc."}})
def me(session: TenantSession, user: CurrentUser = Depends(get_current_user)) -> MeResponse:
    """The token's identity; full_name when the user is one of ours (platform tokens may not be)."""
    row = find_user(session, user.company_id, user.id)
    full_name = row.full_name if row else None
    return MeResponse(id=user.id, email=user.email, role=user.role, companyId=user.company_id,
                      permissions=sorted(user.permissions), full_name=full_name)

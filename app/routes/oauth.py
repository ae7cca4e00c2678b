"""`POST /api/auth/token`: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) for service
clients (auth.clients). Form-encoded like every OAuth token endpoint, so stock OAuth client
libraries work; the client authenticates with HTTP Basic (§2.3.1, preferred) or with
client_id/client_secret in the form. `company_id` picks the company the token acts for."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from fastapi import APIRouter, Form, Request, Response
from pydantic import BaseModel, Field

from app.deps import AppSettings, client_ip
from auth import clients
from core.errors import ServiceError, Unauthorized

router = APIRouter(prefix="/api/auth", tags=["auth"])
GRANT_TYPE = "client_credentials"

_ERRORS = {
    400: {"description": "UNSUPPORTED_GRANT_TYPE, INVALID_REQUEST, INVALID_SCOPE, COMPANY_REQUIRED, UNKNOWN_COMPANY"},
    401: {"description": "INVALID_CLIENT: unknown client, wrong secret, or a revoked client"},
    403: {"description": "COMPANY_NOT_ALLOWED (company outside the client's list) or INVALID_SCOPE (not granted)"},
    429: {"description": "RATE_LIMITED: too many failed client authentications, with Retry-After"},
}


class ClientTokenResponse(BaseModel):
    access_token: str = Field(description="JWT for `Authorization: Bearer <token>`, for one company.")
    token_type: str = "Bearer"
    expires_in: int = Field(description="Lifetime in seconds (ACCESS_TOKEN_MINUTES).")
    scope: str = Field(description="Granted scopes, space-separated (our permission names).")
    company_id: str = Field(description="The company this token acts for.")


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized(clients.INVALID_CLIENT, code="INVALID_CLIENT",
                           headers={"WWW-Authenticate": "Basic"}) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise Unauthorized(clients.INVALID_CLIENT, code="INVALID_CLIENT", headers={"WWW-Authenticate": "Basic"})
    # RFC 6749 §2.3.1: both parts are form-urlencoded before they are joined.
    return unquote_plus(client_id), unquote_plus(secret)


@router.post("/token", response_model=ClientTokenResponse, responses=_ERRORS)
def client_token(request: Request, response: Response, settings: AppSettings,
                 grant_type: str | None = Form(default=None, max_length=64, description="client_credentials"),
                 client_id: str | None = Form(default=None, max_length=64),
                 client_secret: str | None = Form(default=None, max_length=256),
                 scope: str | None = Form(default=None, max_length=512,
                                          description="Space-separated subset of the client's scopes; "
                                                      "default: all of them."),
                 company_id: str | None = Form(default=None, max_length=64,
                                               description="Company the token acts for; optional when the "
                                                           "client may act for exactly one.")) -> ClientTokenResponse:
    """Exchange service-client credentials for a short-lived access token for one company."""
    if grant_type != GRANT_TYPE:
        raise ServiceError(f"grant_type must be {GRANT_TYPE}", code="UNSUPPORTED_GRANT_TYPE", status_code=400)
    basic = _basic_credentials(request)
    if basic is not None and client_secret is not None:
        raise ServiceError("send the client credentials once: HTTP Basic or the form, not both",
                           code="INVALID_REQUEST", status_code=400)
    presented_id, presented_secret = basic or (client_id or "", client_secret or "")
    if not presented_id or not presented_secret:
        raise Unauthorized("Client authentication needed: HTTP Basic client_id:client_secret, or both in the form",
                           code="INVALID_CLIENT", headers={"WWW-Authenticate": "Basic"})
    token = clients.exchange(presented_id, presented_secret, company_id=company_id, scope=scope,
                             client_ip=client_ip(request), settings=settings)
    response.headers["Cache-Control"] = "no-store"  # RFC 6749 §5.1
    response.headers["Pragma"] = "no-cache"
    return ClientTokenResponse(access_token=token.access_token, expires_in=token.expires_in,
                               scope=" ".join(token.scopes), company_id=token.company_id)

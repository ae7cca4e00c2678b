"""The practice's web page: `GET /app` (one HTML page) and its scripts and styles under
`/app/static/`. No build step: plain HTML, CSS and ES modules from app/web/.

Every page response carries a strict Content-Security-Policy (`default-src 'self'`, no inline
script or style), so an injected snippet in a document or an answer cannot run: the page
also only ever inserts untrusted text with textContent.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.types import Scope

from app.routes.auth import REFRESH_COOKIE, REFRESH_COOKIE_PATH

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGE_PATH = "/app"
STATIC_PATH = "/app/static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def with_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class SecureStaticFiles(StaticFiles):
    """Starlette's StaticFiles (ETag, If-None-Match, HEAD, path-traversal checks) plus the page's
    security headers; `no-cache` makes browsers revalidate, so a deploy is seen at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return with_security_headers(response)


def _quality(accept: str, media_type: str) -> float:
    """The q value an Accept header gives `media_type` (exact or type/* or */*), 0 when absent."""
    best, best_specificity = 0.0, -1
    major = media_type.split("/")[0]
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        if kind == media_type:
            specificity = 2
        elif kind == f"{major}/*":
            specificity = 1
        elif kind == "*/*":
            specificity = 0
        else:
            continue
        q = 1.0
        for param in fields[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if specificity > best_specificity:
            best, best_specificity = q, specificity
    return best


def prefers_html(request: Request) -> bool:
    """True for a browser navigating to `/` (it names text/html and ranks it above JSON);
    API clients (`*/*`, `application/json`, no Accept) keep getting the JSON service info."""
    accept = request.headers.get("accept", "")
    if "text/html" not in accept.lower():
        return False
    return _quality(accept, "text/html") > _quality(accept, "application/json")


router = APIRouter(tags=["web"])
router.mount(STATIC_PATH, SecureStaticFiles(directory=WEB_DIR, check_dir=False), name="web-static")


@router.get(PAGE_PATH, response_class=FileResponse, summary="The practice's web page (HTML)",
            responses={200: {"content": {"text/html": {}}, "description": "The single-page app"}})
def page() -> Response:
    response = FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return with_security_headers(response)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """Browsers ask for /favicon.ico on their own, whatever the page links: without it every
    visit logs a 404."""
    response = FileResponse(WEB_DIR / "favicon.ico", media_type="image/x-icon")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return with_security_headers(response)


class BrowserSession(BaseModel):
    signed_in: bool = Field(description=f"Whether the browser sent a {REFRESH_COOKIE} cookie (not whether it is "
                                        "still valid: POST /api/auth/refresh decides that).")


@router.get(f"{REFRESH_COOKIE_PATH}/session", response_model=BrowserSession,
            summary="Does this browser hold a refresh cookie? (the web page asks before restoring a sign-in)")
def browser_session(request: Request, response: Response) -> BrowserSession:
    """The refresh cookie is HttpOnly, so the page cannot see whether it has one. Asking here
    lets a first visit skip the refresh that would be refused: a 401 in every new visitor's
    browser console. Says nothing about whose cookie it is, and the answer is never cached."""
    response.headers["Cache-Control"] = "no-store"
    return BrowserSession(signed_in=bool(request.cookies.get(REFRESH_COOKIE)))

"""The service's ASGI middleware: request ids and the per-request log context, body-size
limits, and security headers.

All pure ASGI (not BaseHTTPMiddleware) so streaming responses (chat SSE) are not buffered
and the request body is counted as it arrives instead of after it has been read whole.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import bind_log_context, reset_log_context, start_log_context
from app.routes.api_docs import DOCS_PAGE_CSP
from core import metrics
from core.settings import Settings

access_logger = logging.getLogger("ils_rag.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _observe(scope: Scope, status: int, seconds: float) -> None:
    """One latency sample per request, labelled by the route's template (`/api/documents/{id}`),
    never the path itself: unmatched paths and unknown methods share one label, so a scanner
    cannot grow the series count."""
    method = scope.get("method") or "GET"
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    metrics.REQUEST_SECONDS.labels(method if method in _METHODS else "OTHER", route, str(status)).observe(seconds)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_json_error(send: Send, scope: Scope, status: int, message: str, code: str,
                          headers: dict[str, str] | None = None) -> None:
    """An error answered by middleware (before any route runs), in the service's error shape."""
    rid = scope.get("state", {}).get("request_id", "")
    body = json.dumps({"error": message, "code": code, "request_id": rid}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Request ids (taken from X-Request-ID when the caller, e.g. the Node backend, sends a
    safe one), the log context every log line of the request carries, and one access-log line.

    The access line has method, path (never the query string), status, duration and the
    user/company the token named (bound by `app.deps.get_current_user`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id") or ""
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = start_log_context(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*(message.get("headers") or []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            _observe(scope, status, elapsed)
            access_logger.info("%s %s %s", scope.get("method"), scope.get("path"), status, extra={
                "http": {"method": scope.get("method"), "path": scope.get("path"), "status": status,
                         "duration_ms": round(elapsed * 1000, 1)}})
            reset_log_context(token)


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without (or with a lying) Content-Length grows past
    the limit. An HTTPException, so FastAPI's body parsing re-raises it untouched and the
    error handlers answer 413 PAYLOAD_TOO_LARGE in the usual shape."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class BodySizeLimitMiddleware:
    """413 PAYLOAD_TOO_LARGE for bodies over the limit, before the body is parsed or spooled.

    Limits: MAX_UPLOAD_REQUEST_MB for the multipart upload (POST /api/documents; each file
    is also checked against MAX_UPLOAD_MB by the route), MAX_UPLOAD_MB for the seed's JSON
    index-document call, MAX_BODY_KB for everything else. A declared Content-Length over the
    limit is refused at once; a chunked body is counted as it streams in.
    """

    UPLOAD_PATHS = frozenset({"/api/documents"})
    DOCUMENT_PATHS = frozenset({"/api/rag/index-document"})

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> tuple[int, str]:
        """(bytes, the setting a person would change) for a request path."""
        path = path.rstrip("/") or "/"
        if path in self.UPLOAD_PATHS:
            return self.settings.max_upload_request_mb * 1024 * 1024, "MAX_UPLOAD_REQUEST_MB"
        if path in self.DOCUMENT_PATHS:
            return self.settings.max_upload_mb * 1024 * 1024, "MAX_UPLOAD_MB"
        return self.settings.max_body_kb * 1024, "MAX_BODY_KB"

    @staticmethod
    def _message(limit: int, setting: str) -> str:
        size = f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"
        return f"The request body is larger than the {size} limit ({setting}); send less."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            if declared.strip().isdigit():
                await send_json_error(send, scope, 413, self._message(limit, setting), "PAYLOAD_TOO_LARGE")
            else:
                await send_json_error(send, scope, 400, "Content-Length is not a number.", "BAD_REQUEST")
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(self._message(limit, setting))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (e.g. a raw Request.body())
            if started:
                raise
            await send_json_error(send, scope, 413, str(exc.detail), "PAYLOAD_TOO_LARGE")


# The API answers JSON only: nothing of it should ever render, frame, or load anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# /docs and /redoc (app.routes.api_docs) load Swagger UI / ReDoc from this origin and start them
# with an inline script; the pages set that policy themselves, and their assets get the same one.
DOCS_CSP = DOCS_PAGE_CSP
DOCS_PATHS = ("/docs", "/redoc")
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Security headers on every response, without overriding what a route set itself
    (the web page under /app sets its own, stricter-for-a-page CSP: see app.routes.web).

    HSTS only over HTTPS (`scope["scheme"]`, which uvicorn sets from X-Forwarded-Proto when
    the proxy is trusted): over plain HTTP it would be ignored, and on localhost harmful.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else API_CSP
        extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                 (b"referrer-policy", b"no-referrer"), (b"content-security-policy", csp.encode()),
                 (b"cross-origin-resource-policy", b"same-origin")]
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra if name not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["BodySizeLimitMiddleware", "RequestIdMiddleware", "SecurityHeadersMiddleware", "bind_log_context",
           "send_json_error"]

"""Every error leaves the service as `{"error", "code", "request_id"}` (the seed's shape)."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ServiceError

logger = logging.getLogger("ils_rag.errors")

HTTP_CODES = {
    400: "BAD_REQUEST", 401: "NOT_AUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR", 429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE",
}


NUL_MESSAGE = "cannot contain NUL (0x00) characters"
RETRY_AFTER_S = "5"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


def error_response(request: Request, status: int, message: str, code: str,
                   headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    body = {"error": message, "code": code, "request_id": request_id(request), **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, object]]]:
    details = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        details.append({"field": location, "message": err.get("msg", "")})
    summary = "; ".join(f"{d['field']}: {d['message']}" if d["field"] else str(d["message"]) for d in details)
    return f"Invalid request: {summary}" if summary else "Invalid request", details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = dict(exc.headers)
        if exc.status_code == 503:  # a transient outage: tell clients when to come back
            headers.setdefault("Retry-After", RETRY_AFTER_S)
        return error_response(request, exc.status_code, exc.message, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _describe_validation(exc)
        return error_response(request, 422, message, "VALIDATION_ERROR", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).name)
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = f"No route {request.method} {request.url.path}; see GET / for the endpoint list"
        return error_response(request, exc.status_code, message, code, getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        logger.warning("database unavailable: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return error_response(request, 503, "The database is unavailable; try again shortly.",
                              "DATABASE_UNAVAILABLE", {"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await database_down(request, exc)  # type: ignore[arg-type]
        logger.exception("database error", exc_info=exc)
        return error_response(request, 500, "Internal error; the request id identifies it in the logs.",
                              "INTERNAL_ERROR")

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        # psycopg2 refuses NUL in any string parameter before it reaches Postgres (text and
        # jsonb cannot hold it); whichever field carried it, that is bad input, not a fault.
        if NUL_MESSAGE in str(exc):
            return error_response(request, 422, "Text may not contain NUL (\\u0000) characters.",
                                  "INVALID_CHARACTERS")
        return await unexpected(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(request, 500, "Internal error; the request id identifies it in the logs.",
                              "INTERNAL_ERROR")

"""Errors that carry their HTTP status and machine code, so every layer can raise them
and the API turns them into the seed's `{"error", "code"}` shape in one place."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code
        self.headers = headers or {}


class NotFound(ServiceError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(ServiceError):
    status_code = 409
    code = "CONFLICT"


class Forbidden(ServiceError):
    status_code = 403
    code = "FORBIDDEN"


class Unauthorized(ServiceError):
    status_code = 401
    code = "INVALID_TOKEN"


class DatabaseUnavailable(ServiceError):
    status_code = 503
    code = "DATABASE_UNAVAILABLE"


class ConfigurationError(Exception):
    """Raised at start-up; the CLI prints its message on one line and exits non-zero."""

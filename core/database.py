"""One SQLAlchemy engine per process, the tenant scope, and start-up checks.

The tenant scope is a context variable copied into every transaction with
`set_config('app.company_id', ..., true)` (transaction-local), so a pooled connection
never carries one request's company into the next one; row-level security policies
read it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.embedded_postgres import start_embedded_postgres
from core.errors import ConfigurationError, DatabaseUnavailable
from core.settings import Settings, get_settings

_current_company: contextvars.ContextVar[str | None] = contextvars.ContextVar("company_id", default=None)


class Base(DeclarativeBase):
    """Declarative base for our own tables (the chunk table belongs to PGVectorStore)."""


@lru_cache
def database_url() -> str:
    settings = get_settings()
    if settings.database_url:
        url = make_url(settings.database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg2")
        return url.render_as_string(hide_password=False)
    return start_embedded_postgres(settings.pgdata_dir)


def _async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _configure_connection(dbapi_connection: object, _record: object) -> None:
    # Iterative index scans keep a filtered HNSW top-k full for every tenant size
    # (pgvector >= 0.8); ef_search is the candidate list each iteration explores.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("SET hnsw.iterative_scan = relaxed_order")
    cursor.execute("SET hnsw.ef_search = 100")
    cursor.close()


def _set_tenant(connection: sa.Connection) -> None:
    company_id = _current_company.get()
    connection.exec_driver_sql("SELECT set_config('app.company_id', %(c)s, true)", {"c": company_id or ""})


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    engine = sa.create_engine(
        database_url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_timeout=settings.db_connect_timeout_s,
        connect_args={"connect_timeout": settings.db_connect_timeout_s},
    )
    event.listen(engine, "connect", _configure_connection)
    event.listen(engine, "begin", _set_tenant)
    return engine


@lru_cache
def get_async_engine() -> AsyncEngine:
    """Only handed to LlamaIndex stores, which insist on having one; we use the sync path."""
    return create_async_engine(_async_url(database_url()), pool_pre_ping=True)


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def tenant(company_id: str) -> Iterator[None]:
    """Run the enclosed database work as `company_id` (read by RLS policies)."""
    token = _current_company.set(company_id)
    try:
        yield
    finally:
        _current_company.reset(token)


def current_company() -> str | None:
    return _current_company.get()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = session_factory()()
    try:
        with session.begin():
            yield session
    except (OperationalError, DBAPIError) as exc:
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        raise
    finally:
        session.close()


def pgvector_version(connection: sa.Connection) -> str | None:
    return connection.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()


def check_database(settings: Settings | None = None) -> str:
    """Connect, make sure pgvector is there, and return its version.

    Raises ConfigurationError with a one-line, actionable message otherwise.
    """
    settings = settings or get_settings()
    where = "the embedded database" if settings.embedded_database else "DATABASE_URL"
    try:
        with get_engine().connect() as connection:
            available = connection.execute(
                sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
            if available is None:
                raise ConfigurationError(
                    f"{where} has no pgvector extension: install pgvector on that server "
                    "(e.g. the pgvector/pgvector Docker image) or unset DATABASE_URL to use the embedded one."
                )
            connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            connection.commit()
            return pgvector_version(connection) or available
    except ConfigurationError:
        raise
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigurationError(
            f"cannot connect to {where} ({reason}); check that Postgres is running and DATABASE_URL is right."
        ) from exc

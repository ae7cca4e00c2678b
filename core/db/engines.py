"""The service's engines and sessions: every one connects as a role row-level security binds.

`get_engine()` connects as the service role (`ils_app`, or APP_DATABASE_URL), `get_auth_engine()`
as sign-in's (`ils_auth`), the replica's engine as the service role on READ_DATABASE_URL. Each
transaction they begin proves the tenant in scope (core.db.tenant_scope). `reset_engines()`
forgets every cached URL and engine of the process, the owner's included, after the settings
they were built from change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.db.connections import create_engine, driver_url, transaction_scope
from core.db.owner import forget_owner, tenant_signer
from core.db.roles import app_database_url, auth_database_url, forget_role_urls
from core.db.tenant_scope import begin_service_transaction
from core.settings import get_settings

# The signer is looked up at each BEGIN, not bound when the engine is made: it reads its key
# lazily through the owner's engine, and `reset_engines` replaces it together with the engines.
_begin_service_transaction = partial(begin_service_transaction, signer=tenant_signer)


class Base(DeclarativeBase):
    """Declarative base for our own tables (the chunk table belongs to PGVectorStore)."""


def create_service_engine(url: str, *, statement_timeout_s: int = 0) -> Engine:
    """An engine on `url` whose transactions prove the tenant in scope, as the service's do."""
    return create_engine(url, _begin_service_transaction, statement_timeout_s=statement_timeout_s)


@lru_cache
def get_engine() -> Engine:
    """The service's engine: connects as the row-level-security-bound role.

    Its statements are bounded by DB_STATEMENT_TIMEOUT_S (the owner's engine is not: it runs
    migrations and bulk loads)."""
    return create_service_engine(app_database_url(), statement_timeout_s=get_settings().db_statement_timeout_s)


@lru_cache
def get_auth_engine() -> Engine:
    """Sign-in's engine (`ils_auth`): may call the functions that return password hashes, and
    nothing else. Request code never gets it, so SQL running there cannot read a hash."""
    return create_service_engine(auth_database_url(), statement_timeout_s=get_settings().db_statement_timeout_s)


@lru_cache
def replica_engine() -> Engine | None:
    """READ_DATABASE_URL's engine (the service role on a streaming replica), or None.

    The same begin hook as the primary's: the replica verifies the signed tenant claim with the
    key it replicated (ils_tenant_key), against its own backend pid and transaction start.
    Whether reads go there is core.db.replica's call."""
    url = get_settings().read_database_url
    if not url:
        return None
    return create_service_engine(driver_url(url), statement_timeout_s=get_settings().db_statement_timeout_s)


def forget_replica_engine() -> None:
    """Dispose of the replica's engine, if one was made, and forget it."""
    engine = replica_engine() if replica_engine.cache_info().currsize else None
    if engine is not None:
        engine.dispose()
    replica_engine.cache_clear()


@lru_cache
def get_async_engine() -> AsyncEngine:
    """Only handed to LlamaIndex stores, which insist on having one; we use the sync path."""
    url = make_url(app_database_url()).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    engine = create_async_engine(url, pool_pre_ping=True)
    event.listen(engine.sync_engine, "begin", _begin_service_transaction)
    return engine


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A service session (row-level security applies: use inside `tenant(...)` for tenant
    tables); its transaction commits on success and rolls back on error."""
    with transaction_scope(session_factory()) as session:
        yield session


def reset_engines() -> None:
    """Forget every cached URL, engine and session factory (after DATABASE_URL changes)."""
    forget_owner()
    forget_role_urls()
    for cached in (get_engine, get_auth_engine, replica_engine, get_async_engine, session_factory):
        cached.cache_clear()

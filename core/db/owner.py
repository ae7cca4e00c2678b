"""The owner's URL and engine: migrations, the CLI, bootstrap and cross-tenant maintenance.

The owner (DATABASE_URL, or the embedded server's `postgres`) bypasses row-level security,
so request code never gets this engine; the service's own engines live in core.db.engines.
The tenant signer is here because the key it signs with is readable by the owner only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db.connections import create_engine, driver_url, transaction_scope
from core.db.tenant_scope import begin_owner_transaction
from core.embedded_postgres import start_embedded_postgres
from core.settings import get_settings
from core.tenant_signing import TenantSigner


@lru_cache
def database_url() -> str:
    """The owner's URL (migrations, CLI, bootstrap); starts the embedded server when unset."""
    settings = get_settings()
    if settings.database_url:
        return driver_url(settings.database_url)
    return start_embedded_postgres(settings.pgdata_dir, settings.embedded_pg_shared_buffers_mb)


@lru_cache(maxsize=4)
def _admin_engine(url: str) -> Engine:
    return create_engine(url, begin_owner_transaction)


def get_admin_engine() -> Engine:
    """The owner's engine (bypasses row-level security): migrations, CLI, bootstrap only.

    Keyed by URL so code that repoints DATABASE_URL and clears `database_url` gets a new one.
    """
    return _admin_engine(database_url())


@lru_cache(maxsize=4)
def _admin_session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(_admin_engine(url), expire_on_commit=False)


@contextmanager
def admin_session_scope() -> Iterator[Session]:
    """An owner session that sees every company: CLI, bootstrap and maintenance only, never a request."""
    with transaction_scope(_admin_session_factory(database_url())) as session:
        yield session


@lru_cache
def tenant_signer() -> TenantSigner:
    return TenantSigner(get_admin_engine())


def forget_owner() -> None:
    """Forget the owner's URL, engines, sessions and signer (see core.db.engines.reset_engines)."""
    for cached in (database_url, _admin_engine, _admin_session_factory, tenant_signer):
        cached.cache_clear()

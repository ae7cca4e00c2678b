"""Two SQLAlchemy engines per process, the tenant scope, and start-up checks.

`get_admin_engine()` connects as the owner (DATABASE_URL, or the embedded server's
`postgres`): migrations, the CLI, bootstrap and cross-tenant maintenance only.
`get_engine()` connects as the service role (`ils_app`, or APP_DATABASE_URL), which is
neither superuser nor BYPASSRLS, so the row-level security policies of migration 0002
apply to every query the service makes.

The tenant scope is a context variable copied into every transaction with
`set_config('app.company_id', ..., true)` (transaction-local), so a pooled connection
never carries one request's company into the next one; row-level security policies
read it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.embedded_postgres import start_embedded_postgres
from core.errors import ConfigurationError, DatabaseUnavailable
from core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

APP_ROLE = "ils_app"  # created by migration 0002
APP_PASSWORD_FILE = "db_app_password"

_current_company: contextvars.ContextVar[str | None] = contextvars.ContextVar("company_id", default=None)


class Base(DeclarativeBase):
    """Declarative base for our own tables (the chunk table belongs to PGVectorStore)."""


def _psycopg2_url(raw: str) -> str:
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


@lru_cache
def database_url() -> str:
    """The owner's URL (migrations, CLI, bootstrap); starts the embedded server when unset."""
    settings = get_settings()
    if settings.database_url:
        return _psycopg2_url(settings.database_url)
    return start_embedded_postgres(settings.pgdata_dir, settings.embedded_pg_shared_buffers_mb)


def _app_password(settings: Settings) -> str:
    """The generated password of ils_app on an external server (DATA_DIR/db_app_password, 0600)."""
    path = settings.data_dir.resolve() / APP_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def _refuse_unless_development(settings: Settings, message: str) -> None:
    """A service role that bypasses row-level security stops start-up, except in development."""
    if settings.environment != "development":
        raise ConfigurationError(message)
    logger.warning("%s (allowed only because ENVIRONMENT=development)", message)


def _refuse_or_warn(settings: Settings, reason: str) -> str:
    _refuse_unless_development(settings, (
        f"{reason}; the service would bypass row-level security. Set APP_DATABASE_URL to a role without "
        f"SUPERUSER/BYPASSRLS that is a member of {APP_ROLE} (see SECURITY.md), or give DATABASE_URL's "
        "role CREATEROLE so the service can create it."))
    return database_url()


def app_database_url() -> str:
    """The URL the service connects with: a role that row-level security applies to.

    APP_DATABASE_URL when set; for the embedded server (trust authentication over its
    private socket) the owner URL with the user swapped for ils_app; for an external
    DATABASE_URL, ils_app with a generated password the owner sets (needs CREATEROLE).
    Cached per owner URL, so clearing `database_url` after repointing DATABASE_URL suffices.
    """
    return _derive_app_url(database_url(), get_settings().app_database_url)


@lru_cache(maxsize=4)
def _derive_app_url(owner_url: str, configured: str | None) -> str:
    settings = get_settings()
    if configured:
        return _psycopg2_url(configured)
    owner = make_url(owner_url)
    if settings.embedded_database:
        return owner.set(username=APP_ROLE, password=None).render_as_string(hide_password=False)
    try:
        with get_admin_engine().connect() as connection:
            me = connection.execute(sa.text(
                "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
            exists = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}).first()
            if exists is None:
                return _refuse_or_warn(settings, f"role {APP_ROLE} does not exist (run `ils-rag db upgrade`)")
            if not (me.rolsuper or me.rolcreaterole):
                return _refuse_or_warn(settings, f"DATABASE_URL's role may not set a password for {APP_ROLE}")
            password = _app_password(settings)
            # psycopg2 quotes the parameter client-side; DDL takes no server-side parameters.
            connection.exec_driver_sql(f"ALTER ROLE {APP_ROLE} WITH LOGIN PASSWORD %(p)s", {"p": password})
            connection.commit()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
    return owner.set(username=APP_ROLE, password=password).render_as_string(hide_password=False)


def _async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


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


_SET_TENANT = sa.text("SELECT set_config('app.company_id', :c, true)")
# Planner settings for the next transactions of this context (see `transaction_settings`).
_local_settings: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "local_settings", default=())
_SETTING_NAMES = frozenset({"enable_indexscan", "enable_sort", "enable_seqscan", "enable_bitmapscan",
                            "hnsw.ef_search"})


def _set_tenant(connection: sa.Connection) -> None:
    company_id = _current_company.get()
    extra = _local_settings.get()
    if not extra:
        # A bound parameter compiled by the dialect: the async (asyncpg) engine takes $1, psycopg2 %(c)s.
        connection.execute(_SET_TENANT, {"c": company_id or ""})
        return
    # The same round trip also sets the transaction's planner settings.
    calls = ", ".join(f"set_config(:n{i}, :v{i}, true)" for i in range(len(extra)))
    params: dict[str, str] = {"c": company_id or ""}
    for i, (name, value) in enumerate(extra):
        params[f"n{i}"], params[f"v{i}"] = name, value
    connection.execute(sa.text(f"SELECT set_config('app.company_id', :c, true), {calls}"), params)


def _create_engine(url: str, *, statement_timeout_s: int = 0) -> Engine:
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
    event.listen(engine, "begin", _set_tenant)
    return engine


@lru_cache
def get_engine() -> Engine:
    """The service's engine: connects as the row-level-security-bound role.

    Its statements are bounded by DB_STATEMENT_TIMEOUT_S (the owner's engine is not: it runs
    migrations and bulk loads)."""
    return _create_engine(app_database_url(), statement_timeout_s=get_settings().db_statement_timeout_s)


@lru_cache(maxsize=4)
def _admin_engine(url: str) -> Engine:
    return _create_engine(url)


def get_admin_engine() -> Engine:
    """The owner's engine (bypasses row-level security): migrations, CLI, bootstrap only.

    Keyed by URL so code that repoints DATABASE_URL and clears `database_url` gets a new one.
    """
    return _admin_engine(database_url())


@lru_cache
def get_async_engine() -> AsyncEngine:
    """Only handed to LlamaIndex stores, which insist on having one; we use the sync path."""
    engine = create_async_engine(_async_url(app_database_url()), pool_pre_ping=True)
    event.listen(engine.sync_engine, "begin", _set_tenant)
    return engine


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@lru_cache(maxsize=4)
def _admin_session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(_admin_engine(url), expire_on_commit=False)


def reset_engines() -> None:
    """Forget every cached URL, engine and session factory (after DATABASE_URL changes)."""
    for cached in (database_url, _derive_app_url, get_engine, _admin_engine, get_async_engine, session_factory,
                   _admin_session_factory):
        cached.cache_clear()


@contextmanager
def tenant(company_id: str) -> Iterator[None]:
    """Run the enclosed database work as `company_id` (read by RLS policies)."""
    token = _current_company.set(company_id)
    try:
        yield
    finally:
        _current_company.reset(token)


@contextmanager
def transaction_settings(**settings: str) -> Iterator[None]:
    """Planner settings (`enable_sort="off"`, `hnsw__ef_search="100"`; `__` stands for `.`) for
    every transaction begun inside the block, set transaction-locally in the same round trip
    as the tenant, so they never outlive the transaction on a pooled connection."""
    pairs = tuple((name.replace("__", "."), str(value)) for name, value in settings.items())
    unknown = [name for name, _ in pairs if name not in _SETTING_NAMES]
    if unknown:
        raise ValueError(f"not a planner setting this service sets: {', '.join(unknown)}")
    token = _local_settings.set(pairs)
    try:
        yield
    finally:
        _local_settings.reset(token)


def current_company() -> str | None:
    return _current_company.get()


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached", not "this query is wrong"."""
    if isinstance(exc, OperationalError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@contextmanager
def _scope(factory: sessionmaker[Session]) -> Iterator[Session]:
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


@contextmanager
def session_scope() -> Iterator[Session]:
    """A service session (row-level security applies: use inside `tenant(...)` for tenant
    tables); its transaction commits on success and rolls back on error."""
    with _scope(session_factory()) as session:
        yield session


@contextmanager
def admin_session_scope() -> Iterator[Session]:
    """An owner session that sees every company: CLI, bootstrap and maintenance only, never a request."""
    with _scope(_admin_session_factory(database_url())) as session:
        yield session


def tenant_tables(connection: sa.Connection) -> list[str]:
    """Every table of the schema that holds per-company rows (has a company_id column).

    Discovered rather than listed, so a table added by a later migration without row-level
    security is caught by `app_role_problems` (and by tests/test_rls.py).
    """
    return list(connection.execute(sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND a.attname = 'company_id' AND NOT a.attisdropped ORDER BY c.relname")).scalars())


def app_role_problems(connection: sa.Connection) -> tuple[list[str], list[str]]:
    """What is wrong with the role `connection` logged in as, as the service's role.

    Returns (bypasses, broken): `bypasses` are reasons row-level security would not hold
    for this role (superuser, BYPASSRLS, owner of a tenant table, whose policy sees every
    company); `broken` are reasons the service could not work at all (a tenant table
    without forced RLS, a missing privilege). Empty lists: the role is fit to serve.
    """
    role = connection.execute(sa.text(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")).one()
    bypasses: list[str] = []
    if role.rolsuper:
        bypasses.append(f"{role.rolname} is a superuser")
    if role.rolbypassrls:
        bypasses.append(f"{role.rolname} has BYPASSRLS")
    tables = tenant_tables(connection)
    rows = connection.execute(sa.text(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
        "pg_has_role(current_user, c.relowner, 'MEMBER') AS owns, "
        "has_table_privilege(current_user, c.oid, 'SELECT') AND has_table_privilege(current_user, c.oid, 'INSERT') "
        "AND has_table_privilege(current_user, c.oid, 'UPDATE') "
        "AND has_table_privilege(current_user, c.oid, 'DELETE') AS all_privileges "
        "FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY(:t) ORDER BY c.relname"),
        {"t": tables}).all()
    broken: list[str] = []
    for row in rows:
        if row.owns and not role.rolsuper:
            bypasses.append(f"{role.rolname} owns {row.relname} (its owner policy sees every company)")
        if not (row.relrowsecurity and row.relforcerowsecurity):
            broken.append(f"table {row.relname} has no forced row-level security (run `ils-rag db upgrade`)")
        if not row.all_privileges:
            broken.append(f"{role.rolname} lacks SELECT/INSERT/UPDATE/DELETE on {row.relname} "
                          f"(GRANT {APP_ROLE} TO {role.rolname})")
    return bypasses, broken


def check_app_role(settings: Settings | None = None, engine: Engine | None = None) -> None:
    """Start-up check: the service role must be subject to row-level security and able to work.

    Raises a one-line ConfigurationError when it cannot connect, lacks privileges, or a
    tenant table lacks forced RLS; when it bypasses RLS (superuser, BYPASSRLS, table
    owner) too, except with ENVIRONMENT=development, where that is only a warning.
    """
    settings = settings or get_settings()
    try:
        with (engine or get_engine()).connect() as connection:
            bypasses, broken = app_role_problems(connection)
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else str(exc)
        raise ConfigurationError(f"the service role cannot connect ({reason}); check APP_DATABASE_URL "
                                 "or run `ils-rag db upgrade` to create it.") from exc
    if broken:
        raise ConfigurationError(f"the service role is not usable: {'; '.join(broken)}.")
    if bypasses:
        _refuse_unless_development(settings, (
            f"the service would bypass row-level security ({'; '.join(bypasses)}); set APP_DATABASE_URL to "
            f"a role without SUPERUSER/BYPASSRLS that owns no table and is a member of {APP_ROLE} "
            "(see SECURITY.md)."))


def pgvector_version(connection: sa.Connection) -> str | None:
    return connection.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()


def check_database(settings: Settings | None = None) -> str:
    """Connect, make sure pgvector is there, and return its version.

    Raises ConfigurationError with a one-line, actionable message otherwise.
    """
    settings = settings or get_settings()
    where = "the embedded database" if settings.embedded_database else "DATABASE_URL"
    try:
        with get_admin_engine().connect() as connection:
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

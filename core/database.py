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
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core import metrics
from core.embedded_postgres import start_embedded_postgres
from core.errors import ConfigurationError, DatabaseUnavailable
from core.settings import Settings, get_settings
from core.tenant_signing import TENANT_SETTING, TenantSigner

logger = logging.getLogger(__name__)

APP_ROLE = "ils_app"  # created by migration 0002
APP_PASSWORD_FILE = "db_app_password"
AUTH_ROLE = "ils_auth"  # created by migration 0004: reads password hashes, for sign-in only
AUTH_PASSWORD_FILE = "db_auth_password"
_ROLE_IDENTIFIERS = {APP_ROLE: APP_ROLE, AUTH_ROLE: AUTH_ROLE}

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


def _role_password(settings: Settings, filename: str) -> str:
    """The generated password of a service role on an external server (DATA_DIR/<filename>, 0600)."""
    path = settings.data_dir.resolve() / filename
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


def _refuse_or_warn(settings: Settings, role: str, setting: str, reason: str) -> str:
    _refuse_unless_development(settings, (
        f"{reason}; the service would connect as the owner and bypass row-level security. Set {setting} to a "
        f"role without SUPERUSER/BYPASSRLS that is a member of {role} (see SECURITY.md), or give DATABASE_URL's "
        "role CREATEROLE so the service can create it."))
    return database_url()


def app_database_url() -> str:
    """The URL request code connects with: a role that row-level security applies to.

    APP_DATABASE_URL when set; for the embedded server (trust authentication over its
    private socket) the owner URL with the user swapped for ils_app; for an external
    DATABASE_URL, ils_app with a generated password the owner sets (needs CREATEROLE).
    Cached per owner URL, so clearing `database_url` after repointing DATABASE_URL suffices.
    """
    return _derive_role_url(APP_ROLE, database_url(), get_settings().app_database_url)


def auth_database_url() -> str:
    """The URL sign-in connects with to read password hashes (`ils_auth`, never used by request code).

    Derived like `app_database_url`, from AUTH_DATABASE_URL or DATABASE_URL."""
    return _derive_role_url(AUTH_ROLE, database_url(), get_settings().auth_database_url)


_ROLE_SETTINGS = {APP_ROLE: ("APP_DATABASE_URL", APP_PASSWORD_FILE), AUTH_ROLE: ("AUTH_DATABASE_URL",
                                                                                 AUTH_PASSWORD_FILE)}


@lru_cache(maxsize=8)
def _derive_role_url(role: str, owner_url: str, configured: str | None) -> str:
    settings = get_settings()
    if configured:
        return _psycopg2_url(configured)
    setting, password_file = _ROLE_SETTINGS[role]
    owner = make_url(owner_url)
    if settings.embedded_database:
        return owner.set(username=role, password=None).render_as_string(hide_password=False)
    try:
        with get_admin_engine().connect() as connection:
            me = connection.execute(sa.text(
                "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
            exists = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
            if exists is None:
                return _refuse_or_warn(settings, role, setting,
                                       f"role {role} does not exist (run `ils-rag db upgrade`)")
            if not (me.rolsuper or me.rolcreaterole):
                return _refuse_or_warn(settings, role, setting,
                                       f"DATABASE_URL's role may not set a password for {role}")
            password = _role_password(settings, password_file)
            # psycopg2 quotes the parameter client-side; DDL takes no server-side parameters. The
            # role name is one of the two constants above.
            connection.exec_driver_sql(f"ALTER ROLE {_ROLE_IDENTIFIERS[role]} WITH LOGIN PASSWORD %(p)s",
                                       {"p": password})
            connection.commit()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
    return owner.set(username=role, password=password).render_as_string(hide_password=False)


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


# Planner settings for the next transactions of this context (see `transaction_settings`).
_local_settings: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "local_settings", default=())
_SETTING_NAMES = frozenset({"enable_indexscan", "enable_sort", "enable_seqscan", "enable_bitmapscan",
                            "hnsw.ef_search"})
# What a signed tenant claim is bound to (core.tenant_signing), read in the transaction's first
# round trip, which also applies its planner settings. Names and values are bound arrays.
_TRANSACTION_FACTS = sa.text(
    "SELECT pg_backend_pid() AS pid, (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint AS started, "
    "(SELECT count(set_config(s.name, s.value, true)) FROM unnest(CAST(:names AS text[]), CAST(:values AS text[])) "
    "AS s(name, value)) AS applied").bindparams(sa.bindparam("names", type_=ARRAY(sa.Text)),
                                                sa.bindparam("values", type_=ARRAY(sa.Text)))
_SET_CLAIM = sa.text(f"SELECT set_config('{TENANT_SETTING}', :claim, true)")
_PLANNER_ONLY = sa.text(
    "SELECT count(set_config(s.name, s.value, true)) FROM unnest(CAST(:names AS text[]), CAST(:values AS text[])) "
    "AS s(name, value)").bindparams(sa.bindparam("names", type_=ARRAY(sa.Text)),
                                    sa.bindparam("values", type_=ARRAY(sa.Text)))


_CLAIM_SHAPE = re.compile(r"^[0-9a-f]{64}:[A-Za-z0-9_.:-]{1,64}$")


def _set_local_claim(claim: str) -> str:
    """`SET LOCAL ils.tenant = '<claim>'` (TENANT_SET_LOCAL, for Citus, which forwards SET LOCAL
    to its workers but not set_config()). SET takes no bound parameter, so the claim is spelled
    into the statement: only after checking it is a hex MAC and an id-shaped company id."""
    if not _CLAIM_SHAPE.match(claim):
        raise ValueError("a tenant claim must be a hex MAC and an id-shaped company id")
    return f"SET LOCAL {TENANT_SETTING} = '{claim}'"


@lru_cache
def tenant_signer() -> TenantSigner:
    return TenantSigner(get_admin_engine())


def _begin_service_transaction(connection: sa.Connection) -> None:
    """Prove the tenant to row-level security and apply planner settings, at BEGIN.

    Two round trips when a company is in scope (the claim is bound to the transaction's
    start, which the server tells us first), one with planner settings only, none otherwise.
    """
    company_id = _current_company.get()
    extra = _local_settings.get()
    names, values = [name for name, _ in extra], [value for _, value in extra]
    if company_id:
        facts = connection.execute(_TRANSACTION_FACTS, {"names": names, "values": values}).one()
        claim = tenant_signer().claim(company_id, int(facts.pid), int(facts.started))
        if get_settings().tenant_set_local:
            connection.exec_driver_sql(_set_local_claim(claim))
        else:
            connection.execute(_SET_CLAIM, {"claim": claim})
    elif extra:
        connection.execute(_PLANNER_ONLY, {"names": names, "values": values})


def _begin_owner_transaction(connection: sa.Connection) -> None:
    """The owner sees every company (its own policy); only planner settings apply."""
    extra = _local_settings.get()
    if extra:
        connection.execute(_PLANNER_ONLY, {"names": [n for n, _ in extra], "values": [v for _, v in extra]})


def _create_engine(url: str, *, statement_timeout_s: int = 0, owner: bool = False) -> Engine:
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
    event.listen(engine, "begin", _begin_owner_transaction if owner else _begin_service_transaction)
    return engine


@lru_cache
def get_engine() -> Engine:
    """The service's engine: connects as the row-level-security-bound role.

    Its statements are bounded by DB_STATEMENT_TIMEOUT_S (the owner's engine is not: it runs
    migrations and bulk loads)."""
    return _create_engine(app_database_url(), statement_timeout_s=get_settings().db_statement_timeout_s)


@lru_cache
def get_auth_engine() -> Engine:
    """Sign-in's engine (`ils_auth`): may call the functions that return password hashes, and
    nothing else. Request code never gets it, so SQL running there cannot read a hash."""
    return _create_engine(auth_database_url(), statement_timeout_s=get_settings().db_statement_timeout_s)


@lru_cache
def _replica_engine() -> Engine | None:
    """READ_DATABASE_URL's engine (the service role on a streaming replica), or None.

    The same begin hook as the primary's: the replica verifies the signed tenant claim with the
    key it replicated (ils_tenant_key), against its own backend pid and transaction start."""
    url = get_settings().read_database_url
    if not url:
        return None
    return _create_engine(_psycopg2_url(url), statement_timeout_s=get_settings().db_statement_timeout_s)


REPLICA_CHECK_S = 1.0  # how often (at most) a process probes the replica's health and lag


@dataclass(frozen=True)
class ReplicaStatus:
    reachable: bool
    serving_reads: bool  # False: reads go to the primary
    lag_s: float | None = None
    lag_bytes: int | None = None
    error: str | None = None


_replica_lock = threading.Lock()
_replica_seen: tuple[float, ReplicaStatus] | None = None


def _probe_replica(engine: Engine) -> ReplicaStatus:
    try:
        with engine.connect() as connection:
            replica = connection.execute(sa.text(
                "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS age")).one()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return ReplicaStatus(reachable=False, serving_reads=False, error=reason)
    if not replica.standby or replica.replayed is None:
        return ReplicaStatus(reachable=True, serving_reads=False, error="READ_DATABASE_URL is not a standby")
    with get_engine().connect() as connection:
        behind = int(connection.execute(sa.text(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:replayed AS pg_lsn))"),
            {"replayed": replica.replayed}).scalar() or 0)
    # Caught up: no lag, however old the last replayed transaction (an idle primary sends none).
    lag_s = 0.0 if behind <= 0 else max(0.0, float(replica.age or 0.0))
    limit = get_settings().read_max_lag_s
    error = None if lag_s <= limit else f"replay lag {lag_s:.1f} s is above READ_MAX_LAG_S ({limit:g} s)"
    return ReplicaStatus(reachable=True, serving_reads=error is None, lag_s=round(lag_s, 3),
                         lag_bytes=max(behind, 0), error=error)


def replica_status(max_age_s: float = REPLICA_CHECK_S) -> ReplicaStatus | None:
    """The read replica's health and lag, probed at most every `max_age_s`; None when none is set."""
    global _replica_seen
    engine = _replica_engine()
    if engine is None:
        return None
    seen = _replica_seen
    if seen is not None and time.monotonic() - seen[0] < max_age_s:
        return seen[1]
    with _replica_lock:
        seen = _replica_seen
        if seen is not None and time.monotonic() - seen[0] < max_age_s:
            return seen[1]
        status = _probe_replica(engine)
        _replica_seen = (time.monotonic(), status)
    if status.serving_reads != (seen[1].serving_reads if seen else True):
        logger.warning("read replica %s", "serving reads again" if status.serving_reads
                       else f"not serving reads, reading from the primary ({status.error})")
    metrics.REPLICA_LAG_SECONDS.set(status.lag_s if status.serving_reads and status.lag_s is not None else -1)
    return status


def forget_read_replica() -> None:
    """Drop the replica's engine and last probe (after READ_DATABASE_URL changes)."""
    global _replica_seen
    engine = _replica_engine() if _replica_engine.cache_info().currsize else None
    if engine is not None:
        engine.dispose()
    _replica_engine.cache_clear()
    _replica_seen = None


def read_engine() -> Engine:
    """Where search and chat retrieval read: the replica when it is set, reachable and caught up
    (READ_MAX_LAG_S), else the primary's service engine. Writes never come here."""
    status = replica_status()
    replica = _replica_engine()
    if status is not None and status.serving_reads and replica is not None:
        return replica
    return get_engine()


@lru_cache(maxsize=4)
def _admin_engine(url: str) -> Engine:
    return _create_engine(url, owner=True)


def get_admin_engine() -> Engine:
    """The owner's engine (bypasses row-level security): migrations, CLI, bootstrap only.

    Keyed by URL so code that repoints DATABASE_URL and clears `database_url` gets a new one.
    """
    return _admin_engine(database_url())


@lru_cache
def get_async_engine() -> AsyncEngine:
    """Only handed to LlamaIndex stores, which insist on having one; we use the sync path."""
    engine = create_async_engine(_async_url(app_database_url()), pool_pre_ping=True)
    event.listen(engine.sync_engine, "begin", _begin_service_transaction)
    return engine


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@lru_cache(maxsize=4)
def _admin_session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(_admin_engine(url), expire_on_commit=False)


def reset_engines() -> None:
    """Forget every cached URL, engine and session factory (after DATABASE_URL changes)."""
    global _replica_seen
    for cached in (database_url, _derive_role_url, get_engine, get_auth_engine, _admin_engine, get_async_engine,
                   session_factory, _admin_session_factory, tenant_signer, _replica_engine):
        cached.cache_clear()
    _replica_seen = None


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
        # column-level SELECT is enough: `users.password_hash` is write-only for this role (migration 0004)
        "has_any_column_privilege(current_user, c.oid, 'SELECT') "
        "AND has_table_privilege(current_user, c.oid, 'INSERT') "
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

"""Start-up checks: pgvector is installed, and the service role is fit to serve.

Each failure is one actionable ConfigurationError line, so `ils-rag serve` and
`ils-rag db upgrade` stop with a message rather than a traceback.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from core.db.engines import get_engine
from core.db.owner import get_admin_engine
from core.db.roles import APP_ROLE, refuse_unless_development
from core.errors import ConfigurationError
from core.settings import Settings, get_settings

logger = logging.getLogger(__name__)


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


def session_exposures(connection: sa.Connection) -> tuple[str, list[str]]:
    """What SQL running as this role could reach beyond its transaction (migration 0016 closes
    both where the migrating role may): objects that outlive it on a pooled connection, and
    the statement text of the role's other sessions, which serve other companies. Returns the
    role's name and what it could reach (empty: nothing)."""
    row = connection.execute(sa.text(
        "SELECT current_user AS role, has_database_privilege(current_user, current_database(), 'TEMPORARY') "
        "AS temp, current_setting('track_activities') = 'on' AS tracked")).one()
    found = []
    if row.temp:
        found.append("it may create temporary tables (revoke TEMPORARY on the database from PUBLIC)")
    if row.tracked:
        found.append("its sessions show their statements to each other in pg_stat_activity (as a superuser, "
                     "set track_activities off for the role)")
    return row.role, found


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
            role_name, exposures = session_exposures(connection)
    except (OperationalError, DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else str(exc)
        raise ConfigurationError(f"the service role cannot connect ({reason}); check APP_DATABASE_URL "
                                 "or run `ils-rag db upgrade` to create it.") from exc
    if broken:
        raise ConfigurationError(f"the service role is not usable: {'; '.join(broken)}.")
    for exposure in exposures:  # a managed server may not allow the fix: a warning, not a refusal
        logger.warning("the service role %s: %s; see SECURITY.md", role_name, exposure)
    if bypasses:
        refuse_unless_development(settings, (
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

"""The URLs the service role (`ils_app`) and the sign-in role (`ils_auth`) connect with.

Neither role is superuser nor BYPASSRLS, so the row-level security policies of migration
0002 apply to every query the service makes. On an external server without a configured
URL the service sets each role a password derived from the database's own tenant key,
so every process that holds DATABASE_URL (API replicas, `ils-rag worker`s on other machines)
derives the same one and none resets another's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from core.db.connections import driver_url
from core.db.owner import database_url, get_admin_engine
from core.errors import ConfigurationError, DatabaseUnavailable
from core.settings import Settings, get_settings
from core.sql_text import quoted_identifier

logger = logging.getLogger(__name__)

APP_ROLE = "ils_app"  # created by migration 0002
AUTH_ROLE = "ils_auth"  # created by migration 0004: reads password hashes, for sign-in only
_ROLE_SETTINGS = {APP_ROLE: "APP_DATABASE_URL", AUTH_ROLE: "AUTH_DATABASE_URL"}
_TENANT_KEY = sa.text("SELECT key FROM ils_tenant_key WHERE id = 1")


def role_password(tenant_key: bytes, role: str) -> str:
    """A service role's password on an external server, derived from the owner-only tenant key.

    A password kept per machine (the earlier DATA_DIR file) made every process that started with
    a different DATA_DIR reset the role's password under the others: a second API replica or a
    worker on another machine logged the first one out of the database. The tenant key lives in
    the database, readable by the owner only (migration 0004), so every process holding
    DATABASE_URL derives the same password, and the service roles, which cannot read the key,
    cannot derive each other's.
    """
    digest = hmac.new(tenant_key, f"ils-rag role password:{role}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def refuse_unless_development(settings: Settings, message: str) -> None:
    """A service role that bypasses row-level security stops start-up, except in development."""
    if settings.environment != "development":
        raise ConfigurationError(message)
    logger.warning("%s (allowed only because ENVIRONMENT=development)", message)


def _refuse_or_warn(settings: Settings, role: str, setting: str, reason: str) -> str:
    refuse_unless_development(settings, (
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


@lru_cache(maxsize=8)
def _derive_role_url(role: str, owner_url: str, configured: str | None) -> str:
    settings = get_settings()
    if configured:
        return driver_url(configured)
    setting = _ROLE_SETTINGS[role]
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
            key = connection.execute(_TENANT_KEY).scalar()
            if key is None:
                return _refuse_or_warn(settings, role, setting,
                                       "the database has no tenant key (run `ils-rag db upgrade`)")
            password = role_password(bytes(key), role)
            # psycopg2 quotes the parameter client-side; DDL takes no server-side parameters, so the
            # role name (one of the two above) is spelled in as a validated identifier.
            connection.exec_driver_sql(f"ALTER ROLE {quoted_identifier(role)} WITH LOGIN PASSWORD %(p)s",
                                       {"p": password})
            connection.commit()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
    return owner.set(username=role, password=password).render_as_string(hide_password=False)


def forget_role_urls() -> None:
    """Forget the derived role URLs (see core.db.engines.reset_engines)."""
    _derive_role_url.cache_clear()

"""Apply Alembic migrations programmatically (`ils-rag db upgrade`, and at server start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from core.db.checks import check_app_role
from core.db.owner import get_admin_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(revision: str = "head") -> None:
    """Migrate as the owner, then check that the service role is bound by row-level security."""
    command.upgrade(alembic_config(), revision)
    check_app_role()


def current_revision() -> str | None:
    with get_admin_engine().connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

"""Alembic environment: runs as the owner (DATABASE_URL or the embedded `postgres`), never
as the service's row-level-security-bound role."""

from alembic import context

from core.db.owner import get_admin_engine

with get_admin_engine().connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

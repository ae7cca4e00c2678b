"""Alembic environment: runs on the service's own engine (embedded or DATABASE_URL)."""

from alembic import context

from core.database import get_engine

with get_engine().connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

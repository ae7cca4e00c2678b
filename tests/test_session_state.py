"""What SQL running as the request role could reach beyond its own transaction: objects left on
a pooled connection for the next company's request, and other sessions' statements in flight
(migration 0016)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

MARKER = "in-flight-secret-of-company-b"


def test_the_request_role_cannot_create_temporary_objects(company) -> None:
    """A temporary table named like a real one would shadow it for the pooled connection's
    next requests, of any company."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    for statement in ("CREATE TEMP TABLE documents (id text)", "CREATE TEMP VIEW chunk_statements AS SELECT 1 AS x",
                      "CREATE TEMPORARY SEQUENCE s"):
        with (tenant(company.id), get_engine().connect() as connection,
              pytest.raises(DBAPIError, match="permission denied")):
            connection.execute(sa.text(statement))


def test_other_sessions_statements_are_not_readable(make_company) -> None:
    """Every request session is the same role; pg_stat_activity would show each the statement
    another company's request is running (its search text, the chunk text it inserts)."""
    from core.db.checks import session_exposures
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    a, b = make_company("Watcher A"), make_company("Victim B")
    engine = get_engine()
    with tenant(b.id), engine.connect() as victim:
        victim.execute(sa.text("SELECT :secret"), {"secret": MARKER})  # psycopg2 sends it spelled into the text
        with tenant(a.id), engine.connect() as watcher:
            rows = watcher.execute(sa.text(
                "SELECT pid, coalesce(query, '') AS query FROM pg_stat_activity WHERE pid <> pg_backend_pid()")).all()
            victim_pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            assert victim_pid in {row.pid for row in rows}  # the session is listed...
            assert not [row for row in rows if MARKER in row.query]  # ...its statement is not
            assert session_exposures(watcher)[1] == []
        victim.rollback()

"""The database wall holds even when the SQL is the attacker's.

Everything here runs as the request role, inside a transaction the service opened for
company A (so the tenant claim is A's, correctly signed), and tries what injected SQL would:
switch tenant by every means the role has, read every table and view it may read, call every
function it may execute, and write to company B's rows. None of it may return a row of B or
any password hash, and B's rows must come out unchanged. Each write is first run on A's own rows
in the same transaction, where it must work: the writes fail on B because of the wall, not
because they are invalid statements.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from core.settings import get_settings

PASSWORD = "correct horse battery"
ARGON2 = "$argon2"


@pytest.fixture
def a_and_b(make_company, make_user, embed_model):
    """Company A (the attacker's) and B (the victim), each with a user, a document, a chat."""
    from auth.sessions import login
    from indexing.documents import index_text
    from retrieval.chat import ChatService

    seeded = []
    for name in ("Wall A", "Wall B"):
        company = make_company(name)
        user, _ = make_user(company, "admin", PASSWORD)
        login(user.email, PASSWORD, settings=get_settings())
        index_text(company.id, f"{name}-notes", f"{name} keeps its secret price list: varifocals cost £999.",
                   settings=get_settings())
        ChatService(company.id, user.id, settings=get_settings()).ask("What do varifocals cost?")
        seeded.append((company, user))
    return seeded


def _comparable(value: object) -> str:
    """A column value as text that compares by content (bytea comes back as a memoryview)."""
    return bytes(value).hex() if isinstance(value, memoryview | bytes) else str(value)


def _snapshot(company_id: str) -> dict[str, list[tuple]]:
    """Every row of B in every table, read by the owner (who sees all companies)."""
    from core.db.checks import tenant_tables
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        snapshot = {}
        for table in [*tenant_tables(connection), "companies"]:
            column = "id" if table == "companies" else "company_id"
            rows = connection.execute(
                sa.select(sa.text("*")).select_from(sa.table(table)).where(sa.column(column) == company_id)
                .order_by(sa.text("1"))).all()
            snapshot[table] = [tuple(_comparable(value) for value in row) for row in rows]
        return snapshot


@contextmanager
def _as_request_of(company_id: str) -> Iterator[sa.Connection]:
    """A request role connection whose transaction carries company A's signed claim."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        connection.execute(sa.text("SELECT 1"))  # BEGIN: the claim is set here
        yield connection
        connection.rollback()


def _try(connection: sa.Connection, statement: str, **params: object) -> list[tuple] | None:
    """Run one statement in a savepoint; its rows, or None when the database refused it."""
    savepoint = connection.begin_nested()
    try:
        rows = [tuple(row) for row in connection.execute(sa.text(statement), params).all()] \
            if statement.lstrip().upper().startswith(("SELECT", "WITH", "TABLE")) else \
            (connection.execute(sa.text(statement), params) and [])
        savepoint.commit()
        return rows
    except DBAPIError:
        savepoint.rollback()
        return None


def _leaks(rows: list[tuple] | None, b_ids: set[str]) -> list[str]:
    found = []
    for row in rows or []:
        text = " ".join(map(str, row))
        if any(i in text for i in b_ids) or ARGON2 in text:
            found.append(text[:200])
    return found


def _b_visible(connection: sa.Connection, b_id: str) -> int:
    """B's rows this connection can see (a refused query, e.g. with row_security off, sees none)."""
    total = 0
    for table in ("documents", "data_chunks", "users", "conversations", "messages", "audit_log", "refresh_tokens"):
        rows = _try(connection, f"SELECT count(*) FROM {table} WHERE company_id = :b", b=b_id)
        total += int(rows[0][0]) if rows else 0
    companies = _try(connection, "SELECT count(*) FROM companies WHERE id = :b", b=b_id)
    return total + (int(companies[0][0]) if companies else 0)


def test_tenant_switching_by_every_means_the_role_has_fails(a_and_b) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    (a, _), (b, _) = a_and_b
    attempts = [
        ("SELECT set_config('app.company_id', :b, true)", {}),  # the old, trusted setting
        ("SELECT set_config('app.company_id', :b, false)", {}),
        ("SELECT set_config('ils.tenant', :forged, true)", {}),  # a claim without the key
        ("SELECT set_config('ils.tenant', :forged, false)", {}),
        ("SELECT set_config('ils.tenant', :a_claim_for_b, true)", {}),  # A's MAC with B's id
        ("SET ROLE ils_auth", None), ("SET ROLE postgres", None), ("RESET ROLE", {}),
        ("SET SESSION AUTHORIZATION postgres", None), ("SET SESSION AUTHORIZATION DEFAULT", {}),
        ("SET row_security = off", {}),  # with FORCE RLS this errors or changes nothing
    ]
    with _as_request_of(a.id) as connection:
        own_claim = connection.execute(sa.text("SELECT current_setting('ils.tenant')")).scalar()
        params = {"b": b.id, "forged": "0" * 64 + ":" + b.id, "a_claim_for_b": own_claim.split(":", 1)[0] + ":" + b.id}
        for statement, expected in attempts:
            result = _try(connection, statement, **params)
            if expected is None:
                assert result is None, f"{statement} should have been refused"
            assert _b_visible(connection, b.id) == 0, statement
            assert connection.execute(sa.text("SELECT ils_current_company()")).scalar() in (a.id, None)

    # A claim observed on another connection (pg_stat_activity shows the role's other queries).
    engine = get_engine()
    with tenant(b.id), engine.connect() as victim:
        victim.execute(sa.text("SELECT 1"))
        b_claim = victim.execute(sa.text("SELECT current_setting('ils.tenant')")).scalar()
        with _as_request_of(a.id) as connection:
            seen = connection.execute(sa.text("SELECT query FROM pg_stat_activity WHERE usename = current_user")).all()
            assert seen  # the role can see its other sessions' statements...
            for claim in {b_claim, *re.findall(r"[0-9a-f]{64}:[\w-]+", " ".join(r[0] or "" for r in seen))}:
                for scope in ("true", "false"):
                    _try(connection, f"SELECT set_config('ils.tenant', :c, {scope})", c=claim)
                    assert _b_visible(connection, b.id) == 0  # ...but a claim works only where it was signed
        victim.rollback()


def test_every_table_view_and_function_the_role_can_reach_leaks_nothing(a_and_b) -> None:
    (a, _), (b, b_user) = a_and_b
    b_ids = {b.id, b_user.id}
    with _as_request_of(a.id) as connection:
        relations = connection.execute(sa.text(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname = 'public' "
            "AND has_any_column_privilege(current_user, c.oid, 'SELECT')")).all()
        assert {"documents", "data_chunks", "users", "companies"} <= {r.relname for r in relations}
        for schema, relation in relations:
            columns = connection.execute(sa.text(
                "SELECT string_agg(quote_ident(attname), ', ') FROM pg_attribute "
                "WHERE attrelid = to_regclass(:r) AND attnum > 0 AND NOT attisdropped "
                "AND has_column_privilege(current_user, attrelid, attnum, 'SELECT')"),
                {"r": f"{schema}.{relation}"}).scalar()
            rows = _try(connection, f"SELECT {columns} FROM {schema}.{relation}")
            assert _leaks(rows, b_ids) == [], relation
        assert _try(connection, "SELECT password_hash FROM users") is None  # the column is write-only
        assert _try(connection, "SELECT * FROM ils_tenant_key") is None

        functions = connection.execute(sa.text(
            "SELECT p.oid::regprocedure::text AS signature, p.proname, p.pronargs, "
            "coalesce(array_to_string(p.proargtypes::regtype[], ','), '') AS args, p.prosecdef "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND p.prokind = 'f' AND has_function_privilege(current_user, p.oid, 'EXECUTE')"
        )).all()
        definers = {f.proname for f in functions if f.prosecdef}
        # nothing else runs with the owner's rights; ils_bm25_postings returns only the verified tenant's
        # chunks (tests/test_bm25.py::test_bm25_postings_return_only_the_verified_tenants_chunks)
        assert definers <= {"ils_current_company", "ils_bm25_postings"}, definers
        called = 0
        for function in functions:
            kinds = function.args.split(",") if function.args else []
            if any(kind not in ("text", "character varying") for kind in kinds):
                continue  # pgvector's operators and type functions: no text in, no rows out
            for value in (b.id, b_user.id, "%"):
                arguments = ", ".join(f"CAST(:v AS {kind})" for kind in kinds)
                rows = _try(connection, f"SELECT {function.proname}({arguments})", v=value)
                assert _leaks(rows, b_ids) == [], function.signature
                called += 1
        assert called > 0


# Writes injected SQL would try, each a valid statement for whichever company `:target` names
# (`:target_user` / `:target_conversation` are that company's): run for A, they change A's rows
# (the positive control); run for B, they change nothing. `:a` is always the attacker's company.
WRITES = [
    "UPDATE documents SET filename = 'pwned', category = 'pwned' WHERE company_id = :target",
    "UPDATE documents SET company_id = :a WHERE company_id = :target",
    "DELETE FROM documents WHERE company_id = :target",
    "INSERT INTO documents (company_id, id, source_key, filename, status) "
    "VALUES (:target, :new_id, 'wall-probe.txt', 'wall-probe.txt', 'queued')",
    "DELETE FROM data_chunks WHERE company_id = :target",
    "UPDATE data_chunks SET metadata_ = jsonb_set(metadata_, '{company_id}', to_jsonb(CAST(:a AS text))) "
    "WHERE company_id = :target",
    "UPDATE users SET role = 'admin', password_hash = 'x' WHERE id = :target_user",
    "DELETE FROM users WHERE company_id = :target",
    "INSERT INTO conversations (company_id, id, user_id, title) VALUES (:target, :new_id, :target_user, 't')",
    "UPDATE conversations SET title = 'pwned' WHERE company_id = :target",
    "INSERT INTO messages (company_id, conversation_id, role, content) "
    "VALUES (:target, :target_conversation, 'assistant', 'forged')",
    "DELETE FROM messages WHERE company_id = :target",
    "UPDATE refresh_tokens SET revoked_at = now() WHERE company_id = :target",
    "INSERT INTO audit_log (company_id, action) VALUES (:target, 'forged')",
    "DELETE FROM audit_log WHERE company_id = :target",
]
# Refused for every company, A's own row included: the request role has no write privilege here.
NO_PRIVILEGE = ["UPDATE companies SET name = 'pwned' WHERE id = :target"]


def _parameters(company_id: str, user_id: str, a_id: str) -> dict[str, str]:
    """The statements' parameters aimed at `company_id` (its conversation read by the owner)."""
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        conversation = connection.execute(sa.text("SELECT id FROM conversations WHERE company_id = :c LIMIT 1"),
                                          {"c": company_id}).scalar_one()
    return {"target": company_id, "target_user": user_id, "target_conversation": conversation, "a": a_id,
            "new_id": f"wall-{uuid.uuid4().hex[:12]}"}


def _rows_written(connection: sa.Connection, statement: str, params: dict[str, str], *,
                  keep: bool) -> int | None:
    """Run one write in a savepoint: the rows it changed, or None when the database refused it.
    `keep=False` rolls the savepoint back even when it worked (a control must not change A)."""
    savepoint = connection.begin_nested()
    try:
        count = connection.execute(sa.text(statement), params).rowcount
    except DBAPIError:
        savepoint.rollback()
        return None
    if keep:
        savepoint.commit()
    else:
        savepoint.rollback()
    return count


def test_writes_to_another_company_change_nothing(a_and_b) -> None:
    from core.db.roles import APP_ROLE

    (a, a_user), (b, b_user) = a_and_b
    before = _snapshot(b.id)
    own, other = _parameters(a.id, a_user.id, a.id), _parameters(b.id, b_user.id, a.id)
    with _as_request_of(a.id) as connection:
        assert connection.execute(sa.text("SELECT current_user")).scalar() == APP_ROLE
        # The positive control: in this very transaction, as this role, each write works on A's rows,
        # so what stops it on B's is the wall, not an invalid statement.
        for statement in WRITES:
            assert _rows_written(connection, statement, own, keep=False), f"control failed: {statement}"
        for statement in NO_PRIVILEGE:
            assert _rows_written(connection, statement, own, keep=False) is None, statement
        for statement in [*WRITES, *NO_PRIVILEGE]:
            assert _rows_written(connection, statement, other, keep=True) in (None, 0), statement
        for statement in [*WRITES, *NO_PRIVILEGE]:  # and again after trying to switch tenant first
            _try(connection, "SELECT set_config('app.company_id', :b, true)", b=b.id)
            assert _rows_written(connection, statement, other, keep=True) in (None, 0), statement
        connection.commit()  # whatever went through would now be permanent
    assert _snapshot(b.id) == before

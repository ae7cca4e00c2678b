"""Row-level security, the second wall: the service's role, forced policies on every tenant
table, zero rows without (or with a wrong) tenant, no cross-tenant writes, no tenant carried
over on pooled connections, and the start-up check that refuses a role that bypasses it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.settings import get_settings

EXPECTED_TENANT_TABLES = {"users", "refresh_tokens", "documents", "data_chunks", "data_docstore", "conversations",
                          "messages", "audit_log"}
PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class Seeded:
    company_id: str
    user_id: str
    document_id: str
    conversation_id: str


def _seed(company, make_user) -> Seeded:
    """Rows in every tenant table, written by the real code paths (login, ingestion, chat)."""
    from auth.sessions import login
    from indexing.documents import index_text
    from retrieval.chat import ChatService

    user, _ = make_user(company, "admin", PASSWORD)
    login(user.email, PASSWORD, settings=get_settings())  # refresh_tokens + audit_log
    document = index_text(company.id, "rls-notes", "Varifocal lenses are adjusted free for life at this practice.",
                          settings=get_settings())
    result = ChatService(company.id, user.id,
                         settings=get_settings()).ask("Are varifocal adjustments free?")  # conversations + messages
    return Seeded(company.id, user.id, document.id, result.conversation_id)


@pytest.fixture
def two_companies(make_company, make_user, embed_model) -> tuple[Seeded, Seeded]:
    return _seed(make_company("RLS A"), make_user), _seed(make_company("RLS B"), make_user)


def _count(engine: sa.Engine, table: str, where: str = "true", **params: object) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar())


# --- the role and the policies ---------------------------------------------------------------


def test_service_connects_as_a_role_bound_by_rls(database) -> None:
    from core.db.checks import app_role_problems
    from core.db.engines import get_engine
    from core.db.owner import get_admin_engine
    from core.db.roles import APP_ROLE

    with get_engine().connect() as connection:
        role = connection.execute(sa.text(
            "SELECT current_user AS name, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
            "FROM pg_roles WHERE rolname = current_user")).one()
        assert role.name == APP_ROLE
        assert not (role.rolsuper or role.rolbypassrls or role.rolcreaterole or role.rolcreatedb)
        assert app_role_problems(connection) == ([], [])
    with get_admin_engine().connect() as connection:  # the control: the owner is what the checks flag
        bypasses, broken = app_role_problems(connection)
        assert bypasses and not broken


def test_every_tenant_table_has_forced_rls_and_a_tenant_policy(database) -> None:
    from core.db.checks import tenant_tables
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        tables = set(tenant_tables(connection))
        assert tables >= EXPECTED_TENANT_TABLES  # later tenant tables are discovered, and checked just the same
        flags = connection.execute(sa.text(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relname = ANY(:t)"), {"t": sorted(tables)}).all()
        assert {f.relname for f in flags if f.relrowsecurity and f.relforcerowsecurity} == tables
        policies = connection.execute(sa.text(
            "SELECT tablename, qual, with_check, roles FROM pg_policies "
            "WHERE schemaname = 'public' AND policyname = 'tenant_isolation' AND tablename <> 'companies'")).all()
        assert {p.tablename for p in policies} == tables
        for policy in policies:  # the verified tenant (migration 0004), never a setting the role may write
            assert "ils_current_company()" in policy.qual and "current_setting" not in policy.qual
            assert "ils_current_company()" in policy.with_check and "current_setting" not in policy.with_check


def test_service_role_cannot_write_companies_or_read_migrations(database) -> None:
    from core.db.engines import get_engine

    with get_engine().connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM companies")).scalar() >= 0  # read: allowed
    for statement in ("INSERT INTO companies (id, slug, name) VALUES ('x', 'x-co', 'X')",
                      "UPDATE companies SET name = 'hijacked'", "DELETE FROM companies",
                      "SELECT * FROM alembic_version", "DROP TABLE documents",
                      "ALTER TABLE documents DISABLE ROW LEVEL SECURITY",
                      "CREATE POLICY open_door ON documents USING (true)"):
        with get_engine().connect() as connection, pytest.raises(DBAPIError) as refused:
            connection.execute(sa.text(statement))
        assert refused.value.orig.pgcode == "42501", statement  # insufficient privilege / must be owner


# --- reads and writes without, or with a wrong, tenant ---------------------------------------


def test_no_or_wrong_tenant_sees_zero_rows(two_companies) -> None:
    from core.db.engines import get_engine
    from core.db.owner import get_admin_engine
    from core.db.tenant_scope import tenant

    a, b = two_companies
    for table in sorted(EXPECTED_TENANT_TABLES):
        assert _count(get_admin_engine(), table, "company_id = :c", c=a.company_id) > 0, table  # really there
        assert _count(get_engine(), table) == 0, table  # no tenant: nothing, not even a count
        for wrong in (b.company_id, str(uuid.uuid4()), "", f"{a.company_id}' OR '1'='1"):
            with tenant(wrong):
                assert _count(get_engine(), table, "company_id = :c", c=a.company_id) == 0, (table, wrong)
        with tenant(a.company_id):
            assert _count(get_engine(), table) == _count(get_admin_engine(), table, "company_id = :c",
                                                         c=a.company_id), table
            assert _count(get_engine(), table, "company_id <> :c", c=a.company_id) == 0, table


def test_wrong_tenant_cannot_update_or_delete(two_companies) -> None:
    from core.db.engines import get_engine
    from core.db.owner import get_admin_engine
    from core.db.tenant_scope import tenant

    a, b = two_companies
    before = {t: _count(get_admin_engine(), t, "company_id = :c", c=a.company_id) for t in EXPECTED_TENANT_TABLES}
    with tenant(b.company_id), get_engine().connect() as connection:
        for table in sorted(EXPECTED_TENANT_TABLES):
            if table not in ("data_chunks", "data_docstore"):  # generated company_id: touch another column
                updated = connection.execute(sa.text(f"UPDATE {table} SET company_id = company_id "
                                                     "WHERE company_id = :c"), {"c": a.company_id})
                assert updated.rowcount == 0, table
            deleted = connection.execute(sa.text(f"DELETE FROM {table} WHERE company_id = :c"), {"c": a.company_id})
            assert deleted.rowcount == 0, table
        connection.commit()
    after = {t: _count(get_admin_engine(), t, "company_id = :c", c=a.company_id) for t in EXPECTED_TENANT_TABLES}
    assert after == before


def test_planner_statistics_do_not_leak_other_companies_values(two_companies) -> None:
    """pg_stats holds most-common values (file names, emails...); it hides RLS tables from the service."""
    from core.db.engines import get_engine
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        connection.execute(sa.text("ANALYZE documents, users"))
        connection.commit()
        assert connection.execute(sa.text("SELECT count(*) FROM pg_stats WHERE tablename = 'documents'")).scalar()
    with get_engine().connect() as connection:
        assert connection.execute(sa.text(
            "SELECT count(*) FROM pg_stats WHERE tablename = ANY(:t)"), {"t": sorted(EXPECTED_TENANT_TABLES)}
        ).scalar() == 0


def _foreign_inserts(a: Seeded) -> dict[str, tuple[str, dict[str, object]]]:
    """One valid INSERT per tenant table of a row belonging to company `a`."""
    vector = "[" + ",".join(["0.01"] * 384) + "]"
    return {
        "users": ("INSERT INTO users (company_id, id, email, password_hash, role) "
                  "VALUES (:c, :i, 'planted@example.com', 'x', 'admin')", {}),
        "refresh_tokens": ("INSERT INTO refresh_tokens (company_id, id, family_id, user_id, token_hash, expires_at) "
                           "VALUES (:c, :i, :i, :u, 'h', now() + interval '1 day')", {"u": a.user_id}),
        "documents": ("INSERT INTO documents (company_id, id, source_key, filename) "
                      "VALUES (:c, :i, :i, 'planted.txt')", {}),
        "data_chunks": ("INSERT INTO data_chunks (text, metadata_, node_id, embedding) "
                        "VALUES ('planted', jsonb_build_object('company_id', CAST(:c AS text)), :i, "
                        "CAST(:v AS vector))", {"v": vector}),
        "data_docstore": ("INSERT INTO data_docstore (key, namespace, value) "
                          "VALUES (:i, :c || '/docstore/data', '{}'::jsonb)", {}),
        "conversations": ("INSERT INTO conversations (company_id, id, user_id) VALUES (:c, :i, :u)",
                          {"u": a.user_id}),
        "messages": ("INSERT INTO messages (company_id, conversation_id, role, content) "
                     "VALUES (:c, :conv, 'user', 'planted')", {"conv": a.conversation_id}),
        "audit_log": ("INSERT INTO audit_log (company_id, action) VALUES (:c, 'planted')", {}),
    }


@pytest.mark.parametrize("table", sorted(EXPECTED_TENANT_TABLES))
def test_cannot_insert_another_companys_rows(two_companies, table: str) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    a, b = two_companies
    statement, extra = _foreign_inserts(a)[table]
    params = {"c": a.company_id, "i": str(uuid.uuid4()), **extra}
    for scope in (b.company_id, None):  # another company's tenant, and no tenant at all
        with tenant(scope) if scope else _no_tenant(), get_engine().connect() as connection:
            with pytest.raises(DBAPIError) as refused:
                connection.execute(sa.text(statement), params)
            assert refused.value.orig.pgcode == "42501"
            assert "row-level security" in str(refused.value.orig)
    # the control: the very same row is accepted in its own company (then rolled back)
    with tenant(a.company_id), get_engine().connect() as connection:
        assert connection.execute(sa.text(statement), params).rowcount == 1
        connection.rollback()


def test_rows_cannot_be_moved_to_another_company(two_companies) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    a, b = two_companies
    with tenant(a.company_id), get_engine().connect() as connection:
        for statement in ("UPDATE documents SET company_id = :b WHERE id = :d",
                          "UPDATE data_chunks SET metadata_ = jsonb_set(metadata_, '{company_id}', "
                          "to_jsonb(CAST(:b AS text))) WHERE metadata_->>'source_document_id' = :d"):
            with pytest.raises(DBAPIError) as refused:
                connection.execute(sa.text(statement), {"b": b.company_id, "d": a.document_id})
            assert refused.value.orig.pgcode == "42501"
            connection.rollback()


def _no_tenant():
    from contextlib import nullcontext

    return nullcontext()


# --- pooled connections ----------------------------------------------------------------------


def test_pooled_connection_never_carries_a_tenant(two_companies) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    a, _ = two_companies
    engine = get_engine()
    # One Connection object, so one DBAPI connection: tenant A's transaction, then one without.
    with engine.connect() as connection:
        with tenant(a.company_id):
            connection.execute(sa.text("SELECT 1")).scalar()  # the transaction begins inside the scope
            assert connection.execute(sa.text("SELECT count(*) FROM documents")).scalar() > 0
            connection.commit()
        assert connection.execute(sa.text("SELECT count(*) FROM documents")).scalar() == 0
        assert connection.execute(sa.text("SELECT ils_current_company()")).scalar() is None
        # Even a claim copied from the earlier transaction and set for the whole session (a bug
        # elsewhere, or injected SQL) is worthless: it was bound to that transaction's start.
        with tenant(a.company_id):
            claim = connection.execute(sa.text("SELECT current_setting('ils.tenant')")).scalar()
            connection.commit()
        connection.execute(sa.text("SELECT set_config('ils.tenant', :c, false)"), {"c": claim})
        connection.commit()
        assert connection.execute(sa.text("SELECT count(*) FROM documents")).scalar() == 0
        connection.execute(sa.text("RESET ils.tenant"))
        connection.commit()

    # Through the pool: the backend that served tenant A, checked out again later, sees nothing.
    with tenant(a.company_id), engine.connect() as connection:
        served = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert connection.execute(sa.text("SELECT count(*) FROM data_chunks")).scalar() > 0
    reused = False
    for _ in range(engine.pool.size() + engine.pool.overflow() + 2):
        with engine.connect() as connection:
            if connection.execute(sa.text("SELECT pg_backend_pid()")).scalar() == served:
                reused = True
                assert connection.execute(sa.text("SELECT count(*) FROM data_chunks")).scalar() == 0
                assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar() == 0
                break
    assert reused, "the pool never handed back the connection tenant A used"


def test_tenant_scope_is_restored_after_errors_and_nesting(database) -> None:
    from core.db.tenant_scope import current_company, tenant

    assert current_company() is None
    with tenant("a"):
        with tenant("b"):
            assert current_company() == "b"
        assert current_company() == "a"
        with pytest.raises(RuntimeError), tenant("c"):
            raise RuntimeError("boom")
        assert current_company() == "a"
    assert current_company() is None


def test_async_engine_gets_the_tenant_too(two_companies) -> None:
    """LlamaIndex stores hold an async engine as well; the same begin hook scopes it."""
    from core.db.engines import get_async_engine
    from core.db.tenant_scope import tenant

    a, _ = two_companies

    async def count() -> int:
        async with get_async_engine().connect() as connection:
            return int((await connection.execute(sa.text("SELECT count(*) FROM data_chunks"))).scalar())

    async def run() -> tuple[int, int]:
        with tenant(a.company_id):
            scoped = await count()
        return scoped, await count()

    scoped, unscoped = asyncio.run(run())
    asyncio.run(get_async_engine().dispose())  # its pool belongs to this event loop
    assert scoped > 0 and unscoped == 0


def test_login_lookup_goes_through_the_narrow_definer_function_on_its_own_role(two_companies) -> None:
    from core.db.engines import get_auth_engine, get_engine
    from core.db.roles import AUTH_ROLE

    a, _ = two_companies
    with get_engine().connect() as connection:
        email = connection.execute(sa.text("SELECT email FROM users WHERE id = :u"), {"u": a.user_id}).scalar()
        assert email is None  # the table itself is closed without a tenant
        for call in ("SELECT * FROM ils_login_candidates('nobody@example.com', NULL)",
                     "SELECT ils_password_hash('x', 'y')"):
            with pytest.raises(DBAPIError, match="permission denied"):  # the request role may not call it
                connection.execute(sa.text(call))
            connection.rollback()
        security = connection.execute(sa.text(
            "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'ils_login_candidates'")).one()
        assert security.prosecdef and any(c.startswith("search_path=") for c in security.proconfig)
    with get_auth_engine().connect() as connection:  # sign-in's own role
        assert connection.execute(sa.text("SELECT current_user")).scalar() == AUTH_ROLE
        assert connection.execute(sa.text(
            "SELECT * FROM ils_login_candidates((SELECT 'nobody@example.com'), NULL)")).all() == []


# --- the start-up check ----------------------------------------------------------------------


@pytest.fixture
def role_engine(database) -> Iterator:
    """`role_engine(attributes, grants)`: an engine logged in as a throwaway role."""
    from core.db.owner import get_admin_engine

    created: list[tuple[str, sa.Engine]] = []

    def _make(attributes: str = "", grant: str | None = None) -> sa.Engine:
        name = f"ils_test_{uuid.uuid4().hex[:8]}"
        with get_admin_engine().connect() as connection:
            connection.execute(sa.text(f"CREATE ROLE {name} LOGIN {attributes}"))
            if grant:
                connection.execute(sa.text(f"GRANT {grant} TO {name}"))
            connection.commit()
        engine = sa.create_engine(make_url(database).set(username=name), poolclass=sa.pool.NullPool)
        created.append((name, engine))
        return engine

    yield _make
    with get_admin_engine().connect() as connection:
        for name, engine in created:
            engine.dispose()
            connection.execute(sa.text(f"DROP OWNED BY {name}"))
            connection.execute(sa.text(f"DROP ROLE {name}"))
        connection.commit()


@pytest.mark.parametrize(("attributes", "grant", "expected"), [
    ("BYPASSRLS", "ils_app", "has BYPASSRLS"),
    ("", "postgres", "owns documents"),  # a member of the tables' owner gets the owner's all-rows policy
])
def test_startup_refuses_a_role_that_bypasses_rls(role_engine, attributes: str, grant: str, expected: str) -> None:
    from core.db.checks import check_app_role
    from core.db.owner import get_admin_engine
    from core.errors import ConfigurationError
    from core.settings import Settings

    engine = role_engine(attributes, grant)
    with pytest.raises(ConfigurationError) as refused:
        check_app_role(Settings(environment="production"), engine)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    check_app_role(Settings(environment="development"), engine)  # a warning only, on a laptop
    with pytest.raises(ConfigurationError, match="is a superuser"):
        check_app_role(Settings(environment="test"), get_admin_engine())


def test_startup_refuses_a_role_without_privileges_or_that_cannot_connect(role_engine, database) -> None:
    from core.db.checks import check_app_role
    from core.errors import ConfigurationError
    from core.settings import Settings

    for settings in (Settings(environment="production"), Settings(environment="development")):
        with pytest.raises(ConfigurationError, match="lacks SELECT/INSERT/UPDATE/DELETE") as refused:
            check_app_role(settings, role_engine())
        assert "\n" not in str(refused.value)
    missing = sa.create_engine(make_url(database).set(username="no_such_role_here"), poolclass=sa.pool.NullPool)
    with pytest.raises(ConfigurationError, match="cannot connect") as refused:
        check_app_role(Settings(environment="production"), missing)
    assert "\n" not in str(refused.value)
    check_app_role(Settings(environment="production"))  # the real service role passes

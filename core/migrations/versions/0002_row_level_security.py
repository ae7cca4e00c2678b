"""Row-level security: the second wall between tenants.

The service connects as `ils_app` (no SUPERUSER, no BYPASSRLS, owns nothing); migrations,
the CLI and bootstrap keep running as the owner (DATABASE_URL's role). Every tenant table
gets ENABLE + FORCE ROW LEVEL SECURITY and a policy comparing `company_id` with the
transaction-local setting `app.company_id` (core.db.tenant_scope sets it from `tenant()` on every
transaction begin). Unset or wrong setting: zero rows, and inserts of another company's
rows fail. The owner keeps an explicit all-rows policy (it is the operator's role, and a
non-superuser owner would otherwise be locked out of cross-tenant maintenance by FORCE).

Login must look a user up by email before the company is known: `ils_login_candidates`
is a SECURITY DEFINER function (runs as the owner) returning only what sign-in needs.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
TENANT_TABLES = ("users", "refresh_tokens", "documents", "data_chunks", "data_docstore", "conversations",
                 "messages", "audit_log")
TENANT_EXPR = "company_id = current_setting('app.company_id', true)"


def upgrade() -> None:
    # Roles are cluster-wide: create it once; an owner without CREATEROLE gets a notice and
    # core.db.checks refuses to run the service on a role that bypasses RLS (outside development).
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role {APP_ROLE}: set APP_DATABASE_URL to a non-superuser role';
        END
        $$
    """)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT USAGE ON SCHEMA public TO {APP_ROLE}';
                EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}';
                EXECUTE 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}';
                -- companies are created and changed by the operator (CLI, bootstrap), read by the service
                EXECUTE 'REVOKE INSERT, UPDATE, DELETE ON companies FROM {APP_ROLE}';
                EXECUTE 'REVOKE ALL ON alembic_version FROM {APP_ROLE}';
                -- tables of later migrations (created by this same owner) are granted too
                EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA public '
                        'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}';
                EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}';
            END IF;
        END
        $$
    """)
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT_EXPR}) WITH CHECK ({TENANT_EXPR})")
        op.execute(f"CREATE POLICY owner_maintenance ON {table} TO CURRENT_USER USING (true) WITH CHECK (true)")

    op.execute("""
        CREATE FUNCTION ils_login_candidates(p_email text, p_company_slug text)
        RETURNS TABLE (company_id varchar, company_slug varchar, company_active boolean, user_id varchar,
                       email varchar, role varchar, is_active boolean, password_hash varchar)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            SELECT c.id, c.slug, c.is_active, u.id, u.email, u.role, u.is_active, u.password_hash
            FROM users u JOIN companies c ON c.id = u.company_id
            WHERE lower(u.email) = lower(p_email)
              AND (p_company_slug IS NULL OR c.slug = lower(p_company_slug))
            ORDER BY c.slug
        $$
    """)
    op.execute("REVOKE ALL ON FUNCTION ils_login_candidates(text, text) FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_login_candidates(text, text) TO {APP_ROLE}';
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ils_login_candidates(text, text)")
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS owner_maintenance ON {table}")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

"""A tenant context the request role cannot forge, and password hashes it cannot read.

Before this revision the row-level security policies trusted `app.company_id`, a setting
the service role may set itself: SQL that ran as that role (an injection, a bug) could
switch to another company with one `set_config`. Now:

- The tenant arrives as `ils.tenant = '<mac>:<company id>'`, where the MAC is an
  HMAC-SHA256, under a key only the owner can read (`ils_tenant_key`), of the company id,
  the backend's process id and the transaction's start time. `ils_current_company()`
  (SECURITY DEFINER, owned by the owner) verifies it and returns the company, or NULL. A
  value copied from another connection or another transaction (say, read from
  `pg_stat_activity`) fails the check, because its pid or timestamp differs; forging one
  needs the key. Every tenant table's policy compares `company_id` with
  `(SELECT ils_current_company())`: the sub-select runs once per statement, not per row.
- PostgreSQL here may have no pgcrypto, so the HMAC is spelled out with the built-in
  `sha256()` (RFC 2104: the key padded to SHA-256's 64-byte block, XOR-ed with the inner
  and outer pads, which the table stores precomputed). Python's `hmac` gives the same bytes.
- Password hashes leave the service role: it keeps INSERT/UPDATE on `users.password_hash`
  (creating users, changing passwords) but loses SELECT on that column, and
  `ils_login_candidates` / the new `ils_password_hash` run only for `ils_auth`, a separate
  login role the sign-in code connects as and request code never uses.
- `companies` (the operator's directory) gets the same wall for reads: the request role sees
  its own company's row only.

Revision ID: 0004
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
AUTH_ROLE = "ils_auth"
OLD_TENANT_EXPR = "company_id = current_setting('app.company_id', true)"
TENANT_EXPR = "company_id = (SELECT ils_current_company())"
BLOCK = 64  # SHA-256's block size in bytes


def _pads(key: bytes) -> tuple[bytes, bytes]:
    padded = key.ljust(BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _tenant_tables() -> list[str]:
    rows = op.get_bind().execute(sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND a.attname = 'company_id' AND NOT a.attisdropped ORDER BY c.relname"))
    return [row[0] for row in rows]


def _user_columns() -> list[str]:
    rows = op.get_bind().execute(sa.text(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'public.users'::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attname <> 'password_hash' ORDER BY attnum"))
    return [row[0] for row in rows]


def _quoted(name: str) -> str:
    """A catalog name as a SQL identifier (names come from pg_catalog, never from input)."""
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("""
        CREATE TABLE ils_tenant_key (
            id smallint PRIMARY KEY CHECK (id = 1),
            key bytea NOT NULL,
            inner_pad bytea NOT NULL,
            outer_pad bytea NOT NULL
        )
    """)
    op.execute("REVOKE ALL ON ils_tenant_key FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'REVOKE ALL ON ils_tenant_key FROM {APP_ROLE}';
            END IF;
        END
        $$
    """)
    key = secrets.token_bytes(32)
    inner, outer = _pads(key)
    bind.execute(sa.text("INSERT INTO ils_tenant_key (id, key, inner_pad, outer_pad) VALUES (1, :k, :i, :o)"),
                 {"k": key, "i": inner, "o": outer})

    # STABLE: one result per statement; plpgsql so a malformed value is NULL, not an error.
    op.execute("""
        CREATE FUNCTION ils_current_company() RETURNS text
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
        DECLARE
            claim text := current_setting('ils.tenant', true);
            sep int;
            company text;
            message bytea;
            expected text;
        BEGIN
            IF claim IS NULL OR length(claim) < 66 THEN
                RETURN NULL;
            END IF;
            sep := position(':' IN claim);
            IF sep <> 65 THEN
                RETURN NULL;
            END IF;
            company := substr(claim, 66);
            message := convert_to(company || ':' || pg_backend_pid()::text || ':'
                                  || (extract(epoch FROM transaction_timestamp()) * 1000000)::bigint::text, 'UTF8');
            SELECT encode(sha256(k.outer_pad || sha256(k.inner_pad || message)), 'hex') INTO expected
            FROM ils_tenant_key k WHERE k.id = 1;
            IF expected IS NULL OR expected <> substr(claim, 1, 64) THEN
                RETURN NULL;
            END IF;
            RETURN company;
        END
        $$
    """)
    op.execute("REVOKE ALL ON FUNCTION ils_current_company() FROM PUBLIC")

    for table in _tenant_tables():
        name = _quoted(table)
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {name}")
        op.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {name} USING ({TENANT_EXPR}) WITH CHECK ({TENANT_EXPR})")

    # The company directory: the request role reads only its own company's row.
    op.execute("ALTER TABLE companies ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE companies FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY tenant_isolation ON companies FOR SELECT USING (id = (SELECT ils_current_company()))")
    op.execute("CREATE POLICY owner_maintenance ON companies TO CURRENT_USER USING (true) WITH CHECK (true)")

    op.execute("""
        CREATE FUNCTION ils_password_hash(p_company_id text, p_user_id text) RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            SELECT u.password_hash FROM users u WHERE u.company_id = p_company_id AND u.id = p_user_id
        $$
    """)
    op.execute("REVOKE ALL ON FUNCTION ils_password_hash(text, text) FROM PUBLIC")
    readable = ", ".join(_quoted(c) for c in _user_columns())
    # Roles are cluster-wide: created once; an owner without CREATEROLE gets a notice, and
    # core.db.roles refuses to sign in through a role that does not exist.
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AUTH_ROLE}') THEN
                CREATE ROLE {AUTH_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role {AUTH_ROLE}: set AUTH_DATABASE_URL to a role granted it';
        END
        $$
    """)
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_current_company() TO {APP_ROLE}';
                EXECUTE 'REVOKE EXECUTE ON FUNCTION ils_login_candidates(text, text) FROM {APP_ROLE}';
                EXECUTE 'REVOKE SELECT ON users FROM {APP_ROLE}';
                EXECUTE 'GRANT SELECT ({readable}) ON users TO {APP_ROLE}';
            END IF;
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AUTH_ROLE}') THEN
                EXECUTE 'GRANT USAGE ON SCHEMA public TO {AUTH_ROLE}';
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_login_candidates(text, text) TO {AUTH_ROLE}';
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_password_hash(text, text) TO {AUTH_ROLE}';
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT SELECT ON users TO {APP_ROLE}';
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_login_candidates(text, text) TO {APP_ROLE}';
            END IF;
        END
        $$
    """)
    op.execute("DROP FUNCTION IF EXISTS ils_password_hash(text, text)")
    op.execute("DROP POLICY IF EXISTS owner_maintenance ON companies")
    op.execute("DROP POLICY IF EXISTS tenant_isolation ON companies")
    op.execute("ALTER TABLE companies NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE companies DISABLE ROW LEVEL SECURITY")
    for table in _tenant_tables():
        name = _quoted(table)
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {name}")
        op.execute(f"CREATE POLICY tenant_isolation ON {name} USING ({OLD_TENANT_EXPR}) WITH CHECK ({OLD_TENANT_EXPR})")
    op.execute("DROP FUNCTION IF EXISTS ils_current_company()")
    op.execute("DROP TABLE IF EXISTS ils_tenant_key")

"""Service credentials for the platform backend, and company ids the operator can change.

`service_clients` holds the OAuth 2.0 client credentials a backend (the ILS platform's Node
service) exchanges for short-lived access tokens at `POST /api/auth/token`. It is an operator
table like `companies`, not a tenant table: one client may act for several companies (or all),
so it has no `company_id` column and no row-level security. The service role may only read it
(to check a secret and whether the client is revoked); creating and revoking clients is done by
the owner role through the CLI, so a compromised service process cannot mint itself a client.
Only a SHA-256 of the secret is stored (the secret is 256 random bits, so a fast hash is as
strong as a slow one, and checking it costs no argon2 memory per attempt).

The foreign keys on `company_id` become DEFERRABLE (still checked at once unless a
transaction asks otherwise), so `ils-rag companies set-id` can move a company and every row
that carries its id to the platform's id inside one transaction.

Revision ID: 0007
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"

# Every foreign key in the public schema whose columns include company_id.
_COMPANY_FOREIGN_KEYS = """
    SELECT c.conrelid::regclass::text AS table_name, c.conname
    FROM pg_constraint c
    WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
      AND EXISTS (SELECT 1 FROM unnest(c.conkey) AS k(attnum)
                  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                  WHERE a.attname = 'company_id')
"""

_DEFERRABLE = "DEFERRABLE INITIALLY IMMEDIATE"
_NOT_DEFERRABLE = "NOT DEFERRABLE"


def _set_deferrable(deferrable: bool) -> None:
    op.execute(f"""
        DO $$
        DECLARE fk record;
        BEGIN
            FOR fk IN {_COMPANY_FOREIGN_KEYS} LOOP
                EXECUTE format('ALTER TABLE %s ALTER CONSTRAINT %I %s', fk.table_name, fk.conname,
                               '{_DEFERRABLE if deferrable else _NOT_DEFERRABLE}');
            END LOOP;
        END
        $$
    """)


def upgrade() -> None:
    op.execute("""
        CREATE TABLE service_clients (
            id varchar(64) PRIMARY KEY,
            name varchar(100) NOT NULL,
            secret_hash varchar(128) NOT NULL,
            scopes varchar(64)[] NOT NULL,
            all_companies boolean NOT NULL DEFAULT false,
            companies varchar(64)[] NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            CONSTRAINT ck_service_clients_scope CHECK (all_companies OR cardinality(companies) > 0)
        )
    """)
    # One live client per name: audit rows and `clients revoke NAME` can rely on the name.
    op.execute("CREATE UNIQUE INDEX uq_service_clients_live_name ON service_clients (name) WHERE revoked_at IS NULL")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'REVOKE ALL ON service_clients FROM {APP_ROLE}';
                EXECUTE 'GRANT SELECT ON service_clients TO {APP_ROLE}';
            END IF;
        END
        $$
    """)
    _set_deferrable(True)


def downgrade() -> None:
    _set_deferrable(False)
    op.execute("DROP TABLE IF EXISTS service_clients")

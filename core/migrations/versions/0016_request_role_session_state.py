"""The request roles can neither leave objects on a pooled connection nor read other sessions' statements.

Row-level security and the signed tenant claim (0002, 0004) hold inside a transaction. Two
things a SQL bug running as the request role could still reach outlive it or look past it:

- **Temporary objects.** PostgreSQL grants TEMPORARY on every database to PUBLIC, and a
  temporary table or view lives as long as the session, which the pool hands to the next
  request, of any company. An injected `CREATE TEMP TABLE documents (...)` would shadow the
  real table for the hand-written statements that name it unqualified: the next company's
  writes would land in the attacker's table and its reads come from there. TEMPORARY is
  revoked from PUBLIC (the owner keeps it); the service creates no temporary objects.
- **Other sessions' statements.** `pg_stat_activity` shows every session of one's own role
  with the text of its current statement, and every request session is `ils_app`: another
  company's search text or the chunk text it is inserting would be readable while in flight
  (the claims in those texts are useless elsewhere, being bound to their transaction). With
  `track_activities` off for `ils_app` and `ils_auth`, their sessions report no statement
  text. `track_activities` is a superuser setting: where the migrating role may not set it
  (a managed server), the step is skipped with a notice and `ils-rag serve` warns at start.

Revision ID: 0016
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

REQUEST_ROLES = ("ils_app", "ils_auth")


def _for_each_role(statement: str) -> None:
    """`statement` (with {role}) for each request role that exists; a refusal is a notice."""
    for role in REQUEST_ROLES:
        op.execute(f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                    EXECUTE '{statement.format(role=role)}';
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'could not run "{statement.format(role=role)}": %', SQLERRM;
            END
            $$
        """)


# Database-level, and the database's name is known only on the server: format() quotes it there.
REVOKE_TEMPORARY = ("DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', "
                    "current_database()); END $$")
GRANT_TEMPORARY = "DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$"


def upgrade() -> None:
    op.execute(REVOKE_TEMPORARY)
    _for_each_role("ALTER ROLE {role} SET track_activities = off")


def downgrade() -> None:
    op.execute(GRANT_TEMPORARY)
    _for_each_role("ALTER ROLE {role} RESET track_activities")

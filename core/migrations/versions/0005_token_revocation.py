"""Access-token revocation: a per-user auth epoch that withdrawn authority bumps.

Access tokens are stateless JWTs that live ACCESS_TOKEN_MINUTES. To end them early without
a denylist of token texts, each token this service issues names two things a request can
check with one primary-key read (auth.revocation):

- `sid`, the refresh-token family of its sign-in: logout and re-use detection already mark
  that family's rows revoked in `refresh_tokens` (found by `ix_refresh_tokens_family`), so
  a token whose family has no live row is refused;
- `ver`, the user's `auth_epoch` when it was issued: deactivation, a role change and a
  password change add one to `users.auth_epoch`, so every token issued before is refused
  (also after a reactivation, which must not bring old tokens back).

The per-request read is `ils_token_state(company, user, sid)`, a SECURITY DEFINER function
(owned by the owner, so it sees every company) that only the sign-in role `ils_auth` may
execute: auth.revocation calls it on that role's connection as one autocommit statement (no
transaction, no tenant claim to prove: two round trips fewer than a tenant transaction, which
keeps the check well under 1 ms). The request role cannot call it, so SQL running as that role
learns nothing about another company's users or sign-ins through it.

Migration 0004 replaced the request role's SELECT on `users` by a column list (everything
but `password_hash`); the new column is added to that list here.

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
AUTH_ROLE = "ils_auth"


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN auth_epoch integer NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE users ADD CONSTRAINT ck_users_auth_epoch CHECK (auth_epoch >= 0)")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT SELECT (auth_epoch), UPDATE (auth_epoch) ON users TO {APP_ROLE}';
            END IF;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION ils_token_state(p_company_id text, p_user_id text, p_session_id text)
        RETURNS TABLE (company_active boolean, user_found boolean, user_active boolean, role varchar,
                       auth_epoch integer, session_live boolean)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
            SELECT c.is_active, u.id IS NOT NULL, u.is_active, u.role, u.auth_epoch,
                   p_session_id IS NULL OR EXISTS (
                       SELECT 1 FROM refresh_tokens r
                       WHERE r.company_id = p_company_id AND r.family_id = p_session_id AND r.revoked_at IS NULL)
            FROM companies c LEFT JOIN users u ON u.company_id = c.id AND u.id = p_user_id
            WHERE c.id = p_company_id
        $$
    """)
    op.execute("REVOKE ALL ON FUNCTION ils_token_state(text, text, text) FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AUTH_ROLE}') THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_token_state(text, text, text) TO {AUTH_ROLE}';
            END IF;
        END
        $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ils_token_state(text, text, text)")
    op.execute("ALTER TABLE users DROP COLUMN auth_epoch")

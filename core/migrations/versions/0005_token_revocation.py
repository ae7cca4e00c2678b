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


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN auth_epoch")

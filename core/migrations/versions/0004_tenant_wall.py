"""A tenant context the request role cannot forge; password hashes off the request role. (being written)

Revision ID: 0004
"""

from alembic import op  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""How each stored answer was made: `llm`, `extractive`, `extractive-fallback` or `none`.

The web page labels an answer by its mode ("Offline answer built from your documents", "Nothing
relevant found"); without the mode stored, a reopened conversation showed its offline answers
unlabelled. Answers stored before this revision keep NULL (mode unknown).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable and without a default: a catalogue-only change, no table rewrite
    op.add_column("messages", sa.Column("mode", sa.String(24), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "mode")

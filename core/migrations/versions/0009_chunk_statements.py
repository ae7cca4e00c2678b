"""Statement vectors stored beside their chunk, so an offline answer embeds nothing but the question.

An offline answer ranks the sentences, list items and table rows of the retrieved chunks by
their similarity to the question (retrieval/extractive.py). Embedding them on every chat cost
0.6-1.3 s per answer; `chunk_statements` keeps each chunk's statement vectors (float16, one
row per chunk), written when a company's documents are ingested or, for chunks indexed before
this revision, by the first answer that reads them. `digest` names the statements and model
the vectors were made from: a row whose digest no longer matches is recomputed, never used.

Rows belong to their chunk (foreign key with ON DELETE CASCADE: a deleted or re-indexed chunk
takes its vectors with it) and carry the very row-level security policy `data_chunks` has.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _chunk_policy() -> tuple[str, str]:
    """The tenant policy `data_chunks` has now (USING, WITH CHECK), to give its vectors the same wall."""
    row = op.get_bind().execute(sa.text(
        "SELECT qual, with_check FROM pg_policies "
        "WHERE schemaname = 'public' AND tablename = 'data_chunks' AND policyname = 'tenant_isolation'")).first()
    if row is None or not row.qual:
        raise RuntimeError("data_chunks has no tenant_isolation policy to copy for chunk_statements")
    return row.qual, row.with_check or row.qual


def upgrade() -> None:
    op.execute("""
        CREATE TABLE chunk_statements (
            company_id varchar(64) NOT NULL,
            node_id varchar NOT NULL,
            digest varchar(64) NOT NULL,
            dims integer NOT NULL,
            vectors bytea NOT NULL,
            PRIMARY KEY (company_id, node_id),
            FOREIGN KEY (company_id, node_id) REFERENCES data_chunks (company_id, node_id) ON DELETE CASCADE
        )
    """)
    using, check = _chunk_policy()
    op.execute("ALTER TABLE chunk_statements ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE chunk_statements FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON chunk_statements USING ({using}) WITH CHECK ({check})")
    op.execute("CREATE POLICY owner_maintenance ON chunk_statements TO CURRENT_USER USING (true) WITH CHECK (true)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS chunk_statements")

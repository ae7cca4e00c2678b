"""Chunk rows a filtered exact scan can read cheaply.

An exact (non-index) vector search over one tenant reads every chunk of that tenant, so
what one row costs decides its speed (`ils-rag bench search`, 2,934-chunk tenant: 20 ms
before, ~2 ms after):

- `embedding` is stored inline (STORAGE PLAIN). pgvector's type defaults to EXTERNAL, and
  a 384-dimension vector (1,544 bytes) plus the text, metadata and tsvector exceeds the
  2 kB TOAST threshold, so every vector lived in the TOAST table: each distance cost a
  TOAST index lookup and another page. Floats do not compress, so nothing is lost.
- `toast_tuple_target = 8160`: a chunk row (at most ~5 kB: 256 word pieces of text, its
  metadata, tsvector and vector) stays whole and uncompressed in its heap page, so neither
  the text-search ranking nor the results need TOAST fetches or pglz decompression.
- `is_active` becomes a generated column, like `company_id`: the retriever's filters then
  compare two plain columns (core.vector_store compiles them so) instead of decompressing
  and parsing each row's JSONB metadata.

Adding the stored generated column rewrites the table, and the rewrite re-stores existing
rows under the new storage rules. On a large existing table this holds an exclusive lock
for the rewrite (about 15 s per 100k chunks here); plan it like any table rewrite.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE data_chunks ALTER COLUMN embedding SET STORAGE PLAIN")
    op.execute("ALTER TABLE data_chunks SET (toast_tuple_target = 8160)")
    op.execute("ALTER TABLE data_chunks ADD COLUMN is_active boolean "
               "GENERATED ALWAYS AS ((metadata_->>'is_active') = 'true') STORED")


def downgrade() -> None:
    op.execute("ALTER TABLE data_chunks DROP COLUMN is_active")
    op.execute("ALTER TABLE data_chunks RESET (toast_tuple_target)")
    op.execute("ALTER TABLE data_chunks ALTER COLUMN embedding SET STORAGE EXTERNAL")

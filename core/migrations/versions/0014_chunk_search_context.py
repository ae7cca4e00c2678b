"""Text search reads a chunk's context (document title and heading path) besides its text.

`text_search_tsv` (the GIN-indexed tsvector) and `text_search_length` (BM25's chunk length)
were generated from the chunk text alone. Both now index `text` followed by the chunk's
`metadata_->>'search_context'`, which ingestion writes when CHUNK_CONTEXT includes `text`
(indexing/chunk_context.py says why). The chunk text shown and quoted is unchanged.

Rows written before have no `search_context`, so their tsvector and length come out exactly
as before: the BM25 statistics kept by migration 0006's triggers stay correct through the
rewrite (a column rewrite fires no row triggers), and new rows are counted by the triggers as
usual. `SET EXPRESSION` needs PostgreSQL 17 (docker-compose's image and the embedded server
are 17 and 18); it rewrites the table under an exclusive lock, like migration 0006's column.

Revision ID: 0014
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_WITH_CONTEXT = "to_tsvector('english', text || ' ' || coalesce(metadata_->>'search_context', ''))"
_TEXT_ONLY = "to_tsvector('english', text)"


def _generate_from(document: str) -> None:
    op.execute(f"ALTER TABLE data_chunks ALTER COLUMN text_search_tsv SET EXPRESSION AS ({document}), "
               f"ALTER COLUMN text_search_length SET EXPRESSION AS (ils_tsvector_tokens({document}))")


def upgrade() -> None:
    _generate_from(_WITH_CONTEXT)


def downgrade() -> None:
    # Chunks with a search context lose it from their tsvector without any row trigger firing,
    # so the BM25 statistics are counted again from the rewritten columns.
    _generate_from(_TEXT_ONLY)
    op.execute("DELETE FROM bm25_terms")
    op.execute("DELETE FROM bm25_corpus")
    op.execute("""
        WITH active AS (
            SELECT company_id, text_search_tsv AS tsv, text_search_length AS len
            FROM data_chunks WHERE is_active IS TRUE
        ), corpus AS (
            INSERT INTO bm25_corpus (company_id, chunks, total_length)
            SELECT company_id, count(*), sum(len) FROM active GROUP BY company_id
        )
        INSERT INTO bm25_terms (company_id, lexeme, df)
        SELECT a.company_id, u.lexeme, count(*) FROM active a, unnest(a.tsv) AS u GROUP BY a.company_id, u.lexeme
    """)

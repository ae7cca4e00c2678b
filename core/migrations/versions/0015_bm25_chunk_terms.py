"""BM25 reads a narrow copy of each active chunk's terms instead of the chunk rows themselves.

Text search scored its candidates from `data_chunks`, whose rows are wide (a 384-dim vector,
the text, LlamaIndex's metadata: about four rows to a page). A common query word matches a
third of a large company's chunks, so the candidate lookup and the scoring each read one page
per candidate: 10,000 pages for a 20k-chunk company, 30-45 ms of a text search. The scoring
needs only a chunk's tsvector and length, so they get a table of their own:

- `bm25_chunk_terms (company_id, id, tsv, length)`: one row per *active* chunk, keyed like
  `data_chunks` (company first, so it is distributed with it), GIN-indexed on `tsv`; rows of a
  company sit together in the primary key, about eight times as many to a page;
- `tsv` is the chunk's `text_search_tsv` (its text and search context) with the search context
  (document title and heading path, `metadata_->>'search_context'`, a few words) added once
  more, so a query word in a chunk's title or headings counts twice in BM25's term frequency
  (CONTEXT_WEIGHT; the README's retrieval section has the study that chose it). It is
  weighed here, when the row is written, rather than at query time: a second tsvector per
  candidate made a large company's text search half as slow again. `length` stays the
  plain token count;
- kept by statement-level AFTER triggers on `data_chunks` beside migration 0006's statistics
  triggers (insert, delete, and an update that changes a chunk's activity, tsvector or search
  context; a TRUNCATE empties it), so every write path keeps it without knowing, and a rolled-back or
  killed ingest takes its rows with it;
- row-level security with the very policy `data_chunks` has (copied from the catalog).

`ils_bm25_postings(tsquery, text[])` replaces 0006's `ils_bm25_matches`: for the active chunks
of the caller's verified tenant matching the tsquery, it returns one row per (chunk, query
lexeme) with the lexeme's (context-weighted) term frequency and the chunk's length:
everything BM25 needs, in one read of the narrow table. It runs as the owner for the reason
0006 gives (row-level security keeps an index from evaluating the non-leakproof `@@`) and
filters on the same copied tenant predicate. `data_chunks_tsv_idx`, whose only reader was
the old lookup, is dropped: ingestion maintains one text-search GIN index, as before. The
upgrade holds off chunk writes while it copies the existing rows and creates the triggers.

Revision ID: 0015
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
TABLE = "bm25_chunk_terms"

# How many times a word of the chunk's title or heading path counts (text_search_tsv has it once).
CONTEXT_WEIGHT = 2
WEIGHTED_TSV = ("{row}.text_search_tsv" + " || to_tsvector('english', coalesce({row}.metadata_->>'search_context', ''))"
                * (CONTEXT_WEIGHT - 1))

# Three branches, each reading only the transition tables its event defines. An UPDATE first
# drops the rows of chunks that stopped counting or changed their tsvector or search context
# (the context is counted twice here: words moved between text and context change the copy
# even where the combined tsvector stays the same), then adds the rows of chunks that now
# count with their new terms (a company-id change is both).
TRIGGER_FUNCTION = """
    CREATE FUNCTION ils_bm25_chunk_terms_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO bm25_chunk_terms (company_id, id, tsv, length)
            SELECT n.company_id, n.id, {weighted_n}, n.text_search_length
            FROM terms_new n WHERE n.is_active IS TRUE;
        ELSIF TG_OP = 'DELETE' THEN
            DELETE FROM bm25_chunk_terms t USING terms_old o
            WHERE t.company_id = o.company_id AND t.id = o.id AND o.is_active IS TRUE;
        ELSE
            DELETE FROM bm25_chunk_terms t
            USING terms_old o LEFT JOIN terms_new n ON n.company_id = o.company_id AND n.id = o.id
            WHERE t.company_id = o.company_id AND t.id = o.id AND o.is_active IS TRUE
              AND (n.id IS NULL OR n.is_active IS NOT TRUE OR n.text_search_tsv IS DISTINCT FROM o.text_search_tsv
                   OR n.metadata_->>'search_context' IS DISTINCT FROM o.metadata_->>'search_context');
            INSERT INTO bm25_chunk_terms (company_id, id, tsv, length)
            SELECT n.company_id, n.id, {weighted_n}, n.text_search_length
            FROM terms_new n LEFT JOIN terms_old o ON o.company_id = n.company_id AND o.id = n.id
            WHERE n.is_active IS TRUE AND (o.id IS NULL OR o.is_active IS NOT TRUE
                                           OR o.text_search_tsv IS DISTINCT FROM n.text_search_tsv
                                           OR o.metadata_->>'search_context'
                                              IS DISTINCT FROM n.metadata_->>'search_context');
        END IF;
        RETURN NULL;
    END
    $$
""".replace("{weighted_n}", WEIGHTED_TSV.format(row="n"))

TRUNCATE_FUNCTION = """
    CREATE FUNCTION ils_bm25_chunk_terms_truncated() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
    BEGIN
        DELETE FROM bm25_chunk_terms;
        RETURN NULL;
    END
    $$
"""

TRIGGERS = {
    "INSERT": "REFERENCING NEW TABLE AS terms_new",
    "UPDATE": "REFERENCING OLD TABLE AS terms_old NEW TABLE AS terms_new",
    "DELETE": "REFERENCING OLD TABLE AS terms_old",
}


def _chunk_policy() -> tuple[str, str]:
    """The tenant policy `data_chunks` has now (USING, WITH CHECK), to give the copy the same wall."""
    row = op.get_bind().execute(sa.text(
        "SELECT qual, with_check FROM pg_policies "
        "WHERE schemaname = 'public' AND tablename = 'data_chunks' AND policyname = 'tenant_isolation'")).first()
    if row is None or not row.qual:
        raise RuntimeError(f"data_chunks has no tenant_isolation policy to copy for {TABLE}")
    return row.qual, row.with_check or row.qual


def _postings_function(using: str) -> str:
    """The lookup, with the policy's tenant predicate as its filter. Constant statement text
    (planned with the tsquery's value on every call, so the GIN estimate sees it); the tsquery
    and the lexemes are its only parameters. Only the query's lexemes are kept from each
    tsvector: they are marked (weight A) and the marked ones unnested."""
    statement = (
        "SELECT t.id, t.length, u.lexeme, cardinality(u.positions) FROM " + TABLE + " t "
        "CROSS JOIN LATERAL unnest(ts_filter(setweight(t.tsv, 'A', $2), '{a}')) AS u "
        "WHERE (" + using + ") AND t.tsv @@ $1 AND u.lexeme = ANY($2)")
    return f"""
        CREATE FUNCTION ils_bm25_postings(p_match tsquery, p_lexemes text[])
        RETURNS TABLE (id bigint, length integer, lexeme text, tf integer)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $fn$
        BEGIN
            RETURN QUERY EXECUTE {_sql_literal(statement)} USING p_match, p_lexemes;
        END
        $fn$
    """


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _grant_execute(signature: str) -> None:
    op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION {signature} TO {APP_ROLE}';
            END IF;
        END
        $$
    """)


def _revision_0006() -> ModuleType:
    """Migration 0006, for the lookup function a downgrade restores (its module name is not importable)."""
    path = Path(__file__).with_name("0006_bm25_statistics.py")
    spec = importlib.util.spec_from_file_location("ils_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    # No chunk write may commit between the copy below and the triggers' creation: it would be
    # counted in the statistics (migration 0006's triggers are live) but missing from the copy.
    op.execute("LOCK TABLE data_chunks IN SHARE ROW EXCLUSIVE MODE")
    op.execute(f"""
        CREATE TABLE {TABLE} (
            company_id varchar(64) NOT NULL,
            id bigint NOT NULL,
            tsv tsvector NOT NULL,
            length integer NOT NULL,
            PRIMARY KEY (company_id, id)
        )
    """)
    using, check = _chunk_policy()
    op.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON {TABLE} USING ({using}) WITH CHECK ({check})")
    op.execute(f"CREATE POLICY owner_maintenance ON {TABLE} TO CURRENT_USER USING (true) WITH CHECK (true)")

    op.execute(f"INSERT INTO {TABLE} (company_id, id, tsv, length) "
               f"SELECT d.company_id, d.id, {WEIGHTED_TSV.format(row='d')}, d.text_search_length "
               "FROM data_chunks d WHERE d.is_active IS TRUE")
    op.execute(f"CREATE INDEX {TABLE}_tsv_idx ON {TABLE} USING gin (tsv)")
    op.execute(f"ANALYZE {TABLE}")

    op.execute(TRIGGER_FUNCTION)
    for event, referencing in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER bm25_chunk_terms_{event.lower()} AFTER {event} ON data_chunks {referencing} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION ils_bm25_chunk_terms_changed()")
    op.execute(TRUNCATE_FUNCTION)
    op.execute("CREATE TRIGGER bm25_chunk_terms_truncate AFTER TRUNCATE ON data_chunks "
               "FOR EACH STATEMENT EXECUTE FUNCTION ils_bm25_chunk_terms_truncated()")

    op.execute(_postings_function(using))
    _grant_execute("ils_bm25_postings(tsquery, text[])")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_matches(tsquery)")
    op.execute("DROP INDEX IF EXISTS data_chunks_tsv_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS data_chunks_tsv_idx ON data_chunks USING gin (text_search_tsv)")
    using, _ = _chunk_policy()
    op.execute(_revision_0006()._matches_function(using))
    _grant_execute("ils_bm25_matches(tsquery)")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_postings(tsquery, text[])")
    for event in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS bm25_chunk_terms_{event.lower()} ON data_chunks")
    op.execute("DROP TRIGGER IF EXISTS bm25_chunk_terms_truncate ON data_chunks")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_chunk_terms_truncated()")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_chunk_terms_changed()")
    op.execute(f"DROP TABLE IF EXISTS {TABLE}")

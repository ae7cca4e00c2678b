"""Per-company BM25 term statistics, kept in step with the chunk table by the database itself.

BM25 (retrieval.bm25) needs, for each company, the number of active chunks, their total
length and, per lexeme, how many active chunks contain it. They live in two tenant tables:

- `bm25_corpus (company_id, chunks, total_length)`;
- `bm25_terms (company_id, lexeme, df)`.

Statement-level AFTER triggers on `data_chunks` (INSERT, UPDATE, DELETE, with transition
tables) apply each statement's net change to them in the same transaction, so they follow
every write path (ingestion, replacement, deactivation by a metadata update, deletion,
operator maintenance, a TRUNCATE) without any of them knowing, and a killed or failed ingest rolls its
statistics back with its chunks. Only active chunks count (search only sees those), and an
UPDATE that changes neither a chunk's activity nor its tsvector costs nothing but the join
of the two transition tables. A transaction-level advisory lock per company serialises
concurrent writers of one company from their first chunk write to their commit, so two
ingests never deadlock on the same lexeme rows; other companies are not affected.

A chunk's BM25 length is its number of indexed tokens (stop words excluded, as in the
tsvector): a stored generated column `text_search_length`, so a query reads it instead of
unnesting every candidate's tsvector. Adding the column rewrites `data_chunks` (about as
long as migration 0003's rewrite: ~15 s per 100k chunks here, under an exclusive lock).

Both tables carry row-level security with the very policy `data_chunks` has when this
revision runs (its expression is copied from the catalog), so the statistics sit behind
the same tenant wall as the chunks: a company's scope never reads or changes another's.

`ils_bm25_matches(tsquery)` returns the ids of the active chunks of the caller's verified
tenant that match a tsquery. Row-level security keeps an index from evaluating a
non-leakproof operator before the policy, and the text-search match `@@` is not leakproof,
so under the service role every text search read the whole company's rows instead of
asking the GIN index (~16 us a chunk: 160 ms for a 10k-chunk company). The function runs as
the owner (SECURITY DEFINER) and filters on the tenant predicate of `data_chunks`' policy,
copied here like the statistics' policies, so it returns nothing another tenant's scope
could not see; the caller then reads the rows themselves under its own row-level security.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "ils_app"
STAT_TABLES = ("bm25_corpus", "bm25_terms")

TOKEN_COUNT_FUNCTION = """
    CREATE FUNCTION ils_tsvector_tokens(tsvector) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT coalesce(sum(cardinality(positions)), 0)::integer FROM unnest($1) $$
"""

# One function for the three triggers: each branch reads only the transition tables its
# event defines (PL/pgSQL plans a statement when it first runs it) and collects the
# statement's net change as parallel arrays (+1: a chunk now counts, -1: it no longer does).
TRIGGER_FUNCTION = """
    CREATE FUNCTION ils_bm25_chunks_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
    DECLARE
        d_company varchar[];
        d_tsv tsvector[];
        d_len integer[];
        d_sign integer[];
    BEGIN
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(company_id), array_agg(text_search_tsv), array_agg(text_search_length), array_agg(1)
            INTO d_company, d_tsv, d_len, d_sign
            FROM bm25_new WHERE is_active IS TRUE;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT array_agg(company_id), array_agg(text_search_tsv), array_agg(text_search_length), array_agg(-1)
            INTO d_company, d_tsv, d_len, d_sign
            FROM bm25_old WHERE is_active IS TRUE;
        ELSE
            SELECT array_agg(company_id), array_agg(tsv), array_agg(len), array_agg(sign)
            INTO d_company, d_tsv, d_len, d_sign
            FROM (
                SELECT n.company_id, n.text_search_tsv AS tsv, n.text_search_length AS len, 1 AS sign
                FROM bm25_new n LEFT JOIN bm25_old o ON o.company_id = n.company_id AND o.id = n.id
                WHERE n.is_active IS TRUE AND (o.id IS NULL OR o.is_active IS NOT TRUE
                                               OR o.text_search_tsv IS DISTINCT FROM n.text_search_tsv)
                UNION ALL
                SELECT o.company_id, o.text_search_tsv, o.text_search_length, -1
                FROM bm25_old o LEFT JOIN bm25_new n ON n.company_id = o.company_id AND n.id = o.id
                WHERE o.is_active IS TRUE AND (n.id IS NULL OR n.is_active IS NOT TRUE
                                               OR n.text_search_tsv IS DISTINCT FROM o.text_search_tsv)
            ) AS changed;
        END IF;
        IF d_company IS NULL THEN
            RETURN NULL;
        END IF;

        -- companies in a fixed order, so writers of several companies cannot deadlock either
        PERFORM pg_advisory_xact_lock(hashtextextended('ils_bm25:' || company_id, 0))
        FROM (SELECT DISTINCT company_id FROM unnest(d_company) AS c(company_id) ORDER BY company_id) AS companies;

        INSERT INTO bm25_corpus AS c (company_id, chunks, total_length)
            SELECT company_id, sum(sign), sum(sign * len)
            FROM unnest(d_company, d_len, d_sign) AS d(company_id, len, sign)
            GROUP BY company_id ORDER BY company_id
        ON CONFLICT (company_id) DO UPDATE
            SET chunks = c.chunks + EXCLUDED.chunks, total_length = c.total_length + EXCLUDED.total_length;

        INSERT INTO bm25_terms AS t (company_id, lexeme, df)
            SELECT d.company_id, u.lexeme, sum(d.sign)
            FROM unnest(d_company, d_tsv, d_sign) AS d(company_id, tsv, sign), unnest(d.tsv) AS u
            GROUP BY d.company_id, u.lexeme HAVING sum(d.sign) <> 0
            ORDER BY d.company_id, u.lexeme
        ON CONFLICT (company_id, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;

        IF -1 = ANY(d_sign) THEN
            DELETE FROM bm25_terms t
            USING (SELECT DISTINCT d.company_id, u.lexeme
                   FROM unnest(d_company, d_tsv, d_sign) AS d(company_id, tsv, sign), unnest(d.tsv) AS u
                   WHERE d.sign < 0) AS gone
            WHERE t.company_id = gone.company_id AND t.lexeme = gone.lexeme AND t.df <= 0;
        END IF;
        RETURN NULL;
    END
    $$
"""

# TRUNCATE fires no row or transition-table trigger: it empties every company's statistics with the chunks.
TRUNCATE_FUNCTION = """
    CREATE FUNCTION ils_bm25_chunks_truncated() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
    BEGIN
        DELETE FROM bm25_terms;
        DELETE FROM bm25_corpus;
        RETURN NULL;
    END
    $$
"""

TRIGGERS = {
    "INSERT": "REFERENCING NEW TABLE AS bm25_new",
    "UPDATE": "REFERENCING OLD TABLE AS bm25_old NEW TABLE AS bm25_new",
    "DELETE": "REFERENCING OLD TABLE AS bm25_old",
}

BACKFILL = """
    WITH active AS (
        SELECT company_id, text_search_tsv AS tsv, text_search_length AS len FROM data_chunks WHERE is_active IS TRUE
    ), corpus AS (
        INSERT INTO bm25_corpus (company_id, chunks, total_length)
        SELECT company_id, count(*), sum(len) FROM active GROUP BY company_id
    )
    INSERT INTO bm25_terms (company_id, lexeme, df)
    SELECT a.company_id, u.lexeme, count(*) FROM active a, unnest(a.tsv) AS u GROUP BY a.company_id, u.lexeme
"""


def _chunk_policy() -> tuple[str, str]:
    """The tenant policy `data_chunks` has now (USING, WITH CHECK), to give the statistics the same wall."""
    row = op.get_bind().execute(sa.text(
        "SELECT qual, with_check FROM pg_policies "
        "WHERE schemaname = 'public' AND tablename = 'data_chunks' AND policyname = 'tenant_isolation'")).first()
    if row is None or not row.qual:
        raise RuntimeError("data_chunks has no tenant_isolation policy to copy for the BM25 statistics")
    return row.qual, row.with_check or row.qual


def _matches_function(using: str) -> str:
    """The candidate lookup, with the policy's tenant predicate as its filter. The statement is
    constant text (planned with the tsquery's value on every call, so the GIN index's estimate
    sees it); the tsquery is its only parameter."""
    statement = ("SELECT id FROM data_chunks WHERE (" + using + ") AND is_active IS TRUE "
                 "AND text_search_tsv @@ $1")
    return f"""
        CREATE FUNCTION ils_bm25_matches(p_match tsquery) RETURNS TABLE (id bigint)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $fn$
        BEGIN
            RETURN QUERY EXECUTE {_sql_literal(statement)} USING p_match;
        END
        $fn$
    """


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute(TOKEN_COUNT_FUNCTION)
    op.execute("ALTER TABLE data_chunks ADD COLUMN text_search_length integer "
               "GENERATED ALWAYS AS (ils_tsvector_tokens(to_tsvector('english', text))) STORED")

    op.execute("""
        CREATE TABLE bm25_corpus (
            company_id varchar(64) PRIMARY KEY,
            chunks bigint NOT NULL,
            total_length bigint NOT NULL
        )
    """)
    op.execute("""
        CREATE TABLE bm25_terms (
            company_id varchar(64) NOT NULL,
            lexeme text NOT NULL,
            df integer NOT NULL,
            PRIMARY KEY (company_id, lexeme)
        )
    """)
    using, check = _chunk_policy()
    for table in STAT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING ({using}) WITH CHECK ({check})")
        op.execute(f"CREATE POLICY owner_maintenance ON {table} TO CURRENT_USER USING (true) WITH CHECK (true)")

    op.execute(_matches_function(using))
    op.execute("REVOKE ALL ON FUNCTION ils_bm25_matches(tsquery) FROM PUBLIC")
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE 'GRANT EXECUTE ON FUNCTION ils_bm25_matches(tsquery) TO {APP_ROLE}';
            END IF;
        END
        $$
    """)

    op.execute(BACKFILL)
    op.execute(TRIGGER_FUNCTION)
    for event, referencing in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER bm25_chunks_{event.lower()} AFTER {event} ON data_chunks {referencing} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION ils_bm25_chunks_changed()")
    op.execute(TRUNCATE_FUNCTION)
    op.execute("CREATE TRIGGER bm25_chunks_truncate AFTER TRUNCATE ON data_chunks "
               "FOR EACH STATEMENT EXECUTE FUNCTION ils_bm25_chunks_truncated()")


def downgrade() -> None:
    for event in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS bm25_chunks_{event.lower()} ON data_chunks")
    op.execute("DROP TRIGGER IF EXISTS bm25_chunks_truncate ON data_chunks")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_chunks_truncated()")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_chunks_changed()")
    op.execute("DROP FUNCTION IF EXISTS ils_bm25_matches(tsquery)")
    for table in STAT_TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("ALTER TABLE data_chunks DROP COLUMN IF EXISTS text_search_length")
    op.execute("DROP FUNCTION IF EXISTS ils_tsvector_tokens(tsvector)")

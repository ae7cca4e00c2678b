"""BM25 ranking of one company's chunks, computed inside Postgres.

Postgres's own `ts_rank` has no inverse document frequency and no length normalisation, so
the common words of a long question weigh as much as its rare, telling ones. This module
scores the chunks the GIN index matches with Okapi BM25 in Lucene's form (the variant
published BM25 baselines use):

    score(chunk) = Σ over query lexemes t in chunk:
        ln(1 + (N - df_t + 0.5) / (df_t + 0.5)) · tf / (tf + k1 · (1 - b + b · len / avglen))

- tokens are the lexemes of the `english` text-search configuration, on both sides (the
  chunk's stored tsvector, the query's `to_tsvector`): stemming and stop words as before;
- `tf` is the number of positions of the lexeme in the chunk's tsvector; `len` is the
  chunk's token count (`data_chunks.text_search_length`); `N`, `avglen` and `df_t` are the
  company's own statistics (`bm25_corpus`, `bm25_terms`, kept by triggers, migration 0006),
  over its active chunks only;
- k1 and b come from settings (BM25_K1, BM25_B);
- ties are broken by chunk id, so a ranking never changes between runs.

The query is one bound-parameter statement run inside the caller's tenant scope, so
row-level security applies to the chunks and the statistics alike. The OR-query of the
question's lexemes is assembled in SQL from the lexemes the company's statistics know
(each one quoted as a tsquery literal), never from Python text, and only those lexemes
are looked up at all. With a query embedding, each row also carries its cosine
similarity, so the retriever needs no second round trip for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from core.database import get_engine
from core.settings import get_settings

# The quoted-literal form tsquery's input function reads: backslashes and quotes escaped.
_QUOTED_LEXEME = r"'''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || ''''"

_BM25_CTES = f"""
WITH corpus AS (
    SELECT chunks, total_length::float8 / greatest(chunks, 1) AS avglen
    FROM bm25_corpus WHERE company_id = :company AND chunks > 0
), terms AS (
    SELECT t.lexeme, ln(1 + (corpus.chunks - t.df + 0.5) / (t.df + 0.5)) AS idf
    FROM bm25_terms t, corpus
    WHERE t.company_id = :company AND t.df > 0
      AND t.lexeme = ANY(tsvector_to_array(to_tsvector('english', CAST(:query AS text))))
), matcher AS (
    SELECT CAST(string_agg({_QUOTED_LEXEME}, ' | ') AS tsquery) AS tsq, array_agg(t.lexeme) AS lexemes FROM terms t
), scored AS (
    SELECT ch.id,
           sum(terms.idf * u.tf / (u.tf + :k1 * (1 - :b + :b * ch.text_search_length / corpus.avglen))) AS score
    FROM data_chunks ch
    CROSS JOIN matcher
    CROSS JOIN corpus
    CROSS JOIN LATERAL (
        -- only the query's lexemes: delete the others, then read what is left
        SELECT lexeme, cardinality(positions) AS tf
        FROM unnest(ts_delete(ch.text_search_tsv,
                              tsvector_to_array(ts_delete(ch.text_search_tsv, matcher.lexemes))))
    ) AS u
    JOIN terms ON terms.lexeme = u.lexeme
    WHERE ch.company_id = :company AND ch.is_active IS TRUE AND ch.text_search_tsv @@ matcher.tsq
    GROUP BY ch.id
    ORDER BY score DESC, ch.id
    LIMIT :k
)
"""

BM25_STATEMENT = sa.text(_BM25_CTES + """
SELECT d.id, d.node_id, d.text, d.metadata_, s.score, NULL::float8 AS similarity
FROM scored s JOIN data_chunks d ON d.company_id = :company AND d.id = s.id
ORDER BY s.score DESC, s.id
""")

BM25_WITH_COSINE_STATEMENT = sa.text(_BM25_CTES + """
SELECT d.id, d.node_id, d.text, d.metadata_, s.score,
       1 - (d.embedding <=> CAST(:embedding AS vector)) AS similarity
FROM scored s JOIN data_chunks d ON d.company_id = :company AND d.id = s.id
ORDER BY s.score DESC, s.id
""")


@dataclass(frozen=True)
class BM25Hit:
    node: TextNode
    bm25: float
    similarity: float | None  # cosine to the query embedding, when one was given


def _node(row: sa.Row) -> TextNode:
    try:
        node = metadata_dict_to_node(row.metadata_)
        node.set_content(str(row.text))
    except Exception:  # rows written without LlamaIndex's _node_content (as PGVectorStore reads them)
        node = TextNode(id_=row.node_id, text=row.text, metadata=row.metadata_)
    return node  # type: ignore[return-value]


def bm25_search(company_id: str, query: str, k: int, *, embedding: list[float] | None = None,
                k1: float | None = None, b: float | None = None) -> list[BM25Hit]:
    """The company's top-k active chunks by BM25 (ties by chunk id). Call inside `tenant(company_id)`."""
    settings = get_settings()
    params = {"company": company_id, "query": query, "k": int(k),
              "k1": float(settings.bm25_k1 if k1 is None else k1), "b": float(settings.bm25_b if b is None else b)}
    statement = BM25_STATEMENT
    if embedding is not None:
        statement = BM25_WITH_COSINE_STATEMENT
        params["embedding"] = str([float(x) for x in embedding])
    with get_engine().connect() as connection:
        rows = connection.execute(statement, params).all()
    return [BM25Hit(node=_node(row), bm25=float(row.score),
                    similarity=None if row.similarity is None else float(row.similarity)) for row in rows]

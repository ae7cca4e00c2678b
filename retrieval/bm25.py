"""BM25 ranking of one company's chunks, computed inside Postgres.

Postgres's own `ts_rank` has no inverse document frequency and no length normalisation, so
the common words of a long question weigh as much as its rare, telling ones. This module
scores chunks with Okapi BM25 in Lucene's form (the variant published BM25 baselines use):

    score(chunk) = Σ over query lexemes t in chunk:
        idf_t · tf / (tf + k1 · (1 - b + b · len / avglen)),   idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5))

- tokens are the lexemes of the `english` text-search configuration, on both sides (the
  chunk's stored tsvector, the query's `to_tsvector`): stemming and stop words as before;
- `tf` is the number of positions of the lexeme in the chunk's tsvector, where a word of the
  chunk's document title or heading path (its search context, indexing/chunk_context.py)
  counts twice (BM25F-style field weighting: such a word says what the whole passage is
  about); `len` is the chunk's plain token count (`data_chunks.text_search_length`); both are
  read from the narrow copy `bm25_chunk_terms` (one row per active chunk, migration 0015,
  which weighs the context when it writes the row) rather than the wide chunk rows; `N`,
  `avglen` and `df_t` are the company's own statistics (`bm25_corpus`, `bm25_terms`,
  migration 0006), over its active chunks only; all three are kept by triggers on
  `data_chunks`;
- k1 and b are the caller's (the retriever passes its settings' BM25_K1, BM25_B);
- ties are broken by chunk id, so a ranking never changes between runs.

Exact top-k without scoring every chunk that shares a common word (MaxScore): a lexeme adds
less than its idf to any chunk's score (tf / (tf + x) < 1 for x > 0). So the GIN index is
first asked only for the chunks holding the query's rarer lexemes (until their document
frequencies reach POSTING_BUDGET); those are scored on every query lexeme, and if even a
chunk holding *all* the remaining common lexemes, and none of the rare ones, would score
below the k-th score found (Σ of their idf < it), no other chunk can enter the top k and the
answer is exact. Otherwise the next rarest lexeme joins the match and the statement runs
again, up to the whole query. "Can I swim in my contact lenses?" then reads the chunks with
"swim", not every chunk with "lens".

Every statement is bound-parameter only and runs inside the caller's tenant scope, so
row-level security applies to the chunks and the statistics alike: one reads the query's
lexemes with their statistics, one (only when a query word is unknown to the company) reads
the candidate words for its correction, and the scoring statement runs once per match size.
The GIN match itself goes through `ils_bm25_postings` (migration 0015: row-level security
would otherwise keep the index from evaluating `@@`), which returns, for the verified
tenant's matching chunks only, each query lexeme's term frequency and the chunk's length;
its tsquery is a bound value (the lexemes Postgres itself returned, each one quoted as a
tsquery literal). Only the top k are then read from `data_chunks`; with a query embedding,
each of those rows also carries its cosine similarity, so the retriever needs no second
round trip for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import sqlalchemy as sa
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from core.db.replica import read_engine
from core.settings import Settings
from retrieval.spelling import max_edits, nearest

# Document frequencies the first match may add up to: the chunks scored before the bound check.
POSTING_BUDGET = 1000
# Score comparisons of the bound check allow for float rounding between Python and Postgres.
_EPSILON = 1e-9

# Every lexeme of the query, with its document frequency in the company (0: no chunk has it).
_TERMS = sa.text("""
SELECT q.lexeme, coalesce(t.df, 0) AS df, c.chunks, c.total_length
FROM bm25_corpus c
CROSS JOIN unnest(tsvector_to_array(to_tsvector('english', CAST(:query AS text)))) AS q(lexeme)
LEFT JOIN bm25_terms t ON t.company_id = c.company_id AND t.lexeme = q.lexeme AND t.df > 0
WHERE c.company_id = :company AND c.chunks > 0
""")

# The company's words a misspelled lexeme may stand for (retrieval.spelling): same first letter,
# similar length. Each initial is also a key range (initial <= lexeme < the next character), so
# the primary key reads only those words. Under the C collation (the embedded server's) the range
# holds exactly the words with that initial; under a linguistic one, a word that sorts outside it
# is only a correction not offered, and `left()` keeps out any word of another initial.
_VOCABULARY = sa.text("""
SELECT t.lexeme, t.df
FROM unnest(CAST(:initials AS text[]), CAST(:nexts AS text[])) AS r(initial, next)
JOIN bm25_terms t ON t.company_id = :company AND t.lexeme >= r.initial AND t.lexeme < r.next
WHERE t.df > 0 AND left(t.lexeme, 1) = r.initial AND length(t.lexeme) BETWEEN :shortest AND :longest
""")

_SCORED = """
WITH terms AS (
    SELECT * FROM unnest(CAST(:lexemes AS text[]), CAST(:idfs AS float8[])) AS t(lexeme, idf)
), scored AS (
    SELECT p.id,
           sum(terms.idf * p.tf / (p.tf + CAST(:k1 AS float8) * (1 - CAST(:b AS float8)
               + CAST(:b AS float8) * p.length / CAST(:avglen AS float8)))) AS score
    FROM ils_bm25_postings(CAST(:match AS tsquery), CAST(:lexemes AS text[])) AS p
    JOIN terms ON terms.lexeme = p.lexeme
    GROUP BY p.id
    ORDER BY score DESC, p.id
    LIMIT :k
)
"""

BM25_STATEMENT = sa.text(_SCORED + """
SELECT d.id, d.node_id, d.text, d.metadata_, s.score, NULL::float8 AS similarity
FROM scored s JOIN data_chunks d ON d.company_id = :company AND d.id = s.id AND d.is_active IS TRUE
ORDER BY s.score DESC, s.id
""")

BM25_WITH_COSINE_STATEMENT = sa.text(_SCORED + """
SELECT d.id, d.node_id, d.text, d.metadata_, s.score,
       1 - (d.embedding <=> CAST(:embedding AS vector)) AS similarity
FROM scored s JOIN data_chunks d ON d.company_id = :company AND d.id = s.id AND d.is_active IS TRUE
ORDER BY s.score DESC, s.id
""")


class BM25Options(TypedDict):
    """bm25_search's ranking options, as the settings give them."""

    k1: float
    b: float
    fuzzy: bool


def bm25_options(settings: Settings) -> BM25Options:
    return BM25Options(k1=settings.bm25_k1, b=settings.bm25_b, fuzzy=settings.bm25_fuzzy)


@dataclass(frozen=True)
class BM25Hit:
    node: TextNode
    bm25: float
    similarity: float | None  # cosine to the query embedding, when one was given


@dataclass(frozen=True)
class _Term:
    lexeme: str
    df: int
    idf: float


def idf(chunks: int, df: int) -> float:
    return math.log(1 + (chunks - df + 0.5) / (df + 0.5))


def tsquery_literal(lexemes: list[str]) -> str:
    """An OR of lexemes in tsquery's input syntax, each one quoted (a bound value, never SQL text)."""
    quoted = ("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)
    return " | ".join(quoted)


def _next_match(terms: list[_Term], matched: int, scores: list[float], k: int) -> int | None:
    """None when the top k of the chunks matching terms[:matched] is the exact top k; else how
    many of the rarest terms the next match needs.

    A chunk holding none of terms[:matched] scores less than Σ idf of the others; once that
    sum is below the k-th score found, no such chunk can enter the top k (nor tie it)."""
    if matched == len(terms):
        return None
    if len(scores) == k:
        theta = scores[-1]
        if sum(t.idf for t in terms[matched:]) < theta - _EPSILON:
            return None
        # the k-th score can only rise as the match widens: skip straight to where the bound could hold
        needed = matched + 1
        while needed < len(terms) and sum(t.idf for t in terms[needed:]) >= theta - _EPSILON:
            needed += 1
        return needed
    # fewer than k chunks hold the rare terms: widen the match to about twice the postings
    target = 2 * sum(t.df for t in terms[:matched])
    needed = matched + 1
    while needed < len(terms) and sum(t.df for t in terms[: needed + 1]) <= target:
        needed += 1
    return needed


def _node(row: sa.Row) -> TextNode:
    try:
        node = metadata_dict_to_node(row.metadata_)
        node.set_content(str(row.text))
    except Exception:  # rows written without LlamaIndex's _node_content (as PGVectorStore reads them)
        node = TextNode(id_=row.node_id, text=row.text, metadata=row.metadata_)
    return node  # type: ignore[return-value]


def _query_terms(connection: sa.Connection, company_id: str, query: str,
                 fuzzy: bool) -> tuple[list[_Term], int, int]:
    """The query's lexemes the company's chunks hold (misspelled ones read as the nearest word
    they hold, when `fuzzy`), rarest first, with the company's chunk count and total length."""
    rows = connection.execute(_TERMS, {"company": company_id, "query": query}).all()
    if not rows:
        return [], 0, 0
    chunks, total_length = int(rows[0].chunks), int(rows[0].total_length)
    found = {row.lexeme: int(row.df) for row in rows if row.df > 0}
    unknown = [row.lexeme for row in rows if row.df == 0 and max_edits(row.lexeme) > 0] if fuzzy else []
    if unknown:
        initials = sorted({lexeme[0] for lexeme in unknown})
        vocabulary = [(row.lexeme, int(row.df)) for row in connection.execute(_VOCABULARY, {
            "company": company_id, "initials": initials, "nexts": [chr(ord(i) + 1) for i in initials],
            "shortest": min(len(lexeme) - max_edits(lexeme) for lexeme in unknown),
            "longest": max(len(lexeme) + max_edits(lexeme) for lexeme in unknown)})]
        for lexeme in unknown:
            corrected = nearest(lexeme, vocabulary)
            if corrected is not None:
                found.setdefault(*corrected)
    terms = sorted((_Term(lexeme, df, idf(chunks, df)) for lexeme, df in found.items()),
                   key=lambda t: (t.df, t.lexeme))
    return terms, chunks, total_length


def bm25_search(company_id: str, query: str, k: int, *, k1: float, b: float, fuzzy: bool = False,
                embedding: list[float] | None = None,
                posting_budget: int = POSTING_BUDGET) -> list[BM25Hit]:
    """The company's top-k active chunks by BM25 (ties by chunk id). Call inside `tenant(company_id)`.

    `fuzzy` reads a query word no chunk holds as the nearest one a chunk does hold (retrieval.spelling)."""
    params: dict[str, object] = {"company": company_id, "k": int(k), "k1": float(k1), "b": float(b)}
    statement = BM25_STATEMENT
    if embedding is not None:
        statement = BM25_WITH_COSINE_STATEMENT
        params["embedding"] = str([float(x) for x in embedding])
    with read_engine().connect() as connection:
        terms, chunks, total_length = _query_terms(connection, company_id, query, fuzzy)
        if not terms:
            return []
        params.update(lexemes=[t.lexeme for t in terms], idfs=[t.idf for t in terms],
                      avglen=max(total_length / chunks, 1e-9))
        matched = 1
        while matched < len(terms) and sum(t.df for t in terms[: matched + 1]) <= posting_budget:
            matched += 1
        while True:
            found = connection.execute(statement, {
                **params, "match": tsquery_literal([t.lexeme for t in terms[:matched]])}).all()
            matched = _next_match(terms, matched, [float(row.score) for row in found], k)
            if matched is None:
                break
    return [BM25Hit(node=_node(row), bm25=float(row.score),
                    similarity=None if row.similarity is None else float(row.similarity)) for row in found]

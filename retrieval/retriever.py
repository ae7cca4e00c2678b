"""The one tenant-scoped retriever every search and answer goes through.

It cannot be built without a company id, and every store query it issues carries the
filters `company_id = <id> AND is_active = 'true'` built by `core.vector_store.company_filter`
(the guarded store refuses anything else); it runs inside `core.db.tenant_scope.tenant(company_id)`,
so row-level security applies as a second wall. The modes (named in core.search_modes, one
ranker each in RANKERS below):

- `vector`: cosine top-k, exact for small companies and through an HNSW index for large ones
  (the store picks the plan per company, see core.vector_store);
- `text`: BM25 over Postgres full-text search (retrieval.bm25: the GIN index finds the
  candidates, per-company term statistics rank them); `text_ranking="ts_rank"` keeps
  PGVectorStore's TEXT_SEARCH ranking, for comparison only;
- `hybrid`: both, fused by retrieval.fusion (the store's own HYBRID mode only concatenates the
  two lists); each side contributes max(top_k, FUSION_CANDIDATES) candidates.

Whatever the mode, each result's score is its cosine similarity to the query, so one
threshold (default SEARCH_THRESHOLD) means the same thing everywhere. Each mode picks its
top-k in its own ranking among the chunks that pass the threshold; `order` then decides
how they come back:

- `"similarity"`: highest cosine first (POST /api/rag/search, the seed's contract);
- `"rank"`: the mode's native ranking kept (fused for hybrid, BM25 for text, cosine for
  vector): what chat and the evaluation runner use, since that ranking is what the modes
  are compared on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from core.db.replica import read_engine
from core.db.tenant_scope import tenant
from core.embeddings import get_embed_model
from core.search_modes import MODE_NAMES, SearchMode
from core.settings import Settings
from core.vector_store import UnscopedQueryError, company_filter, get_vector_store
from retrieval.bm25 import bm25_options, bm25_search
from retrieval.fusion import Fusion, fuse

ResultOrder = Literal["similarity", "rank"]
TextRanking = Literal["bm25", "ts_rank"]
ORDERS: tuple[str, ...] = ("similarity", "rank")

# Fusion only helps when each side contributes more than the final k candidates.
FUSION_CANDIDATES = 20
# The hybrid fusion, chosen on the optical set and SciFact together (`python -m evals.fusion`,
# evals/reports/fusion.md): score fusion on the `dist` scale, vector weighted 0.6, and a side's
# clear winner (a lead of three tenths of its six-sigma spread) kept first. Of the 55 fusions
# studied it has the best worst-case margin over max(text, vector) across both sets and both
# candidate depths (20 and 200 per side).
DEFAULT_FUSION = Fusion(method="dist", vector_weight=0.6, winner_gap=0.3)


def tenant_filters(company_id: str) -> MetadataFilters:
    """company_id AND is_active: the string "true", since LlamaIndex turns a numeric-looking
    filter value into a float, which would never equal the stored JSON text."""
    return company_filter(company_id, MetadataFilter(key="is_active", value="true"))


class TenantRetriever(BaseRetriever):
    """Top-k chunks of one company's active documents, scored by cosine similarity."""

    def __init__(self, company_id: str, *, mode: SearchMode | None = None, top_k: int = 5,
                 threshold: float | None = None, order: ResultOrder = "similarity",
                 embed_model: BaseEmbedding | None = None, fusion: Fusion | None = None,
                 text_ranking: TextRanking = "bm25", settings: Settings) -> None:
        """`mode` defaults to SEARCH_MODE and `threshold` (minimum cosine similarity) to
        SEARCH_THRESHOLD, both from the caller's `settings` (as are BM25_K1 and BM25_B);
        `order` is "similarity" (cosine, highest first) or "rank" (the mode's own ranking);
        `fusion` (hybrid) defaults to DEFAULT_FUSION."""
        if not isinstance(company_id, str) or not company_id.strip():
            raise UnscopedQueryError("TenantRetriever needs the caller's company id")
        mode = mode or settings.search_mode
        if mode not in RANKERS:
            raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(RANKERS)}")
        if order not in ORDERS:
            raise ValueError(f"unknown result order {order!r}; use one of {', '.join(ORDERS)}")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if text_ranking not in ("bm25", "ts_rank"):
            raise ValueError(f"unknown text ranking {text_ranking!r}; use bm25 or ts_rank")
        self.fusion = fusion or DEFAULT_FUSION
        self.text_ranking: TextRanking = text_ranking
        self.company_id = company_id
        self.mode: SearchMode = mode  # type: ignore[assignment]
        self.order: ResultOrder = order
        self.top_k = top_k
        self.threshold = settings.search_threshold if threshold is None else threshold
        self.bm25 = bm25_options(settings)
        self._filters = tenant_filters(company_id)  # built once, from the verified id only
        self._embed_model = embed_model or get_embed_model()
        super().__init__()

    # -- public helpers -------------------------------------------------------------------
    def query_embedding(self, query_bundle: QueryBundle) -> list[float]:
        if query_bundle.embedding is None:
            query_bundle.embedding = self._embed_model.get_query_embedding(query_bundle.query_str)
        return query_bundle.embedding

    # -- BaseRetriever --------------------------------------------------------------------
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        embedding = self.query_embedding(query_bundle)
        pool = max(self.top_k, FUSION_CANDIDATES)
        with tenant(self.company_id):
            ranked = RANKERS[self.mode](self, query_bundle, embedding, pool)
        chosen = [NodeWithScore(node=c.node, score=c.cosine) for c in ranked if c.cosine >= self.threshold]
        chosen = chosen[: self.top_k]
        if self.order == "similarity":
            chosen.sort(key=lambda n: n.score or 0.0, reverse=True)
        return chosen

    # -- modes: each returns candidates in its own order, with their native score and cosine ----
    def _query_store(self, query: VectorStoreQuery) -> list[NodeWithScore]:
        result = get_vector_store().query(query)
        out = []
        for node, score in zip(result.nodes or [], result.similarities or [], strict=False):
            node.metadata.pop("custom_fields", None)
            out.append(NodeWithScore(node=node, score=float(score)))
        return out

    def _vector(self, embedding: list[float], k: int) -> list[Candidate]:
        found = self._query_store(VectorStoreQuery(query_embedding=embedding, similarity_top_k=k,
                                                   filters=self._filters, mode=VectorStoreQueryMode.DEFAULT))
        return [Candidate(n.node, float(n.score or 0.0), float(n.score or 0.0)) for n in found]

    def _text(self, query_str: str, k: int, embedding: list[float]) -> list[Candidate]:
        if self.text_ranking == "bm25":  # one statement: BM25 order, with each chunk's cosine
            return [Candidate(hit.node, hit.bm25, float(hit.similarity or 0.0))
                    for hit in bm25_search(self.company_id, query_str, k, **self.bm25,
                                           embedding=embedding)]
        found = self._query_store(VectorStoreQuery(query_str=query_str, similarity_top_k=k, sparse_top_k=k,
                                                   filters=self._filters, mode=VectorStoreQueryMode.TEXT_SEARCH))
        cosine = self._cosines([n.node.node_id for n in found], embedding)
        return [Candidate(n.node, float(n.score or 0.0), cosine[n.node.node_id])
                for n in found if n.node.node_id in cosine]

    def hybrid_sides(self, embedding: list[float], query_str: str,
                     pool: int) -> tuple[list[Candidate], list[Candidate]]:
        """The two fusion inputs (vector, text), each in its own order with its native scores.
        Call inside tenant(company_id)."""
        return self._vector(embedding, pool), self._text(query_str, pool, embedding)

    def _hybrid(self, query_bundle: QueryBundle, embedding: list[float], pool: int) -> list[Candidate]:
        vector, text = self.hybrid_sides(embedding, query_bundle.query_str, pool)
        by_id = {c.node.node_id: c for c in (*text, *vector)}  # the cosine of either side is the same
        fused = fuse([(c.node.node_id, c.native) for c in vector], [(c.node.node_id, c.native) for c in text],
                     self.fusion)
        return [Candidate(by_id[node_id].node, score, by_id[node_id].cosine) for node_id, score in fused[:pool]]

    def _cosines(self, ids: list[str], embedding: list[float]) -> dict[str, float]:
        """Each chunk's cosine similarity to the query, for ts_rank results (which carry none).

        Bound-parameter only and filtered on the same company as the retriever.
        """
        if not ids:
            return {}
        statement = sa.text(
            "SELECT node_id, 1 - (embedding <=> CAST(:q AS vector)) AS similarity FROM data_chunks "
            "WHERE company_id = :company AND node_id = ANY(:ids)"
        )
        with read_engine().connect() as connection:
            rows = connection.execute(statement, {"q": str(list(map(float, embedding))), "company": self.company_id,
                                                  "ids": ids}).all()
        return {row.node_id: float(row.similarity) for row in rows}


@dataclass(frozen=True)
class Candidate:
    """One ranked chunk: its score in the mode's own ranking, and its cosine to the query."""

    node: BaseNode
    native: float
    cosine: float


# One ranker per search mode: (retriever, query, query embedding, candidate pool) -> candidates
# in the mode's own order. A mode named in core.search_modes without a ranker here stops the
# import, so the two can never disagree.
Ranker = Callable[[TenantRetriever, QueryBundle, list[float], int], list[Candidate]]
RANKERS: dict[str, Ranker] = {
    # The store over-fetches and re-sorts where its plan needs it (a filtered HNSW walk's
    # relaxed order); exact scans and a company's own index return the top k in order.
    "vector": lambda retriever, query, embedding, pool: retriever._vector(embedding, retriever.top_k),
    "text": lambda retriever, query, embedding, pool: retriever._text(query.query_str, pool, embedding),
    "hybrid": lambda retriever, query, embedding, pool: retriever._hybrid(query, embedding, pool),
}
if tuple(RANKERS) != MODE_NAMES:
    raise ImportError(f"search modes {MODE_NAMES} and rankers {tuple(RANKERS)} differ (core.search_modes)")

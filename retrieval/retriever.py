"""The one tenant-scoped retriever every search and answer goes through.

It cannot be built without a company id, and every store query it issues carries the
filters `company_id = <id> AND is_active = 'true'` built by `core.vector_store.company_filter`
(the guarded store refuses anything else); it runs inside `core.database.tenant(company_id)`,
so row-level security applies as a second wall. Three modes:

- `vector`: cosine top-k, exact for small companies and through an HNSW index for large ones
  (the store picks the plan per company, see core.vector_store);
- `text`: Postgres full-text search (PGVectorStore's TEXT_SEARCH mode, ranked by ts_rank);
- `hybrid`: both, fused by reciprocal rank fusion with LlamaIndex's QueryFusionRetriever
  (the store's own HYBRID mode only concatenates the two lists, pitfall 8); each side
  contributes max(top_k, 20) candidates.

Whatever the mode, each result's score is its cosine similarity to the query, so one
threshold (default SEARCH_THRESHOLD) means the same thing everywhere. Each mode picks its
top-k in its own ranking among the chunks that pass the threshold; `order` then decides
how they come back:

- `"similarity"`: highest cosine first (POST /api/rag/search, the seed's contract);
- `"rank"`: the mode's native ranking kept (RRF for hybrid, ts_rank for text, cosine for
  vector): what chat and the evaluation runner use, since that ranking is what the modes
  are compared on.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from core.database import get_engine, tenant
from core.embeddings import get_embed_model
from core.settings import get_settings
from core.vector_store import UnscopedQueryError, company_filter, get_vector_store

SearchMode = Literal["vector", "text", "hybrid"]
ResultOrder = Literal["similarity", "rank"]
MODES: tuple[str, ...] = ("vector", "text", "hybrid")
ORDERS: tuple[str, ...] = ("similarity", "rank")

# RRF only helps when each side contributes more than the final k candidates.
FUSION_CANDIDATES = 20


def tenant_filters(company_id: str) -> MetadataFilters:
    """company_id AND is_active: the string "true" (numeric-looking values become floats, pitfall 3)."""
    return company_filter(company_id, MetadataFilter(key="is_active", value="true"))


class TenantRetriever(BaseRetriever):
    """Top-k chunks of one company's active documents, scored by cosine similarity."""

    # Fusion inputs (see _FusionSide) keep their native scores (cosine or ts_rank), unthresholded.
    native_scores = False

    def __init__(self, company_id: str, *, mode: SearchMode | None = None, top_k: int = 5,
                 threshold: float | None = None, order: ResultOrder = "similarity",
                 embed_model: BaseEmbedding | None = None) -> None:
        """`mode` defaults to SEARCH_MODE and `threshold` (minimum cosine similarity) to
        SEARCH_THRESHOLD; `order` is "similarity" (cosine, highest first) or "rank" (the
        mode's own ranking)."""
        if not isinstance(company_id, str) or not company_id.strip():
            raise UnscopedQueryError("TenantRetriever needs the caller's company id")
        settings = get_settings()
        mode = mode or settings.search_mode
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        if order not in ORDERS:
            raise ValueError(f"unknown result order {order!r}; use one of {', '.join(ORDERS)}")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.company_id = company_id
        self.mode: SearchMode = mode  # type: ignore[assignment]
        self.order: ResultOrder = order
        self.top_k = top_k
        self.threshold = settings.search_threshold if threshold is None else threshold
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
            if self.mode == "vector":
                # The store over-fetches and re-sorts where its plan needs it (a filtered HNSW walk's
                # relaxed order); exact scans and a company's own index return the top k in order.
                ranked = self._vector(embedding, self.top_k)
            elif self.mode == "text":
                ranked = self._text(query_bundle.query_str, pool)
            else:
                ranked = self._hybrid(query_bundle, pool)
            if self.native_scores:
                return ranked[: self.top_k]
            if self.mode != "vector":
                ranked = self._with_cosine(ranked, embedding)  # keeps the mode's order
        chosen = [n for n in ranked if (n.score or 0.0) >= self.threshold][: self.top_k]
        if self.order == "similarity":
            chosen.sort(key=lambda n: n.score or 0.0, reverse=True)
        return chosen

    # -- modes ----------------------------------------------------------------------------
    def _query_store(self, query: VectorStoreQuery) -> list[NodeWithScore]:
        result = get_vector_store().query(query)
        out = []
        for node, score in zip(result.nodes or [], result.similarities or [], strict=False):
            node.metadata.pop("custom_fields", None)
            out.append(NodeWithScore(node=node, score=float(score)))
        return out

    def _vector(self, embedding: list[float], k: int) -> list[NodeWithScore]:
        return self._query_store(VectorStoreQuery(query_embedding=embedding, similarity_top_k=k,
                                                  filters=self._filters, mode=VectorStoreQueryMode.DEFAULT))

    def _text(self, query_str: str, k: int) -> list[NodeWithScore]:
        return self._query_store(VectorStoreQuery(query_str=query_str, similarity_top_k=k, sparse_top_k=k,
                                                  filters=self._filters, mode=VectorStoreQueryMode.TEXT_SEARCH))

    def _hybrid(self, query_bundle: QueryBundle, pool: int) -> list[NodeWithScore]:
        # Both sides are this same class (so both are scoped); QueryFusionRetriever does the RRF.
        # num_queries=1 means it never asks the LLM for query variations; MockLLM makes that explicit.
        sides = [_FusionSide(self.company_id, mode=side, top_k=pool, embed_model=self._embed_model)
                 for side in ("vector", "text")]
        fusion = QueryFusionRetriever(sides, llm=MockLLM(), mode="reciprocal_rerank", num_queries=1,
                                      similarity_top_k=pool, use_async=False)
        return fusion.retrieve(query_bundle)  # in RRF order, RRF scores

    def _with_cosine(self, nodes: list[NodeWithScore], embedding: list[float]) -> list[NodeWithScore]:
        """Replace text-search ranks / RRF scores by the chunk's cosine similarity to the query.

        Hand-written SQL because PGVectorStore's text-search rows carry ts_rank only; the
        statement is bound-parameter only and filtered on the same company as the retriever.
        """
        if not nodes:
            return []
        ids = [n.node.node_id for n in nodes]
        statement = sa.text(
            "SELECT node_id, 1 - (embedding <=> CAST(:q AS vector)) AS similarity FROM data_chunks "
            "WHERE company_id = :company AND node_id = ANY(:ids)"
        )
        with get_engine().connect() as connection:
            rows = connection.execute(statement, {"q": str(list(map(float, embedding))), "company": self.company_id,
                                                  "ids": ids}).all()
        similarity = {row.node_id: float(row.similarity) for row in rows}
        return [NodeWithScore(node=n.node, score=similarity[n.node.node_id])
                for n in nodes if n.node.node_id in similarity]


class _FusionSide(TenantRetriever):
    """One input of the hybrid fusion: the mode's own ranking and scores, no threshold
    (RRF sorts each input by its scores, so a text side must keep ts_rank)."""

    native_scores = True


def search(company_id: str, query: str, *, limit: int = 5, threshold: float | None = None,
           mode: SearchMode | None = None, order: ResultOrder = "similarity", **kwargs: Any) -> list[NodeWithScore]:
    """One call for the search endpoint: by default the seed's order, highest similarity first."""
    return TenantRetriever(company_id, mode=mode, top_k=limit, threshold=threshold, order=order,
                           **kwargs).retrieve(query)

"""`POST /api/rag/search` and `POST /api/embeddings/generate` (the seed's shapes); the
company always comes from the token."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from app.deps import AppSettings, CurrentUser, check_company
from app.limits import rate_limited
from app.request_models import RequestModel
from auth.permissions import Permission
from core import metrics
from core.embeddings import embedding_info, get_embed_model
from core.errors import ServiceError
from core.search_modes import SearchMode, describe_modes
from core.settings import Settings
from retrieval.calibration import current_calibration
from retrieval.retriever import TenantRetriever

router = APIRouter(tags=["search"])
read = rate_limited(Permission.KNOWLEDGE_READ, "search")  # permission, then SEARCH_RATE_PER_MINUTE
_ERRORS = {401: {"description": "NOT_AUTHENTICATED / INVALID_TOKEN / TOKEN_EXPIRED"},
           403: {"description": "FORBIDDEN: lacks knowledge:read, or another company's company_id"},
           422: {"description": "VALIDATION_ERROR / QUERY_TOO_LONG / EMPTY_QUERY"},
           429: {"description": "RATE_LIMITED (SEARCH_RATE_PER_MINUTE per user), with Retry-After"}}
HARD_MAX_CHARS = 100_000  # a body-size backstop; MAX_QUERY_CHARS is the real limit


def check_text(text: str, settings: Settings, what: str = "query") -> str:
    """Refuse empty and over-long input with a 422 a person can act on."""
    stripped = text.strip()
    if not stripped:
        raise ServiceError(f"The {what} is empty; send some text.", code="EMPTY_QUERY", status_code=422)
    if len(stripped) > settings.max_query_chars:
        raise ServiceError(f"The {what} has {len(stripped)} characters; the limit is {settings.max_query_chars} "
                           "(MAX_QUERY_CHARS). Shorten it.", code="QUERY_TOO_LONG", status_code=422)
    return stripped


class SearchRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=HARD_MAX_CHARS)
    limit: int = Field(default=5, ge=1, le=50)
    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description="Minimum calibrated `score` (probability that a passage is relevant, 0-1; 0 or less = no "
                    "floor), as in the ILS plan's `threshold: 0.7`. Omitted: SEARCH_THRESHOLD, a cosine floor. "
                    "Without a calibration for the configured model, a minimum cosine similarity.")
    mode: SearchMode | None = Field(default=None, description=f"{describe_modes()}. Default SEARCH_MODE.")
    company_id: str | None = Field(default=None, max_length=64, description="Optional; must be your own company.")


class SearchResult(BaseModel):
    id: str
    content: str
    filename: str | None
    category: str | None
    similarity: float = Field(description="Raw cosine similarity of the passage to the query.")
    score: float | None = Field(
        default=None, description="Calibrated probability that the passage is relevant (see docs/platform.md); "
                                  "null when the configured embedding model has no calibration.")
    document_id: str | None = None


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]
    total_found: int
    mode: str
    threshold: float
    threshold_applies_to: Literal["score", "similarity"] = Field(
        description="Whether `threshold` was a minimum calibrated score or a minimum cosine similarity.")
    min_similarity: float = Field(description="The cosine floor the threshold came to.")


class EmbeddingRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=HARD_MAX_CHARS)


class EmbeddingResponse(BaseModel):
    embedding: list[float]
    model: str
    dimensions: int


@router.post("/api/rag/search", response_model=SearchResponse, responses=_ERRORS)
def rag_search(body: SearchRequest, settings: AppSettings, user: CurrentUser = Depends(read)) -> SearchResponse:
    company_id = check_company(user, body.company_id)
    query = check_text(body.query, settings)
    calibration = current_calibration(settings)
    if body.threshold is None or calibration is None:
        threshold = settings.search_threshold if body.threshold is None else body.threshold
        applies_to, floor = "similarity", threshold
    else:  # the calibrated score is monotone in the cosine: the store still filters on a cosine floor
        threshold, applies_to = body.threshold, "score"
        floor = calibration.min_similarity(threshold) if threshold > 0 else -1.0
    # The retriever resolves the mode (body, else SEARCH_MODE) from the same settings; the
    # response reports the one it used.
    retriever = TenantRetriever(company_id, mode=body.mode, top_k=body.limit, threshold=min(floor, 1.0),
                                order="similarity", settings=settings)
    with metrics.timed(metrics.SEARCH_SECONDS, mode=retriever.mode):
        nodes = retriever.retrieve(query)
    results = []
    for n in nodes:
        similarity = float(n.score or 0.0)
        score = None if calibration is None else round(calibration.score(similarity), 4)
        if floor > 1.0 or (applies_to == "score" and threshold > 0 and score is not None and score < threshold):
            continue
        results.append(SearchResult(id=n.node.node_id, content=n.node.get_content(),
                                    filename=n.node.metadata.get("filename"), category=n.node.metadata.get("category"),
                                    similarity=round(similarity, 6), score=score,
                                    document_id=n.node.metadata.get("source_document_id")))
    return SearchResponse(query=query, results=results, total_found=len(results), mode=retriever.mode,
                          threshold=threshold,
                          threshold_applies_to=applies_to, min_similarity=round(floor, 6))


@router.post("/api/embeddings/generate", response_model=EmbeddingResponse, responses=_ERRORS)
def generate_embedding(body: EmbeddingRequest, settings: AppSettings,
                       user: CurrentUser = Depends(read)) -> EmbeddingResponse:
    text = check_text(body.text, settings, what="text")
    model = get_embed_model()
    info = embedding_info(model)
    vector = model.get_text_embedding(text)
    return EmbeddingResponse(embedding=vector, model=info.name, dimensions=len(vector))

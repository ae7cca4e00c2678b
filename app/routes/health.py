"""Liveness and discovery: `GET /health` and `GET /` (the seed's shapes, extended)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.deps import AppSettings
from app.routes.web import PAGE_PATH, prefers_html
from core import SERVICE_NAME, __version__
from core.db.checks import pgvector_version
from core.db.engines import get_engine
from core.db.replica import replica_status
from core.embeddings import embedding_info, get_embed_model

router = APIRouter(tags=["health"])


class DatabaseStatus(BaseModel):
    reachable: bool
    embedded: bool
    pgvector_version: str | None = None
    error: str | None = None


class ReadReplicaStatus(BaseModel):
    """READ_DATABASE_URL's state: where search and chat retrieval read right now, and how far behind."""

    reachable: bool
    serving_reads: bool
    reads_from: str  # "replica" or "primary" (the fallback)
    lag_s: float | None = None
    lag_bytes: int | None = None
    error: str | None = None


class EmbeddingStatus(BaseModel):
    loaded: bool
    model: str
    dimensions: int | None = None
    max_input_tokens: int | None = None


class HealthResponse(BaseModel):
    status: str
    service: str
    version: str
    database: DatabaseStatus
    embedding: EmbeddingStatus
    read_replica: ReadReplicaStatus | None = None  # null: no READ_DATABASE_URL, every read is the primary's


class RootResponse(BaseModel):
    service: str
    version: str
    docs: str
    endpoints: list[str]


def _database_status(embedded: bool) -> DatabaseStatus:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
            return DatabaseStatus(reachable=True, embedded=embedded, pgvector_version=pgvector_version(connection))
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return DatabaseStatus(reachable=False, embedded=embedded, error=reason)


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def health(request: Request, settings: AppSettings) -> JSONResponse:
    database = _database_status(settings.embedded_database)
    loaded = getattr(request.app.state, "embed_model_loaded", False)
    info = embedding_info(get_embed_model()) if loaded else None
    embedding = EmbeddingStatus(
        loaded=loaded, model=settings.embedding_model,
        dimensions=info.dimensions if info else None, max_input_tokens=info.max_input_tokens if info else None,
    )
    healthy = database.reachable and bool(database.pgvector_version) and loaded
    # A replica that is down or behind does not make the service unhealthy: reads fall back to the primary.
    replica = replica_status(max_age_s=0) if database.reachable else None
    read_replica = None if replica is None else ReadReplicaStatus(
        reachable=replica.reachable, serving_reads=replica.serving_reads,
        reads_from="replica" if replica.serving_reads else "primary", lag_s=replica.lag_s,
        lag_bytes=replica.lag_bytes, error=replica.error)
    body = HealthResponse(status="healthy" if healthy else "unhealthy", service=SERVICE_NAME, version=__version__,
                          database=database, embedding=embedding, read_replica=read_replica)
    return JSONResponse(status_code=200 if healthy else 503, content=body.model_dump())


@router.get("/", response_model=RootResponse,
            responses={307: {"description": "Browsers (Accept: text/html) go to /app"}})
def root(request: Request) -> RootResponse | RedirectResponse:
    if prefers_html(request):  # a person typing the address gets the web page; API clients keep the JSON
        return RedirectResponse(PAGE_PATH, status_code=307)
    paths = request.app.openapi()["paths"]
    endpoints = sorted(f"{method.upper()} {path}" for path, item in paths.items() for method in item)
    return RootResponse(service=SERVICE_NAME, version=__version__, docs="/docs", endpoints=endpoints)

"""The app factory. Start-up checks the database, applies migrations and loads the
embedding model once, so the first request is as fast as the rest."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.deps import reject_nul_parameters
from app.errors import install_error_handlers
from app.limits import install_rate_limiters
from app.middleware import BodySizeLimitMiddleware, RequestIdMiddleware, SecurityHeadersMiddleware
from app.routes import auth as auth_routes
from app.routes import chat as chat_routes
from app.routes import documents as documents_routes
from app.routes import health
from app.routes import oauth as oauth_routes
from app.routes import search as search_routes
from app.routes import users as users_routes
from app.routes import web as web_routes
from app.routes.api_docs import install_api_docs
from auth.tokens import check_auth_configuration
from core import SERVICE_NAME, __version__, metrics
from core.db.checks import check_database
from core.embeddings import get_embed_model
from core.errors import ConfigurationError
from core.migrate import upgrade
from core.settings import Settings, get_settings
from core.tenant_indexes import TenantIndexMaintainer
from indexing.documents import recover_interrupted_uploads
from indexing.queue import BackgroundWorker, JobResult
from retrieval.statements import precompute_document

logger = logging.getLogger("ils_rag")

ROUTERS = [health.router, auth_routes.router, oauth_routes.router, users_routes.router, search_routes.router,
           chat_routes.router, documents_routes.router, web_routes.router]


def prepare_runtime(settings: Settings) -> None:
    """Everything the service needs before it takes traffic; raises ConfigurationError."""
    check_auth_configuration(settings)  # first: a bad JWT_SECRET fails in a second, before Postgres starts
    check_database(settings)
    upgrade()
    recover_interrupted_uploads()  # uploads a killed process held in memory can never finish
    get_embed_model()


class PendingStatements:
    """A queue worker's hooks for the offline answerer's statement vectors: each indexed job's
    document is noted, and its vectors are stored once the queue is empty, so they never delay
    the next upload (an answer that reads a chunk before then stores that chunk's own)."""

    def __init__(self, settings: Settings) -> None:
        self._model_key = settings.embedding_key
        self._pending: deque[tuple[str, str]] = deque()

    def job_finished(self, result: JobResult) -> None:
        if result.status == "done":
            self._pending.append((result.job.company_id, result.job.document_id))

    def store(self) -> None:
        while self._pending:
            company_id, document_id = self._pending.popleft()
            precompute_document(company_id, document_id, self._model_key)

    def hooks(self) -> dict[str, Callable]:
        """Keyword arguments of indexing.queue.Worker / BackgroundWorker."""
        return {"on_result": self.job_finished, "on_idle": self.store}


def create_app(settings: Settings | None = None, *, prepare: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if prepare:
            prepare_runtime(settings)
        app.state.embed_model_loaded = True
        maintainer = (TenantIndexMaintainer(settings.tenant_index_check_s, settings.tenant_index_min_chunks).start()
                      if prepare else None)
        # The embedded default runs one ingestion worker here, so `make run` stays one command;
        # fleets set INGEST_IN_PROCESS_WORKER=false and run `ils-rag worker` processes.
        # A second lifespan on the same app (a test's nested client) reuses the running worker
        # rather than starting another that nothing would stop.
        running = getattr(app.state, "ingest_worker", None)
        start = prepare and settings.ingest_in_process_worker and running is None
        worker = BackgroundWorker(settings, **PendingStatements(settings).hooks()).start() if start else None
        if worker is not None:
            app.state.ingest_worker = worker
        try:
            yield
        finally:
            if worker is not None:
                current = getattr(app.state, "ingest_worker", None)  # tests may have replaced it
                for started in {id(w): w for w in (worker, current) if w is not None}.values():
                    started.stop()
                app.state.ingest_worker = None
            if maintainer is not None:
                maintainer.stop()

    # The API's map (/docs, /redoc, /openapi.json) is for developers: in production it would hand
    # an attacker every route and field, so it is served only in development or with API_DOCS=true.
    docs = settings.api_docs_enabled
    app = FastAPI(title=SERVICE_NAME, version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, dependencies=[Depends(reject_nul_parameters)],
                  description="Multi-tenant retrieval-augmented generation for optical practices.")
    if docs:
        install_api_docs(app)  # /docs and /redoc with packaged assets, no CDN
    app.state.settings = settings
    app.state.embed_model_loaded = False
    install_error_handlers(app)
    install_rate_limiters(app, settings)
    # Added innermost first: request id (outermost) -> security headers -> CORS -> body limit.
    app.add_middleware(BodySizeLimitMiddleware, settings=settings)
    if settings.cors_origins:
        if "*" in settings.cors_origins:  # with the refresh cookie, "any origin" would be any site
            raise ConfigurationError("CORS_ORIGINS may not contain '*': list the exact origins (https://host).")
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestIdMiddleware)
    if settings.trusted_proxies:
        # Outermost: X-Forwarded-For/-Proto rewrite the client address and scheme only when the TCP
        # peer is a listed proxy; from anyone else they are ignored (`ils-rag serve` turns uvicorn's
        # own handling, which trusts 127.0.0.1 by default, off).
        if "*" in settings.trusted_proxies:
            raise ConfigurationError("TRUSTED_PROXIES may not contain '*': list the proxies' addresses or networks.")
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    for router in ROUTERS:
        app.include_router(router)
    return app


def create_worker_app() -> FastAPI:
    """The app of one `ils-rag serve --workers N` process (a uvicorn factory).

    The serving parent prepared the database once (migrations, interrupted uploads) and runs
    the deployment's background duties itself (tenant-index upkeep, the in-process ingestion
    worker): run again in every worker, one worker's start would mark another's live uploads
    as interrupted. A worker only checks the database (attaching to the parent's embedded
    server, which outlives it) and loads its own model before it takes traffic.
    """
    settings = get_settings()
    app = create_app(settings, prepare=False)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_database(settings)
        get_embed_model()
        try:
            async with inner(app):
                yield
        finally:
            metrics.process_exited(os.getpid())  # its live gauges (connections in use) leave with it

    app.router.lifespan_context = lifespan
    return app

"""Prometheus metrics of the service, in one place so every layer can record without importing app.

The objects are the maintained `prometheus_client`'s. Under `ils-rag serve --workers N` every
worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (the client's multi-process
mode, chosen by that variable when `prometheus_client` is first imported) and the serving
process's /metrics listener adds them up (`render`). Gauges say how workers combine: `livesum`
for what each process holds (connections in use), `mostrecent` for a fact about a shared thing
(queue depth, replica lag) that any process may observe.

Label values are bounded sets (route templates, search modes, outcomes, role names), never a
request's own path, id or text, so the series count stays fixed whatever clients send.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import start_http_server
from sqlalchemy import event
from sqlalchemy.pool import Pool

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

REQUEST_SECONDS = Histogram("ils_http_request_duration_seconds", "HTTP request latency by route template and status.",
                            ["method", "route", "status"], buckets=_FAST)
SEARCH_SECONDS = Histogram("ils_search_duration_seconds", "Retrieval latency (query embedding included) by mode.",
                           ["mode"], buckets=_FAST)
EMBEDDING_SECONDS = Histogram("ils_embedding_duration_seconds", "Embedding time: one query, or one batch of chunks.",
                              ["kind"], buckets=_FAST)
LLM_SECONDS = Histogram("ils_llm_duration_seconds", "Language-model call time by outcome (ok or error).",
                        ["outcome"], buckets=_SLOW)
LLM_ERRORS = Counter("ils_llm_errors_total", "Language-model calls that failed, by reason.", ["reason"])
QUEUE_DEPTH = Gauge("ils_ingest_queue_depth", "Ingestion jobs waiting or running, by state.", ["state"],
                    multiprocess_mode="mostrecent")
JOBS = Counter("ils_ingest_jobs_total", "Ingestion jobs finished, by outcome (indexed, retried, failed).",
               ["outcome"])
REPLICA_LAG_SECONDS = Gauge("ils_read_replica_lag_seconds", "Replay lag of the read replica last measured "
                            "(-1: the replica is unreachable and reads go to the primary).",
                            multiprocess_mode="mostrecent")
DB_CONNECTIONS_IN_USE = Gauge("ils_db_connections_in_use", "Pooled database connections checked out, by role.",
                              ["role"], multiprocess_mode="livesum")
RATE_LIMIT_REFUSALS = Counter("ils_rate_limit_refusals_total", "Requests refused with 429, by budget.", ["scope"])


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[None]:
    """Observe the block's wall time, also when it raises (a slow failure is still slow)."""
    start = perf_counter()
    try:
        yield
    finally:
        histogram.labels(**labels).observe(perf_counter() - start)


def _role(dbapi_connection: object) -> str:
    info = getattr(dbapi_connection, "info", None)
    return str(getattr(info, "user", "unknown"))


@event.listens_for(Pool, "checkout")
def _checked_out(dbapi_connection: object, record: object, _proxy: object) -> None:
    role = _role(dbapi_connection)
    record.info["metrics_role"] = role  # type: ignore[attr-defined]
    DB_CONNECTIONS_IN_USE.labels(role).inc()


@event.listens_for(Pool, "checkin")
def _checked_in(_dbapi_connection: object, record: object) -> None:
    # The record remembers its role: an invalidated connection checks in as None.
    role = record.info.pop("metrics_role", None)  # type: ignore[attr-defined]
    if role is not None:
        DB_CONNECTIONS_IN_USE.labels(role).dec()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def registry() -> CollectorRegistry:
    """What /metrics shows: every worker's files in multi-process mode, else this process's."""
    if not multiprocess_enabled():
        return REGISTRY
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    return combined


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters and histograms stay counted)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


def start_listener(host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on its own address, apart from the API: scrapers reach it, the internet
    (behind whatever proxy fronts the API) does not."""
    return start_http_server(port, addr=host, registry=registry())

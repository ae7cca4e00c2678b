"""One run of the search benchmark, phase by phase: set-up (database, store, indexes),
store search, legacy Jaccard, HTTP, embedding runtimes and their quality.

Whatever happens, the run ends by writing its report with every figure measured so far; a
phase that fails is named in it (and in the error raised), so a late failure never costs the
earlier phases' figures.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import RESULTS_DIR
from benchmarks.cpu import Contention, uptime
from benchmarks.processes import postmaster_pid
from benchmarks.search.corpus import (
    NOISE_STD,
    REPO_ROOT,
    STORE_VERSION,
    bench_queries,
    build_store,
    check_scifact,
    company_id,
    corpus_tag,
    embedding_texts,
)
from benchmarks.search.database import (
    STANDARD_CHUNKS,
    STANDARD_COMPANIES,
    bench_database_name,
    database_environment,
    ensure_users,
    load_store,
    store_size,
    use_bench_database,
)
from benchmarks.search.measurements import (
    BUCKETS,
    bucket_of,
    jaccard_ratio,
    make_plan,
    measure_embeddings,
    measure_http,
    measure_http_mode,
    measure_jaccard,
    measure_store,
    measure_text,
    runtime_quality,
    server_environment,
    store_search,
    uvicorn_command,
)
from benchmarks.search.report import targets, write_results
from benchmarks.server import running_server
from core.settings import Settings


@dataclass
class BenchOptions:
    chunks: int = STANDARD_CHUNKS
    companies: int = STANDARD_COMPANIES
    base_texts: int = 4_000
    queries_per_bucket: int = 100
    jaccard_queries_per_bucket: int = 15
    http_latency_requests: int = 200
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    duration_s: float = 10.0
    embed_chunks: int = 128
    embed_rounds: int = 3
    skip_http: bool = False
    http_workers: int = 2  # the same load on `uvicorn --workers N` beside one process; 0 or 1: skip it
    skip_embedding: bool = False
    skip_quality: bool = False
    scifact: Path | None = None  # a BEIR SciFact folder; None: the repository's own texts
    results_dir: Path = RESULTS_DIR
    command: str = "ils-rag bench search"


class PhaseFailed(RuntimeError):
    """A phase of the run failed; the report written by then holds the earlier phases' figures."""


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(options: BenchOptions, settings: Settings, log: Any = print) -> dict[str, Any]:
    """The whole benchmark with the caller's `settings` (the bench database's copy of them is
    installed and handed down from the setup phase on); the results are written even when a
    phase fails."""
    check_scifact(options.scifact)  # before any work: a wrong path costs nothing
    started_at = time.perf_counter()
    original_env = os.environ.copy()  # the service's database, for the quality runs
    monitor = Contention().start()
    monitor.mark("setup")
    uptime_start = uptime()
    log(f"machine: {uptime_start}")
    result: dict[str, Any] = {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "command": options.command,
        "revision": git_revision(),
        "machine": {"cpus": os.cpu_count(), "uptime_start": uptime_start, "load_start": round(os.getloadavg()[0], 2)},
    }
    phase = "setup"
    try:
        for phase in _phases(options, settings, result, monitor, original_env, log):
            monitor.mark(phase)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        result["failed"] = {"phase": phase, "error": error.splitlines()[0], "detail": error}
        if isinstance(exc, Exception):
            raise PhaseFailed(f"the {phase} phase failed ({result['failed']['error']}); the figures measured "
                              f"before it are in {options.results_dir / 'search-latest.md'}") from exc
        raise
    finally:
        result["machine"]["load_end"] = round(os.getloadavg()[0], 2)
        result["machine"]["uptime_end"] = uptime()
        result["machine"]["phases"] = monitor.stop()
        result["seconds"] = time.perf_counter() - started_at
        result["targets"] = targets(result)
        write_results(result, options.results_dir)
    return result


def _phases(options: BenchOptions, settings: Settings, result: dict[str, Any], monitor: Contention,
            original_env: dict[str, str], log: Any) -> Iterator[str]:
    """The run's phases in order; each yields the name of the next before starting it, and adds
    its figures to `result` as soon as it has them."""
    from core.embeddings import embedding_runtime, get_embed_model
    from core.tenant_indexes import sync_tenant_indexes, tenant_index_summary

    tag = corpus_tag(options.scifact)
    settings = use_bench_database(settings, bench_database_name(options.chunks, options.companies, tag))
    monitor.add_root(postmaster_pid(settings.pgdata_dir))
    model = get_embed_model()
    result["embedding_runtime"] = embedding_runtime(model)
    store, cached = build_store(settings.data_dir.resolve() / "bench", options.chunks, options.companies,
                                options.base_texts, model, options.scifact, log)
    reused, load_seconds = load_store(store, log)
    ensure_users(len(store.sizes))
    log(f"store: {store.chunks} chunks, {len(store.sizes)} companies (arrays {'cached' if cached else 'built'}, "
        f"table {'reused' if reused else f'loaded in {load_seconds:.0f}s'})")
    min_chunks = settings.tenant_index_min_chunks
    indexes = sync_tenant_indexes(min_chunks,
                                  on_build=lambda company, chunks: log(f"  tenant HNSW index: {chunks} chunks"))
    log(f"tenant indexes: {tenant_index_summary(min_chunks)} ({len(indexes.built)} built in {indexes.seconds:.0f}s)")
    result["store"] = {
        "chunks": store.chunks, "companies": len(store.sizes), "largest_share": store.sizes[0] / store.chunks,
        "smallest": store.sizes[-1], "base_texts": len(store.texts), "noise_std": NOISE_STD,
        "corpus": f"SciFact ({options.scifact})" if options.scifact else "the repository's samples and optical set",
        "load_seconds": load_seconds, "size": store_size(),
        "tenant_indexes": {"min_chunks": settings.tenant_index_min_chunks,
                           "companies": sum(1 for size in store.sizes if settings.tenant_index_min_chunks
                                            and size >= settings.tenant_index_min_chunks),
                           "built_now": len(indexes.built), "build_seconds": indexes.seconds},
        "buckets": {b: sum(1 for s in store.sizes if bucket_of(s) == b) for b, _, _ in BUCKETS}}
    queries = bench_queries(options.scifact)
    version = "-".join(filter(None, (STORE_VERSION, tag)))
    query_cache = settings.data_dir.resolve() / "bench" / f"queries-{version}-{len(queries)}.npy"
    if query_cache.is_file():
        query_vectors = np.load(query_cache)
    else:
        query_vectors = np.asarray(model.get_text_embedding_batch(queries), dtype=np.float32)
        np.save(query_cache, query_vectors)
    plan = make_plan(store, len(queries), options.queries_per_bucket)
    # Warm-up, as a server that has been taking traffic is: the pool, the index pages, and one
    # search per tenant of the plan, so each tenant's plan facts (chunk count, own index) are in
    # the plan cache (core.tenant_plans) as they are for any active practice.
    warm = {company: query for items in plan.items.values() for company, query in items}
    for company, query in warm.items():
        store_search(company_id(company), query_vectors[query].tolist())

    yield "store_search"
    log("store-only search...")
    result["store_search"] = measure_store(store, plan, query_vectors)

    yield "text_search"
    log("text (BM25) search...")
    result["text_search"] = measure_text(plan, queries, settings)

    yield "jaccard"
    log("legacy Jaccard...")
    result["jaccard"] = measure_jaccard(plan, queries, options.jaccard_queries_per_bucket)
    result["jaccard_ratio"] = jaccard_ratio(plan, queries, result["jaccard"], options.jaccard_queries_per_bucket,
                                            model)

    if not options.skip_http:
        yield "http"
        log("HTTP: starting the server...")
        log_path = settings.data_dir.resolve() / "bench" / "server.log"  # not a result: DATA_DIR
        environment = server_environment({**os.environ, **database_environment(settings)})
        with running_server(environment, log_path, uvicorn_command, request_timeout=2,
                            stop_timeout=15, on_start=lambda process: monitor.add_root(process.pid)) as (url, server):
            cpu_roots = [pid for pid in (server.pid, postmaster_pid(settings.pgdata_dir)) if pid]
            requests = [(company_id(c), queries[q]) for items in plan.items.values() for c, q in items]
            random.Random(5).shuffle(requests)
            result["http"] = measure_http(url, requests, options.http_latency_requests, list(options.concurrency),
                                          options.duration_s, settings, log, cpu_roots)
            result["http"]["hybrid_1_client"] = measure_http_mode(url, requests, options.http_latency_requests,
                                                                  "hybrid", settings)

        if options.http_workers > 1:
            yield "http_workers"
            log(f"HTTP: {options.http_workers} worker processes on one port (uvicorn --workers)...")
            with running_server(environment, log_path,
                                lambda port: uvicorn_command(port, options.http_workers), request_timeout=2,
                                stop_timeout=15,
                                on_start=lambda process: monitor.add_root(process.pid)) as (url, server):
                cpu_roots = [pid for pid in (server.pid, postmaster_pid(settings.pgdata_dir)) if pid]
                workers = measure_http(url, requests, 20, list(options.concurrency), options.duration_s, settings,
                                       log, cpu_roots)
            single = result["http"]["throughput"]
            result["http_workers"] = {"workers": options.http_workers, "throughput": workers["throughput"],
                                      "latency_1_client": workers["latency_1_client"],
                                      "ratio": {c: row["rps"] / single[c]["rps"] for c, row in
                                                workers["throughput"].items() if single.get(c, {}).get("rps")}}

    if not options.skip_embedding:
        yield "embedding"
        log("embedding runtimes...")
        result["embedding"] = measure_embeddings(embedding_texts(options.embed_chunks, options.scifact), queries[0],
                                                 options.embed_rounds, settings, log)
        if not options.skip_quality:
            yield "quality"
            log("retrieval quality per runtime (ils-rag eval on the optical set)...")
            quality = runtime_quality(list(result["embedding"]["runtimes"]), original_env,
                                      options.results_dir, log)
            for name, row in result["embedding"]["runtimes"].items():
                if name in quality:
                    row["optical_ndcg_at_10"] = quality[name]["ndcg_at_10"]
                    if "torch" in quality:
                        row["ndcg_delta_vs_fp32"] = quality[name]["ndcg_at_10"] - quality["torch"]["ndcg_at_10"]

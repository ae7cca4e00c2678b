"""What the search benchmark times: the store query per tenant-size bucket (with recall
against an exact scan), the legacy Jaccard search, the embedding runtimes, `/api/rag/search`
over HTTP, and each runtime's retrieval quality. Each function measures; none writes results."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import tree_cpu_seconds
from benchmarks.search.corpus import OPTICAL_DIR, REPO_ROOT, Store, company_id, company_number, user_email, user_id
from core.settings import Settings
from evals.metrics import percentile

TOP_K = 10
# Tenant-size buckets (chunks), upper bound exclusive.
BUCKETS: list[tuple[str, int, int]] = [("tiny", 0, 100), ("small", 100, 1_000), ("medium", 1_000, 5_000),
                                       ("large", 5_000, 10_000), ("huge", 10_000, 10**12)]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of timings taken in seconds."""
    if not seconds:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    ms = [value * 1000.0 for value in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
            "mean": float(np.mean(ms)), "n": len(seconds)}


def bucket_of(size: int) -> str:
    return next(name for name, low, high in BUCKETS if low <= size < high)


def tenant_filters(company: str) -> Any:
    """The retriever's filters (retrieval.retriever.tenant_filters), built from core only."""
    from llama_index.core.vector_stores.types import MetadataFilter

    from core.vector_store import company_filter

    return company_filter(company, MetadataFilter(key="is_active", value="true"))


def store_search(company: str, vector: list[float], top_k: int = TOP_K) -> list[str]:
    """The service's vector path: the top k from the store, as TenantRetriever asks for them
    (the store itself over-fetches where its plan needs it); sorted by similarity."""
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

    from core.db.tenant_scope import tenant
    from core.vector_store import get_vector_store

    with tenant(company):
        result = get_vector_store().query(VectorStoreQuery(
            query_embedding=vector, similarity_top_k=top_k, filters=tenant_filters(company),
            mode=VectorStoreQueryMode.DEFAULT))
    ranked = sorted(zip(result.similarities or [], [n.node_id for n in result.nodes or []], strict=False),
                    reverse=True)
    return [node_id for _, node_id in ranked[:top_k]]


@dataclass
class Plan:
    """Which query goes to which company, per bucket."""

    items: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # bucket -> [(company, query)]


def make_plan(store: Store, queries: int, per_bucket: int, seed: int = 3) -> Plan:
    rng = random.Random(seed)
    by_bucket: dict[str, list[int]] = {}
    for number, size in enumerate(store.sizes):
        by_bucket.setdefault(bucket_of(size), []).append(number)
    plan = Plan()
    for name, _, _ in BUCKETS:
        members = by_bucket.get(name, [])
        if members:
            plan.items[name] = [(rng.choice(members), rng.randrange(queries)) for _ in range(per_bucket)]
    return plan


def measure_store(store: Store, plan: Plan, query_vectors: np.ndarray) -> dict[str, Any]:
    rows = np.arange(store.chunks)
    members = {n: rows[store.company_of == n] for n in range(len(store.sizes))}
    out: dict[str, Any] = {}
    for bucket, items in plan.items.items():
        latencies, recalls, short = [], [], 0
        for company, query in items:
            vector = query_vectors[query]
            started = time.perf_counter()
            found = store_search(company_id(company), vector.tolist())
            latencies.append(time.perf_counter() - started)
            ids = members[company]
            scores = store.vectors[ids] @ vector
            k = min(TOP_K, len(ids))
            exact = {f"bench-{ids[i]}" for i in np.argpartition(-scores, k - 1)[:k]}
            recalls.append(len(exact & set(found)) / k)
            short += len(found) < TOP_K
        sizes = sorted({store.sizes[c] for c, _ in items})
        out[bucket] = {**latency_summary(latencies), "recall_at_10": float(np.mean(recalls)),
                       "short_share": short / len(items), "queries": len(items),
                       "tenant_sizes": [sizes[0], sizes[-1]]}
    return out


def measure_text(plan: Plan, queries: list[str], settings: Settings) -> dict[str, Any]:
    """`text` mode's store query per bucket: BM25 over the GIN-matched chunks (retrieval.bm25),
    top 10, inside the tenant's scope, as TenantRetriever runs it (without the query embedding)."""
    from core.db.tenant_scope import tenant
    from retrieval.bm25 import bm25_options, bm25_search

    out: dict[str, Any] = {}
    for bucket, items in plan.items.items():
        latencies, empty = [], 0
        for company, query in items:
            started = time.perf_counter()
            with tenant(company_id(company)):
                found = bm25_search(company_id(company), queries[query], TOP_K, **bm25_options(settings))
            latencies.append(time.perf_counter() - started)
            empty += not found
        out[bucket] = {**latency_summary(latencies), "queries": len(items), "empty_share": empty / len(items)}
    return out


def measure_jaccard(plan: Plan, queries: list[str], per_bucket: int) -> dict[str, Any]:
    """Legacy search per request: load the tenant's rows (as the seed did), score them all."""
    import sqlalchemy as sa

    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from evals.jaccard import jaccard_search

    out: dict[str, Any] = {}
    statement = sa.text("SELECT node_id, text, metadata_ FROM data_chunks WHERE company_id = :c")
    for bucket, items in plan.items.items():
        latencies, loads = [], []
        for company, query in items[:per_bucket]:
            started = time.perf_counter()
            with tenant(company_id(company)), get_engine().connect() as connection:
                rows = [(r[0], r[1], r[2]) for r in connection.execute(statement, {"c": company_id(company)})]
            loaded = time.perf_counter()
            jaccard_search(queries[query], rows, TOP_K)
            latencies.append(time.perf_counter() - started)
            loads.append(loaded - started)
        out[bucket] = {**latency_summary(latencies), "load_ms_mean": float(np.mean(loads) * 1000)}
    return out


def jaccard_ratio(plan: Plan, queries: list[str], jaccard: dict[str, Any], per_bucket: int, model: Any) -> dict:
    """The same queries through the in-process vector path, for the speed ratio per bucket and overall.

    `store_only` compares like with like (one search over the tenant's rows, the query already
    in the form each method scores); `with_embedding` adds a fresh query embedding (the cache is
    bypassed) to the vector side."""
    out: dict[str, Any] = {"buckets": {}}
    all_pipeline, all_store, all_jaccard = [], [], []
    for bucket, items in plan.items.items():
        pipeline, store = [], []
        for company, query in items[:per_bucket]:
            started = time.perf_counter()
            vector = model._get_text_embedding(queries[query])  # a fresh embedding, never a cache hit
            embedded = time.perf_counter()
            store_search(company_id(company), vector)
            pipeline.append(time.perf_counter() - embedded + (embedded - started))
            store.append(time.perf_counter() - embedded)
        jaccard_ms = jaccard[bucket]["mean"]
        out["buckets"][bucket] = {"jaccard_mean_ms": jaccard_ms, "store_mean_ms": float(np.mean(store) * 1000),
                                  "with_embedding_mean_ms": float(np.mean(pipeline) * 1000),
                                  "store_only": jaccard_ms / (np.mean(store) * 1000),
                                  "with_embedding": jaccard_ms / (np.mean(pipeline) * 1000)}
        all_pipeline += pipeline
        all_store += store
        all_jaccard += [jaccard_ms] * len(store)
    out["jaccard_mean_ms"] = float(np.mean(all_jaccard))
    out["store_mean_ms"] = float(np.mean(all_store) * 1000)
    out["with_embedding_mean_ms"] = float(np.mean(all_pipeline) * 1000)
    out["store_only"] = out["jaccard_mean_ms"] / out["store_mean_ms"]
    out["with_embedding"] = out["jaccard_mean_ms"] / out["with_embedding_mean_ms"]
    return out


def measure_embeddings(texts: list[str], query: str, rounds: int, settings: Settings,
                       log: Any = print) -> dict[str, Any]:
    """Ingestion throughput (chunks/s) and single-query latency per runtime, interleaved rounds;
    each runtime's model is built from a copy of `settings`."""
    from core.embeddings import build_embed_model, embedding_runtime

    if not texts:
        raise ValueError("no texts to embed: the corpus has no chunk of the embedding size")
    models = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        model = build_embed_model(settings.model_copy(update={"embedding_runtime": runtime, "query_cache_size": 0}))
        if embedding_runtime(model) == runtime:
            models[runtime] = model
    vectors = {name: np.asarray(m.get_text_embedding_batch(texts), dtype=np.float32) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    query_times: dict[str, list[float]] = {name: [] for name in models}
    for round_number in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.get_text_embedding_batch(texts)
            times[name].append(time.perf_counter() - started)
            for _ in range(20):
                started = time.perf_counter()
                model.get_query_embedding(query)
                query_times[name].append(time.perf_counter() - started)
        log(f"  embedding round {round_number + 1}/{rounds}: "
            + ", ".join(f"{n} {len(texts) / times[n][-1]:.1f}/s" for n in models))
    reference = vectors["torch"]
    similarity = reference @ reference.T
    out: dict[str, Any] = {"chunks": len(texts), "words_per_chunk": float(np.mean([len(t.split()) for t in texts])),
                           "rounds": rounds, "runtimes": {}}
    for name in models:
        other = vectors[name]
        cosine = (other * reference).sum(axis=1)
        other_similarity = other @ other.T
        overlap = np.mean([len(set(np.argsort(-similarity[i])[1:11]) & set(np.argsort(-other_similarity[i])[1:11]))
                           / 10 for i in range(len(texts))])
        out["runtimes"][name] = {
            "chunks_per_s_median": len(texts) / percentile(times[name], 50),
            "chunks_per_s_best": len(texts) / float(np.min(times[name])),
            "query_ms_p50": percentile(query_times[name], 50) * 1000,
            "cosine_to_fp32_min": float(cosine.min()), "cosine_to_fp32_mean": float(cosine.mean()),
            "top10_overlap_with_fp32": float(overlap)}
    torch_speed = out["runtimes"]["torch"]["chunks_per_s_median"]
    for row in out["runtimes"].values():
        row["speedup_vs_torch"] = row["chunks_per_s_median"] / torch_speed
    return out


def server_environment(environment: dict[str, str]) -> dict[str, str]:
    """The environment (already pointed at the bench database) for the server.

    The per-user search limit is lifted: the benchmark measures the search path, and a
    few bench users send hundreds of requests a minute (the limiter's own cost stays in).
    The query cache is off: the run repeats a few hundred questions, and every request
    should pay for its query embedding as a new question would.
    """
    return environment | {"SEARCH_RATE_PER_MINUTE": "1000000", "LOG_LEVEL": "WARNING", "QUERY_CACHE_SIZE": "0"}


def uvicorn_command(port: int, workers: int = 1) -> list[str]:
    """The app factory under plain uvicorn: the search path without the CLI's start-up work.
    With `workers` > 1, uvicorn's own worker processes on one port, each built by
    `create_worker_app` as under `ils-rag serve --workers N` (the database is already prepared)."""
    factory, extra = ("app.main:create_app", []) if workers <= 1 else (
        "app.main:create_worker_app", ["--workers", str(workers)])
    return [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log", *extra]


def _token(company: str, settings: Settings) -> str:
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token

    number = company_number(company)  # its user exists (database.ensure_users)
    token, _ = issue_access_token(user_id=user_id(number), company_id=company, email=user_email(number),
                                  role="staff", permissions=permissions_for("staff"), settings=settings)
    return token


def measure_http_mode(base_url: str, requests: list[tuple[str, str]], latency_requests: int,
                      mode: str, settings: Settings) -> dict[str, float]:
    """One client's `/api/rag/search` latency in another mode (hybrid: both sides and the fusion), limit 10."""
    import httpx

    tokens = {company: _token(company, settings) for company, _ in requests}
    latencies = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for n, (company, query) in enumerate(requests[: latency_requests + 10]):
            started = time.perf_counter()
            response = client.post("/api/rag/search", json={"query": query, "limit": TOP_K, "mode": mode},
                                   headers={"Authorization": f"Bearer {tokens[company]}"})
            if response.status_code != 200:
                raise RuntimeError(f"/api/rag/search ({mode}) answered {response.status_code}: {response.text[:300]}")
            if n >= 10:  # the first ten warm the connection and caches
                latencies.append(time.perf_counter() - started)
    return latency_summary(latencies)


def measure_http(base_url: str, requests: list[tuple[str, str]], latency_requests: int, concurrency: list[int],
                 duration_s: float, settings: Settings, log: Any = print,
                 cpu_roots: list[int] | None = None) -> dict[str, Any]:
    """`requests`: (company id, query). Vector mode, limit 10, threshold -1 (always 10 back).
    With `cpu_roots` (the server's and the database's pids), each level also reports the CPU
    milliseconds those process trees spent per request (the load generator's own CPU excluded)."""
    import httpx

    tokens = {company: _token(company, settings) for company, _ in requests}

    def call(client: httpx.Client, company: str, query: str) -> int:
        response = client.post("/api/rag/search", json={"query": query, "limit": TOP_K, "mode": "vector",
                                                        "threshold": -1.0},
                               headers={"Authorization": f"Bearer {tokens[company]}"})
        if response.status_code != 200:
            raise RuntimeError(f"/api/rag/search answered {response.status_code}: {response.text[:300]}")
        return len(response.json()["results"])

    with httpx.Client(base_url=base_url, timeout=30) as client:
        for company, query in requests[:10]:  # warm-up: connections, caches
            call(client, company, query + " warmup")
        latencies, short = [], 0
        for company, query in requests[:latency_requests]:
            started = time.perf_counter()
            short += call(client, company, query) < TOP_K
            latencies.append(time.perf_counter() - started)
    out: dict[str, Any] = {"latency_1_client": latency_summary(latencies), "short_share": short / len(latencies),
                           "throughput": {}}

    for clients in concurrency:
        done = [0] * clients
        errors: list[str] = []
        stop = time.perf_counter() + duration_s

        def worker(slot: int, done: list[int] = done, errors: list[str] = errors, stop: float = stop) -> None:
            rng = random.Random(slot)
            with httpx.Client(base_url=base_url, timeout=30) as client:
                while time.perf_counter() < stop:
                    company, query = requests[rng.randrange(len(requests))]
                    try:
                        call(client, company, query)
                        done[slot] += 1
                    except Exception as exc:
                        errors.append(str(exc))
                        return

        cpu_before = tree_cpu_seconds(cpu_roots) if cpu_roots else None
        client_cpu_before = time.process_time()  # this process: the load generator's own CPU
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        level: dict[str, Any] = {"requests": sum(done), "seconds": elapsed, "rps": sum(done) / elapsed,
                                 "errors": len(errors)}
        if cpu_roots and cpu_before is not None and sum(done):
            level["cpu_ms_per_request"] = (tree_cpu_seconds(cpu_roots) - cpu_before) * 1000 / sum(done)
            level["client_cpu_ms_per_request"] = (time.process_time() - client_cpu_before) * 1000 / sum(done)
        out["throughput"][str(clients)] = level
        log(f"  {clients} clients: {sum(done) / elapsed:.1f} req/s")
        if errors:
            raise RuntimeError(f"HTTP errors under load: {errors[0]}")
    return out


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("ils-rag")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app"]


def quality_report_name(runtime: str) -> str:
    """The file name (no suffix) of one runtime's quality report among the benchmark's results."""
    return f"quality-{runtime}"


def runtime_quality(runtimes: list[str], env: dict[str, str], folder: Path, log: Any = print) -> dict[str, Any]:
    """nDCG@10 of vector search on the bundled optical evaluation set, per embedding runtime.

    Runs `ils-rag eval --retrievers vector --runtime R` in a subprocess with the environment
    the benchmark started with (the service's own database, not ils_bench); each runtime
    indexes into its own evaluation companies once, later runs reuse them. Each report is
    written as `folder/quality-R.*`: a name of the benchmark's own, so it is never taken for
    the evaluation's `evals/reports/optical-R.*` (three retrievers, not one)."""
    out: dict[str, Any] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for runtime in runtimes:
        started = time.perf_counter()
        completed = subprocess.run(
            [*_cli(), "eval", "--dataset", str(OPTICAL_DIR), "--retrievers", "vector", "--runtime", runtime,
             "--output", str(folder), "--name", quality_report_name(runtime)], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=3600)
        saved = folder / f"{quality_report_name(runtime)}.json"
        if completed.returncode != 0 or not saved.is_file():
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
            log(f"  quality {runtime}: evaluation failed ({' / '.join(tail)})")
            continue
        report = json.loads(saved.read_text())
        averages = next(r["averages"] for r in report["results"] if r["retriever"] == "vector")
        out[runtime] = {"ndcg_at_10": float(averages["ndcg@10"]), "recall_at_10": float(averages.get("recall@10", 0)),
                        "runtime_loaded": report.get("embedding_runtime", runtime),
                        "seconds": time.perf_counter() - started}
        log(f"  quality {runtime}: nDCG@10 {out[runtime]['ndcg_at_10']:.4f}")
    return out

"""`ils-rag bench search`: the multi-tenant search benchmark at 100,000 chunks.

What it builds (once; later runs reuse it in seconds):

- a store of N chunks over C companies with Zipf-skewed sizes, in an isolated database
  `ils_bench` on the same Postgres server (created if missing, same Alembic migrations);
- vectors that are real MiniLM embeddings of real text (SciFact abstracts cut into
  ~80-word windows, plus the sample knowledge base), each copy perturbed by small
  Gaussian noise and renormalised to reach the count, never uniform random. Texts,
  vectors and tenant assignment are cached as .npy/.json under DATA_DIR/bench;
- the chunk table is bulk-loaded with COPY (psycopg2 copy_expert), with the HNSW index
  dropped during the load and rebuilt after, with the exact DDL the migration created.

What it measures, in one run (CPU contention from other processes is recorded too):

- query/ingestion embedding speed per runtime (torch fp32, onnx, onnx-int8), interleaved;
- store-only filtered search latency and recall@10 against an exact scan, per tenant-size
  bucket, through the service's own path: PGVectorStore.query with company_id AND
  is_active filters inside core.database.tenant(), asking for the top 10 like TenantRetriever;
- `/api/rag/search` over HTTP on loopback against a real uvicorn subprocess pointed at
  the bench database: 1-client latency and throughput with 1/4/8/16 clients;
- the legacy Jaccard search (evals.jaccard) on the same tenants and queries.

Pointing the process at the bench database: `use_bench_database()` sets DATABASE_URL in
this process's environment and clears the cached settings/engines/stores, so everything
imported from core afterwards (migrations included) talks to `ils_bench`; the uvicorn
subprocess inherits the same environment.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SCIFACT_DIR = REPO_ROOT.parent / "shared" / "datasets" / "scifact"  # ../shared beside the checkout
OPTICAL_DIR = REPO_ROOT / "evals" / "datasets" / "optical"
SAMPLES_DIR = REPO_ROOT / "samples"
BENCH_DATABASE = "ils_bench"
STORE_VERSION = "v1"
TOP_K = 10
NDCG_TOLERANCE = 0.01  # an embedding runtime may lose at most this much optical nDCG@10 against torch fp32
NOISE_STD = 0.02  # per dimension: ||noise|| ≈ 0.39, cosine to the source vector ≈ 0.93
# Tenant-size buckets (chunks), upper bound exclusive.
BUCKETS: list[tuple[str, int, int]] = [("tiny", 0, 100), ("small", 100, 1_000), ("medium", 1_000, 5_000),
                                       ("large", 5_000, 10_000), ("huge", 10_000, 10**12)]


# -- corpus ---------------------------------------------------------------------------------
def _windows(text: str, size: int = 80) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + size]) for i in range(0, max(len(words) - size // 2, 1), size)]


def base_texts(limit: int, seed: int = 7) -> list[str]:
    """Real text: every sample-KB paragraph block, then SciFact abstract windows."""
    texts: list[str] = []
    for path in sorted(SAMPLES_DIR.rglob("*")):
        if path.suffix in (".md", ".txt"):
            for block in re.split(r"\n\s*\n", path.read_text(errors="ignore")):
                if len(block.split()) >= 15:
                    texts.extend(_windows(block))
    scifact: list[str] = []
    corpus = SCIFACT_DIR / "corpus.jsonl"
    if corpus.is_file():
        for line in corpus.read_text().splitlines():
            doc = json.loads(line)
            scifact.extend(_windows(f"{doc.get('title', '')}. {doc.get('text', '')}"))
    random.Random(seed).shuffle(scifact)
    return (texts + scifact)[:limit]


def bench_queries(seed: int = 11) -> list[str]:
    """Held-out real questions: the optical evaluation set's questions and SciFact claims."""
    queries: list[str] = []
    for path in (OPTICAL_DIR / "queries.jsonl", SCIFACT_DIR / "queries.jsonl"):
        if path.is_file():
            queries.extend(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    random.Random(seed).shuffle(queries)
    return queries


def zipf_sizes(total: int, companies: int, exponent: float = 1.07, floor: int = 30) -> list[int]:
    """Company sizes ∝ 1/rank^s, at least `floor`, summing exactly to `total` (largest first)."""
    weights = np.array([1.0 / (rank ** exponent) for rank in range(1, companies + 1)])
    sizes = np.maximum(floor, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - int(sizes.sum())
    return sorted((int(s) for s in sizes), reverse=True)


@dataclass
class Store:
    texts: list[str]  # base texts
    base_index: np.ndarray  # chunk -> base text
    vectors: np.ndarray  # chunk vectors, float32, unit length
    company_of: np.ndarray  # chunk -> company number
    sizes: list[int]

    @property
    def chunks(self) -> int:
        return len(self.base_index)


def company_id(number: int) -> str:
    return f"bench-{number:04d}-0000-4000-8000-000000000000"  # uuid-shaped, never numeric-looking


def build_store(cache_dir: Path, chunks: int, companies: int, base_count: int, embed_model: Any,
                log: Any = print) -> tuple[Store, bool]:
    """Load the cached store arrays, or embed the base texts and derive them (returns cached?)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_dir / f"store-{STORE_VERSION}-{chunks}-{companies}-{base_count}"
    files = {k: stem.with_name(f"{stem.name}.{k}") for k in ("texts.json", "base.npy", "vectors.npy", "company.npy")}
    sizes = zipf_sizes(chunks, companies)
    if all(f.is_file() for f in files.values()):
        return Store(json.loads(files["texts.json"].read_text()), np.load(files["base.npy"]),
                     np.load(files["vectors.npy"]), np.load(files["company.npy"]), sizes), True
    texts = base_texts(base_count)
    base_vectors_file = cache_dir / f"base-{STORE_VERSION}-{len(texts)}.npy"
    if base_vectors_file.is_file():
        base = np.load(base_vectors_file)
    else:
        log(f"embedding {len(texts)} base texts (once)...")
        started = time.perf_counter()
        base = np.asarray(embed_model.get_text_embedding_batch(texts), dtype=np.float32)
        log(f"  {len(texts) / (time.perf_counter() - started):.1f} texts/s")
        np.save(base_vectors_file, base)
    rng = np.random.default_rng(42)
    company_of = np.repeat(np.arange(companies), sizes)
    base_index = rng.integers(0, len(texts), size=chunks)
    noisy = base[base_index] + rng.normal(0.0, NOISE_STD, size=(chunks, base.shape[1])).astype(np.float32)
    vectors = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    files["texts.json"].write_text(json.dumps(texts))
    np.save(files["base.npy"], base_index)
    np.save(files["vectors.npy"], vectors)
    np.save(files["company.npy"], company_of)
    return Store(texts, base_index, vectors, company_of, sizes), False


# -- database -------------------------------------------------------------------------------
def bench_database_name(chunks: int, companies: int) -> str:
    """`ils_bench` for the standard store; other shapes get their own database (no reload when switching)."""
    if (chunks, companies) == (BenchOptions.chunks, BenchOptions.companies):
        return BENCH_DATABASE
    return f"{BENCH_DATABASE}_{chunks}_{companies}"


def bench_database_url(main_url: str, name: str = BENCH_DATABASE) -> str:
    from sqlalchemy.engine import make_url

    return make_url(main_url).set(database=name).render_as_string(hide_password=False)


def use_bench_database(name: str = BENCH_DATABASE) -> str:
    """Create the bench database next to the service's and point this process at it."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    import core.database as database
    import core.vector_store as vector_store
    from core.settings import get_settings

    main_url = database.database_url()  # starts the embedded server when DATABASE_URL is unset
    url = bench_database_url(main_url, name)
    admin = sa.create_engine(main_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    settings = get_settings()
    os.environ["DATABASE_URL"] = url
    # The service role (row-level security applies to it) must follow into the bench database.
    if settings.app_database_url:
        os.environ["APP_DATABASE_URL"] = bench_database_url(settings.app_database_url, name)
    elif settings.embedded_database:  # trust authentication on the private socket, as core.database derives it
        os.environ["APP_DATABASE_URL"] = make_url(url).set(username=database.APP_ROLE, password=None).render_as_string(
            hide_password=False)
    get_settings.cache_clear()
    database.reset_engines()
    vector_store.get_vector_store.cache_clear()
    from core.migrate import upgrade

    database.check_database()
    upgrade()
    return url


def _node_metadata(chunk: int, company: str) -> dict[str, Any]:
    """Chunk metadata exactly as ingestion writes it (node_to_metadata_dict + our contract)."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    document = f"doc-{chunk // 8:06d}"
    node = TextNode(id_=f"bench-{chunk}", text="", metadata={
        "company_id": company, "source_document_id": document, "filename": f"{document}.md",
        "category": "bench", "section": None, "uploaded_by": None, "is_active": True})
    return node_to_metadata_dict(node, remove_text=True, flat_metadata=False) | {"ref_doc_id": f"{company}:{document}",
                                                                                  "doc_id": f"{company}:{document}"}


HNSW_INDEX = "data_chunks_embedding_idx"
# Migration 0001's DDL, used when an interrupted load left the index dropped.
HNSW_DDL = (f"CREATE INDEX {HNSW_INDEX} ON public.data_chunks USING hnsw (embedding vector_cosine_ops) "
            "WITH (m='16', ef_construction='64')")


def _build_hnsw(engine: Any, indexdef: str, log: Any) -> None:
    log("building the HNSW index...")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(indexdef)
        cursor.execute("ANALYZE data_chunks")
        raw.commit()
    finally:
        raw.close()


def load_store(store: Store, log: Any = print) -> tuple[bool, float]:
    """Bulk-load the store into data_chunks (skipped when it is already there). Returns (reused, seconds).

    The COPY is one transaction, so an interrupted load leaves no half-filled table; an
    interrupted index build is finished on the next run."""
    import sqlalchemy as sa

    from core.database import get_admin_engine
    from core.tenant_indexes import INDEX_PREFIX

    engine = get_admin_engine()  # the owner: bulk load and DDL across every bench tenant (maintenance, not a request)
    with engine.begin() as connection:
        if not str(connection.execute(sa.text("SELECT current_database()")).scalar()).startswith(BENCH_DATABASE):
            raise RuntimeError("refusing to load the benchmark into a database other than a bench database")
        chunks = connection.execute(sa.text("SELECT count(*) FROM data_chunks")).scalar()
        companies = connection.execute(sa.text("SELECT count(*) FROM companies WHERE slug LIKE 'bench-%'")).scalar()
        indexdef = connection.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'data_chunks' AND indexname = :i"),
            {"i": HNSW_INDEX}).scalar()
    started = time.perf_counter()
    if chunks == store.chunks and companies == len(store.sizes):
        if indexdef:
            return True, 0.0
        _build_hnsw(engine, HNSW_DDL, log)
        return True, time.perf_counter() - started
    log(f"loading {store.chunks} chunks with COPY...")
    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE data_chunks, data_docstore, documents, companies CASCADE"))
        connection.execute(sa.text("INSERT INTO companies (id, slug, name) VALUES (:id, :slug, :name)"),
                           [{"id": company_id(n), "slug": f"bench-{n:04d}", "name": f"Bench practice {n}"}
                            for n in range(len(store.sizes))])
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))  # one bulk build beats 100k inserts
        for name in connection.execute(sa.text(  # the per-tenant ones too: rebuilt after the load
                "SELECT indexname FROM pg_indexes WHERE tablename = 'data_chunks' AND starts_with(indexname, :p)"),
                {"p": INDEX_PREFIX}).scalars().all():
            connection.execute(sa.text(f'DROP INDEX IF EXISTS "{name}"'))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        step = 10_000
        for start in range(0, store.chunks, step):
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            block = store.vectors[start:start + step]
            formatted = io.StringIO()
            np.savetxt(formatted, block, fmt="%.7g", delimiter=",")
            for offset, line in enumerate(formatted.getvalue().splitlines()):
                chunk = start + offset
                company = company_id(int(store.company_of[chunk]))
                writer.writerow([store.texts[int(store.base_index[chunk])],
                                 json.dumps(_node_metadata(chunk, company)), f"bench-{chunk}", f"[{line}]"])
            buffer.seek(0)
            cursor.copy_expert("COPY data_chunks (text, metadata_, node_id, embedding) FROM STDIN WITH (FORMAT csv)",
                               buffer)
            log(f"  {min(start + step, store.chunks)}/{store.chunks}")
        raw.commit()
    finally:
        raw.close()
    _build_hnsw(engine, indexdef or HNSW_DDL, log)
    return False, time.perf_counter() - started


def store_size() -> dict[str, float]:
    import sqlalchemy as sa

    from core.database import get_admin_engine

    with get_admin_engine().connect() as connection:  # counts every tenant's rows
        row = connection.execute(sa.text(
            "SELECT pg_total_relation_size('data_chunks'), pg_relation_size('data_chunks'), "
            "pg_relation_size('data_chunks_embedding_idx'), pg_indexes_size('data_chunks'), count(*) "
            "FROM data_chunks")).one()
    total, heap, hnsw, indexes, count = (int(v) for v in row)
    return {"total_bytes": total, "heap_bytes": heap, "hnsw_bytes": hnsw, "indexes_bytes": indexes,
            "bytes_per_chunk": total / max(count, 1), "chunks_per_gb": count / (total / 1e9)}


# -- contention ---------------------------------------------------------------------------
def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_jiffies(root_pids: list[int]) -> int:
    """CPU jiffies used so far by these processes and all their descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    reaped = os.times()  # children that already exited (eval runs, a stopped server) keep counting as ours
    total = int((reaped.children_user + reaped.children_system) * os.sysconf("SC_CLK_TCK"))
    todo, seen = list(root_pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += int(stats[pid][11]) + int(stats[pid][12])  # utime + stime
        todo.extend(children.get(pid, []))
    return total


class Contention:
    """Samples, once a second, the load average and the share of machine CPU time that went
    to processes outside this benchmark (its own process tree plus the Postgres server).

    On a shared machine the timings are only meaningful next to these numbers; each phase
    of the run gets its own summary."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.roots = [os.getpid()]
        self.samples: list[tuple[float, float, float]] = []  # (load1, machine busy share, others' share)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._marks: list[tuple[str, int]] = []

    def add_root(self, pid: int | None) -> None:
        if pid and pid not in self.roots:
            self.roots.append(pid)

    def _loop(self) -> None:
        busy, total = _cpu_jiffies()
        own = _own_jiffies(self.roots)
        while not self._stop.wait(self.interval_s):
            busy2, total2 = _cpu_jiffies()
            own2 = _own_jiffies(self.roots)
            span = max(total2 - total, 1)
            others = min(busy2 - busy, max(0, (busy2 - busy) - (own2 - own)))
            self.samples.append((os.getloadavg()[0], (busy2 - busy) / span, others / span))
            busy, total, own = busy2, total2, own2

    def start(self) -> Contention:
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        self._marks.append((phase, len(self.samples)))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        phases: dict[str, Any] = {}
        bounds = [*self._marks, ("end", len(self.samples))]
        for (name, start), (_, end) in itertools.pairwise(bounds):
            window = self.samples[start:end] or self.samples[max(0, start - 1):start + 1]
            if window:
                phases[name] = {"seconds": len(window) * self.interval_s,
                                "load1_mean": float(np.mean([w[0] for w in window])),
                                "load1_max": float(np.max([w[0] for w in window])),
                                "cpu_busy_pct": float(np.mean([w[1] for w in window]) * 100),
                                "cpu_others_pct": float(np.mean([w[2] for w in window]) * 100)}
        return phases


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def postmaster_pid() -> int | None:
    """The embedded Postgres server's pid (its backends do the store's work), if it runs here."""
    from core.settings import get_settings

    settings = get_settings()
    pid_file = settings.pgdata_dir / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0]) if pid_file.is_file() else None
    except (OSError, ValueError, IndexError):
        return None


# -- measurements ---------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    array = np.asarray(values) * 1000.0
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean()), "n": len(values)}


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

    from core.database import tenant
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
        out[bucket] = {**percentiles(latencies), "recall_at_10": float(np.mean(recalls)),
                       "short_share": short / len(items), "queries": len(items),
                       "tenant_sizes": [sizes[0], sizes[-1]]}
    return out


def measure_jaccard(store: Store, plan: Plan, queries: list[str], per_bucket: int) -> dict[str, Any]:
    """Legacy search per request: load the tenant's rows (as the seed did), score them all."""
    import sqlalchemy as sa

    from core.database import get_engine, tenant
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
        out[bucket] = {**percentiles(latencies), "load_ms_mean": float(np.mean(loads) * 1000)}
    return out


def measure_embeddings(texts: list[str], query: str, rounds: int, log: Any = print) -> dict[str, Any]:
    """Ingestion throughput (chunks/s) and single-query latency per runtime, interleaved rounds."""
    from core.embeddings import build_embed_model, embedding_runtime
    from core.settings import get_settings

    base = get_settings()
    models = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        model = build_embed_model(base.model_copy(update={"embedding_runtime": runtime, "query_cache_size": 0}))
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
            "chunks_per_s_median": len(texts) / float(np.median(times[name])),
            "chunks_per_s_best": len(texts) / float(np.min(times[name])),
            "query_ms_p50": float(np.median(query_times[name]) * 1000),
            "cosine_to_fp32_min": float(cosine.min()), "cosine_to_fp32_mean": float(cosine.mean()),
            "top10_overlap_with_fp32": float(overlap)}
    torch_speed = out["runtimes"]["torch"]["chunks_per_s_median"]
    for row in out["runtimes"].values():
        row["speedup_vs_torch"] = row["chunks_per_s_median"] / torch_speed
    return out


# -- HTTP -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment() -> dict[str, str]:
    """This process's environment (already pointed at the bench database) for the server.

    The per-user search limit is lifted: the benchmark measures the search path, and a
    few bench users send hundreds of requests a minute (the limiter's own cost stays in).
    The query cache is off: the run repeats a few hundred questions, and every request
    should pay for its query embedding as a new question would.
    """
    return os.environ | {"SEARCH_RATE_PER_MINUTE": "1000000", "LOG_LEVEL": "WARNING", "QUERY_CACHE_SIZE": "0"}


class Server:
    """The real service, `uvicorn app.main:create_app --factory`, on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=REPO_ROOT, env=server_environment(), stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self._log.name}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not become healthy in {timeout:.0f}s; see {self._log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def _token(company: str) -> str:
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token

    token, _ = issue_access_token(user_id=f"bench-user-{company[6:10]}", company_id=company,
                                  email=f"bench+{company[6:10]}@example.com", role="staff",
                                  permissions=permissions_for("staff"))
    return token


def measure_http(base_url: str, requests: list[tuple[str, str]], latency_requests: int, concurrency: list[int],
                 duration_s: float, log: Any = print) -> dict[str, Any]:
    """`requests`: (company id, query). Vector mode, limit 10, threshold -1 (always 10 back)."""
    import httpx

    tokens = {company: _token(company) for company, _ in requests}

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
    out: dict[str, Any] = {"latency_1_client": percentiles(latencies), "short_share": short / len(latencies),
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

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        out["throughput"][str(clients)] = {"requests": sum(done), "seconds": elapsed,
                                          "rps": sum(done) / elapsed, "errors": len(errors)}
        log(f"  {clients} clients: {sum(done) / elapsed:.1f} req/s")
        if errors:
            raise RuntimeError(f"HTTP errors under load: {errors[0]}")
    return out


# -- report ---------------------------------------------------------------------------------
def quality_runtime(embed: dict[str, Any]) -> str | None:
    """The fastest runtime whose optical nDCG@10 is within NDCG_TOLERANCE of torch fp32."""
    rows = embed["runtimes"]
    eligible = [n for n, r in rows.items() if n != "torch" and abs(r.get("ndcg_delta_vs_fp32", 1.0)) <= NDCG_TOLERANCE]
    return max(eligible, key=lambda n: rows[n]["speedup_vs_torch"], default=None)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, goal: float, higher_is_better: bool, unit: str) -> None:
        met = value >= goal if higher_is_better else value <= goal
        rows.append({"target": name, "value": value, "goal": goal, "unit": unit, "met": bool(met)})

    http = result.get("http")
    if http:
        add("E2E 1 client p50", http["latency_1_client"]["p50"], 25, False, "ms")
        add("E2E 1 client p95", http["latency_1_client"]["p95"], 60, False, "ms")
        add("throughput, 8 clients", http["throughput"].get("8", {}).get("rps", 0.0), 60, True, "req/s")
    for bucket, row in result["store_search"].items():
        add(f"recall@10 {bucket}", row["recall_at_10"], 0.95, True, "")
        add(f"short share {bucket}", row["short_share"] * 100, 0.0, False, "%")
    add("vector search vs Jaccard (store query)", result["jaccard_ratio"]["store_only"], 50, True, "×")
    embed = result.get("embedding")
    if embed:
        chosen = quality_runtime(embed)
        if chosen is None:  # no quality numbers (or none within tolerance): the fastest, flagged by its nDCG row
            chosen = max((n for n in embed["runtimes"] if n != "torch"),
                         key=lambda n: embed["runtimes"][n]["speedup_vs_torch"], default=None)
        if chosen:
            row = embed["runtimes"][chosen]
            add(f"ingestion embedding vs torch fp32 ({chosen})", row["speedup_vs_torch"], 2.0, True, "×")
            if "ndcg_delta_vs_fp32" in row:
                add(f"optical nDCG@10 change vs fp32 ({chosen})", abs(row["ndcg_delta_vs_fp32"]), NDCG_TOLERANCE,
                    False, "")
    return rows


def markdown(result: dict[str, Any]) -> str:
    store = result["store"]
    machine = result["machine"]
    lines = [f"# Search benchmark — {result['created_at']}", "",
             f"Command: `{result['command']}` (revision {result.get('revision', '?')}, "
             f"{result.get('seconds', 0) / 60:.1f} min)  ",
             f"Machine: {machine['cpus']} CPUs; `uptime` at start: {machine.get('uptime_start', '')}; at end: "
             f"{machine.get('uptime_end', '')}.  ",
             f"Store: {store['chunks']:,} chunks over {store['companies']} companies (largest "
             f"{store['largest_share'] * 100:.1f}%, smallest {store['smallest']} chunks), "
             f"{store['size']['total_bytes'] / 1e6:.0f} MB with indexes = {store['size']['bytes_per_chunk']:.0f} "
             f"B/chunk ({store['size']['chunks_per_gb']:,.0f} chunks/GB). Embedding runtime: "
             f"`{result['embedding_runtime']}`.", "",
             "## Store-only filtered search (PGVectorStore + company_id/is_active filters, top-10)", "",
             "| bucket | tenant sizes | queries | p50 ms | p95 ms | p99 ms | recall@10 | short |",
             "|---|---|---|---|---|---|---|---|"]
    for bucket, row in result["store_search"].items():
        lines.append(f"| {bucket} | {row['tenant_sizes'][0]}–{row['tenant_sizes'][1]} | {row['queries']} | "
                     f"{row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} | {row['recall_at_10']:.3f} | "
                     f"{row['short_share'] * 100:.1f}% |")
    http = result.get("http")
    if http:
        lat = http["latency_1_client"]
        lines += ["", "## `/api/rag/search` over HTTP (uvicorn, loopback, vector mode, limit 10)", "",
                  f"1 client: p50 {lat['p50']:.1f} ms · p95 {lat['p95']:.1f} ms · p99 {lat['p99']:.1f} ms "
                  f"({lat['n']} requests)", "", "| clients | req/s |", "|---|---|"]
        lines += [f"| {c} | {row['rps']:.1f} |" for c, row in http["throughput"].items()]
    lines += ["", "## Legacy Jaccard (load the tenant's rows + score in Python, per request)", "",
              "| bucket | p50 ms | p95 ms | mean ms | of which loading ms |", "|---|---|---|---|---|"]
    for bucket, row in result["jaccard"].items():
        lines.append(f"| {bucket} | {row['p50']:.1f} | {row['p95']:.1f} | {row['mean']:.1f} | "
                     f"{row['load_ms_mean']:.1f} |")
    ratio = result["jaccard_ratio"]
    lines += ["", "Speed-up over the same queries and tenants (mean latency ratio):", "",
              "| bucket | Jaccard ms | vector store ms | × (store) | with query embedding ms | × (with embedding) |",
              "|---|---|---|---|---|---|"]
    for bucket, row in ratio["buckets"].items():
        lines.append(f"| {bucket} | {row['jaccard_mean_ms']:.1f} | {row['store_mean_ms']:.2f} | "
                     f"{row['store_only']:.0f}× | {row['with_embedding_mean_ms']:.1f} | {row['with_embedding']:.1f}× |")
    lines.append(f"| **all** | {ratio['jaccard_mean_ms']:.1f} | {ratio['store_mean_ms']:.2f} | "
                 f"**{ratio['store_only']:.0f}×** | {ratio['with_embedding_mean_ms']:.1f} | "
                 f"{ratio['with_embedding']:.1f}× |")
    embed = result.get("embedding")
    if embed:
        lines += ["", f"## Embedding runtimes ({embed['chunks']} chunks of ~{embed['words_per_chunk']:.0f} words, "
                  f"{embed['rounds']} interleaved rounds)", "",
                  "| runtime | chunks/s (median) | × torch | query ms p50 | cosine to fp32 (min / mean) | "
                  "top-10 overlap | optical nDCG@10 | Δ vs fp32 |", "|---|---|---|---|---|---|---|---|"]
        for name, row in embed["runtimes"].items():
            ndcg = f"{row['optical_ndcg_at_10']:.4f}" if "optical_ndcg_at_10" in row else "–"
            delta = f"{row['ndcg_delta_vs_fp32']:+.4f}" if "ndcg_delta_vs_fp32" in row else "–"
            lines.append(f"| {name} | {row['chunks_per_s_median']:.1f} | {row['speedup_vs_torch']:.2f} | "
                         f"{row['query_ms_p50']:.2f} | {row['cosine_to_fp32_min']:.4f} / "
                         f"{row['cosine_to_fp32_mean']:.4f} | {row['top10_overlap_with_fp32']:.3f} | {ndcg} | "
                         f"{delta} |")
    phases = machine.get("phases") or {}
    if phases:
        lines += ["", "## Contention (other processes on the same cores, sampled every second)", "",
                  "| phase | seconds | load avg (mean / max) | machine CPU busy | used by other processes |",
                  "|---|---|---|---|---|"]
        for name, row in phases.items():
            lines.append(f"| {name} | {row['seconds']:.0f} | {row['load1_mean']:.1f} / {row['load1_max']:.1f} | "
                         f"{row['cpu_busy_pct']:.0f}% | {row['cpu_others_pct']:.0f}% |")
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for row in result["targets"]:
        lines.append(f"| {row['target']} | {row['value']:.3g} {row['unit']} | {row['goal']:g} {row['unit']} | "
                     f"{'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    buckets = list(result["store_search"])
    for key, offset in (("p50", -0.25), ("p95", 0), ("p99", 0.25)):
        axes[0].bar(np.arange(len(buckets)) + offset, [result["store_search"][b][key] for b in buckets], 0.25,
                    label=key)
    axes[0].set_xticks(range(len(buckets)), buckets)
    axes[0].set_ylabel("ms")
    axes[0].set_title("store-only filtered search latency")
    axes[0].legend()
    ratio = result["jaccard_ratio"]["buckets"]  # the same queries on the same tenants, both ways
    for key, offset, label in (("store_mean_ms", -0.27, "vector (store query)"),
                               ("with_embedding_mean_ms", 0.0, "vector + query embedding"),
                               ("jaccard_mean_ms", 0.27, "legacy Jaccard")):
        axes[1].bar(np.arange(len(buckets)) + offset, [ratio[b][key] for b in buckets], 0.27, label=label)
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(buckets)), buckets)
    axes[1].set_ylabel("mean ms (log)")
    axes[1].set_title("vector vs Jaccard per request")
    axes[1].legend()
    http = result.get("http")
    if http:
        clients = list(http["throughput"])
        axes[2].plot([int(c) for c in clients], [http["throughput"][c]["rps"] for c in clients], marker="o")
        axes[2].axhline(60, color="grey", linestyle="--", label="target 60 req/s @ 8")
        axes[2].set_ylim(bottom=0)
        axes[2].set_xlabel("concurrent clients")
        axes[2].set_ylabel("req/s")
        axes[2].set_title(f"/api/rag/search throughput (1-client p50 {http['latency_1_client']['p50']:.1f} ms)")
        axes[2].legend()
    fig.suptitle(f"ILS RAG search benchmark · {result['store']['chunks']:,} chunks · "
                 f"{result['store']['companies']} companies · {result['created_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------
@dataclass
class BenchOptions:
    chunks: int = 100_000
    companies: int = 200
    base_texts: int = 4_000
    queries_per_bucket: int = 100
    jaccard_queries_per_bucket: int = 15
    http_latency_requests: int = 200
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    duration_s: float = 10.0
    embed_chunks: int = 128
    embed_rounds: int = 3
    skip_http: bool = False
    skip_embedding: bool = False
    skip_quality: bool = False
    results_dir: Path = RESULTS_DIR
    command: str = "ils-rag bench search"


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


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("ils-rag")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from app.cli import main; main()"]


def runtime_quality(runtimes: list[str], env: dict[str, str], folder: Path, log: Any = print) -> dict[str, Any]:
    """nDCG@10 of vector search on the bundled optical evaluation set, per embedding runtime.

    Runs `ils-rag eval --retrievers vector --runtime R` in a subprocess with the environment
    the benchmark started with (the service's own database, not ils_bench); each runtime
    indexes into its own evaluation companies once, later runs reuse them."""
    out: dict[str, Any] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for runtime in runtimes:
        started = time.perf_counter()
        completed = subprocess.run(
            [*_cli(), "eval", "--dataset", str(OPTICAL_DIR), "--retrievers", "vector", "--runtime", runtime,
             "--output", str(folder)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
        reports = sorted(folder.glob(f"*-{runtime}.json"), key=lambda p: p.stat().st_mtime)
        if completed.returncode != 0 or not reports:
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
            log(f"  quality {runtime}: evaluation failed ({' / '.join(tail)})")
            continue
        report = json.loads(reports[-1].read_text())
        averages = next(r["averages"] for r in report["results"] if r["retriever"] == "vector")
        out[runtime] = {"ndcg_at_10": float(averages["ndcg@10"]), "recall_at_10": float(averages.get("recall@10", 0)),
                        "runtime_loaded": report.get("embedding_runtime", runtime),
                        "seconds": time.perf_counter() - started}
        log(f"  quality {runtime}: nDCG@10 {out[runtime]['ndcg_at_10']:.4f}")
    return out


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(options: BenchOptions, log: Any = print) -> dict[str, Any]:
    from core.embeddings import embedding_runtime, get_embed_model
    from core.settings import get_settings
    from core.tenant_indexes import sync_tenant_indexes, tenant_index_summary

    started_at = time.perf_counter()
    original_env = os.environ.copy()  # the service's database, for the quality runs
    monitor = Contention().start()
    monitor.mark("setup")
    uptime_start = uptime()
    log(f"machine: {uptime_start}")
    use_bench_database(bench_database_name(options.chunks, options.companies))
    monitor.add_root(postmaster_pid())
    settings = get_settings()
    model = get_embed_model()
    store, cached = build_store(settings.data_dir.resolve() / "bench", options.chunks, options.companies,
                                options.base_texts, model, log)
    reused, load_seconds = load_store(store, log)
    log(f"store: {store.chunks} chunks, {len(store.sizes)} companies (arrays {'cached' if cached else 'built'}, "
        f"table {'reused' if reused else f'loaded in {load_seconds:.0f}s'})")
    indexes = sync_tenant_indexes(on_build=lambda company, chunks: log(f"  tenant HNSW index: {chunks} chunks"))
    log(f"tenant indexes: {tenant_index_summary()} ({len(indexes.built)} built in {indexes.seconds:.0f}s)")
    queries = bench_queries()
    query_cache = settings.data_dir.resolve() / "bench" / f"queries-{STORE_VERSION}-{len(queries)}.npy"
    if query_cache.is_file():
        query_vectors = np.load(query_cache)
    else:
        query_vectors = np.asarray(model.get_text_embedding_batch(queries), dtype=np.float32)
        np.save(query_cache, query_vectors)
    plan = make_plan(store, len(queries), options.queries_per_bucket)
    # Warm-up, as a server that has been taking traffic is: the pool, the index pages, and one
    # search per tenant of the plan, so each tenant's plan facts (chunk count, own index) are in
    # the store's cache (core.vector_store, 5-minute TTL) as they are for any active practice.
    warm = {company: query for items in plan.items.values() for company, query in items}
    for company, query in warm.items():
        store_search(company_id(company), query_vectors[query].tolist())
    log("store-only search...")
    monitor.mark("store_search")
    store_result = measure_store(store, plan, query_vectors)
    log("legacy Jaccard...")
    monitor.mark("jaccard")
    jaccard_result = measure_jaccard(store, plan, queries, options.jaccard_queries_per_bucket)
    ratio = jaccard_ratio(plan, queries, jaccard_result, options.jaccard_queries_per_bucket, model)
    result: dict[str, Any] = {
        "created_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "command": options.command,
        "revision": git_revision(),
        "machine": {"cpus": os.cpu_count(), "uptime_start": uptime_start,
                    "load_start": round(os.getloadavg()[0], 2)},
        "embedding_runtime": embedding_runtime(model),
        "store": {"chunks": store.chunks, "companies": len(store.sizes), "largest_share": store.sizes[0] / store.chunks,
                  "smallest": store.sizes[-1], "base_texts": len(store.texts), "noise_std": NOISE_STD,
                  "load_seconds": load_seconds, "size": store_size(),
                  "tenant_indexes": {"min_chunks": settings.tenant_index_min_chunks,
                                     "companies": sum(1 for size in store.sizes
                                                      if settings.tenant_index_min_chunks
                                                      and size >= settings.tenant_index_min_chunks),
                                     "built_now": len(indexes.built), "build_seconds": indexes.seconds},
                  "buckets": {b: sum(1 for s in store.sizes if bucket_of(s) == b) for b, _, _ in BUCKETS}},
        "store_search": store_result, "jaccard": jaccard_result, "jaccard_ratio": ratio,
    }
    if not options.skip_http:
        log("HTTP: starting the server...")
        monitor.mark("http")
        options.results_dir.mkdir(parents=True, exist_ok=True)
        server = Server(settings.data_dir.resolve() / "bench" / "server.log")  # not a result: DATA_DIR
        monitor.add_root(server.process.pid)
        try:
            server.wait()
            requests = [(company_id(c), queries[q]) for items in plan.items.values() for c, q in items]
            random.Random(5).shuffle(requests)
            result["http"] = measure_http(server.base_url, requests, options.http_latency_requests,
                                          list(options.concurrency), options.duration_s, log)
        finally:
            server.stop()
    if not options.skip_embedding:
        log("embedding runtimes...")
        monitor.mark("embedding")
        chunk_texts = [" ".join(t.split()[:200]) for t in _embedding_texts(options.embed_chunks)]
        result["embedding"] = measure_embeddings(chunk_texts, queries[0], options.embed_rounds, log)
        if not options.skip_quality:
            log("retrieval quality per runtime (ils-rag eval on the optical set)...")
            monitor.mark("quality")
            quality = runtime_quality(list(result["embedding"]["runtimes"]), original_env,
                                      options.results_dir / "eval", log)
            for name, row in result["embedding"]["runtimes"].items():
                if name in quality:
                    row["optical_ndcg_at_10"] = quality[name]["ndcg_at_10"]
                    if "torch" in quality:
                        row["ndcg_delta_vs_fp32"] = quality[name]["ndcg_at_10"] - quality["torch"]["ndcg_at_10"]
    result["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    result["machine"]["uptime_end"] = uptime()
    result["machine"]["phases"] = monitor.stop()
    result["seconds"] = time.perf_counter() - started_at
    result["targets"] = targets(result)
    write_results(result, options.results_dir)
    return result


def _embedding_texts(count: int) -> list[str]:
    """~200-word chunks (SciFact abstracts), the size ingestion produces for this model."""
    texts = []
    for line in (SCIFACT_DIR / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        words = f"{doc.get('title', '')} {doc.get('text', '')}".split()
        if len(words) >= 200:
            texts.append(" ".join(words[:200]))
        if len(texts) >= count:
            break
    return texts


def write_results(result: dict[str, Any], directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    paths = {"json": directory / f"search-{stamp}.json", "md": directory / f"search-{stamp}.md",
             "png": directory / f"search-{stamp}.png"}
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(markdown(result))
    chart(result, paths["png"])
    for kind, path in paths.items():
        latest = directory / f"search-latest.{kind}"
        latest.write_bytes(path.read_bytes())
    return paths


def summary_lines(result: dict[str, Any]) -> list[str]:
    return [f"{row['target']}: {row['value']:.3g}{row['unit']} (goal {row['goal']:g}) "
            f"{'met' if row['met'] else 'MISSED'}" for row in result["targets"]]


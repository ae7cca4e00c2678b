"""Run a BEIR-format dataset through the service's own ingestion pipeline and retrievers.

The corpus is indexed into isolated evaluation companies (one per `company` field, or one
for the whole corpus) with `indexing.pipeline.index_sources`, the code path uploads and
folders take; queries go through `retrieval.retriever.TenantRetriever`, the retriever the
search API and chat use. Only the legacy Jaccard baseline is scored here, as the seed did.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from llama_index.core.schema import NodeWithScore
from rich.console import Console
from sqlalchemy import select

from auth.models import Company
from auth.users import create_company
from core.db.engines import get_engine
from core.db.owner import admin_session_scope
from core.db.tenant_scope import tenant
from core.embeddings import embedding_runtime, get_embed_model
from core.search_modes import MODE_NAMES
from core.settings import Settings
from core.tenant_indexes import sync_tenant_indexes
from core.terminal import plural, progress
from evals.beir import CorpusDoc, Dataset, Query, load_dataset
from evals.embedding_cache import CachedEmbedding
from evals.jaccard import jaccard_search
from evals.metrics import METRICS, average, percentile, query_metrics
from evals.report import EvalReport, RetrieverResult
from indexing.pipeline import index_sources
from indexing.readers import Part, text_parts
from indexing.sources import Source, content_hash

# jaccard: the legacy word-overlap floor; ts_rank: the text ranking before BM25 (PGVectorStore's
# TEXT_SEARCH, Postgres ts_rank), kept beside `text` (BM25) for comparison.
RETRIEVERS = ("jaccard", "ts_rank", *MODE_NAMES)
DOC_DEPTH = 100  # documents ranked per query (recall@100)
CHUNK_DEPTH = 200  # chunks fetched to fill DOC_DEPTH documents
INDEX_BATCH = 128
THRESHOLDS = [round(0.05 * i, 2) for i in range(0, 17)]
RECALL_FLOOR = 0.95  # share of relevant top-5 documents the recommended threshold must keep


@dataclass
class Ranked:
    doc_ids: list[str]
    scores: list[float]  # best score per document, in rank order
    seconds: float


def index_fingerprint(settings: Settings) -> str:
    """What decides the chunks and vectors of an indexed corpus: backend, model, runtime, chunk
    plan, Markdown sectioning and chunk context (CHUNK_CONTEXT). It is part of the evaluation
    company's slug, so a run with another runtime or chunking indexes into its own companies
    instead of scoring stale vectors."""
    from indexing.chunking import chunk_plan

    plan = chunk_plan(get_embed_model())
    raw = (f"{model_key(settings)}|{plan.chunk_size}|{plan.chunk_overlap}|sections|whole-rows"
           f"|context={settings.chunk_context}")
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def model_key(settings: Settings) -> str:
    """backend:model:runtime, with the runtime actually loaded (after any fallback to torch)."""
    return f"{settings.embedding_backend}:{settings.embedding_model}:{embedding_runtime(get_embed_model())}"


def eval_company_slug(dataset: str, company: str | None, fingerprint: str = "") -> str:
    raw = f"eval-{dataset}-{company or 'corpus'}" + (f"-{fingerprint}" if fingerprint else "")
    raw = raw.lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    if len(slug) > 63:
        slug = slug[:54] + "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return slug


def ensure_company(slug: str) -> str:
    with admin_session_scope() as session:  # companies are created by the owner
        company = session.scalar(select(Company).where(Company.slug == slug))
        if company is None:
            company = create_company(session, slug, f"Evaluation ({slug})")
        return company.id


def cached_embedder(cache_dir: Path, settings: Settings) -> CachedEmbedding:
    """The service's model behind a disk cache keyed by backend, model, runtime and text
    (int8 vectors differ from fp32 ones, so runtimes never share entries)."""
    key = model_key(settings)
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", key)
    return CachedEmbedding(get_embed_model(), cache_dir / f"{name}.sqlite", key)


def _stale(company_id: str, docs: dict[str, str]) -> list[str]:
    """Corpus ids whose registry row is missing, not indexed, or holds other content."""
    with tenant(company_id), get_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT source_key, content_hash, status FROM documents WHERE company_id = :c"), {"c": company_id}).all()
    current = {row.source_key: (row.content_hash, row.status) for row in rows}
    return [doc_id for doc_id, digest in docs.items() if current.get(doc_id) != (digest, "indexed")]


def indexed_text(doc: CorpusDoc, settings: Settings) -> str:
    """What a corpus document's file holds: title and text joined (MTEB's way), unless chunk
    context reaches the text-search index; then its text alone, the title travelling as every
    chunk's context instead of being counted twice in the first one."""
    return doc.text if doc.title and settings.chunk_context in ("text", "both") else doc.content


def corpus_parts(doc: CorpusDoc, settings: Settings) -> list[Part]:
    """The document as an upload of its file would be parsed (Markdown by sections), titled."""
    parts = text_parts(doc.id, indexed_text(doc, settings))
    if doc.title:
        parts[0] = Part(parts[0].text, {**parts[0].metadata, "title": doc.title})
    return parts


def _index_batch(company_id: str, docs: dict[str, Any], hashes: dict[str, str], embedder: CachedEmbedding,
                 settings: Settings, doc_ids: list[str]) -> tuple[int, list[Any]]:
    sources = [Source(source_key=doc.id, filename=doc.id, data_hash=hashes[doc.id],
                      size_bytes=len(indexed_text(doc, settings).encode()), parts=corpus_parts(doc, settings))
               for doc in (docs[doc_id] for doc_id in doc_ids) if indexed_text(doc, settings).strip()]
    outcomes = index_sources(company_id, sources, settings=settings, embed_model=embedder)
    return len(doc_ids), [o for o in outcomes if o.action == "failed"]


def index_corpus(dataset: Dataset, embedder: CachedEmbedding, console: Console, settings: Settings,
                 workers: int = 1) -> dict[str | None, str]:
    """Index each company's share of the corpus; unchanged documents are skipped.

    With `workers` > 1 that many batches go through the pipeline at once, so one batch's
    Postgres writes overlap another's embedding (each batch holds its own documents' locks)."""
    companies: dict[str | None, str] = {}
    fingerprint = index_fingerprint(settings)
    for company in dataset.companies:
        company_id = ensure_company(eval_company_slug(dataset.name, company, fingerprint))
        companies[company] = company_id
        docs = {doc.id: doc for doc in dataset.corpus if doc.company == company}
        hashes = {doc_id: content_hash(indexed_text(doc, settings).encode()) for doc_id, doc in docs.items()}
        todo = _stale(company_id, hashes)
        if not todo:
            continue

        index_batch = partial(_index_batch, company_id, docs, hashes, embedder, settings)
        batches = [todo[start:start + INDEX_BATCH] for start in range(0, len(todo), INDEX_BATCH)]
        title = f"indexing {company or dataset.name}"
        with progress(title, not console.quiet, transient=True) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task("documents", total=len(todo))
            for done, failed in pool.map(index_batch, batches):
                if failed:
                    console.print(f"[yellow]{plural(len(failed), 'document')} failed to index, e.g. "
                                  f"{failed[0].source_key}: {failed[0].reason}")
                bar.advance(task, done)
    return companies



def _dedupe(nodes: Iterable[tuple[str, float]], depth: int) -> tuple[list[str], list[float]]:
    seen: dict[str, float] = {}
    for doc_id, score in nodes:
        if doc_id not in seen:
            seen[doc_id] = score
            if len(seen) == depth:
                break
    return list(seen), list(seen.values())


def service_retriever(mode: str, company_id: str, settings: Settings) -> Callable[[str], list[NodeWithScore]]:
    from retrieval.retriever import TenantRetriever

    # threshold -1: every candidate is ranked; the threshold is studied separately below
    if mode == "ts_rank":
        retriever = TenantRetriever(company_id, mode="text", top_k=CHUNK_DEPTH, threshold=-1.0, order="rank",
                                    text_ranking="ts_rank", settings=settings)
    else:
        retriever = TenantRetriever(company_id, mode=mode, top_k=CHUNK_DEPTH,  # type: ignore[arg-type]
                                    threshold=-1.0, order="rank", settings=settings)
    return retriever.retrieve


def company_chunks(company_id: str) -> list[tuple[str, str, dict]]:
    with tenant(company_id), get_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT node_id, text, metadata_ FROM data_chunks WHERE company_id = :c "
            "AND metadata_->>'is_active' = 'true'"), {"c": company_id}).all()
    return [(row.node_id, row.text, row.metadata_) for row in rows]


def _fresh_query_vectors() -> None:
    """Empty the model's in-process query LRU, so every retriever pays for its query
    embeddings (otherwise the first retriever would, and the later ones would look faster)."""
    cache = getattr(get_embed_model(), "_query_cache", None)
    if cache is not None:
        cache.clear()


def run_queries(name: str, queries: list[Query], companies: dict[str | None, str],
                console: Console, settings: Settings, workers: int = 1) -> dict[str, Ranked]:
    """Run every query, timing each one. With `workers` > 1, that many queries are in flight
    at once: the run is mostly Postgres time in another process, so on a 2-core machine two
    workers nearly halve the wall time, at the cost of latencies measured under that load."""
    search: dict[str | None, Callable[[str], list[tuple[str, float]]]] = {}
    for company, company_id in companies.items():
        if name == "jaccard":
            rows = company_chunks(company_id)
            search[company] = lambda q, rows=rows: [(hit.metadata["filename"], hit.similarity)
                                                    for hit in jaccard_search(q, rows, CHUNK_DEPTH)]
        else:
            retrieve = service_retriever(name, company_id, settings)
            search[company] = lambda q, retrieve=retrieve: [(n.node.metadata["filename"], float(n.score or 0.0))
                                                            for n in retrieve(q)]

    def one(query: Query) -> tuple[str, Ranked]:
        started = time.perf_counter()
        hits = search[query.company](query.text)
        elapsed = time.perf_counter() - started
        doc_ids, scores = _dedupe(hits, DOC_DEPTH)
        return query.id, Ranked(doc_ids, scores, elapsed)

    _fresh_query_vectors()
    ranked: dict[str, Ranked] = {}
    with (progress(f"retrieving with {name}", not console.quiet, transient=True) as bar,
          ThreadPoolExecutor(max_workers=workers) as pool):
        task = bar.add_task("queries", total=len(queries))
        for query_id, result in pool.map(one, queries):
            ranked[query_id] = result
            bar.advance(task)
    return ranked


def threshold_study(dataset: Dataset, queries: list[Query], ranked: dict[str, Ranked],
                    cut: int = 5) -> list[dict[str, float]]:
    """For each candidate threshold t, "cosine >= t means relevant" judged on each query's
    top `cut` documents (a document scores its best chunk):

    - precision / recall / f1 over those documents (recall: of the relevant documents the
      retriever put in its top `cut`, the share that t keeps);
    - answerable_kept: share of answerable queries that keep at least one relevant document;
    - unanswerable_with_hits: unanswerable queries whose best result still passes t.
    """
    pool: list[tuple[float, bool]] = []
    answerable = [q for q in queries if dataset.relevant(q.id)]
    unanswerable = [q for q in queries if not dataset.relevant(q.id)]
    for query in queries:
        relevant = dataset.relevant(query.id)
        result = ranked[query.id]
        pool += [(score, doc in relevant) for doc, score in zip(result.doc_ids[:cut], result.scores[:cut],
                                                                strict=True)]
    positives = sum(1 for _, is_relevant in pool if is_relevant)
    rows = []
    for t in THRESHOLDS:
        kept = [is_relevant for score, is_relevant in pool if score >= t]
        tp = sum(kept)
        precision = tp / len(kept) if kept else 1.0
        recall = tp / positives if positives else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        answered = sum(1 for q in answerable if any(
            score >= t and doc in dataset.relevant(q.id)
            for doc, score in zip(ranked[q.id].doc_ids[:cut], ranked[q.id].scores[:cut], strict=True)))
        with_hits = sum(1 for q in unanswerable if ranked[q.id].scores and ranked[q.id].scores[0] >= t)
        rows.append({"threshold": t, "precision": precision, "recall": recall, "f1": f1,
                     "answerable_kept": answered / len(answerable) if answerable else 0.0,
                     "unanswerable_with_hits": float(with_hits)})
    return rows


def choose_thresholds(study: list[dict[str, float]]) -> tuple[float | None, float | None]:
    """(best-F1 threshold, recommended threshold). Recommended: the highest threshold that still
    keeps RECALL_FLOOR of the relevant top-5 documents. A dropped relevant passage makes an answer
    impossible, while a kept irrelevant one only costs prompt tokens, so recall is held and
    precision bought only where it is cheap."""
    if not study:
        return None, None
    best = max(study, key=lambda row: (round(row["f1"], 6), -row["threshold"]))["threshold"]
    floor = [row["threshold"] for row in study if row["recall"] >= RECALL_FLOOR]
    return best, max(floor) if floor else min(row["threshold"] for row in study)


def score_retriever(dataset: Dataset, name: str, queries: list[Query], ranked: dict[str, Ranked],
                    threshold: float | None) -> RetrieverResult:
    judged = [q for q in queries if dataset.relevant(q.id)]
    unanswerable = [q for q in queries if not dataset.relevant(q.id)]
    per_query: list[dict[str, Any]] = []
    for query in judged:
        values = query_metrics(ranked[query.id].doc_ids, dataset.relevant(query.id))
        per_query.append({"query": query.id, "type": query.type, **values,
                          "latency_ms": ranked[query.id].seconds * 1000,
                          "top": ranked[query.id].doc_ids[:5]})
    by_type: dict[str, dict[str, float]] = {}
    for kind in sorted({q.type for q in judged if q.type}):
        rows = [row for row in per_query if row["type"] == kind]
        by_type[kind] = {"queries": float(len(rows)), **average(rows)}
    latencies = [ranked[q.id].seconds * 1000 for q in queries]
    # Scores of text/vector/hybrid are cosine similarities (the service threshold's scale);
    # Jaccard's are word overlaps, so it gets no study.
    study = threshold_study(dataset, queries, ranked) if name != "jaccard" else []
    best, recommended = choose_thresholds(study)

    # "returns anything above the threshold": the legacy search had none, so any word overlap counts
    def answered(scores: list[float]) -> bool:
        return bool(scores) and (scores[0] >= threshold if threshold is not None else scores[0] > 0)

    with_hits = sum(1 for q in unanswerable if answered(ranked[q.id].scores))
    unanswerable_rows = [{"query": q.id, "top": ranked[q.id].doc_ids[:1],
                          "top_score": ranked[q.id].scores[0] if ranked[q.id].scores else None}
                         for q in unanswerable]
    return RetrieverResult(retriever=name, averages=average(per_query),
                           latency_ms_p50=percentile(latencies, 50), latency_ms_p95=percentile(latencies, 95),
                           queries=len(judged), unanswerable=len(unanswerable),
                           unanswerable_with_hits=with_hits, threshold=threshold, by_type=by_type,
                           threshold_study=study, best_threshold=best, recommended_threshold=recommended,
                           per_query=per_query + unanswerable_rows)


def run_evaluation(dataset_dir: Path, retrievers: list[str], *, settings: Settings, limit_queries: int | None = None,
                   query_ids: Iterable[str] | None = None, console: Console | None = None,
                   cache_dir: Path | None = None, workers: int = 1) -> EvalReport:
    """Index the corpus (unchanged documents skipped), run each retriever over the queries
    (`query_ids` picks a subset, `limit_queries` the first N) and score them."""
    console = console or Console()
    unknown = [r for r in retrievers if r not in RETRIEVERS]
    if unknown or not retrievers:
        from core.errors import ServiceError

        raise ServiceError(f"unknown retriever(s) {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(RETRIEVERS)}", code="VALIDATION_ERROR")
    dataset = load_dataset(dataset_dir)
    queries = dataset.queries
    if query_ids is not None:
        wanted = set(query_ids)
        queries = [q for q in queries if q.id in wanted]
    queries = queries[:limit_queries] if limit_queries else queries
    started = time.perf_counter()
    embedder = cached_embedder(cache_dir or settings.data_dir.resolve() / "eval-cache", settings)
    companies = index_corpus(dataset, embedder, console, settings, workers)
    if settings.tenant_index_min_chunks > 0:  # as `ils-rag ingest`: a large corpus is searched through its own index
        sync_tenant_indexes(settings.tenant_index_min_chunks, companies=list(companies.values()))
    index_seconds = time.perf_counter() - started
    console.print(f"corpus ready in {index_seconds:.1f}s "
                  f"({embedder.misses} chunks embedded, {embedder.hits} from cache)")
    chunks = 0
    for cid in companies.values():  # row-level security: each company's rows are visible only in its tenant
        with tenant(cid), get_engine().connect() as connection:
            chunks += connection.execute(sa.text("SELECT count(*) FROM data_chunks WHERE company_id = :c"),
                                         {"c": cid}).scalar() or 0
    results = []
    for name in retrievers:
        ranked = run_queries(name, queries, companies, console, settings, workers)
        results.append(score_retriever(dataset, name, queries, ranked,
                                       None if name == "jaccard" else settings.search_threshold))
    return EvalReport(dataset=dataset.name, embedding_model=settings.embedding_model,
                      embedding_runtime=embedding_runtime(get_embed_model()), corpus_docs=len(dataset.corpus),
                      chunks=chunks, results=results, default_mode=settings.search_mode,
                      search_threshold=settings.search_threshold,
                      timings={"index_s": index_seconds, "total_s": time.perf_counter() - started,
                               "chunks_embedded": float(embedder.misses), "chunks_from_cache": float(embedder.hits),
                               "query_workers": float(workers)})


__all__ = ["METRICS", "RETRIEVERS", "run_evaluation"]

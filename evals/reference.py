"""A harness check outside the service: MTEB's own recipe for a dense retriever on a BEIR set
(each document = title + " " + text, embedded whole and truncated by the model at its
max_seq_length, exact cosine over all documents, no chunking, no database).

`ils-rag eval` scores the service (chunked documents, a document ranked by its best chunk),
so its `vector` number may legitimately differ from the published one; this module tells
a harness bug (metrics, loading, query handling) apart from that chunking effect:

    .venv/bin/python -m evals.reference ../shared/datasets/scifact
    .venv/bin/python -m evals.reference ../shared/datasets/scifact --service

`--service` adds two rows computed from the chunks `ils-rag eval` stored for the dataset
(run it first), with exact cosine in memory: every chunk, a document ranked by its best one
(what the service does, minus the index), and each document's first chunk only (close to
MTEB's truncation). Together they split a gap between the service and the published figure
into what the index loses and what reading whole documents gains.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from core.embeddings import get_embed_model
from core.settings import Settings, get_settings
from evals.beir import load_dataset
from evals.metrics import METRICS, average, query_metrics
from evals.runner import cached_embedder


def dense_reference(dataset_dir: Path, settings: Settings, cache_dir: Path | None = None) -> dict[str, float]:
    dataset = load_dataset(dataset_dir)
    embedder = cached_embedder(cache_dir or settings.data_dir.resolve() / "eval-cache", settings)
    docs = [doc for doc in dataset.corpus if doc.content.strip()]
    matrix = np.asarray(embedder.get_text_embedding_batch([doc.content for doc in docs]), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = [doc.id for doc in docs]
    model = get_embed_model()
    per_query = []
    for query in dataset.queries:
        relevant = dataset.relevant(query.id)
        if not relevant:
            continue
        scores = matrix @ np.asarray(model.get_query_embedding(query.text), dtype=np.float32)
        top = np.argsort(-scores)[:100]
        per_query.append(query_metrics([ids[i] for i in top], relevant))
    return average(per_query)


def service_chunk_reference(dataset_dir: Path, settings: Settings) -> dict[str, dict[str, float]]:
    """Exact-cosine rankings over the chunks the service indexed for `dataset_dir` (one
    company): {"best chunk": ..., "first chunk": ...} averaged metrics."""
    import sqlalchemy as sa
    from sqlalchemy import select

    from auth.models import Company
    from core.db.engines import get_engine
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant
    from evals.runner import eval_company_slug, index_fingerprint

    dataset = load_dataset(dataset_dir)
    if dataset.companies != [None]:
        raise SystemExit("--service compares single-company datasets (BEIR folders without a company field)")
    with admin_session_scope() as session:
        company_id = session.scalar(select(Company.id).where(
            Company.slug == eval_company_slug(dataset.name, None, index_fingerprint(settings))))
    if company_id is None:
        raise SystemExit(f"run `ils-rag eval --dataset {dataset_dir}` first: the corpus is not indexed yet")
    with tenant(company_id), get_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT metadata_->>'filename', CAST(embedding AS real[]) FROM data_chunks "
            "WHERE company_id = :c AND is_active ORDER BY id"), {"c": company_id}).all()
    docs = [row[0] for row in rows]
    matrix = np.asarray([row[1] for row in rows], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    first: dict[str, int] = {}
    for i, doc in enumerate(docs):  # chunk ids grow in document order within a document
        first.setdefault(doc, i)
    firsts = np.asarray(sorted(first.values()))
    model = get_embed_model()
    best_chunk, first_chunk = [], []
    for query in dataset.queries:
        relevant = dataset.relevant(query.id)
        if not relevant:
            continue
        scores = matrix @ np.asarray(model.get_query_embedding(query.text), dtype=np.float32)
        ranked: dict[str, None] = {}
        for i in np.argsort(-scores):
            ranked.setdefault(docs[i])
            if len(ranked) == 100:
                break
        best_chunk.append(query_metrics(list(ranked), relevant))
        top_first = firsts[np.argsort(-scores[firsts])][:100]
        first_chunk.append(query_metrics([docs[i] for i in top_first], relevant))
    return {"service chunks, best chunk per document": average(best_chunk),
            "service chunks, first chunk only": average(first_chunk)}


def main() -> None:
    parser = argparse.ArgumentParser(description="MTEB-style dense reference (no chunking, exact cosine)")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--service", action="store_true",
                        help="also rank the service's own stored chunks exactly (after `ils-rag eval`)")
    args = parser.parse_args()
    settings = get_settings()  # an entry point (`python -m`): the composition root of this run
    started = time.perf_counter()
    rows = {"MTEB recipe (whole documents, truncated)": dense_reference(args.dataset, settings)}
    if args.service:
        rows.update(service_chunk_reference(args.dataset, settings))
    for label, values in rows.items():
        print(f"{label:42} " + " ".join(f"{name} {values[name]:.4f}" for name in METRICS))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

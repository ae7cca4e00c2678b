"""A harness check outside the service: MTEB's own recipe for a dense retriever on a BEIR set
(each document = title + " " + text, embedded whole and truncated by the model at its
max_seq_length, exact cosine over all documents, no chunking, no database).

`ils-rag eval` scores the service (chunked documents, a document ranked by its best chunk),
so its `vector` number may legitimately differ from the published one; this module tells
a harness bug (metrics, loading, query handling) apart from that chunking effect:

    .venv/bin/python -m evals.reference /work/shared/datasets/scifact
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from core.embeddings import get_embed_model
from core.settings import get_settings
from evals.beir import load_dataset
from evals.metrics import METRICS, average, query_metrics
from evals.runner import cached_embedder


def dense_reference(dataset_dir: Path, cache_dir: Path | None = None) -> dict[str, float]:
    dataset = load_dataset(dataset_dir)
    embedder = cached_embedder(cache_dir or get_settings().data_dir.resolve() / "eval-cache")
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


def main() -> None:
    parser = argparse.ArgumentParser(description="MTEB-style dense reference (no chunking, exact cosine)")
    parser.add_argument("dataset", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    values = dense_reference(args.dataset)
    print(" ".join(f"{name} {values[name]:.4f}" for name in METRICS) + f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

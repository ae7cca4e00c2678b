"""Ingestion benchmark (`ils-rag bench ingest`): what the pipeline costs on top of the embedding model.

Both measurements run in the same process on the same chunk texts (the sample folders,
split exactly as ingestion splits them): the bare model embeds the texts with
`get_text_embedding_batch`; the pipeline ingests the folders from disk into a throwaway
company (read, parse, split, embed, write chunks, docstore and registry). The ratio of
their chunks/s is the pipeline's efficiency (target >= 0.8).
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from llama_index.core import Document as LIDocument

from benchmarks import RESULTS_DIR
from benchmarks.throwaway import drop_company
from core.embeddings import embedding_info, get_embed_model
from indexing.chunking import build_splitter, chunk_plan
from indexing.folder import ingest_folder, list_files
from indexing.legacy import ensure_company
from indexing.readers import read_parts

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
RESULT = RESULTS_DIR / "ingest.json"
TARGET_RATIO = 0.8


def _chunk_texts(folders: list[Path]) -> list[str]:
    splitter = build_splitter(get_embed_model())
    docs = [LIDocument(text=p.text) for folder in folders for f in list_files(folder)
            for p in read_parts(f.name, f.read_bytes())]
    return [n.get_content() for n in splitter.get_nodes_from_documents(docs)]


def run_ingest_bench(output: Path = RESULT, repeat: int = 1, folders: list[Path] | None = None) -> dict[str, Any]:
    folders = folders or sorted(p for p in SAMPLES.iterdir() if p.is_dir())
    model = get_embed_model()
    texts = _chunk_texts(folders)
    model.get_text_embedding_batch(texts[:16])  # warm-up: first call pays lazy initialisation

    bare_best = pipe_best = float("inf")
    pipe_chunks = 0
    for _ in range(repeat):
        started = time.perf_counter()
        model.get_text_embedding_batch(texts)
        bare_best = min(bare_best, time.perf_counter() - started)

        company_id = f"bench-{uuid.uuid4().hex[:12]}"
        ensure_company(company_id)
        try:
            started = time.perf_counter()
            chunks = 0
            for folder in folders:
                report = ingest_folder(folder, company_id)
                if report.failed:
                    raise RuntimeError(f"bench ingest of {folder.name} failed: {report.summary()}")
                chunks += report.chunks_embedded
            elapsed = time.perf_counter() - started
        finally:
            drop_company(company_id)
        if elapsed < pipe_best:
            pipe_best, pipe_chunks = elapsed, chunks

    info = embedding_info(model)
    plan = chunk_plan(model)
    result = {
        "model": info.name,
        "dimensions": info.dimensions,
        "chunk_size": plan.chunk_size,
        "folders": [f.name for f in folders],
        "chunks": len(texts),
        "pipeline_chunks": pipe_chunks,
        "bare_seconds": bare_best,
        "pipeline_seconds": pipe_best,
        "bare_chunks_per_s": len(texts) / bare_best,
        "pipeline_chunks_per_s": pipe_chunks / pipe_best,
        "target_ratio": TARGET_RATIO,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "repeat": repeat,
    }
    result["ratio"] = result["pipeline_chunks_per_s"] / result["bare_chunks_per_s"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result

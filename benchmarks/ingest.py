"""Ingestion benchmark (`ils-rag bench ingest`): what the pipeline costs on top of the embedding model,
and (`--workers N`) how fast `ils-rag worker` processes drain the ingestion queue.

Both measurements run in the same process on the same chunk texts (the sample folders,
split exactly as ingestion splits them): the bare model embeds the texts with
`get_text_embedding_batch`; the pipeline ingests the folders from disk into a throwaway
company (read, parse, split, embed, write chunks, docstore and registry). The ratio of
their chunks/s is the pipeline's efficiency (target >= 0.8).

Each run's figures are written as soon as they exist, and again when a later run fails (with
`failed` naming where and why), so a long measurement that breaks part-way keeps what it had.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from llama_index.core.schema import MetadataMode

from benchmarks import RESULTS_DIR
from benchmarks.throwaway import drop_company
from core.db.owner import get_admin_engine
from core.embeddings import embedding_info, get_embed_model
from core.settings import Settings
from evals.metrics import percentile
from indexing.chunking import build_splitter, chunk_plan
from indexing.documents import queue_upload
from indexing.folder import ingest_folder, list_files
from indexing.legacy import ensure_company
from indexing.pipeline import part_documents
from indexing.queue import wait_until_drained
from indexing.readers import ExtractionLimits, read_parts

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
RESULT = RESULTS_DIR / "ingest.json"
TARGET_RATIO = 0.8


def _embed_texts(files: list[tuple[str, bytes]], settings: Settings) -> list[str]:
    """What the pipeline embeds for these (file name, contents): each chunk after its context
    (CHUNK_CONTEXT), so the bare model and the pipeline embed the same texts."""
    splitter = build_splitter(get_embed_model())
    docs = [doc for name, data in files
            for doc in part_documents(name, read_parts(name, data, ExtractionLimits.of(settings)),
                                      settings.chunk_context)]
    return [n.get_content(metadata_mode=MetadataMode.EMBED) for n in splitter.get_nodes_from_documents(docs)]


@dataclass
class Stage:
    """Which part of a run is under way: named in the result if that part fails."""

    name: str = "setup"


@contextmanager
def kept_on_failure(result: dict[str, Any], output: Path) -> Iterator[Stage]:
    """Write `result` to `output` however the block ends. Why: a run takes minutes, and one that
    fails part-way (a worker dies, an upload does not index) should keep the figures measured
    before, with `failed` saying in which stage and why; the error still propagates."""
    stage = Stage()
    try:
        yield stage
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        result["failed"] = {"stage": stage.name, "error": error.splitlines()[0], "detail": error}
        raise
    finally:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")


def _ingest_round(folders: list[Path], settings: Settings) -> tuple[float, int]:
    """(seconds, chunks) of the whole pipeline ingesting `folders` into a throwaway company."""
    company_id = f"bench-{uuid.uuid4().hex[:12]}"
    ensure_company(company_id)
    try:
        started = time.perf_counter()
        chunks = 0
        for folder in folders:
            report = ingest_folder(folder, company_id, settings=settings)
            if report.failed:
                raise RuntimeError(f"bench ingest of {folder.name} failed: {report.summary()}")
            chunks += report.chunks_embedded
        return time.perf_counter() - started, chunks
    finally:
        drop_company(company_id)


def run_ingest_bench(settings: Settings, output: Path = RESULT, repeat: int = 1,
                     folders: list[Path] | None = None) -> dict[str, Any]:
    folders = folders or sorted(p for p in SAMPLES.iterdir() if p.is_dir())
    result: dict[str, Any] = {}
    with kept_on_failure(result, output) as stage:
        model = get_embed_model()
        texts = _embed_texts([(f.name, f.read_bytes()) for folder in folders for f in list_files(folder)], settings)
        model.get_text_embedding_batch(texts[:16])  # warm-up: first call pays lazy initialisation

        bare_best = pipe_best = float("inf")
        pipe_chunks = 0
        info = embedding_info(model)
        plan = chunk_plan(model)
        for round_number in range(1, repeat + 1):
            stage.name = f"round {round_number} of {repeat}"
            started = time.perf_counter()
            model.get_text_embedding_batch(texts)
            bare_best = min(bare_best, time.perf_counter() - started)
            elapsed, chunks = _ingest_round(folders, settings)
            if elapsed < pipe_best:
                pipe_best, pipe_chunks = elapsed, chunks
            result.update({
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
                "repeat": round_number,
            })
            result["ratio"] = result["pipeline_chunks_per_s"] / result["bare_chunks_per_s"]
    return result


# --- the ingestion queue: drain rate with 1 and 2 `ils-rag worker` processes --------------------

QUEUE_RESULT = RESULTS_DIR / "ingest-queue.json"
READY_LINE = "waiting for jobs"


def _upload_bytes(kb: int, n: int, settings: Settings) -> bytes:
    """About `kb` KB of the sample practices' own prose, numbered so every upload is its own file."""
    texts = [p.text for folder in sorted(p for p in SAMPLES.iterdir() if p.is_dir()) for f in list_files(folder)
             if f.suffix in (".md", ".txt")
             for p in read_parts(f.name, f.read_bytes(), ExtractionLimits.of(settings))]
    out, i = [], 0
    while sum(len(t) for t in out) < kb * 1024:
        out.append(f"\n\n# Upload {n}, section {i}\n\n{texts[i % len(texts)]}")
        i += 1
    return "".join(out).encode()


def _start_workers(count: int, company_id: str) -> list[subprocess.Popen[str]]:
    """`count` worker processes for one company, returned once each has loaded its model."""
    # N workers on one machine share its cores (EMBEDDING_THREADS), as a deployment of N per machine would.
    threads = max(1, (os.cpu_count() or 1) // count)
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", "INGEST_POLL_S": "0.5",
           "EMBEDDING_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "app", "worker", "--company-id", company_id],
                              cwd=Path(__file__).resolve().parent.parent, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(count)]
    for proc in procs:
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY_LINE in line:
                break
        else:
            raise RuntimeError("an ingest worker exited before it was ready")
    return procs


def _stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _job_rates(company_id: str) -> list[float]:
    """Chunks/s of each job, from its worker's claim to its end (what one upload costs a worker)."""
    with get_admin_engine().connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT d.chunk_count, extract(epoch FROM j.finished_at - j.started_at) FROM ingest_jobs j "
            "JOIN documents d ON d.company_id = j.company_id AND d.id = j.document_id "
            "WHERE j.company_id = :c AND j.status = 'done'"), {"c": company_id}).all()
    return [chunks / float(seconds) for chunks, seconds in rows if seconds]


def run_queue_bench(settings: Settings, worker_counts: tuple[int, ...] = (1, 2), uploads: int = 6, kb: int = 100,
                    output: Path = QUEUE_RESULT) -> dict[str, Any]:
    """Queue `uploads` files of `kb` KB, drain them with each number of workers, compare with the bare model.

    The bare model embeds the very chunks the uploads become, in this process, while the
    workers are idle; a job's own rate (claim to end: read, split, embed, write, registry) over
    the bare rate is what the worker path costs. The drain rate counts from the first enqueue
    to the last job's end, workers already started and their model loaded.
    """
    result: dict[str, Any] = {}
    with kept_on_failure(result, output) as stage:
        model = get_embed_model()
        files = [_upload_bytes(kb, n, settings) for n in range(uploads)]
        texts = _embed_texts([(f"upload-{n}.md", data) for n, data in enumerate(files[:2])], settings)
        model.get_text_embedding_batch(texts[:16])

        def bare_rate() -> float:
            started = time.perf_counter()
            model.get_text_embedding_batch(texts)
            return len(texts) / (time.perf_counter() - started)

        # The bare rate is measured right before and after each run and averaged, so a busy machine
        # slows both sides of the comparison alike.
        runs: list[dict[str, Any]] = []
        for count in worker_counts:
            stage.name = f"{count} worker(s)"
            before = bare_rate()
            elapsed, chunks, rates = _drain(count, files, settings)
            around = (before + bare_rate()) / 2
            runs.append({"workers": count, "bare_chunks_per_s": round(around, 1),
                         "uploads": uploads, "chunks": chunks, "seconds": round(elapsed, 2),
                         "drain_chunks_per_s": round(chunks / elapsed, 1),
                         "drain_uploads_per_min": round(uploads / elapsed * 60, 1),
                         "job_chunks_per_s_median": round(percentile(rates, 50), 1) if rates else None})
            single = next((r for r in runs if r["workers"] == 1), runs[0])
            result.update({
                "bare_chunks_per_s": single["bare_chunks_per_s"], "upload_kb": kb, "runs": runs,
                "worker_over_bare": round((single["job_chunks_per_s_median"] or 0) / single["bare_chunks_per_s"], 2),
                "target_ratio": TARGET_RATIO, "cpus": os.cpu_count(),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip()})
    return result


def _drain(count: int, files: list[bytes], settings: Settings) -> tuple[float, int, list[float]]:
    """(seconds, chunks, each job's chunks/s) of `count` worker processes draining `files` queued
    as uploads of a throwaway company, from the first enqueue to the last job's end."""
    company_id = f"bench-{uuid.uuid4().hex[:12]}"
    ensure_company(company_id)
    procs = _start_workers(count, company_id)
    try:
        started = time.perf_counter()
        for n, data in enumerate(files):
            queue_upload(company_id, f"upload-{n}.md", data, settings=settings)
        wait_until_drained(company_id, timeout_s=3600)
        elapsed = time.perf_counter() - started
        with get_admin_engine().connect() as connection:
            chunks, failed = connection.execute(sa.text(
                "SELECT coalesce(sum(chunk_count), 0), count(*) FILTER (WHERE status <> 'indexed') "
                "FROM documents WHERE company_id = :c"), {"c": company_id}).one()
        if failed:
            raise RuntimeError(f"{failed} queued upload(s) did not index")
        return elapsed, int(chunks), _job_rates(company_id)
    finally:
        _stop_workers(procs)
        drop_company(company_id)

"""The ingestion queue: large uploads and index-document calls become jobs; workers (threads
or `ils-rag worker` processes) run them as their company; a SIGKILLed worker's job is retried
by another and leaves one copy of its chunks; a poisoned file fails after its tries, in safe words."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.settings import get_settings
from indexing.readers import ExtractionLimits
from tests.servers import ROOT, free_port


@pytest.fixture
def no_api_worker(app: object, client: object) -> Iterator[None]:
    """Stop the test app's in-process worker, so the workers a test starts get its jobs."""
    from app.main import PendingStatements
    from indexing.queue import BackgroundWorker

    state = app.state  # type: ignore[attr-defined]
    running = getattr(state, "ingest_worker", None)
    if running is not None:
        running.stop()
    try:
        yield
    finally:
        if running is not None:
            settings = get_settings()
            state.ingest_worker = BackgroundWorker(settings, **PendingStatements(settings).hooks()).start()


def _text(kb: int, tag: str) -> bytes:
    """`kb` KB of distinct sentences (no two chunks alike), like a long protocol document."""
    lines, n = [], 0
    while sum(len(line) + 1 for line in lines) < kb * 1024:
        n += 1
        lines.append(f"Section {tag}-{n}: lens fitting step {n} checks the {n % 7}th meridian and records "
                     f"value {n * 37 % 1000} for patient group {n % 13}.")
    return "\n".join(lines).encode()


def _expected_chunks(data: bytes, filename: str) -> int:
    """Chunks of a .txt upload: its text after the context the embedding carries (CHUNK_CONTEXT)."""
    from core.settings import get_settings
    from indexing.pipeline import chunk_splitter, part_documents
    from indexing.readers import Part

    documents = part_documents(filename, [Part(data.decode())], get_settings().chunk_context)
    return len(chunk_splitter().get_nodes_from_documents(documents))


def _job(company_id: str, document_id: str) -> sa.Row:
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        return connection.execute(sa.text(
            "SELECT status, attempts, error, payload IS NULL AS emptied FROM ingest_jobs "
            "WHERE company_id = :c AND document_id = :d ORDER BY created_at DESC LIMIT 1"),
            {"c": company_id, "d": document_id}).one()


def _chunk_stats(company_id: str, document_id: str) -> tuple[int, int, int]:
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        row = connection.execute(sa.text(
            "SELECT count(*), count(DISTINCT node_id), count(DISTINCT text) FROM data_chunks "
            "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
            {"c": company_id, "d": document_id}).one()
    return int(row[0]), int(row[1]), int(row[2])


def _statement_rows(company_id: str, document_id: str) -> int:
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        return int(connection.execute(sa.text(
            "SELECT count(*) FROM chunk_statements s JOIN data_chunks c ON c.company_id = s.company_id "
            "AND c.node_id = s.node_id WHERE c.company_id = :c AND c.metadata_->>'source_document_id' = :d"),
            {"c": company_id, "d": document_id}).scalar())


def _document(company_id: str, document_id: str):
    from indexing.documents import get_document

    return get_document(company_id, document_id)


def _wait_status(company_id: str, document_id: str, statuses: set[str], timeout_s: float = 180) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = _document(company_id, document_id)
        if row.status in statuses:
            return row
        time.sleep(0.1)
    raise AssertionError(f"document never reached {statuses}: {row.status}")


def _start_worker(company_id: str, log: Path, metrics_port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "LOG_FORMAT": "text", "METRICS_PORT": str(metrics_port)}
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "app", "worker", "--company-id", company_id], cwd=ROOT, env=env,
                            stdout=handle, stderr=subprocess.STDOUT)


def test_large_index_document_call_is_queued_and_indexed(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    settings = client.app.state.settings
    content = _text(12, "idx").decode()
    old = settings.upload_inline_max_kb
    settings.upload_inline_max_kb = 8
    try:
        response = client.post("/api/rag/index-document", headers=admin,
                               json={"filename": "protocol", "content": content, "category": "clinical"})
    finally:
        settings.upload_inline_max_kb = old
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    document_id = response.json()["document_id"]
    row = _wait_status(company.id, document_id, {"indexed", "failed"}, timeout_s=120)
    assert row.status == "indexed" and row.filename == "protocol.txt" and row.category == "clinical"
    job = _job(company.id, document_id)
    assert (job.status, job.attempts, job.emptied) == ("done", 1, True)
    assert _chunk_stats(company.id, document_id)[0] == row.chunk_count > 1
    # then, the queue being empty, the worker stores the document's statement vectors (the offline answerer's)
    deadline = time.monotonic() + 60
    while _statement_rows(company.id, document_id) < row.chunk_count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _statement_rows(company.id, document_id) == row.chunk_count


def test_killed_worker_job_is_retried_by_another_with_one_copy_of_chunks(company, no_api_worker,
                                                                         tmp_path: Path) -> None:
    from indexing.documents import queue_upload

    data = _text(300, "kill")
    row = queue_upload(company.id, "handbook.txt", data, settings=get_settings())
    first = _start_worker(company.id, tmp_path / "worker-1.log")
    try:
        _wait_status(company.id, row.id, {"indexing"}, timeout_s=120)
        time.sleep(1.0)  # well inside the embedding of ~300 chunks
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert _document(company.id, row.id).status == "indexing"  # the dead worker's state, as it left it
    assert _job(company.id, row.id).status == "running"

    metrics_port = free_port()
    second = _start_worker(company.id, tmp_path / "worker-2.log", metrics_port=metrics_port)
    try:
        done = _wait_status(company.id, row.id, {"indexed", "failed"}, timeout_s=240)
        # a dedicated worker exposes its own job outcomes and embedding time on METRICS_PORT
        samples = _scrape(f"http://127.0.0.1:{metrics_port}/metrics", 'ils_ingest_jobs_total{outcome="indexed"}')
        assert samples['ils_ingest_jobs_total{outcome="indexed"}'] == 1.0
        assert samples['ils_embedding_duration_seconds_count{kind="batch"}'] > 0
        depth = 'ils_ingest_queue_depth{state="queued"}'  # observed on the worker's next idle turn
        assert _scrape(f"http://127.0.0.1:{metrics_port}/metrics", depth)[depth] == 0.0
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert done.status == "indexed", done.error
    job = _job(company.id, row.id)
    assert (job.status, job.attempts, job.error) == ("done", 2, None)
    rows, node_ids, texts = _chunk_stats(company.id, row.id)
    assert rows == node_ids == texts == done.chunk_count == _expected_chunks(data, "handbook.txt")


def _scrape(url: str, wanted: str, timeout_s: float = 30) -> dict[str, float]:
    """The listener's samples once `wanted` is among them (a job's outcome is counted just after
    its document is marked indexed)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(url, timeout=5).text
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line and not line.startswith("#")}
        if wanted in samples or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def _claim_within(worker: object, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while (job := worker.claim()) is None and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    return job


def test_poisoned_files_fail_with_their_reason(company, no_api_worker) -> None:
    from core.settings import get_settings
    from indexing.documents import queue_upload
    from indexing.queue import CRASHED_CODE, Worker

    # A file that takes its worker down every time: each claim ends with the worker's
    # connection gone, exactly what the server sees of a killed process.
    crashing = queue_upload(company.id, "crashes.txt", _text(4, "crash"), settings=get_settings())
    tries = get_settings().ingest_max_attempts
    for attempt in range(1, tries + 1):
        doomed = Worker(company_id=company.id, settings=get_settings())
        job = _claim_within(doomed, 10)  # the previous backend exits a moment after its socket closes
        assert job is not None and job.attempt == attempt, (attempt, job)
        assert Worker(company_id=company.id,
                      settings=get_settings()).claim() is None  # a live worker's job is nobody else's
        doomed.close()
    # a bad file: the reader refuses it, and no retry would change that
    broken = queue_upload(company.id, "scan.pdf", b"%PDF-1.4\n" + b"x" * 4000, settings=get_settings())
    results: list = []
    worker = Worker(company_id=company.id, on_result=results.append, settings=get_settings())
    deadline = time.monotonic() + 10
    while len(results) < 2 and time.monotonic() < deadline:
        worker.run_one()
    assert worker.run_one() is None
    worker.close()
    assert sorted((r.job.filename, r.status, r.code) for r in results) == [
        ("crashes.txt", "failed", CRASHED_CODE), ("scan.pdf", "failed", "CORRUPTED_PDF")]

    for row, code, attempts in ((crashing, CRASHED_CODE, tries), (broken, "CORRUPTED_PDF", 1)):
        document = _document(company.id, row.id)
        assert document.status == "failed" and document.error.startswith(f"{code}: ")
        assert "Traceback" not in document.error and "Error(" not in document.error
        job = _job(company.id, row.id)
        assert (job.status, job.attempts, job.emptied) == ("failed", attempts, True)
        assert _chunk_stats(company.id, row.id)[0] == 0


def test_a_queued_upload_outlives_a_restart_and_jobs_stay_in_their_company(client, company, make_company,
                                                                           make_user, no_api_worker) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from indexing.documents import queue_upload, recover_interrupted_uploads
    from indexing.queue import Worker

    row = queue_upload(company.id, "waiting.txt", _text(4, "wait"), settings=get_settings())
    assert recover_interrupted_uploads() == 0 or _document(company.id, row.id).status == "queued"
    assert _document(company.id, row.id).status == "queued"  # its job will run it: not an orphan

    other = make_company()
    with tenant(other.id), get_engine().connect() as connection:  # the request role sees its own jobs only
        assert connection.execute(sa.text("SELECT count(*) FROM ingest_jobs")).scalar() == 0
    with tenant(company.id), get_engine().connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM ingest_jobs")).scalar() == 1

    worker = Worker(company_id=company.id, settings=get_settings())
    result = worker.run_one()
    worker.close()
    assert result is not None and result.status == "done" and result.chunks > 0
    _, admin = make_user(company, "admin")
    listed = client.get("/api/documents", headers=admin).json()["items"]
    assert [(d["filename"], d["status"]) for d in listed] == [("waiting.txt", "indexed")]
    upload = client.post("/api/documents", headers=admin, files=[(
        "files", ("waiting.txt", io.BytesIO(b"A small replacement, indexed inline."), "text/plain"))])
    assert upload.status_code == 200 and upload.json()["indexed"] == 1


def test_a_document_deleted_while_its_job_runs_stays_deleted(company, no_api_worker) -> None:
    from indexing.documents import delete_document, list_documents, queue_upload
    from indexing.pipeline import index_sources
    from indexing.queue import Worker
    from indexing.readers import read_parts
    from indexing.sources import UPLOAD_PREFIX, Source, content_hash

    data = _text(3, "gone")
    row = queue_upload(company.id, "gone.txt", data, settings=get_settings())
    worker = Worker(company_id=company.id, settings=get_settings())
    job = _claim_within(worker, 10)
    assert job is not None
    delete_document(company.id, row.id)  # the user deletes it after the worker read its bytes ...
    source = Source(source_key=f"{UPLOAD_PREFIX}gone.txt", filename="gone.txt", data_hash=content_hash(data),
                    size_bytes=len(data), parts=read_parts("gone.txt", data, ExtractionLimits.of(get_settings())))
    outcome = index_sources(company.id, [source], settings=get_settings())[0]  # ... and the job indexes them anyway
    assert outcome.document_id != row.id  # the pipeline made a new row for the bytes
    final = worker._deleted_meanwhile(job, source.source_key, outcome)
    worker.close()
    assert final.action == "deleted"
    assert list_documents(company.id, 1, 10)[1] == 0
    assert _chunk_stats(company.id, outcome.document_id or "")[0] == 0

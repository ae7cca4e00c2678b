"""The ingestion queue: large uploads become rows of `ingest_jobs` (migration 0010), indexed
by workers (`ils-rag worker`, or one thread inside the API process).

Why a table and `SELECT ... FOR UPDATE SKIP LOCKED` rather than a queue library such as
procrastinate: a job here must commit in the same tenant transaction as its document's
'queued' state, under the request role and row-level security, and be run as that company
again by the worker. procrastinate keeps its jobs in its own schema, written through its own
psycopg 3 connector outside our engines and the signed tenant claim, so the enqueue and the
document row could not share a transaction and its tables would sit outside the tenant wall.
What the library would add beyond that (retries, stalled-job recovery) is the few lines below.

How a job survives a dead worker: a worker claims a job by taking a *session* advisory lock
named after it on its own owner connection, and commits `attempts + 1` before touching the
document. The lock lives exactly as long as that connection: a SIGKILLed worker's lock is
gone the moment the server sees the socket close, so the job, still 'running', is claimable
again. The pipeline redoes a document that never reached 'indexed' from nothing
(indexing.pipeline), so the retry leaves one copy of its chunks. A file that kills its worker
every time stops after `max_attempts` claims; one that fails with an error is retried with a
back-off unless the error is about the file itself (bad PDF, wrong encoding), which no retry
fixes. Either way the document ends 'failed' with a reason in safe words.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core import metrics
from core.db.connections import is_unavailable
from core.db.engines import get_engine
from core.db.owner import get_admin_engine
from core.db.tenant_scope import tenant
from core.errors import DatabaseUnavailable, ServiceError
from core.settings import Settings
from core.terminal import plural
from indexing.chunk_rows import purge_document
from indexing.document_state import document_locks, mark_failed, safe_failure
from indexing.pipeline import index_sources
from indexing.readers import ExtractionLimits, read_parts
from indexing.sources import Outcome, Source, content_hash

logger = logging.getLogger(__name__)

CHANNEL = "ils_ingest"  # LISTEN/NOTIFY channel: a new job wakes idle workers at once
CANDIDATES = 20  # pending rows a claim looks at; those another worker holds are skipped
RETRY_BACKOFF_S = (5, 30, 120)  # after the 1st, 2nd, 3rd+ failed attempt
CRASHED_CODE = "INDEXING_CRASHED"
CRASHED_MESSAGE = "indexing stopped its worker {times}; check the file and send it again"

_ENQUEUE = sa.text(
    "INSERT INTO ingest_jobs (company_id, id, document_id, filename, category, uploaded_by, payload, max_attempts) "
    "VALUES (:c, :id, :d, :f, :cat, :by, :payload, :max)")
_NOTIFY = sa.text("SELECT pg_notify('ils_ingest', '')")  # CHANNEL
_CANDIDATES = sa.text(
    "SELECT company_id, id, document_id, filename, category, uploaded_by, attempts, max_attempts "
    "FROM ingest_jobs WHERE status IN ('queued', 'running') AND run_after <= now() "
    "AND (CAST(:only AS text) IS NULL OR company_id = :only) "
    "ORDER BY run_after, created_at LIMIT :n FOR UPDATE SKIP LOCKED")
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))")


_OUTCOMES = {"done": "indexed", "retry": "retried", "failed": "failed"}  # JobResult.status -> metric label


def job_lock_key(company_id: str, job_id: str) -> str:
    return f"ils-job|{company_id}|{job_id}"


def enqueue(connection: Connection, company_id: str, document_id: str, filename: str, data: bytes, *,
            category: str | None, uploaded_by: str | None, max_attempts: int) -> str:
    """Add a job inside the caller's tenant transaction (it commits with the document's state);
    `max_attempts` (INGEST_MAX_ATTEMPTS) is stored with the job, so every worker retries it alike."""
    job_id = str(uuid.uuid4())
    connection.execute(_ENQUEUE, {"c": company_id, "id": job_id, "d": document_id, "f": filename, "cat": category,
                                  "by": uploaded_by, "payload": data, "max": max_attempts})
    connection.execute(_NOTIFY)
    return job_id


def has_pending_job(company_id: str, document_id: str) -> bool:
    """Whether a queued upload will still be run by a worker (so it is not an orphan)."""
    with get_admin_engine().connect() as connection:
        return connection.execute(sa.text(
            "SELECT 1 FROM ingest_jobs WHERE company_id = :c AND document_id = :d "
            "AND status IN ('queued', 'running')"), {"c": company_id, "d": document_id}).first() is not None


@dataclass(frozen=True)
class Job:
    company_id: str
    id: str
    document_id: str
    filename: str
    category: str | None
    uploaded_by: str | None
    attempt: int  # this claim's number, from 1
    max_attempts: int


@dataclass(frozen=True)
class JobResult:
    job: Job
    status: str  # done | failed | retry
    chunks: int = 0
    code: str | None = None


def _finish_job(connection: Connection, job: Job, status: str, error: str | None = None,
                retry_after_s: float | None = None) -> None:
    if status == "retry":
        connection.execute(sa.text(
            "UPDATE ingest_jobs SET status = 'queued', error = :e, "
            "run_after = now() + make_interval(secs => :s) WHERE company_id = :c AND id = :id"),
            {"e": error, "s": retry_after_s or 0, "c": job.company_id, "id": job.id})
    else:
        connection.execute(sa.text(
            "UPDATE ingest_jobs SET status = :st, error = :e, payload = NULL, finished_at = now() "
            "WHERE company_id = :c AND id = :id"), {"st": status, "e": error, "c": job.company_id, "id": job.id})


class Worker:
    """Claims jobs one at a time and indexes each as its company.

    `connection` is this worker's own owner connection: it holds the advisory lock of the
    job in hand and listens for new jobs. Nothing else uses it, so its locks die with it.
    """

    def __init__(self, settings: Settings, name: str | None = None,
                 on_result: Callable[[JobResult], None] | None = None, company_id: str | None = None,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.settings = settings  # the process's: extraction limits, chunk context, poll interval
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.company_id = company_id  # a worker dedicated to one company (a large tenant's backlog)
        self._on_result = on_result
        self._on_idle = on_idle  # work that waits for an empty queue (it must never delay a job)
        self._connection: Connection | None = None
        self._stop = threading.Event()

    # -- the dedicated connection ----------------------------------------------------------
    def _conn(self) -> Connection:
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            self._connection = get_admin_engine().connect()
            self._connection.exec_driver_sql("LISTEN ils_ingest")  # CHANNEL
            self._connection.commit()
        return self._connection

    def close(self) -> None:
        """Close the dedicated connection for real (never back to the pool: it listens, and
        may hold a job's lock, which must go with it)."""
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # the server may already be gone; the lock goes with it
                logger.debug("closing the worker connection failed", exc_info=True)
            self._connection = None

    # -- claiming ----------------------------------------------------------------------------
    def claim(self) -> Job | None:
        """The next job no live worker holds, with its attempt counted (committed), or None."""
        connection = self._conn()
        while True:
            with connection.begin():
                rows = connection.execute(_CANDIDATES, {"n": CANDIDATES, "only": self.company_id}).all()
                job = None
                for row in rows:
                    if connection.execute(_TRY_LOCK, {"k": job_lock_key(row.company_id, row.id)}).scalar():
                        job = row
                        break
                if job is None:
                    return None
                if job.attempts >= job.max_attempts:
                    # Each earlier claim ended with its worker gone (a finished attempt moves the
                    # job on): this file takes its worker down. Stop trying.
                    crashed = Job(job.company_id, job.id, job.document_id, job.filename, job.category,
                                  job.uploaded_by, job.attempts, job.max_attempts)
                    message = CRASHED_MESSAGE.format(times=plural(job.attempts, "time"))
                    _finish_job(connection, crashed, "failed", f"{CRASHED_CODE}: {message}")
                else:
                    connection.execute(sa.text(
                        "UPDATE ingest_jobs SET status = 'running', attempts = attempts + 1, started_at = now() "
                        "WHERE company_id = :c AND id = :id"), {"c": job.company_id, "id": job.id})
                    return Job(job.company_id, job.id, job.document_id, job.filename, job.category,
                               job.uploaded_by, job.attempts + 1, job.max_attempts)
            # the crashed job: its document fails too, then look for the next job
            mark_failed(crashed.company_id, crashed.document_id,
                        ServiceError(message, code=CRASHED_CODE, status_code=422))
            self._release(crashed)
            self._report(JobResult(crashed, "failed", code=CRASHED_CODE))

    def _release(self, job: Job) -> None:
        connection = self._conn()
        connection.execute(_UNLOCK, {"k": job_lock_key(job.company_id, job.id)})
        connection.commit()

    def _report(self, result: JobResult) -> None:
        logger.info("ingest job %s (%s, attempt %d) %s", result.job.id, result.job.filename, result.job.attempt,
                    result.status, extra={"company_id": result.job.company_id})
        metrics.JOBS.labels(outcome=_OUTCOMES[result.status]).inc()
        if self._on_result is not None:
            self._on_result(result)

    # -- running -----------------------------------------------------------------------------
    def run_one(self) -> JobResult | None:
        """Claim and run one job; None when the queue has nothing this worker may take."""
        job = self.claim()
        if job is None:
            return None
        try:
            result = self._run(job)
        finally:
            self._release(job)
        self._report(result)
        return result

    def _run(self, job: Job) -> JobResult:
        # Document work is the company's own, through the request role and its row-level security.
        with tenant(job.company_id), get_engine().connect() as connection:
            row = connection.execute(sa.text(
                "SELECT j.payload, d.source_key FROM ingest_jobs j JOIN documents d "
                "ON d.company_id = j.company_id AND d.id = j.document_id "
                "WHERE j.company_id = :c AND j.id = :id"), {"c": job.company_id, "id": job.id}).first()
            connection.rollback()
        if row is None or row.payload is None:  # the document was deleted meanwhile (its job with it)
            return JobResult(job, "done")
        data = bytes(row.payload)
        try:
            parts = read_parts(job.filename, data, ExtractionLimits.of(self.settings))
            source = Source(source_key=row.source_key, filename=job.filename, data_hash=content_hash(data),
                            size_bytes=len(data), parts=parts, category=job.category, uploaded_by=job.uploaded_by)
            outcome = index_sources(job.company_id, [source], settings=self.settings)[0]
            if outcome.document_id and outcome.document_id != job.document_id:
                outcome = self._deleted_meanwhile(job, row.source_key, outcome)
        except ServiceError as exc:  # the file itself is bad: no retry makes it good
            with tenant(job.company_id):
                mark_failed(job.company_id, job.document_id, exc)
            outcome = Outcome(row.source_key, job.document_id, "failed", code=exc.code, reason=exc.message)
        except Exception as exc:
            logger.exception("ingest job %s failed", job.id)
            with tenant(job.company_id):
                mark_failed(job.company_id, job.document_id, exc)
            code, message = safe_failure(exc)
            outcome = Outcome(row.source_key, job.document_id, "failed", code=code, reason=message)
        return self._settle(job, outcome)

    def _deleted_meanwhile(self, job: Job, source_key: str, outcome: Outcome) -> Outcome:
        """The document was deleted after this job read its bytes, so the pipeline made a new row
        for them. The deletion wins, unless the file was uploaded again (the new row has its own
        job, which will index the new bytes over these)."""
        if outcome.document_id is None or has_pending_job(job.company_id, outcome.document_id):
            return outcome
        with tenant(job.company_id), document_locks(job.company_id, [source_key]):
            purge_document(job.company_id, outcome.document_id)
        return Outcome(source_key, job.document_id, "deleted")

    def _settle(self, job: Job, outcome: Outcome) -> JobResult:
        connection = self._conn()
        error = f"{outcome.code}: {outcome.reason}" if outcome.action == "failed" else None
        transient = outcome.code == "INDEXING_FAILED"  # an internal error: the next attempt may succeed
        with connection.begin():
            if outcome.action != "failed":
                _finish_job(connection, job, "done")
                return JobResult(job, "done", chunks=outcome.chunk_count)
            if transient and job.attempt < job.max_attempts:
                backoff = RETRY_BACKOFF_S[min(job.attempt, len(RETRY_BACKOFF_S)) - 1]
                _finish_job(connection, job, "retry", error, retry_after_s=backoff)
                # the document waits for its next attempt instead of showing the failure
                connection.execute(sa.text(
                    "UPDATE documents SET status = 'queued', error = NULL, updated_at = now() "
                    "WHERE company_id = :c AND id = :d"), {"c": job.company_id, "d": job.document_id})
                return JobResult(job, "retry", code=outcome.code)
            _finish_job(connection, job, "failed", error)
            return JobResult(job, "failed", code=outcome.code)

    def wait(self, timeout_s: float) -> None:
        """Sleep until a job is announced (NOTIFY) or `timeout_s` passes."""
        raw = self._conn().connection.dbapi_connection
        try:
            ready, _, _ = select.select([raw], [], [], timeout_s)
            if ready:
                raw.poll()  # type: ignore[union-attr]
                raw.notifies.clear()  # type: ignore[union-attr]
        except (OSError, ValueError):  # the connection died: reconnect on the next claim
            self.close()
            time.sleep(min(timeout_s, 1.0))

    def run_forever(self, idle_exit_s: float | None = None) -> int:
        """Work until `stop()` (or until the queue has been empty `idle_exit_s`); returns jobs run."""
        poll_s = self.settings.ingest_poll_s
        done = 0
        idle_since = time.monotonic()
        while not self._stop.is_set():
            try:
                result = self.run_one()
            except Exception as exc:  # the database went away: keep the worker alive, try again later
                if isinstance(exc, DatabaseUnavailable) or is_unavailable(exc):  # expected while it restarts
                    logger.warning("ingest worker %s: the database is unavailable; retrying in %.0f s",
                                   self.name, poll_s)
                else:
                    logger.exception("ingest worker %s: claiming a job failed", self.name)
                self.close()
                self._stop.wait(poll_s)
                continue
            if result is not None:
                done += 1
                idle_since = time.monotonic()
                continue
            if self._on_idle is not None:
                self._on_idle()
            observe_queue_depth()
            if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            self.wait(poll_s if idle_exit_s is None else min(poll_s, idle_exit_s))
        self.close()
        return done

    def stop(self) -> None:
        self._stop.set()


class BackgroundWorker:
    """One worker on a daemon thread: the API's in-process consumer (INGEST_IN_PROCESS_WORKER)."""

    def __init__(self, settings: Settings, on_result: Callable[[JobResult], None] | None = None,
                 on_idle: Callable[[], None] | None = None) -> None:
        self.worker = Worker(settings, name=f"{socket.gethostname()}:{os.getpid()}:api", on_result=on_result,
                             on_idle=on_idle)
        self._thread = threading.Thread(target=self.worker.run_forever, name="ingest-worker", daemon=True)

    def start(self) -> BackgroundWorker:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.worker.stop()
        self._thread.join(timeout_s)


def observe_queue_depth() -> None:
    """Set the queue-depth gauge (queued, running) from the table: every worker sees the whole queue."""
    try:
        with get_admin_engine().connect() as connection:
            counts = dict(connection.execute(sa.text(
                "SELECT status, count(*) FROM ingest_jobs WHERE status IN ('queued', 'running') "
                "GROUP BY status")).all())
    except Exception:  # a gauge is not worth a failed loop; the next idle turn tries again
        logger.debug("could not read the queue depth", exc_info=True)
        return
    for state in ("queued", "running"):
        metrics.QUEUE_DEPTH.labels(state=state).set(int(counts.get(state, 0)))


def pending_jobs(company_id: str | None = None) -> int:
    """Jobs still to run (queued, or running on a live or dead worker)."""
    with get_admin_engine().connect() as connection:
        return int(connection.execute(sa.text(
            "SELECT count(*) FROM ingest_jobs WHERE status IN ('queued', 'running') "
            "AND (CAST(:c AS text) IS NULL OR company_id = :c)"), {"c": company_id}).scalar() or 0)


def wait_until_drained(company_id: str | None = None, timeout_s: float = 300.0) -> None:
    """Block until no job is pending (tests, benchmarks and shutdown)."""
    deadline = time.monotonic() + timeout_s
    while pending_jobs(company_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ingestion queue did not drain within {timeout_s:.0f} s")
        time.sleep(0.1)


__all__ = ["BackgroundWorker", "Job", "JobResult", "Worker", "enqueue", "has_pending_job",
           "pending_jobs", "wait_until_drained"]

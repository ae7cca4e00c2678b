"""Keep a company's knowledge base in step with a folder of files (`ils-rag ingest`).

A file whose bytes and category match an 'indexed' registry row is unchanged and never
parsed; everything else is parsed (in `workers` threads), grouped into batches of about
`INGEST_BATCH_CHARS` characters, and handed to the pipeline. Embedding stays batched in the main
thread: on a small CPU box the model already uses every core, so parallel *processes*
(IngestionPipeline's num_workers, spawn-based) would only load the model N times and
fight over the same cores; threads overlap file reading/parsing (and the tokenizer, which
releases the GIL) with embedding instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import select

from core.db.engines import get_engine, session_scope
from core.db.tenant_scope import tenant
from core.errors import NotFound, ServiceError
from core.settings import Settings
from core.terminal import plural, progress
from indexing.chunk_rows import purge_document, set_chunk_metadata
from indexing.models import Document
from indexing.pipeline import index_sources
from indexing.readers import ExtractionLimits, IngestError, check_extension, read_parts, safe_source_key
from indexing.sources import RESERVED_PREFIXES, Outcome, Source, content_hash


@dataclass
class FileFailure:
    source_key: str
    code: str
    reason: str


@dataclass
class IngestReport:
    """What one folder run did, per file."""

    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_written: int = 0  # the chunks of the files indexed or updated by this run
    seconds: float = 0.0

    def summary(self) -> str:
        """One line (plus one per failed file). Chunks written and chunks embedded differ after
        an interrupted run: its embeddings are kept and reused, so a rerun writes the files'
        chunks without embedding them again."""
        if self.chunks_embedded == self.chunks_written:
            chunks = f"{plural(self.chunks_written, 'chunk')} embedded and written"
        else:
            chunks = (f"{plural(self.chunks_written, 'chunk')} written, {self.chunks_embedded:,} of them embedded "
                      "by this run (the others' vectors were kept from an earlier run)")
        line = (f"{plural(len(self.indexed), 'file')} indexed, {len(self.unchanged):,} unchanged, "
                f"{len(self.updated):,} updated, {len(self.removed):,} removed, {len(self.failed):,} failed; "
                f"{chunks} in {self.seconds:.1f} s")
        for failure in self.failed:
            line += f"\n  failed {failure.source_key}: [{failure.code}] {failure.reason}"
        return line

    def add(self, outcome: Outcome) -> None:
        if outcome.action == "failed":
            self.failed.append(FileFailure(outcome.source_key, outcome.code or "FAILED", outcome.reason or ""))
        else:
            getattr(self, outcome.action).append(outcome.source_key)
            self.chunks_embedded += outcome.chunks_embedded
            if outcome.action in ("indexed", "updated"):
                self.chunks_written += outcome.chunk_count


def company_exists(company_id: str) -> bool:
    # as that company: row-level security shows the service role its own company row only
    with tenant(company_id), get_engine().connect() as connection:
        found = connection.execute(sa.text("SELECT 1 FROM companies WHERE id = :c"), {"c": company_id}).first()
        return found is not None


def list_files(root: Path) -> list[Path]:
    """Every regular file below root, hidden files and folders skipped (editor/OS debris)."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _parse(path: Path, key: str, data: bytes, category: str | None, uploaded_by: str | None,
           limits: ExtractionLimits) -> Source | FileFailure:
    try:
        parts = read_parts(path.name, data, limits)
    except ServiceError as exc:
        return FileFailure(key, exc.code, exc.message)
    except Exception as exc:  # a reader bug must not stop the other files
        return FileFailure(key, "READ_FAILED", f"{type(exc).__name__}: {exc}")
    return Source(source_key=key, filename=path.name, data_hash=content_hash(data), size_bytes=len(data),
                  parts=parts, category=category, keep_category=category is None, uploaded_by=uploaded_by)


def _batches(sources: Iterator[Source | FileFailure], report: IngestReport, limit: int) -> Iterator[list[Source]]:
    """Batches of about `limit` characters (INGEST_BATCH_CHARS, ~200 chunks by default): full
    embedding batches, bounded memory."""
    batch: list[Source] = []
    size = 0
    for item in sources:
        if isinstance(item, FileFailure):
            report.failed.append(item)
            continue
        batch.append(item)
        size += sum(len(p.text) for p in item.parts)
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ingest_folder(path: Path, company_id: str, *, settings: Settings, category: str | None = None, sync: bool = False,
                  workers: int = 1, uploaded_by: str | None = None, show_progress: bool = False) -> IngestReport:
    """Index new and changed files of `path` for `company_id` under the caller's `settings`; with
    `sync`, remove the company's folder documents whose files are gone. Idempotent; safe to
    re-run after a crash."""
    started = time.perf_counter()
    root = Path(path)
    if not root.is_dir():
        raise IngestError(f"folder {str(path)!r} does not exist or is not a directory.", code="FOLDER_NOT_FOUND",
                          status_code=404)
    if not company_exists(company_id):
        raise NotFound(f"no company with id {company_id!r}", code="COMPANY_NOT_FOUND")
    report = IngestReport()
    with tenant(company_id), session_scope() as session:
        rows = {r.source_key: r for r in session.scalars(select(Document).where(Document.company_id == company_id))}

    todo: list[tuple[Path, str, bytes]] = []
    seen: set[str] = set()
    for file in list_files(root):
        relative = file.relative_to(root).as_posix()
        try:
            key = safe_source_key(relative)
            if key.startswith(RESERVED_PREFIXES):
                raise IngestError(f"{relative!r} starts with a reserved prefix.", code="INVALID_FILENAME")
            check_extension(key)
        except ServiceError as exc:
            report.failed.append(FileFailure(relative, exc.code, exc.message))
            continue
        seen.add(key)
        try:
            data = file.read_bytes()
        except OSError as exc:
            report.failed.append(FileFailure(key, "READ_FAILED", f"cannot read the file: {exc.strerror or exc}"))
            continue
        row = rows.get(key)
        if row is not None and row.status == "indexed" and row.content_hash == content_hash(data):
            if category is not None and row.category != category:
                _recategorise(company_id, row.id, category)
                report.updated.append(key)
            else:
                report.unchanged.append(key)
            continue
        todo.append((file, key, data))

    with progress("ingest", show_progress and bool(todo)) as bar:  # nothing to do: no "files 0/0"
        files_task = bar.add_task("files", total=len(todo))

        def done(outcome: Outcome) -> None:
            bar.advance(files_task, chunk=outcome.chunk_count if outcome.action != "failed" else 0)

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ingest-read") as pool:
            limits = ExtractionLimits.of(settings)
            parsed = pool.map(lambda item: _parse(item[0], item[1], item[2], category, uploaded_by, limits), todo)
            for batch in _batches(parsed, report, settings.ingest_batch_chars):
                for outcome in index_sources(company_id, batch, settings=settings, on_done=done):
                    report.add(outcome)
        bar.update(files_task, completed=len(todo))

    if sync:
        for key, row in sorted(rows.items()):
            if key not in seen and not key.startswith(RESERVED_PREFIXES) and purge_document(company_id, row.id):
                report.removed.append(key)
    report.seconds = time.perf_counter() - started
    return report


def _recategorise(company_id: str, document_id: str, category: str) -> None:
    with tenant(company_id), get_engine().begin() as connection:
        connection.execute(sa.text("UPDATE documents SET category = :cat, updated_at = now() "
                                   "WHERE company_id = :c AND id = :d"),
                           {"cat": category, "c": company_id, "d": document_id})
        set_chunk_metadata(connection, company_id, document_id, "category", category)


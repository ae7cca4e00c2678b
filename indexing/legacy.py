"""Import the seed's `ai_knowledge_base` rows (Phase 2 of the seed's plan) as documents.

The source is opened read-only (`default_transaction_read_only=on`), so the migration
cannot write to it even by mistake. Each row with content becomes a document of its
company with source key `legacy:<id>` and `documents.legacy_id = <id>` (unique per
company), so a second run finds every row already migrated and imports nothing.

Companies: a legacy company id that exists in our `companies` table is used as is;
otherwise a company is created *with that same id* (slug `legacy-<id>`), so legacy
users' tokens, whose company_id claim is the seed's id, land in the right tenant.

Vectors: the seed stored ada-002 vectors (1536 dims) as JSON or none at all. A legacy
vector is reused only when its width equals the configured model's and the content is
a single chunk (so the vector describes exactly that chunk); everything else is
re-embedded with the configured model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa
from llama_index.core import Document as LIDocument
from sqlalchemy.engine import make_url

from core.db.engines import session_scope
from core.db.owner import get_admin_engine
from core.db.tenant_scope import tenant
from core.embeddings import configured_dimensions
from core.errors import ConfigurationError, ServiceError
from core.settings import Settings
from core.terminal import plural, progress
from indexing.models import Document
from indexing.pipeline import chunk_splitter, index_sources
from indexing.readers import Part, check_extension, safe_source_key
from indexing.sources import LEGACY_PREFIX, Source, content_hash

LEGACY_COLUMNS = ("id, company_id, uploaded_by, filename, content, embeddings, category, is_active, "
                  "created_at, updated_at")


@dataclass
class LegacyRow:
    legacy_id: str
    company_id: str | None
    outcome: str  # migrated | skipped | failed
    reason: str


@dataclass
class LegacyReport:
    rows: list[LegacyRow] = field(default_factory=list)

    def _count(self, outcome: str) -> int:
        return sum(1 for r in self.rows if r.outcome == outcome)

    @property
    def migrated(self) -> int:
        return self._count("migrated")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    def summary(self) -> str:
        return f"{self.migrated} migrated, {self.skipped} skipped, {self.failed} failed"


def _source_engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"--source-url is not a database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return sa.create_engine(parsed, connect_args={"options": "-c default_transaction_read_only=on",
                                                  "connect_timeout": 5}, poolclass=sa.pool.NullPool)


def _slug_for(company_id: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", company_id.lower()).strip("-") or "company"
    return f"legacy-{base}"[:63].rstrip("-")


def ensure_company(company_id: str) -> bool:
    """Return True if the company had to be created (see the module docstring).

    Companies are created by the owner: the service role may only read them."""
    with get_admin_engine().begin() as connection:
        if connection.execute(sa.text("SELECT 1 FROM companies WHERE id = :c"), {"c": company_id}).first():
            return False
        slug = _slug_for(company_id)
        if connection.execute(sa.text("SELECT 1 FROM companies WHERE slug = :s"), {"s": slug}).first():
            slug = f"{slug[:54]}-{content_hash(company_id.encode())[:8]}"
        connection.execute(sa.text("INSERT INTO companies (id, slug, name) VALUES (:c, :s, :n)"),
                           {"c": company_id, "s": slug, "n": f"Legacy company {company_id}"[:200]})
        return True


def _vector(raw: Any) -> list[float] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if isinstance(raw, dict):  # some writers wrapped it: {"embedding": [...]}
        raw = raw.get("embedding") or raw.get("vector")
    if isinstance(raw, list) and raw and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        return [float(v) for v in raw]
    return None


def _filename(legacy_id: str, filename: str | None) -> str:
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    try:
        name = safe_source_key(name)
        check_extension(name)
        return name
    except ServiceError:
        return f"{name or 'legacy-' + legacy_id}.txt"[:200]


def _already_migrated(company_id: str, legacy_id: str) -> bool:
    with tenant(company_id), session_scope() as session:
        status = session.scalar(sa.select(Document.status).where(Document.company_id == company_id,
                                                                 Document.legacy_id == legacy_id))
        return status == "indexed"


def migrate_row(row: sa.Row, settings: Settings) -> LegacyRow:
    legacy_id = str(row.id)
    company_id = str(row.company_id) if row.company_id is not None else None
    if not company_id:
        return LegacyRow(legacy_id, None, "skipped", "no company_id")
    content = row.content or ""
    if not content.strip():
        return LegacyRow(legacy_id, company_id, "skipped", "empty content")
    created = ensure_company(company_id)
    if not created and _already_migrated(company_id, legacy_id):
        return LegacyRow(legacy_id, company_id, "skipped", "already migrated")

    dims = configured_dimensions()
    vector = _vector(row.embeddings)
    keep: list[float] | None = None
    if vector is None:
        note = "re-embedded (no legacy vector)"
    elif len(vector) != dims:
        note = f"re-embedded (legacy vector has {len(vector)} dims, model has {dims})"
    elif len(chunk_splitter().get_nodes_from_documents([LIDocument(text=content)])) != 1:
        note = "re-embedded (content spans several chunks; the legacy vector covers the whole text)"
    else:
        keep, note = vector, "legacy vector kept"
    if row.is_active is False:
        note += "; inactive"
    data = content.encode("utf-8")
    created_at = row.created_at if isinstance(row.created_at, datetime) else None
    source = Source(source_key=f"{LEGACY_PREFIX}{legacy_id}", filename=_filename(legacy_id, row.filename),
                    data_hash=content_hash(data), size_bytes=len(data), parts=[Part(content.strip())],
                    category=row.category, uploaded_by=str(row.uploaded_by) if row.uploaded_by else None,
                    legacy_id=legacy_id, vector=keep, created_at=created_at, is_active=row.is_active is not False)
    outcome = index_sources(company_id, [source], settings=settings)[0]
    if outcome.action == "failed":
        return LegacyRow(legacy_id, company_id, "failed", f"[{outcome.code}] {outcome.reason}")
    return LegacyRow(legacy_id, company_id, "migrated", f"{note}; {plural(outcome.chunk_count, 'chunk')}")


def migrate_legacy(source_url: str, settings: Settings, show_progress: bool = False) -> LegacyReport:
    """Read every ai_knowledge_base row (read-only) and import it under `settings`; per-row outcomes."""
    engine = _source_engine(source_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                f"SELECT {LEGACY_COLUMNS} FROM ai_knowledge_base ORDER BY created_at, id")).all()
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigurationError(f"cannot read ai_knowledge_base from --source-url: {reason}") from exc
    finally:
        engine.dispose()
    report = LegacyReport()
    with progress("migrate-legacy", show_progress and bool(rows)) as bar:
        task = bar.add_task("rows", total=len(rows))
        for row in rows:
            try:
                report.rows.append(migrate_row(row, settings))
            except Exception as exc:  # one bad row must not stop the migration
                report.rows.append(LegacyRow(str(row.id), str(row.company_id), "failed",
                                             f"{type(exc).__name__}: {exc}"))
            bar.advance(task, **{f"{report.rows[-1].outcome} row": 1})  # "3 migrated rows, 1 failed row"
    return report

"""ORM mapping of the `documents` registry table created by migration 0001.

The registry is our file-level view of a company's knowledge base (one row per file or
upload); the chunks live in `data_chunks` and the pipeline's per-part hashes in
`data_docstore`. Its `status` is what makes ingestion crash-safe: only a row that
reached 'indexed' is trusted, anything else is redone from scratch on the next run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from core.db.engines import Base

DocumentStatus = Literal["queued", "indexing", "indexed", "failed"]


class Document(Base):
    __tablename__ = "documents"

    company_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # FK to companies in the schema
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_key: Mapped[str] = mapped_column(String(1024))
    filename: Mapped[str] = mapped_column(String(512))
    category: Mapped[str | None] = mapped_column(String(100))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    uploaded_by: Mapped[str | None] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    legacy_id: Mapped[str | None] = mapped_column(String(64))
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(),
                                                 onupdate=func.now())

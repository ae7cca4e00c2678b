"""What the indexing pipeline takes and gives back, one file or upload at a time: a parsed
source, the outcome of indexing it, and the source-key prefixes that mark uploads and legacy
rows apart from folder files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from indexing.readers import Part

UPLOAD_PREFIX = "upload:"
LEGACY_PREFIX = "legacy:"
RESERVED_PREFIXES = (UPLOAD_PREFIX, LEGACY_PREFIX)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Source:
    """One file or upload to index, already parsed into parts (or failed to parse)."""

    source_key: str
    filename: str
    data_hash: str
    size_bytes: int
    parts: list[Part] = field(default_factory=list)
    category: str | None = None
    keep_category: bool = False  # folder runs without --category keep what a PATCH set
    uploaded_by: str | None = None
    legacy_id: str | None = None
    vector: list[float] | None = None
    created_at: datetime | None = None
    is_active: bool | None = None  # None: keep the registry's value (True for new rows)


@dataclass
class Outcome:
    source_key: str
    document_id: str | None
    action: str  # indexed | updated | unchanged | failed
    chunks_embedded: int = 0
    chunk_count: int = 0
    code: str | None = None
    reason: str | None = None

"""What a chunk knows about its place: its document's title and its section's heading path.

A chunk from the middle of "Contact lens care" rarely says "contact lens" itself, so neither
its vector nor its text-search entry would match a question about contact lenses. The context
("Contact Lens Care > Cleaning your lenses") is kept in the chunk's metadata, apart from the
text shown to users and quoted in answers, and CHUNK_CONTEXT decides where else it goes:

- `embedding`: prepended to what is embedded (LlamaIndex's metadata-aware embed text: the
  splitter then leaves room for it, so context and chunk together stay within what the model
  reads);
- `text`: written as `search_context`, which the text-search columns of `data_chunks`
  (`text_search_tsv`, `text_search_length`, hence BM25) index after the chunk text;
- `both` or `none`.

The README's retrieval section has the evaluation that chose the default.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from indexing.readers import SECTION_PATH_SEPARATOR, Part

CONTEXT_KEY = "context"
SEARCH_CONTEXT_KEY = "search_context"
TITLE_KEY = "document_title"
MAX_CONTEXT_CHARS = 300  # a runaway heading must not eat the chunk's room in the embed text


def document_title(filename: str, parts: list[Part]) -> str:
    """The title a reader found (`title` metadata), else the first part's top-level heading
    when the document opens with one, else the file name made readable."""
    for part in parts:
        if part.metadata.get("title"):
            return str(part.metadata["title"]).strip()
    if parts and parts[0].metadata.get("section") and SECTION_PATH_SEPARATOR not in parts[0].metadata.get(
            "section_path", ""):
        return str(parts[0].metadata["section"]).strip()
    stem = PurePosixPath(filename).stem
    words = re.sub(r"[-_.]+", " ", stem).strip()
    return words[:1].upper() + words[1:] if words else filename


def context_of(title: str, part: Part) -> str:
    """"Title > Heading > Subheading", without repeating the title when the document's first
    heading is the title itself."""
    path = [p for p in str(part.metadata.get("section_path", "")).split(SECTION_PATH_SEPARATOR) if p]
    if path and path[0].strip().casefold() == title.casefold():
        path = path[1:]
    context = SECTION_PATH_SEPARATOR.join([title, *path]) if title else SECTION_PATH_SEPARATOR.join(path)
    return context[:MAX_CONTEXT_CHARS]


def context_metadata(mode: str, title: str, part: Part) -> dict[str, Any]:
    """The part's context keys: always `document_title` and `context`; `search_context` when the
    text-search index takes it."""
    context = context_of(title, part)
    metadata: dict[str, Any] = {TITLE_KEY: title, CONTEXT_KEY: context}
    if mode in ("text", "both") and context:
        metadata[SEARCH_CONTEXT_KEY] = context
    return metadata


def embedded_keys(mode: str) -> set[str]:
    """Metadata keys LlamaIndex puts into the embed text (every other key is excluded)."""
    return {CONTEXT_KEY} if mode in ("embedding", "both") else set()

"""The search modes, named once: settings (SEARCH_MODE), the HTTP request models, the CLI and
the evaluation all read them from here, and retrieval.retriever implements one ranker per
name (it refuses to import if a name lacks one). A new mode is one entry below plus its
ranker."""

from __future__ import annotations

from typing import Literal

# name -> what it ranks by (shown in help texts)
SEARCH_MODES: dict[str, str] = {
    "vector": "cosine similarity of the query and chunk embeddings",
    "text": "BM25 over Postgres full-text search",
    "hybrid": "vector and text, fused",
}
MODE_NAMES: tuple[str, ...] = tuple(SEARCH_MODES)
# `Literal[("a", "b")]` is `Literal["a", "b"]`: validation, OpenAPI enums and help derive from the dict above.
SearchMode = Literal[MODE_NAMES]  # type: ignore[valid-type]


def describe_modes() -> str:
    """One line for help texts: each mode and what it ranks by."""
    return "; ".join(f"{name}: {what}" for name, what in SEARCH_MODES.items())

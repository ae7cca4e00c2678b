"""Switch the process to other settings and drop everything built from the old ones.

The engines, the chunk store and the embedding model are cached for the life of the process,
each built from the settings of its first use; a command that changes settings part-way
(`ils-rag eval --runtime`, the search benchmark's own database) must forget all of them
together, or one cached object would keep talking to the old database or model.
"""

from __future__ import annotations

from core.db.engines import reset_engines
from core.embeddings import get_embed_model
from core.settings import Settings, configure_settings
from core.vector_store import get_vector_store


def reconfigure(settings: Settings) -> None:
    """Make `settings` the process's settings, and forget the engines, store and model built
    from the previous ones (the next use builds them again)."""
    configure_settings(settings)
    reset_engines()
    get_vector_store.cache_clear()
    get_embed_model.cache_clear()

"""A disk cache in front of the service's embedding model, keyed by model and text, so a
rerun of an evaluation embeds nothing it has embedded before.

LlamaIndex's IngestionCache keys on whole node batches and transformation settings, so
a changed chunk boundary invalidates everything; keying single texts survives that.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from array import array
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr


class CachedEmbedding(BaseEmbedding):
    """Wraps another BaseEmbedding; vectors are stored as float32 blobs in SQLite."""

    _inner: BaseEmbedding = PrivateAttr()
    _db: sqlite3.Connection = PrivateAttr()
    _lock: threading.Lock = PrivateAttr()
    _model_key: str = PrivateAttr()
    hits: int = 0
    misses: int = 0

    def __init__(self, inner: BaseEmbedding, path: Path, model_key: str, **kwargs: Any) -> None:
        super().__init__(model_name=f"cached:{model_key}", embed_batch_size=inner.embed_batch_size, **kwargs)
        self._inner = inner
        self._model_key = model_key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=60)  # shared by concurrent runs
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._lock = threading.Lock()

    @classmethod
    def class_name(cls) -> str:
        return "CachedEmbedding"

    def _key(self, kind: str, text: str) -> str:
        return hashlib.sha256(f"{self._model_key}\x00{kind}\x00{text}".encode()).hexdigest()

    def _lookup(self, keys: list[str]) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                statement = f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(batch))})"
                for key, blob in self._db.execute(statement, batch):
                    found[key] = array("f", blob).tolist()
        return found

    def _store(self, items: dict[str, list[float]]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(key, array("f", vector).tobytes()) for key, vector in items.items()])
            self._db.commit()

    def _cached(self, kind: str, texts: list[str], compute: Any) -> list[list[float]]:
        keys = [self._key(kind, text) for text in texts]
        found = self._lookup(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        with self._lock:  # index batches may run in parallel (`ils-rag eval --workers`)
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        if missing:
            vectors = compute([texts[i] for i in missing])
            fresh = {keys[i]: vector for i, vector in zip(missing, vectors, strict=True)}
            self._store(fresh)
            found.update(fresh)
        return [found[key] for key in keys]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._cached("text", texts, self._inner.get_text_embedding_batch)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._cached("query", [query], lambda qs: [self._inner.get_query_embedding(q) for q in qs])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

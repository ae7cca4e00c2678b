"""The in-process LRU cache in front of query embeddings (QUERY_CACHE_SIZE entries): a
repeated question costs no model run, whatever the runtime."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from core import metrics


def _timed(compute: Callable[[str], list[float]]) -> Callable[[str], list[float]]:
    """Every query the model really embeds (a miss) is one sample of the embedding-time metric."""

    def run(text: str) -> list[float]:
        with metrics.timed(metrics.EMBEDDING_SECONDS, kind="query"):
            return compute(text)

    return run


class QueryCache:
    """A thread-safe LRU of query text -> vector.

    Hand-written because functools.lru_cache cannot be sized from settings per model, has
    no per-instance hit counters we can report, and would hand out the same mutable list.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, compute: Callable[[str], list[float]]) -> list[float]:
        compute = _timed(compute)
        if self.size <= 0:
            return compute(text)
        with self._lock:
            found = self._items.get(text)
            if found is not None:
                self._items.move_to_end(text)
                self.hits += 1
                return list(found)
            self.misses += 1
        vector = compute(text)  # outside the lock: concurrent misses embed in parallel
        with self._lock:
            self._items[text] = tuple(vector)
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return list(vector)

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"size": self.size, "entries": len(self._items), "hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

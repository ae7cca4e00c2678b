"""The `onnx` and `onnx-int8` runtimes: the exported model run by ONNX Runtime, in bounded
runs so the service's memory stays small and a search never queues behind an ingestion."""

from __future__ import annotations

import threading
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from core import metrics
from core.embeddings.model_info import configured_dimensions, local_model_path, max_seq_length
from core.embeddings.onnx_export import onnx_model_file
from core.embeddings.onnx_session import infer, session, tokenize
from core.embeddings.query_cache import QueryCache
from core.settings import Settings

# ONNX Runtime keeps the largest scratch buffers any run has needed (its arena never shrinks),
# one set per concurrent run, so a service's memory is set by its biggest runs, not by its
# average. Two bounds keep that reservation small, and reached within the first minutes:
# - a run pads at most MAX_RUN_TOKENS word pieces (texts x the longest one): attention
#   scratch grows with batch x length^2, and smaller runs are faster too (their activations
#   stay in the cores' caches); four full chunks per run was the fastest size for both ONNX
#   runtimes (README, *Performance*, has the measurements);
# - runs above SMALL_RUN_TOKENS take one of INFERENCE_SLOTS slots (on a session of their own,
#   see `session`): more concurrent big runs only share the same cores (each run already uses
#   every core) while each holds its own buffers. Small runs (a query, one chunk, a few
#   sentences) need little scratch and go at once, so a search never queues behind an
#   ingestion batch.
MAX_RUN_TOKENS = 1024
SMALL_RUN_TOKENS = 512
INFERENCE_SLOTS = 2


class OnnxEmbedding(BaseEmbedding):
    """A sentence-transformers model (transformer + mean pooling + normalize) run by ONNX Runtime."""

    runtime: str = "onnx"
    max_length: int = 256
    # LlamaIndex hands us `embed_batch_size` texts at a time; we sort those by length and run
    # them in sub-batches of at most `run_batch_size` texts and MAX_RUN_TOKENS padded word
    # pieces. A wide hand-over lets whole pipeline runs be length-sorted, so short tail chunks
    # are not padded to the longest chunk of their batch.
    run_batch_size: int = 64
    _session: Any = PrivateAttr()  # small runs: queries, single chunks, a few sentences
    _bulk_session: Any = PrivateAttr()  # runs above SMALL_RUN_TOKENS, one per slot at a time
    _tokenizer: Any = PrivateAttr()
    _dimensions: int = PrivateAttr()
    _query_cache: QueryCache = PrivateAttr()
    _slots: threading.BoundedSemaphore = PrivateAttr(default_factory=lambda: threading.BoundedSemaphore(
        INFERENCE_SLOTS))

    @classmethod
    def class_name(cls) -> str:
        return "OnnxEmbedding"

    @classmethod
    def load(cls, settings: Settings, runtime: str) -> OnnxEmbedding:
        from transformers import AutoTokenizer

        model_dir = local_model_path(settings.embedding_model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        max_length = max_seq_length(model_dir)
        path = onnx_model_file(model_dir, runtime, settings.models_dir, tokenizer, max_length)
        instance = cls(model_name=str(model_dir), runtime=runtime, max_length=max_length,
                       embed_batch_size=max(1024, settings.embedding_batch_size),
                       run_batch_size=settings.embedding_batch_size)
        threads = settings.embedding_threads or None
        instance._session = session(path, threads)
        instance._bulk_session = session(path, threads, spinning=True)
        instance._tokenizer = tokenizer
        instance._dimensions = int(instance._session.get_outputs()[0].shape[-1] or configured_dimensions(settings))
        instance._query_cache = QueryCache(settings.query_cache_size)
        return instance

    @property
    def local_tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_input_tokens(self) -> int:
        return self.max_length

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        encoded = tokenize(self._tokenizer, texts, self.max_length)
        lengths = encoded["attention_mask"].sum(axis=1)
        # Length-sorted sub-batches pad less (sentence-transformers does the same); with right
        # padding each sub-batch is cut to its own longest text.
        order = sorted(range(len(texts)), key=lambda i: int(lengths[i]), reverse=True)
        trim = getattr(self._tokenizer, "padding_side", "right") == "right"
        out: list[list[float]] = [[] for _ in texts]
        start = 0
        while start < len(order):
            width = int(lengths[order[start]]) if trim else encoded["input_ids"].shape[1]
            step = max(1, min(self.run_batch_size, MAX_RUN_TOKENS // max(width, 1)))
            idx = order[start:start + step]
            batch = {name: values[idx, :width] for name, values in encoded.items()}
            if len(idx) * width > SMALL_RUN_TOKENS:
                with self._slots:
                    vectors = infer(self._bulk_session, batch)
            else:
                vectors = infer(self._session, batch)
            for i, vector in zip(idx, vectors, strict=True):
                out[i] = vector.tolist()
            start += step
        return out

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._query_cache.get(query, lambda text: self._encode([text])[0])

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        with metrics.timed(metrics.EMBEDDING_SECONDS, kind="batch"):
            return self._encode(texts)

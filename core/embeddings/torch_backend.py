"""The `torch` runtime: sentence-transformers in fp32, and the fallback whenever onnxruntime
is missing or the ONNX export fails."""

from __future__ import annotations

from typing import Any

from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from pydantic import PrivateAttr

from core.embeddings.model_info import local_model_path
from core.embeddings.query_cache import QueryCache
from core.settings import Settings


class TorchEmbedding(HuggingFaceEmbedding):
    """sentence-transformers fp32 with the query cache in front of query embeddings."""

    _query_cache: QueryCache = PrivateAttr()
    runtime: str = "torch"

    @classmethod
    def load(cls, settings: Settings) -> TorchEmbedding:
        model = cls(model_name=str(local_model_path(settings.embedding_model)), device="cpu", normalize=True,
                    embed_batch_size=settings.embedding_batch_size)
        model._query_cache = QueryCache(settings.query_cache_size)
        return model

    @property
    def local_tokenizer(self) -> Any:
        return self._model.tokenizer

    @property
    def max_input_tokens(self) -> int:
        return int(self._model.max_seq_length)

    @property
    def dimensions(self) -> int:
        return int(self._model.get_embedding_dimension())

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._query_cache.get(query, super()._get_query_embedding)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

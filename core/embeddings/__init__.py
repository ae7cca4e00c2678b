"""Embeddings: which model (model_info), built once per process (factory), run by torch
(torch_backend) or ONNX Runtime (onnx_export, onnx_session, onnx_runtime), with a query cache
in front (query_cache) and the model's own word-piece count for the chunker (tokens).

The names below are the package's public surface; import them from here.
"""

from core.embeddings.factory import (
    build_embed_model,
    embedding_info,
    embedding_runtime,
    get_embed_model,
    query_cache_info,
)
from core.embeddings.model_info import (
    BUNDLED_MODEL,
    EmbeddingInfo,
    LocalEmbedding,
    configured_dimensions,
    local_model_path,
)
from core.embeddings.query_cache import QueryCache
from core.embeddings.tokens import count_tokens, counting_tokenizer

__all__ = [
    "BUNDLED_MODEL",
    "EmbeddingInfo",
    "LocalEmbedding",
    "QueryCache",
    "build_embed_model",
    "configured_dimensions",
    "count_tokens",
    "counting_tokenizer",
    "embedding_info",
    "embedding_runtime",
    "get_embed_model",
    "local_model_path",
    "query_cache_info",
]

"""The embedding model factory: the bundled all-MiniLM-L6-v2 by default (EMBEDDING_RUNTIME
`onnx`, `onnx-int8` or `torch`), OpenAI by setting; one model per process."""

from __future__ import annotations

import logging
from functools import lru_cache

from llama_index.core.base.embeddings.base import BaseEmbedding

from core.embeddings.model_info import OPENAI_DIMENSIONS, EmbeddingInfo, LocalEmbedding
from core.embeddings.query_cache import QueryCache
from core.errors import ConfigurationError
from core.settings import Settings, get_settings

logger = logging.getLogger("ils_rag.embeddings")


def build_embed_model(settings: Settings) -> BaseEmbedding:
    if settings.embedding_backend == "openai":
        from llama_index.embeddings.openai import OpenAIEmbedding

        if not settings.openai_api_key:
            raise ConfigurationError("EMBEDDING_BACKEND=openai needs OPENAI_API_KEY.")
        return OpenAIEmbedding(
            model=settings.embedding_model,
            api_key=settings.openai_api_key.get_secret_value(),
            api_base=settings.openai_base_url,
            embed_batch_size=settings.embedding_batch_size,
        )
    if settings.embedding_runtime in ("onnx", "onnx-int8"):
        try:
            from core.embeddings.onnx_runtime import OnnxEmbedding

            return OnnxEmbedding.load(settings, settings.embedding_runtime)
        except ConfigurationError:
            raise
        except Exception as exc:  # missing onnxruntime/onnx, export or probe failure: torch still works
            logger.warning("EMBEDDING_RUNTIME=%s unavailable (%s: %s); falling back to torch fp32",
                           settings.embedding_runtime, type(exc).__name__, exc)
    from core.embeddings.torch_backend import TorchEmbedding

    return TorchEmbedding.load(settings)


@lru_cache
def get_embed_model() -> BaseEmbedding:
    return build_embed_model(get_settings())


def embedding_runtime(model: BaseEmbedding | None = None) -> str:
    """The runtime actually in use (after any fallback): torch, onnx, onnx-int8 or openai."""
    return str(getattr(model or get_embed_model(), "runtime", "openai"))


def embedding_info(model: BaseEmbedding | None = None) -> EmbeddingInfo:
    model = model or get_embed_model()
    settings = get_settings()
    if not isinstance(model, LocalEmbedding):
        return EmbeddingInfo(settings.embedding_model, OPENAI_DIMENSIONS.get(settings.embedding_model, 1536), 8191)
    return EmbeddingInfo(name=settings.embedding_model, dimensions=model.dimensions,
                         max_input_tokens=model.max_input_tokens)


def query_cache_info(model: BaseEmbedding | None = None) -> dict[str, int] | None:
    """Hits/misses of the model's query cache (None for a model without one)."""
    cache = getattr(model or get_embed_model(), "_query_cache", None)
    return cache.info() if isinstance(cache, QueryCache) else None

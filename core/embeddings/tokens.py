"""Counting word pieces as the local model sees them: the chunker sizes chunks with it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding

from core.embeddings.factory import get_embed_model
from core.embeddings.model_info import LocalEmbedding, local_model_path
from core.settings import get_settings


@lru_cache(maxsize=4)
def _counting_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def counting_tokenizer(model: BaseEmbedding | None = None) -> Any | None:
    """A tokenizer of the local model for splitting and counting, separate from the one the
    model embeds with (see onnx_session.tokenize): calls without padding or truncation on the
    embedding instance race the embedding calls of other threads ("Already borrowed", ragged
    batches). None for a model without a Hugging Face tokenizer (OpenAI)."""
    model = model or get_embed_model()
    if not isinstance(model, LocalEmbedding) or model.local_tokenizer is None:
        return None
    return _counting_tokenizer(str(local_model_path(get_settings().embedding_model)))


def count_tokens(text: str, model: BaseEmbedding | None = None) -> int:
    """Word pieces the embedder will see for `text`, special tokens included."""
    tokenizer = counting_tokenizer(model)
    if tokenizer is None:
        raise ValueError("count_tokens needs a local model with a tokenizer")
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])

"""Chunk sizes derived from the embedding model, counted in the model's own word pieces.

all-MiniLM-L6-v2 reads at most 256 word pieces *including* [CLS] and [SEP] and silently
drops the rest, so a chunk sized by SentenceSplitter's default (1,024 tiktoken tokens)
would be three-quarters invisible to search. The splitter is given the model's tokenizer,
and chunks embed their text alone (all metadata is excluded from the embed text), so
"chunk_size" here means exactly what the model will see, minus a small safety margin for
re-joined splits tokenizing differently at their seams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.node_parser import SentenceSplitter, TokenTextSplitter
from llama_index.core.schema import BaseNode, TransformComponent

from core.embeddings import counting_tokenizer, embedding_info, get_embed_model
from indexing.readers import ROWS_KEY

SEAM_MARGIN = 8  # word pieces kept free for splits that tokenize longer once joined
OPENAI_CHUNK_SIZE = 512  # well under the 8k limit; long chunks make poor retrieval units


class ModelTokenizer:
    """`SentenceSplitter(tokenizer=...)` wants text -> list of tokens; this is the model's."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tokenizer = hf_tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False, verbose=False)


@dataclass(frozen=True)
class ChunkPlan:
    model_limit: int  # word pieces the model reads, special tokens included
    special_tokens: int
    chunk_size: int
    chunk_overlap: int


def _hf_tokenizer(model: BaseEmbedding) -> Any | None:
    return counting_tokenizer(model)


def chunk_plan(model: BaseEmbedding | None = None) -> ChunkPlan:
    model = model or get_embed_model()
    info = embedding_info(model)
    tokenizer = _hf_tokenizer(model)  # None for a model without word pieces of its own (OpenAI)
    if tokenizer is None:
        size = min(OPENAI_CHUNK_SIZE, info.max_input_tokens)
        return ChunkPlan(info.max_input_tokens, 0, size, size // 8)
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    size = info.max_input_tokens - special - SEAM_MARGIN
    return ChunkPlan(info.max_input_tokens, special, size, size // 8)


def embed_tokenizer(model: BaseEmbedding | None = None) -> ModelTokenizer | None:
    tokenizer = _hf_tokenizer(model or get_embed_model())
    return ModelTokenizer(tokenizer) if tokenizer is not None else None


class ChunkSplitter(TransformComponent):
    """Prose is cut at sentence ends (SentenceSplitter); text of one record per line (a CSV's
    rows, marked by its reader) is cut between lines only (TokenTextSplitter on newlines), so
    a row never ends one chunk and begins the next: SentenceSplitter sees a CSV as one long
    sentence and would cut it at any comma."""

    prose: SentenceSplitter
    rows: TokenTextSplitter

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        out: list[BaseNode] = []
        for node in nodes:  # one part at a time, in order: chunk ids count within their part
            splitter = self.rows if node.metadata.get(ROWS_KEY) == "rows" else self.prose
            out.extend(splitter([node], **kwargs))
        return out

    def get_nodes_from_documents(self, documents: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        return self(documents, **kwargs)


def build_splitter(model: BaseEmbedding | None = None, id_func: Any = None) -> ChunkSplitter:
    plan = chunk_plan(model)
    kwargs: dict[str, Any] = {"chunk_size": plan.chunk_size, "chunk_overlap": plan.chunk_overlap}
    tokenizer = embed_tokenizer(model)
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    if id_func is not None:
        kwargs["id_func"] = id_func
    return ChunkSplitter(prose=SentenceSplitter(**kwargs),
                         rows=TokenTextSplitter(separator="\n", backup_separators=[" "], **kwargs))

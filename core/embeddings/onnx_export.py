"""Export of the local model to ONNX, once, into MODEL_CACHE_DIR (default DATA_DIR/models,
shared by every process; a file lock serialises the first export).

`onnx`: the model with ONNX Runtime's BERT graph fusions (fused attention, layer norms, GELU)
applied; its vectors are the torch vectors to ~1e-6. We export with `torch.onnx.export`
rather than sentence-transformers' `backend="onnx"` because that path needs optimum, which
pins transformers < 4.58. `onnx-int8`: the same graph with int8 (per-channel) dynamic
quantization of its weights, cosine ≈ 0.99 to the fp32 vectors. An export is renamed into
place only after it reproduced the torch model's probe vectors.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from core.embeddings.onnx_session import embed, mean_pool, session

logger = logging.getLogger("ils_rag.embeddings")

ONNX_EXPORT_VERSION = "1"  # bump to invalidate every cached export
# Probe sentences an export must reproduce before it is used (cosine to the reference).
_PROBES = ["How long does it take to adapt to progressive lenses?",
           "Contact lens wearers should never rinse their lenses in tap water because of Acanthamoeba.",
           "ok"]
_MIN_PROBE_COSINE = {"onnx": 0.9999, "onnx-int8": 0.95}  # int8 bends very short texts most


def _export_key(model_dir: Path, runtime: str) -> str:
    import onnxruntime
    import torch

    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    parts = [str(model_dir.resolve()), runtime, ONNX_EXPORT_VERSION, torch.__version__, onnxruntime.__version__]
    parts += [f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _check_probe(onnx_session: Any, tokenizer: Any, reference: Any, max_length: int, runtime: str) -> None:
    import numpy as np

    vectors = embed(onnx_session, tokenizer, _PROBES, max_length)
    worst = float(np.min((vectors * reference).sum(axis=1)))
    if worst < _MIN_PROBE_COSINE[runtime]:
        raise RuntimeError(f"ONNX export ({runtime}) drifts from the torch model: probe cosine {worst:.4f}")


def export_fp32(model_dir: Path, target: Path, tokenizer: Any, max_length: int) -> None:
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
    reference = mean_pool(reference, sample["attention_mask"].numpy())
    _check_probe(session(tmp), tokenizer, reference, max_length, "onnx")
    np.save(target.parent / "probe.npy", reference)
    os.replace(tmp, target)


def export_int8(fp32: Path, target: Path, tokenizer: Any, max_length: int) -> None:
    """Dynamic int8 quantization, per channel: per-tensor scales lose too much (cosine ~0.90)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_suffix(".tmp.onnx")
    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops lack shape info
    _check_probe(session(tmp), tokenizer, np.load(fp32.parent / "probe.npy"), max_length, "onnx-int8")
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
            export_fp32(model_dir, fp32, tokenizer, max_length)
        if runtime == "onnx-int8" and not target.is_file():
            export_int8(fp32, target, tokenizer, max_length)
    return target

"""Embedding runtimes (EMBEDDING_RUNTIME) and the query LRU cache, on the real bundled model.

No timing assertions here: speed claims come from `ils-rag bench search`.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

SAMPLE_TEXTS = [
    "Progressive lenses usually take one to two weeks to get used to; wear them all day.",
    "Never rinse or store soft contact lenses in tap water: Acanthamoeba keratitis is a sight-threatening infection.",
    "Children's NHS eye examinations are free for under-16s and for under-19s in full-time education.",
    "Anti-reflective coatings reduce glare from screens and headlights at night.",
    "ok",
    "Myopia control with DIMS spectacle lenses slows axial elongation in children. " * 12,  # past 256 pieces
]


@pytest.fixture(scope="module")
def runtimes(database: str):
    """One model per runtime, built from the session's settings (onnx exported into MODEL_CACHE_DIR)."""
    from core.embeddings import build_embed_model
    from core.settings import get_settings

    settings = get_settings()
    return {runtime: build_embed_model(settings.model_copy(update={"embedding_runtime": runtime}))
            for runtime in ("torch", "onnx", "onnx-int8")}


def _matrix(model, texts: list[str]) -> np.ndarray:
    return np.asarray(model.get_text_embedding_batch(texts), dtype=np.float32)


def test_runtimes_are_what_was_asked_for(runtimes) -> None:
    from core.embeddings import embedding_runtime

    assert {name: embedding_runtime(model) for name, model in runtimes.items()} == {
        "torch": "torch", "onnx": "onnx", "onnx-int8": "onnx-int8"}


def test_onnx_vectors_match_torch_fp32(runtimes) -> None:
    reference = _matrix(runtimes["torch"], SAMPLE_TEXTS)
    onnx = _matrix(runtimes["onnx"], SAMPLE_TEXTS)
    assert onnx.shape == reference.shape == (len(SAMPLE_TEXTS), 384)
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-4)
    assert (onnx * reference).sum(axis=1).min() > 0.9999
    # Query embeddings too (separate code path, behind the cache).
    query = "how long to adapt to varifocals"
    assert np.dot(runtimes["onnx"].get_query_embedding(query), runtimes["torch"].get_query_embedding(query)) > 0.9999


def test_onnx_int8_stays_close_and_keeps_neighbours(runtimes) -> None:
    reference = _matrix(runtimes["torch"], SAMPLE_TEXTS[:4] + SAMPLE_TEXTS[5:])
    quantized = _matrix(runtimes["onnx-int8"], SAMPLE_TEXTS[:4] + SAMPLE_TEXTS[5:])
    assert (quantized * reference).sum(axis=1).min() > 0.98
    # The nearest other text of each text is unchanged.
    ref_sim, q_sim = reference @ reference.T, quantized @ quantized.T
    np.fill_diagonal(ref_sim, -1)
    np.fill_diagonal(q_sim, -1)
    assert (ref_sim.argmax(axis=1) == q_sim.argmax(axis=1)).all()


def test_embedding_info_and_tokens_identical_across_runtimes(runtimes) -> None:
    from core.embeddings import count_tokens, embedding_info

    infos = {embedding_info(model) for model in runtimes.values()}
    assert len(infos) == 1
    info = infos.pop()
    assert (info.dimensions, info.max_input_tokens) == (384, 256)
    for text in SAMPLE_TEXTS:
        assert len({count_tokens(text, model) for model in runtimes.values()}) == 1


def test_torch_when_told_to_and_fallback_when_onnx_breaks(database: str, monkeypatch, caplog) -> None:
    import core.embeddings as embeddings
    import core.embeddings.onnx_runtime as onnx_runtime
    from core.settings import get_settings

    settings = get_settings()
    assert embeddings.embedding_runtime(
        embeddings.build_embed_model(settings.model_copy(update={"embedding_runtime": "torch"}))) == "torch"

    def broken_export(*args, **kwargs):
        raise RuntimeError("simulated export failure")

    # Not a mock of the model or Postgres: we break the exporter to prove the fallback path.
    monkeypatch.setattr(onnx_runtime, "onnx_model_file", broken_export)
    with caplog.at_level("WARNING", logger="ils_rag.embeddings"):
        model = embeddings.build_embed_model(settings.model_copy(update={"embedding_runtime": "onnx"}))
    assert embeddings.embedding_runtime(model) == "torch"
    assert "falling back to torch" in caplog.text
    assert len(model.get_query_embedding("still works")) == 384


def test_export_is_cached_on_disk(database: str) -> None:
    from transformers import AutoTokenizer

    from core.embeddings import local_model_path
    from core.embeddings.onnx_export import onnx_model_file
    from core.settings import get_settings

    settings = get_settings()
    model_dir = local_model_path(settings.embedding_model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = onnx_model_file(model_dir, "onnx", settings.models_dir, tokenizer, 256)
    mtime = first.stat().st_mtime_ns
    again = onnx_model_file(model_dir, "onnx", settings.models_dir, tokenizer, 256)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert first.is_relative_to(settings.models_dir)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_query_cache_returns_identical_vectors_and_counts(database: str, runtime: str) -> None:
    from core.embeddings import build_embed_model, query_cache_info
    from core.settings import get_settings

    model = build_embed_model(get_settings().model_copy(update={"embedding_runtime": runtime,
                                                                 "query_cache_size": 2}))
    first = model.get_query_embedding("progressive lenses")
    first[0] = 42.0  # a caller mutating its copy must not corrupt the cache
    second = model.get_query_embedding("progressive lenses")
    assert second[0] != 42.0
    assert second == model.get_text_embedding("progressive lenses") or np.allclose(
        second, model.get_text_embedding("progressive lenses"), atol=1e-6)
    assert query_cache_info(model) == {"size": 2, "entries": 1, "hits": 1, "misses": 1}
    model.get_query_embedding("dry eye")
    model.get_query_embedding("contact lenses")  # evicts "progressive lenses" (least recently used)
    model.get_query_embedding("progressive lenses")
    assert query_cache_info(model) == {"size": 2, "entries": 2, "hits": 1, "misses": 4}


def test_query_cache_off_and_thread_safe() -> None:
    from core.embeddings import QueryCache

    calls: list[str] = []

    def compute(text: str) -> list[float]:
        calls.append(text)
        return [float(len(text)), 1.0]

    off = QueryCache(0)
    off.get("a", compute)
    off.get("a", compute)
    assert calls == ["a", "a"] and off.info()["entries"] == 0

    cache = QueryCache(50)
    results: list[tuple[str, list[float]]] = []

    def worker(n: int) -> None:
        for i in range(200):
            text = f"q{(n * 7 + i) % 80}"
            results.append((text, cache.get(text, compute)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    info = cache.info()
    assert info["hits"] + info["misses"] == 800 and info["entries"] == 50
    assert all(vector == [float(len(text)), 1.0] for text, vector in results)
    assert info["misses"] == len(calls) - 2  # every miss computed exactly once (the 2 are from `off`)


def test_concurrent_first_use_exports_once(tmp_path, monkeypatch) -> None:
    """Several processes (uvicorn workers, parallel test runs) share MODEL_CACHE_DIR: the file
    lock lets exactly one of them export. The real exporter takes tens of seconds, so a slow
    stand-in that writes the file is used here; the real export is covered above."""
    import time

    from transformers import AutoTokenizer

    import core.embeddings as embeddings
    import core.embeddings.onnx_export as onnx_export

    model_dir = embeddings.local_model_path(embeddings.BUNDLED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    exports: list[int] = []
    inside = [0]

    def slow_export(model_dir, target, tokenizer, max_length) -> None:
        inside[0] += 1
        assert inside[0] == 1, "two exports ran at the same time"
        exports.append(threading.get_ident())
        time.sleep(0.3)
        target.write_bytes(b"onnx")
        inside[0] -= 1

    monkeypatch.setattr(onnx_export, "export_fp32", slow_export)
    paths: list[object] = []
    threads = [threading.Thread(target=lambda: paths.append(
        onnx_export.onnx_model_file(model_dir, "onnx", tmp_path, tokenizer, 256))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(exports) == 1
    assert len(paths) == 4 and len(set(paths)) == 1 and paths[0].read_bytes() == b"onnx"


def test_big_batches_are_cut_into_bounded_runs_with_the_same_vectors(runtimes, monkeypatch) -> None:
    """Sub-batches of at most MAX_RUN_TOKENS padded pieces, each cut to its own longest text,
    give each text the vector it gets alone (padding and batch order change nothing)."""
    import core.embeddings.onnx_runtime as onnx_runtime

    model = runtimes["onnx"]
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] + f" variant {i}" for i in range(40)]
    widths: list[tuple[int, int]] = []
    real_infer = onnx_runtime.infer

    def recording_infer(session, batch):
        widths.append(batch["input_ids"].shape)
        return real_infer(session, batch)

    monkeypatch.setattr(onnx_runtime, "infer", recording_infer)
    batched = _matrix(model, texts)
    assert max(rows * width for rows, width in widths) <= onnx_runtime.MAX_RUN_TOKENS
    assert len(widths) > 1 and len({width for _, width in widths}) > 1  # long texts apart from short ones
    alone = np.asarray([model.get_text_embedding(text) for text in texts], dtype=np.float32)
    assert (batched * alone).sum(axis=1).min() > 0.99999


def test_counting_and_embedding_at_once_from_many_threads(runtimes) -> None:
    """Splitting counts pieces without padding while requests embed with padding: a shared fast
    tokenizer would be reconfigured under a concurrent call ("Already borrowed", ragged batch)."""
    from core.embeddings import count_tokens

    model = runtimes["onnx"]
    errors: list[BaseException] = []
    expected = count_tokens(SAMPLE_TEXTS[5], model)

    def work(number: int) -> None:
        try:
            for round_ in range(25):
                if (number + round_) % 2:
                    assert count_tokens(SAMPLE_TEXTS[5], model) == expected
                else:
                    vectors = _matrix(model, SAMPLE_TEXTS[: 2 + round_ % 4])
                    assert vectors.shape[1] == 384
        except BaseException as exc:  # reported below, with the failing thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

"""The evaluation metrics against an independent implementation (ranx), and the legacy Jaccard."""

from __future__ import annotations

import random

import pytest

from evals.jaccard import jaccard, jaccard_search
from evals.metrics import average, query_metrics


def _random_case(rng: random.Random) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    docs = [f"d{i}" for i in range(60)]
    qrels, runs = {}, {}
    for q in range(40):
        qid = f"q{q}"
        qrels[qid] = {doc: rng.choice([1, 2]) for doc in rng.sample(docs, rng.randint(1, 6))}
        runs[qid] = rng.sample(docs, rng.randint(0, 30)) if q % 7 else []
    return qrels, runs


def test_metrics_match_ranx() -> None:
    from ranx import Qrels, Run, evaluate

    qrels, runs = _random_case(random.Random(7))
    ours = average([query_metrics(runs[q], qrels[q]) for q in qrels])
    ranx_run = Run({q: {doc: float(100 - rank) for rank, doc in enumerate(ranked)} or {"none": 0.0}
                    for q, ranked in runs.items()})
    reference = evaluate(Qrels(qrels), ranx_run, ["ndcg@10", "mrr@10", "recall@10", "recall@100", "precision@5",
                                                 "hit_rate@1", "hit_rate@5"])
    assert ours["ndcg@10"] == pytest.approx(reference["ndcg@10"], abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(reference["mrr@10"], abs=1e-9)
    assert ours["recall@10"] == pytest.approx(reference["recall@10"], abs=1e-9)
    assert ours["recall@100"] == pytest.approx(reference["recall@100"], abs=1e-9)
    assert ours["precision@5"] == pytest.approx(reference["precision@5"], abs=1e-9)
    assert ours["hit@1"] == pytest.approx(reference["hit_rate@1"], abs=1e-9)
    assert ours["hit@5"] == pytest.approx(reference["hit_rate@5"], abs=1e-9)


def test_graded_ndcg_prefers_the_answering_document() -> None:
    grades = {"answers": 2, "related": 1}
    assert query_metrics(["answers", "related"], grades)["ndcg@10"] == pytest.approx(1.0)
    assert query_metrics(["related", "answers"], grades)["ndcg@10"] < 1.0


def test_jaccard_is_the_seeds_word_overlap() -> None:
    # the seed lower-cases and splits on whitespace only: punctuation stays attached
    assert jaccard("Progressive lenses", "progressive lenses") == 1.0
    assert jaccard("lenses?", "lenses") == 0.0
    assert jaccard("a b", "b c") == pytest.approx(1 / 3)
    hits = jaccard_search("varifocal price", [("1", "the varifocal price list", {}), ("2", "dry eye", {})], 1)
    assert [hit.id for hit in hits] == ["1"]


def test_threshold_study_and_recommendation() -> None:
    from pathlib import Path

    from evals.beir import Dataset, Query
    from evals.runner import RECALL_FLOOR, Ranked, choose_thresholds, threshold_study

    queries = [Query("a", "q"), Query("b", "q"), Query("none", "q", type="unanswerable")]
    dataset = Dataset("toy", Path("."), [], queries, {"a": {"d1": 2}, "b": {"d2": 1}})
    ranked = {"a": Ranked(["d1", "x"], [0.6, 0.3], 0.0), "b": Ranked(["y", "d2"], [0.5, 0.35], 0.0),
              "none": Ranked(["z"], [0.42], 0.0)}
    rows = {row["threshold"]: row for row in threshold_study(dataset, queries, ranked)}
    assert rows[0.0]["recall"] == 1.0 and rows[0.0]["precision"] == pytest.approx(2 / 5)
    assert rows[0.4]["recall"] == 0.5 and rows[0.4]["precision"] == pytest.approx(1 / 3)
    assert rows[0.4]["answerable_kept"] == 0.5 and rows[0.4]["unanswerable_with_hits"] == 1
    assert rows[0.45]["unanswerable_with_hits"] == 0
    best, recommended = choose_thresholds(list(rows.values()))
    assert recommended == 0.35  # the highest t that still keeps d2 (0.35): recall 1.0 >= RECALL_FLOOR
    assert rows[recommended]["recall"] >= RECALL_FLOOR
    assert rows[best]["f1"] == max(row["f1"] for row in rows.values())


def test_embedding_cache_is_keyed_by_model_runtime_and_text(tmp_path, embed_model) -> None:
    import numpy as np

    from core.embeddings import embedding_runtime
    from core.settings import get_settings
    from evals.embedding_cache import CachedEmbedding
    from evals.runner import model_key

    assert model_key(get_settings()).endswith(":" + embedding_runtime(embed_model))  # int8 and fp32 never share vectors
    fp32 = CachedEmbedding(embed_model, tmp_path / "cache.sqlite", "local:m:onnx")
    first = fp32.get_text_embedding_batch(["progressive lenses", "dry eye"])
    again = CachedEmbedding(embed_model, tmp_path / "cache.sqlite", "local:m:onnx")
    cached = again.get_text_embedding_batch(["progressive lenses", "dry eye"])
    assert np.allclose(cached, first, atol=1e-6)  # stored as float32
    assert (again.hits, again.misses) == (2, 0)
    other = CachedEmbedding(embed_model, tmp_path / "cache.sqlite", "local:m:onnx-int8")
    other.get_text_embedding_batch(["progressive lenses"])
    assert (other.hits, other.misses) == (0, 1)

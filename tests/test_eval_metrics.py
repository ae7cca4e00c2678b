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

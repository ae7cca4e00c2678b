"""Per-query retrieval metrics over document ids.

Binary metrics (hit@k, MRR@10, precision@5, recall@k) use LlamaIndex's metric classes
with relevance = grade >= 1. nDCG@10 is computed here because LlamaIndex's NDCG supports
binary relevance only and our judgements are graded; it follows trec_eval's definition
(gain = grade, discount log2(rank + 1)) and a test cross-checks it against ranx.
"""

from __future__ import annotations

import math
from statistics import fmean

import numpy as np
from llama_index.core.evaluation.retrieval.metrics import MRR, HitRate, Recall

METRICS = ("hit@1", "hit@5", "mrr@10", "ndcg@10", "recall@10", "recall@100", "precision@5")


def ndcg_at_k(ranked: list[str], grades: dict[str, int], k: int = 10) -> float:
    dcg = sum(grades.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def query_metrics(ranked: list[str], grades: dict[str, int]) -> dict[str, float]:
    """`ranked`: document ids best first, deduplicated; `grades`: the query's qrels."""
    relevant = [doc for doc, grade in grades.items() if grade > 0]
    if not relevant:
        raise ValueError("metrics need at least one relevant document")

    def score(metric: object, cut: int) -> float:
        if not ranked:  # LlamaIndex's metrics refuse an empty list; nothing retrieved scores 0
            return 0.0
        return metric.compute(expected_ids=relevant, retrieved_ids=ranked[:cut]).score  # type: ignore[attr-defined]

    return {
        "hit@1": score(HitRate(), 1),
        "hit@5": score(HitRate(), 5),
        "mrr@10": score(MRR(), 10),
        "ndcg@10": ndcg_at_k(ranked, grades, 10),
        "recall@10": score(Recall(), 10),
        "recall@100": score(Recall(), 100),
        # precision@5 divides by 5 (trec_eval's P_5), not by however many came back
        "precision@5": len(set(ranked[:5]) & set(relevant)) / 5,
    }


def average(per_query: list[dict[str, float]]) -> dict[str, float]:
    if not per_query:
        return dict.fromkeys(METRICS, 0.0)
    return {name: fmean(q[name] for q in per_query) for name in METRICS}


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile, interpolated linearly between ranks (numpy's default), 0.0 for no
    values. The one percentile of the project: evaluation latencies and every benchmark use it,
    so their p50/p95 figures mean the same thing."""
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=float), pct))

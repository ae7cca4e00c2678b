"""Regression check of retrieval quality: nDCG@10 of the default retriever on a fixed subset of
the optical evaluation set must stay within the recorded tolerance of its baseline
(evals/baselines/optical-regression.json; re-record with `python -m evals.regression --record`)."""

from __future__ import annotations

from evals.regression import BASELINE, load_baseline, subset


def test_baseline_covers_the_recorded_subset() -> None:
    baseline = load_baseline()
    assert baseline.query_ids == subset(), f"the optical queries changed: re-record {BASELINE}"
    assert 30 <= len(baseline.query_ids) <= 60  # "a few dozen": quick enough for every test run


def test_default_retriever_has_not_regressed(database: str, embed_model: object) -> None:
    from core.settings import get_settings
    from evals.regression import evaluate

    baseline = load_baseline()
    mode = get_settings().search_mode
    assert mode == baseline.retriever, (
        f"SEARCH_MODE is {mode} but the baseline was recorded for {baseline.retriever}: re-record {BASELINE}")
    result = evaluate(baseline.query_ids, get_settings(), mode)
    ndcg = result.averages["ndcg@10"]
    print(f"\n{mode} on {result.queries} optical queries: nDCG@10 {ndcg:.4f} (baseline {baseline.ndcg_at_10}), "
          f"hit@5 {result.averages['hit@5']:.3f}, p50 {result.latency_ms_p50:.0f} ms")
    assert ndcg >= baseline.ndcg_at_10 - baseline.tolerance, (
        f"nDCG@10 of {mode} fell to {ndcg:.4f}, more than {baseline.tolerance} below the recorded "
        f"{baseline.ndcg_at_10}; if the change is intended, re-record {BASELINE}")

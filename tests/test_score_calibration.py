"""The calibrated relevance score: the committed curve of the bundled model, its inverse (a
score threshold as a cosine floor), refitting, and `score` beside `similarity` in search."""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import get_settings
from retrieval.calibration import (
    NO_RESULTS_FLOOR,
    Calibration,
    current_calibration,
    fit_calibration,
    load_calibration,
)


def test_the_bundled_model_has_a_monotone_calibration_fitted_on_the_optical_set() -> None:
    calibration = load_calibration("local:all-MiniLM-L6-v2")
    assert calibration is not None and calibration.method in ("isotonic", "logistic")
    assert calibration.fitted_on["dataset"] == "optical" and calibration.fitted_on["pairs"] >= 1000
    assert set(calibration.fitted_on["cv_brier"]) == {"isotonic", "logistic"}
    assert list(calibration.cosines) == sorted(calibration.cosines)
    assert list(calibration.probabilities) == sorted(calibration.probabilities)
    assert calibration.cosines[0] == -1.0 and calibration.cosines[-1] == 1.0
    # The point of it: the plan's 0.7 means a cosine the bundled model's answers actually reach.
    assert 0.45 < calibration.min_similarity(0.7) < 0.7


def test_a_score_threshold_is_the_cosine_floor_where_the_score_reaches_it() -> None:
    calibration = current_calibration(get_settings())
    assert calibration is not None
    for threshold in (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        floor = calibration.min_similarity(threshold)
        assert calibration.score(floor) >= threshold - 1e-9
        assert calibration.score(floor - 1e-3) < threshold + 1e-9
    assert calibration.min_similarity(0.0) == -1.0
    flat = Calibration(model="m", method="isotonic", cosines=(-1.0, 1.0), probabilities=(0.1, 0.6))
    assert flat.min_similarity(0.7) == NO_RESULTS_FLOOR and flat.min_similarity(0.05) == -1.0


def test_fitting_chooses_a_method_by_held_out_brier_score() -> None:
    rng = np.random.default_rng(1)
    cosines = rng.uniform(0.0, 0.9, 2000)
    relevant = rng.uniform(size=2000) < 1 / (1 + np.exp(-(cosines - 0.5) * 12))  # a known logistic truth
    groups = [f"q{i // 10}" for i in range(2000)]
    calibration = fit_calibration("test:model", list(cosines), list(relevant), groups, {"dataset": "synthetic"})
    assert calibration.method == min(calibration.fitted_on["cv_brier"], key=calibration.fitted_on["cv_brier"].get)
    assert abs(calibration.score(0.5) - 0.5) < 0.1 and calibration.score(0.85) > 0.9 and calibration.score(0.1) < 0.1
    with pytest.raises(ValueError):
        fit_calibration("test:model", [0.1, 0.2], [False, False], ["a", "b"], {})


def test_search_returns_the_score_beside_the_cosine_and_thresholds_it(client, company, make_user, index_texts):
    index_texts(company, [
        ("prices.md", "Progressive lenses cost £189 a pair, including anti-reflective coating.", "pricing"),
        ("hours.md", "The practice is open Monday to Saturday from 9am to 5:30pm.", None),
        ("care.md", "Rinse contact lenses with fresh solution, never with tap water.", None)])
    _, headers = make_user(company, "staff")
    calibration = current_calibration(get_settings())
    assert calibration is not None

    everything = client.post("/api/rag/search", json={"query": "How much do progressive lenses cost?",
                                                      "threshold": 0, "limit": 10}, headers=headers).json()
    assert everything["threshold_applies_to"] == "score" and len(everything["results"]) == 3
    for result in everything["results"]:
        assert result["score"] == pytest.approx(calibration.score(result["similarity"]), abs=1e-3)

    body = client.post("/api/rag/search", json={"query": "How much do progressive lenses cost?", "threshold": 0.7},
                       headers=headers).json()
    assert body["min_similarity"] == pytest.approx(calibration.min_similarity(0.7), abs=1e-5)
    assert [r["filename"] for r in body["results"]] == ["prices.md"]
    assert all(r["score"] >= 0.7 for r in body["results"])
    expected = [r["id"] for r in everything["results"] if r["score"] >= 0.7]
    assert [r["id"] for r in body["results"]] == expected

    default = client.post("/api/rag/search", json={"query": "How much do progressive lenses cost?"},
                          headers=headers).json()
    assert default["threshold_applies_to"] == "similarity" and default["min_similarity"] == default["threshold"]


def test_threshold_effects_count_what_a_search_would_return() -> None:
    """The report behind docs/platform.md's threshold table: the first five passages of each
    question above each floor, counted per kind of question."""
    from evals.calibration import threshold_effects

    rng = np.random.default_rng(7)
    cosines = rng.uniform(0.1, 0.9, 600)
    relevant = rng.uniform(0, 1, 600) < cosines
    groups = [f"q{i % 60}" for i in range(600)]
    calibration = fit_calibration("test:model", list(cosines), list(relevant), groups, {"dataset": "synthetic"})
    # q0: answerable, one strong relevant passage; q1: unanswerable, one weak passage
    pairs = [(0.8, True), (0.5, False), (0.3, False)], [(0.35, False)]
    cos = [c for c, _ in pairs[0]] + [c for c, _ in pairs[1]]
    rel = [r for _, r in pairs[0]] + [r for _, r in pairs[1]]
    rows = threshold_effects(calibration, cos, rel, ["q0"] * 3 + ["q1"], {"q0"}, default_floor=0.25)
    by_label = {row["threshold"]: row for row in rows}
    everything = by_label["omitted: `SEARCH_THRESHOLD` cosine"]
    assert (everything["returned"], everything["answerable_with_relevant"], everything["unanswerable_with_result"]) \
        == (4, 1, 1)
    plan = by_label["0.7 as a raw cosine (the plan's number)"]
    assert (plan["returned"], plan["returned_relevant_share"], plan["unanswerable_with_result"]) == (1, 1.0, 0)
    floors = [row["cosine_floor"] for row in rows if "on `score`" in str(row["threshold"])]
    assert floors == sorted(floors)  # a higher score threshold never lowers the cosine floor

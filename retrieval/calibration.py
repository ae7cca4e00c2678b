"""Calibrated relevance scores: the raw cosine of a passage turned into the probability that it
is relevant to the question, fitted on the optical evaluation set.

Why: a cosine threshold means nothing to an integrator. With the bundled all-MiniLM-L6-v2,
passages that answer ordinary questions score 0.5-0.7, so the ILS plan's `threshold: 0.7`
(written for another model) returns nothing for most questions. A calibrated score does mean
something ("0.7 = seven in ten passages at this score were relevant on the evaluation set"),
and is what the seed contract's `threshold` applies to.

The calibration is a monotone curve (cosine -> probability) stored as points in a small JSON
file per embedding model, next to this module; applying it is a linear interpolation, so the
service needs no fitting library at run time. A threshold on the score is turned back into a
cosine floor (the curve is non-decreasing), so the search still filters on cosine in SQL.
`ils-rag eval calibrate` (evals.calibration) refits it; it chooses between isotonic and logistic
regression by cross-validated Brier score, grouped by question.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import Settings

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibrations"
CURVE_POINTS = 101  # a logistic curve is stored sampled at this many cosines
NO_RESULTS_FLOOR = 1.01  # a cosine floor above any cosine: the score threshold is out of reach


@dataclass(frozen=True)
class Calibration:
    """A fitted cosine -> probability curve for one embedding model."""

    model: str  # settings.embedding_key
    method: str  # "isotonic" or "logistic"
    cosines: tuple[float, ...]  # increasing
    probabilities: tuple[float, ...]  # non-decreasing, same length
    fitted_on: dict[str, Any] = field(default_factory=dict)  # dataset, pairs, relevance rule, metrics

    def score(self, cosine: float) -> float:
        """Probability that a passage with this cosine is relevant."""
        return float(np.interp(cosine, self.cosines, self.probabilities))

    def min_similarity(self, threshold: float) -> float:
        """The lowest cosine whose score reaches `threshold` (NO_RESULTS_FLOOR when none does)."""
        xs, ys = np.asarray(self.cosines), np.asarray(self.probabilities)
        if threshold <= ys[0]:
            return -1.0
        if threshold > ys[-1]:
            return NO_RESULTS_FLOOR
        i = int(np.argmax(ys >= threshold))  # first point at or above; ys[i-1] < threshold
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return float(x1 if y1 == y0 else x0 + (threshold - y0) * (x1 - x0) / (y1 - y0))

    def to_json(self) -> str:
        data = asdict(self)
        data["cosines"] = [round(x, 6) for x in self.cosines]
        data["probabilities"] = [round(y, 6) for y in self.probabilities]
        return json.dumps(data, indent=1) + "\n"


def calibration_path(model: str, directory: Path = CALIBRATION_DIR) -> Path:
    return directory / (model.replace("/", "_").replace(":", "__") + ".json")


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> Calibration | None:
    data = json.loads(path.read_text())
    return Calibration(model=data["model"], method=data["method"], cosines=tuple(data["cosines"]),
                       probabilities=tuple(data["probabilities"]), fitted_on=data.get("fitted_on", {}))


def load_calibration(model: str, directory: Path = CALIBRATION_DIR) -> Calibration | None:
    """The calibration fitted for `model`, or None (scores are then not available)."""
    path = calibration_path(model, directory)
    if not path.exists():
        return None
    return _load(path, path.stat().st_mtime)  # a refit file is picked up without a restart


def current_calibration(settings: Settings) -> Calibration | None:
    """The calibration of the embedding model `settings` configure (the runtime does not matter:
    onnx and torch give the same vectors, int8 within 0.01 of cosine)."""
    return load_calibration(settings.embedding_key)


# --- fitting (evals.calibration collects the pairs) -----------------------------------------


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, y)
    xs, ys = np.asarray(model.X_thresholds_, dtype=float), np.asarray(model.y_thresholds_, dtype=float)
    return xs, ys


def _logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4).fit(x.reshape(-1, 1), y)
    xs = np.linspace(-1.0, 1.0, CURVE_POINTS)
    return xs, model.predict_proba(xs.reshape(-1, 1))[:, 1]


FITTERS = {"isotonic": _isotonic, "logistic": _logistic}


def _brier(xs: np.ndarray, ys: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.interp(x, xs, ys) - y) ** 2))


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5,
                   seed: int = 7) -> dict[str, float]:
    """Mean held-out Brier score of each method, folds split by question (a question's
    passages are never on both sides)."""
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % folds for i, j in enumerate(order)}
    assigned = np.array([fold_of[g] for g in groups])
    scores: dict[str, list[float]] = {name: [] for name in FITTERS}
    for fold in range(folds):
        train, test = assigned != fold, assigned == fold
        if not test.any() or len(np.unique(y[train])) < 2:
            continue
        for name, fit in FITTERS.items():
            xs, ys = fit(x[train], y[train])
            scores[name].append(_brier(xs, ys, x[test], y[test]))
    return {name: float(np.mean(values)) for name, values in scores.items() if values}


def fit_calibration(model: str, cosines: list[float], relevant: list[bool], groups: list[str],
                    fitted_on: dict[str, Any]) -> Calibration:
    """Fit both methods, keep the one with the lower cross-validated Brier score, refit it on all pairs."""
    x, y, g = np.asarray(cosines, dtype=float), np.asarray(relevant, dtype=float), np.asarray(groups)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both relevant and irrelevant passages")
    briers = cross_validate(x, y, g)
    method = min(briers, key=briers.__getitem__)
    xs, ys = FITTERS[method](x, y)
    ys = np.maximum.accumulate(np.clip(ys, 0.0, 1.0))  # non-decreasing, so a threshold maps to one floor
    if xs[0] > -1.0:  # clip outside the fitted range, like the isotonic model does
        xs, ys = np.concatenate([[-1.0], xs]), np.concatenate([[ys[0]], ys])
    if xs[-1] < 1.0:
        xs, ys = np.concatenate([xs, [1.0]]), np.concatenate([ys, [ys[-1]]])
    info = {**fitted_on, "pairs": len(x), "relevant_share": round(float(y.mean()), 4),
            "cv_brier": {name: round(value, 5) for name, value in briers.items()}, "chosen_by": "lowest cv_brier"}
    return Calibration(model=model, method=method, cosines=tuple(float(v) for v in xs),
                       probabilities=tuple(float(v) for v in ys), fitted_on=info)

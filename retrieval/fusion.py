"""Fusing the vector and text rankings of one query into the hybrid ranking.

Three families, compared on the optical set and SciFact together by `python -m evals.fusion`
(the figures and the choice are in the README's retrieval section):

- `rrf`: reciprocal rank fusion, Σ w_side / (k + rank). Only ranks count, so it cannot see
  that one side is sure: with k = 60 a chunk both sides rank 8th outscores one a side ranks
  1st and the other misses, and a query's clear winner can vanish from the top 10;
- `relative`: each side's scores min-max normalised over its own candidates, then a
  weighted sum (a chunk a side does not return gets 0 from it): the score gaps survive, so a
  side's confident first place stays near the top;
- `dist`: like `relative`, but normalised by each side's mean ± 3 standard deviations,
  which is less sensitive to a lone outlier.

Score fusion can still outvote one side's clear winner: for "what do progressive lenses
cost?" the vector side ranks the lens guide's price chunk first by a wide margin, while the
text side (which never sees "cost" in it) fills its list with chunks that say "progressive"
and "cost" more often, and the sum of middling scores on both sides wins. `winner_gap`
guards against that: a side's first result that leads its runner-up by at least that much,
in the side's own spread (the lead divided by six standard deviations of its scores, the
`dist` scale), goes to the front of the fused list. Its value was chosen with the others.

Every method is deterministic: equal fused scores are ordered by the better single-side
rank, then by node id.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FusionMethod = Literal["rrf", "relative", "dist"]
FUSION_METHODS: tuple[str, ...] = ("rrf", "relative", "dist")


@dataclass(frozen=True)
class Fusion:
    """How to fuse; `vector_weight` is the vector side's share (the text side gets 1 - it)."""

    method: FusionMethod = "relative"
    vector_weight: float = 0.5
    rrf_k: float = 60.0
    winner_gap: float | None = None  # a side's clear winner goes first (None: no guard)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method {self.method!r}; use one of {', '.join(FUSION_METHODS)}")
        if not 0.0 <= self.vector_weight <= 1.0:
            raise ValueError("vector_weight must be between 0 and 1")
        if self.rrf_k < 0:
            raise ValueError("rrf_k must not be negative")

    @property
    def label(self) -> str:
        guard = "" if self.winner_gap is None else f", winner_gap={self.winner_gap:g}"
        if self.method == "rrf":
            return f"rrf(k={self.rrf_k:g}, w_vector={self.vector_weight:g}{guard})"
        return f"{self.method}(w_vector={self.vector_weight:g}{guard})"


Ranking = Sequence[tuple[str, float]]  # (node id, the side's own score), best first


def _min_max(scores: list[float]) -> list[float]:
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def _dist(scores: list[float]) -> list[float]:
    if len(scores) < 2:
        return [1.0] * len(scores)
    mean, std = statistics.fmean(scores), statistics.pstdev(scores)
    if std == 0:
        return [1.0] * len(scores)
    low, high = mean - 3 * std, mean + 3 * std
    return [(s - low) / (high - low) for s in scores]


def _side_values(ranking: Ranking, fusion: Fusion) -> dict[str, float]:
    ids = [node_id for node_id, _ in ranking]
    if not ids:
        return {}
    if fusion.method == "rrf":
        return {node_id: 1.0 / (fusion.rrf_k + rank) for rank, node_id in enumerate(ids, 1)}
    scores = [float(score) for _, score in ranking]
    normalised = _min_max(scores) if fusion.method == "relative" else _dist(scores)
    return dict(zip(ids, normalised, strict=True))


def clear_winner(ranking: Ranking, gap: float) -> str | None:
    """The side's first node if it leads the second by at least `gap` of six standard deviations."""
    if len(ranking) < 2:
        return None
    scores = [float(score) for _, score in ranking]
    std = statistics.pstdev(scores)
    if std == 0:
        return None
    return ranking[0][0] if (scores[0] - scores[1]) / (6 * std) >= gap else None


def fuse(vector: Ranking, text: Ranking, fusion: Fusion) -> list[tuple[str, float]]:
    """Node ids with their fused score, best first."""
    weights = (fusion.vector_weight, 1.0 - fusion.vector_weight)
    fused: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking, weight in zip((vector, text), weights, strict=True):
        for rank, (node_id, value) in enumerate(_side_values(ranking, fusion).items(), 1):
            fused[node_id] = fused.get(node_id, 0.0) + weight * value
            best_rank[node_id] = min(best_rank.get(node_id, rank), rank)
    winners: set[str] = set()
    if fusion.winner_gap is not None:
        winners = {w for w in (clear_winner(vector, fusion.winner_gap), clear_winner(text, fusion.winner_gap)) if w}
    return sorted(fused.items(), key=lambda item: (item[0] not in winners, -item[1], best_rank[item[0]], item[0]))

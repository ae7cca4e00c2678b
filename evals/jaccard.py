"""The legacy ILS search, reproduced faithfully as the floor every retriever is judged against.

The seed's Node code (MasterAIService.calculateSimilarity):

    const words1 = new Set(text1.toLowerCase().split(/\\s+/));
    const words2 = new Set(text2.toLowerCase().split(/\\s+/));
    const intersection = new Set([...words1].filter(x => words2.has(x)));
    return intersection.size / union.size;

It loaded every knowledge-base row of the company and scored each in the process; so
does this, over the same chunks the other retrievers search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")


def words(text: str) -> set[str]:
    # JavaScript's "".split(/\s+/) keeps empty strings at the ends, and so does re.split
    return set(_WHITESPACE.split(text.lower()))


def jaccard(text1: str, text2: str) -> float:
    words1, words2 = words(text1), words(text2)
    union = words1 | words2
    return len(words1 & words2) / len(union) if union else 0.0


@dataclass(frozen=True)
class JaccardHit:
    id: str
    text: str
    metadata: dict
    similarity: float


def jaccard_search(query: str, rows: list[tuple[str, str, dict]], limit: int) -> list[JaccardHit]:
    """`rows`: (id, text, metadata) of one company's chunks, as the legacy code loaded them."""
    scored = [JaccardHit(row_id, text, metadata, jaccard(query, text)) for row_id, text, metadata in rows]
    scored.sort(key=lambda hit: hit.similarity, reverse=True)
    return scored[:limit]

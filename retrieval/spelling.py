"""Spelling tolerance for BM25: a query word none of the company's chunks contain is read as
the nearest word they do contain.

Why: staff type "progresive lenses price", "retrun glasses", "dry eye asessment". Postgres
stems those to lexemes no chunk holds, so BM25 ranks on the remaining common words and the
telling one is lost (the vector side copes; the text side did not). Search engines answer
this with edit-distance matching of query terms (Elasticsearch's `fuzziness: AUTO`), and this
module does the same, only for words the company's vocabulary lacks: a word some chunk of the
company holds is never changed. A word none holds (a misspelling, or a real word no document
of the company uses) is read as the nearest word one does hold, when one is within reach:

- edits allowed by the length of the stemmed word, as `AUTO` does: none below
  FUZZY_MIN_LENGTH characters, one below FUZZY_TWO_EDITS_LENGTH, two from there on;
- distance is the optimal string alignment distance (an adjacent transposition counts as one
  edit, as Lucene's fuzzy transpositions do: "retrun" is one edit from "return"), computed by
  `rapidfuzz`;
- the first letter must match (Lucene's prefix length 1: misspellings rarely start wrong,
  and it keeps the candidate list to one letter's words of one company);
- a word with a digit in it (a year, a price, a model number: "2019", "x200") is never
  corrected: a number one edit away is another number, not a typo's intent;
- of the words within reach, the closest wins, then the one more chunks contain, then the
  alphabetically first, so a query always reads the same way.

Candidates come from the company's own BM25 vocabulary (`bm25_terms`), behind the same tenant
wall as everything else: one company's words never correct another's query.
"""

from __future__ import annotations

from collections.abc import Iterable

from rapidfuzz.distance import OSA

FUZZY_MIN_LENGTH = 4
FUZZY_TWO_EDITS_LENGTH = 7


def max_edits(lexeme: str, auto: tuple[int, int] = (FUZZY_MIN_LENGTH, FUZZY_TWO_EDITS_LENGTH)) -> int:
    """Edits allowed for a word of this length; `auto` is (one edit from, two edits from), as
    Elasticsearch's `AUTO:low,high` (its default, 3,6, is studied in evals/bm25_study.py)."""
    if len(lexeme) < auto[0] or any(character.isdigit() for character in lexeme):
        return 0
    return 1 if len(lexeme) < auto[1] else 2


def nearest(lexeme: str, vocabulary: Iterable[tuple[str, int]],
            auto: tuple[int, int] = (FUZZY_MIN_LENGTH, FUZZY_TWO_EDITS_LENGTH)) -> tuple[str, int] | None:
    """The (word, chunk count) of `vocabulary` that `lexeme` most likely misspells, or None."""
    limit = max_edits(lexeme, auto)
    if limit == 0:
        return None
    best: tuple[int, int, str] | None = None
    for word, df in vocabulary:
        if word[:1] != lexeme[:1] or abs(len(word) - len(lexeme)) > limit or word == lexeme:
            continue
        distance = OSA.distance(lexeme, word, score_cutoff=limit)
        if distance <= limit and (best is None or (distance, -df, word) < best):
            best = (distance, -df, word)
    return None if best is None else (best[2], -best[1])


__all__ = ["FUZZY_MIN_LENGTH", "FUZZY_TWO_EDITS_LENGTH", "max_edits", "nearest"]

"""The BM25 study's in-memory ranking (evals/bm25_study.py): the service's formula, the context
weight and the spelling tolerance, on a corpus small enough to check by hand."""

from __future__ import annotations

import pytest

from evals.bm25_study import Company, rank


def _company() -> Company:
    # chunk 1 (guide.md) has "lens" in its text; chunk 2 (care.md) in its heading; chunk 3 has neither
    company = Company(chunks=3, avglen=4.0, df={"lens": 2, "price": 1, "clean": 1})
    for chunk, document, length, text_tf, context_tf in [
        (1, "guide.md", 4, {"lens": 1, "price": 1}, {}),
        (2, "care.md", 4, {"clean": 1}, {"lens": 1}),
        (3, "other.md", 4, {}, {}),
    ]:
        company.lengths[chunk], company.documents[chunk] = length, document
        for lexeme in set(text_tf) | set(context_tf):
            company.postings[lexeme].append((chunk, text_tf.get(lexeme, 0), context_tf.get(lexeme, 0)))
    return company


def test_a_heading_word_weighs_more_with_the_context_weight() -> None:
    company = _company()
    assert rank(company, ["lens"], 1.0, None, 0.9, 0.4) == ["guide.md", "care.md"]  # equal scores: lower chunk id
    assert rank(company, ["lens"], 2.0, None, 0.9, 0.4) == ["care.md", "guide.md"]


@pytest.mark.parametrize(("spelling", "expected"), [(None, []), ((4, 7), ["guide.md"])])
def test_a_misspelled_word_counts_only_with_spelling_tolerance(spelling, expected) -> None:
    assert rank(_company(), ["prise"], 1.0, spelling, 0.9, 0.4) == expected

"""Which misspelled query words BM25 reads as which of the company's words (retrieval.spelling)."""

from __future__ import annotations

import pytest

from retrieval.spelling import max_edits, nearest

VOCABULARY = [("progress", 12), ("return", 30), ("retain", 2), ("assess", 9), ("myopia", 4), ("photochrom", 3),
              ("refer", 20), ("reef", 1), ("tap", 5), ("glass", 40), ("glaze", 2), ("2018", 6), ("x100", 2)]


@pytest.mark.parametrize(("typed", "read"), [
    ("progres", "progress"),     # a letter missing
    ("retrun", "return"),        # two letters swapped: one edit
    ("asess", "assess"),
    ("photocrom", "photochrom"),
    ("reffer", "refer"),
    ("glase", "glass"),          # glass (40 chunks) and glaze (2) are one edit away: the commoner wins
    ("miopia", "myopia"),        # one substitution after the first letter
])
def test_misspellings_read_as_the_nearest_word(typed: str, read: str) -> None:
    assert nearest(typed, VOCABULARY) == (read, dict(VOCABULARY)[read])


@pytest.mark.parametrize("typed", [
    "nyopia",       # one edit from myopia, but the first letter must match
    "tep",          # under four letters: no edits ("tap" is one away)
    "xylophone",    # nothing near
    "progressive",  # three edits from "progress"
    "2019",         # a number is never corrected (one edit from 2018)
    "x200",         # nor a model number
])
def test_words_out_of_reach_are_left_alone(typed: str) -> None:
    assert nearest(typed, VOCABULARY) is None


def test_edits_grow_with_word_length_and_ties_are_stable() -> None:
    assert [max_edits(w) for w in ("tap", "cote", "reffer", "retinopthi", "20190")] == [0, 1, 1, 2, 0]
    tied = [("bark", 3), ("bank", 3)]
    assert nearest("bakk", tied) == ("bank", 3) == nearest("bakk", list(reversed(tied)))

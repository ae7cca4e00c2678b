"""Hybrid fusion: the fusion functions themselves, and a clear winner that survives fusion on
the sample practice (the README's showcase question)."""

from __future__ import annotations

import pytest

from core.settings import get_settings
from retrieval.fusion import Fusion, fuse

SHOWCASE = "what do progressive lenses cost?"
PRICE_SENTENCE = "Progressive lenses start at £189 per pair"


def test_rrf_is_reciprocal_rank_fusion_with_weights() -> None:
    vector = [("a", 0.9), ("b", 0.8)]
    text = [("b", 12.0), ("c", 3.0)]
    fused = dict(fuse(vector, text, Fusion("rrf", 0.5, 60)))
    assert fused["a"] == pytest.approx(0.5 / 61)
    assert fused["b"] == pytest.approx(0.5 / 62 + 0.5 / 61)
    assert fused["c"] == pytest.approx(0.5 / 62)
    weighted = dict(fuse(vector, text, Fusion("rrf", 0.75, 10)))
    assert weighted["a"] == pytest.approx(0.75 / 11)
    assert weighted["c"] == pytest.approx(0.25 / 12)


def test_rank_fusion_loses_a_confident_winner_that_score_fusion_keeps() -> None:
    """The failure RRF has: the vector side is sure of "winner" (0.85 against a field of ~0.5),
    the text side never returns it, and chunks both sides rank middling bury it."""
    middling = [f"m{n}" for n in range(12)]
    vector = [("winner", 0.85), *((m, 0.52 - n * 0.005) for n, m in enumerate(middling))]
    text = [*((m, 9.0 / (1 + n * 0.5)) for n, m in enumerate(middling)), ("other", 1.0)]  # BM25-like decay
    rrf = [node for node, _ in fuse(vector, text, Fusion("rrf", 0.5, 60))]
    relative = [node for node, _ in fuse(vector, text, Fusion("relative", 0.5))]
    assert rrf.index("winner") >= 10
    assert relative.index("winner") < 3


def test_fusion_is_deterministic_and_breaks_ties_by_rank_then_id() -> None:
    vector = [("b", 0.5), ("a", 0.5)]
    text = [("a", 2.0), ("b", 2.0)]
    for fusion in (Fusion("rrf"), Fusion("relative"), Fusion("dist")):
        first = fuse(vector, text, fusion)
        assert first == fuse(vector, text, fusion)
        assert [node for node, _ in first] == ["a", "b"]  # equal scores, equal best ranks: by id


def test_fusion_of_empty_and_one_sided_lists() -> None:
    assert fuse([], [], Fusion("relative")) == []
    assert [n for n, _ in fuse([("x", 0.3)], [], Fusion("dist"))] == ["x"]
    assert [n for n, _ in fuse([], [("y", 4.0), ("z", 1.0)], Fusion("relative"))] == ["y", "z"]
    with pytest.raises(ValueError):
        Fusion("borda")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fusion("rrf", vector_weight=1.5)


# -- the showcase question on the sample practice ----------------------------------------------------


def _first_source(results: list[dict]) -> tuple[str, str]:
    return results[0]["filename"], results[0]["content"]


@pytest.mark.parametrize("limit", [1, 5, 10])
def test_showcase_question_first_hybrid_source_is_the_price_sentence(brightsight, client, make_user, limit) -> None:
    """At every limit, the smallest (a 20-candidate fusion pool) included: the price chunk is the
    vector side's first, and the fusion keeps it first."""
    _, headers = make_user(brightsight)
    response = client.post("/api/rag/search", json={"query": SHOWCASE, "limit": limit}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid"  # the default
    filename, text = _first_source(body["results"])
    assert filename == "lens-types-guide.md"
    assert PRICE_SENTENCE in text


def test_showcase_question_is_among_the_chunks_chat_reads(brightsight) -> None:
    """Chat reads the hybrid ranking itself (order="rank"), not the cosine order: the price chunk is
    among the five it answers from (tests/test_chat_samples.py checks the answer gives the price)."""
    from retrieval.retriever import TenantRetriever

    ranked = TenantRetriever(brightsight.id, mode="hybrid", top_k=5, order="rank",
                             settings=get_settings()).retrieve(SHOWCASE)
    assert any(n.node.metadata["filename"] == "lens-types-guide.md" and PRICE_SENTENCE in n.node.get_content()
               for n in ranked)


@pytest.mark.parametrize("question", [
    SHOWCASE,
    "how much is an anti-reflective coating?",
    "can I swim in my contact lenses?",
    "what is the 20-20-20 rule?",
    "when are you open on saturday?",
])
def test_each_sides_clear_winner_leads_the_hybrid_results(brightsight, question) -> None:
    """A chunk a side ranks first by a clear margin is never fused out of the lead."""
    from llama_index.core.schema import QueryBundle

    from core.db.tenant_scope import tenant
    from retrieval.fusion import clear_winner
    from retrieval.retriever import DEFAULT_FUSION, TenantRetriever

    retriever = TenantRetriever(brightsight.id, mode="hybrid", top_k=5, threshold=-1.0, order="rank",
                                settings=get_settings())
    embedding = retriever.query_embedding(QueryBundle(question))
    with tenant(brightsight.id):
        vector, text = retriever.hybrid_sides(embedding, question, 20)
    assert DEFAULT_FUSION.winner_gap is not None
    winners = {w for w in (clear_winner([(c.node.node_id, c.native) for c in side], DEFAULT_FUSION.winner_gap)
                           for side in (vector, text)) if w}
    hybrid = [n.node.node_id for n in retriever.retrieve(question)]
    assert winners <= set(hybrid[: len(winners)]), question


def test_winner_guard_puts_a_clear_winner_first() -> None:
    middling = [f"m{n}" for n in range(12)]
    vector = [("winner", 0.85), *((m, 0.60 - n * 0.01) for n, m in enumerate(middling))]
    text = [*((m, 9.0 - n * 0.3) for n, m in enumerate(middling))]  # no clear winner of its own
    plain = [node for node, _ in fuse(vector, text, Fusion("dist", 0.4))]
    guarded = [node for node, _ in fuse(vector, text, Fusion("dist", 0.4, winner_gap=0.1))]
    assert plain[0] != "winner"
    assert guarded[0] == "winner" and guarded[1:] == [n for n in plain if n != "winner"]
    flat = [(f"f{n}", 0.5 - n * 0.001) for n in range(10)]
    assert fuse(flat, [], Fusion("dist", 0.4, winner_gap=0.1)) == fuse(flat, [], Fusion("dist", 0.4))

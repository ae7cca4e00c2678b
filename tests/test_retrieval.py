"""The tenant-scoped retriever and the search / embedding endpoints."""

from __future__ import annotations

import time

import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from core.settings import get_settings
from tests.conftest import bm25_settings

BRIGHT = [
    ("prices.md", "Progressive lenses start at £189 per pair at our practice.", "pricing"),
    ("exams.md", "Eye examinations for children under 16 are free of charge.", "clinical"),
    ("hours.md", "We are open Monday to Friday from 9:00 to 17:30 and closed on Sunday.", "contact"),
]
CLEAR = [
    ("price-list.md", "Progressive lenses cost from £249 at every ClearView practice.", "pricing"),
    ("paediatric.md", "Children's eye examination (under 16) costs £20.", "clinical"),
]


@pytest.fixture
def two_tenants(two_practices):
    return two_practices(BRIGHT, CLEAR)


def test_retriever_cannot_be_built_or_queried_unscoped(database, embed_model):
    from core.vector_store import UnscopedQueryError, get_vector_store
    from retrieval.retriever import TenantRetriever

    for bad in ("", "   ", None):
        with pytest.raises(UnscopedQueryError):
            TenantRetriever(bad, settings=get_settings())  # type: ignore[arg-type]
    embedding = embed_model.get_query_embedding("progressive lenses")
    store = get_vector_store()
    with pytest.raises(UnscopedQueryError):
        store.query(VectorStoreQuery(query_embedding=embedding, similarity_top_k=5))
    with pytest.raises(UnscopedQueryError):  # is_active alone is not a tenant scope
        store.query(VectorStoreQuery(query_embedding=embedding, similarity_top_k=5,
                                     filters=MetadataFilters(filters=[MetadataFilter(key="is_active", value="true")])))
    with pytest.raises(UnscopedQueryError):
        store.query(VectorStoreQuery(query_str="lenses", mode="text_search", similarity_top_k=5))


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_each_mode_returns_only_own_active_chunks_sorted_by_cosine(two_tenants, index_texts, mode):
    from retrieval.retriever import TenantRetriever

    a, *_ = two_tenants
    index_texts(a, [("old-prices.md", "Progressive lenses used to cost £150 per pair.", "pricing")], active=False)
    nodes = TenantRetriever(a.id, mode=mode, top_k=10, threshold=-1.0,
                            settings=get_settings()).retrieve("progressive lenses price")
    assert nodes, mode
    assert {n.node.metadata["company_id"] for n in nodes} == {a.id}
    assert all(n.node.metadata["is_active"] is True for n in nodes)
    assert "£150" not in " ".join(n.node.get_content() for n in nodes)
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert "£189" in nodes[0].node.get_content()


def test_similarity_means_cosine_in_every_mode(two_tenants, embed_model):
    import numpy as np

    from retrieval.retriever import TenantRetriever

    a, *_ = two_tenants
    query = "progressive lenses price"
    expected = float(np.dot(embed_model.get_query_embedding(query), embed_model.get_text_embedding(BRIGHT[0][1])))
    for mode in ("vector", "text", "hybrid"):
        top = TenantRetriever(a.id, mode=mode, top_k=3, threshold=-1.0, settings=get_settings()).retrieve(query)
        price = next(n for n in top if "£189" in n.node.get_content())
        assert price.score == pytest.approx(expected, abs=1e-4), mode


RANKING = [  # keyword-heavy text ranks high on BM25 but not on cosine, and the reverse
    ("lens-words.md", "Lens price, lenses price, progressive price: see the lens price list for every lens price.",
     "pricing"),
    ("varifocals.md", "Varifocal spectacles that correct near and distance vision cost £189 per pair.", "pricing"),
    ("progressive-guide.md", "Getting used to progressive lenses takes a week or two.", "clinical"),
    ("records.md", "The shop next door sells progressive rock records at a fair price.", None),
]


def _native(company_id: str, mode: str, query: str) -> list[tuple[str, float]]:
    """The mode's own ranking with its own scores (cosine from the store, BM25), no threshold."""
    from core.db.tenant_scope import tenant
    from core.embeddings import get_embed_model
    from core.vector_store import get_vector_store
    from retrieval.bm25 import bm25_search
    from retrieval.retriever import tenant_filters

    with tenant(company_id):
        if mode == "text":
            return [(hit.node.node_id, hit.bm25) for hit in bm25_search(company_id, query, 20, **bm25_settings())]
        result = get_vector_store().query(VectorStoreQuery(
            query_embedding=get_embed_model().get_query_embedding(query), similarity_top_k=20,
            filters=tenant_filters(company_id)))
    return sorted(zip(result.ids, result.similarities, strict=True), key=lambda x: -x[1])


def test_rank_order_keeps_each_modes_ranking_and_similarity_order_sorts_by_cosine(two_tenants, index_texts):
    from retrieval.fusion import fuse
    from retrieval.retriever import DEFAULT_FUSION, TenantRetriever

    a, *_ = two_tenants
    index_texts(a, RANKING)
    query = "progressive lenses price"
    vector, text = _native(a.id, "vector", query), _native(a.id, "text", query)
    fused = fuse(vector, text, DEFAULT_FUSION)  # the hybrid ranking from the two sides' own scores
    expected = {"vector": [n for n, _ in vector], "text": [n for n, _ in text], "hybrid": [n for n, _ in fused]}
    differs = 0
    for mode, native in expected.items():
        ranked = TenantRetriever(a.id, mode=mode, top_k=10, threshold=-1.0, order="rank",
                                 settings=get_settings()).retrieve(query)
        by_cosine = TenantRetriever(a.id, mode=mode, top_k=10, threshold=-1.0, order="similarity",
                                    settings=get_settings()).retrieve(query)
        assert [n.node.node_id for n in ranked] == native[:10], mode
        assert sorted(n.node.node_id for n in ranked) == sorted(n.node.node_id for n in by_cosine), mode
        assert [n.score for n in by_cosine] == sorted((n.score for n in by_cosine), reverse=True), mode
        assert {n.node.node_id: n.score for n in ranked} == {n.node.node_id: n.score for n in by_cosine}, mode
        differs += [n.node.node_id for n in ranked] != [n.node.node_id for n in by_cosine]
    assert differs >= 2  # text and hybrid orders really differ from cosine order on this data
    with pytest.raises(ValueError):
        TenantRetriever(a.id, order="score", settings=get_settings())  # type: ignore[arg-type]


def test_hybrid_candidate_depth_and_default_threshold(two_tenants, monkeypatch):
    from core.settings import get_settings
    from retrieval.retriever import TenantRetriever

    a, *_ = two_tenants
    assert TenantRetriever(a.id, settings=get_settings()).threshold == get_settings().search_threshold
    depths: list[int] = []
    original = TenantRetriever._text

    def spy(self, query_str, k, embedding):
        depths.append(k)
        return original(self, query_str, k, embedding)

    monkeypatch.setattr(TenantRetriever, "_text", spy)
    for top_k, depth in ((3, 20), (30, 30)):
        depths.clear()
        TenantRetriever(a.id, mode="hybrid", top_k=top_k, threshold=-1.0,
                        settings=get_settings()).retrieve("progressive lenses")
        assert depths == [depth], top_k  # each side contributes max(top_k, 20) candidates to the fusion


def test_threshold_drops_weak_matches(two_tenants):
    from retrieval.retriever import TenantRetriever

    a, *_ = two_tenants
    everything = TenantRetriever(a.id, mode="vector", top_k=10, threshold=-1.0,
                                 settings=get_settings()).retrieve("progressive lenses")
    strict = TenantRetriever(a.id, mode="vector", top_k=10, threshold=0.45,
                             settings=get_settings()).retrieve("progressive lenses")
    assert len(everything) == 3
    assert 1 <= len(strict) < 3
    assert all(n.score >= 0.45 for n in strict)


def test_search_endpoint_shape_scope_and_order(client, two_tenants):
    _, a_headers, _, b_headers = two_tenants
    for mode in ("vector", "text", "hybrid"):
        r = client.post("/api/rag/search", json={"query": "How much are progressive lenses?", "limit": 5,
                                                 "threshold": 0.0, "mode": mode}, headers=a_headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"] == "How much are progressive lenses?"
        assert body["total_found"] == len(body["results"]) >= 1
        assert set(body["results"][0]) >= {"id", "content", "filename", "category", "similarity"}
        assert "£189" in body["results"][0]["content"]
        assert body["results"][0]["category"] == "pricing"
        sims = [x["similarity"] for x in body["results"]]
        assert sims == sorted(sims, reverse=True)
        assert all("£249" not in x["content"] and "£20" not in x["content"] for x in body["results"])
    r = client.post("/api/rag/search", json={"query": "How much are progressive lenses?"}, headers=b_headers)
    assert r.status_code == 200
    assert "£249" in r.json()["results"][0]["content"]
    assert all("£189" not in x["content"] for x in r.json()["results"])


def test_search_injection_in_query_cannot_widen_results(client, two_tenants):
    _, a_headers, b, _ = two_tenants
    for query in ["x') OR 1=1 --", "lenses' OR metadata_->>'company_id' <> '", f"{b.id} progressive £249"]:
        for mode in ("vector", "text", "hybrid"):
            r = client.post("/api/rag/search", json={"query": query, "threshold": -1, "limit": 50, "mode": mode},
                            headers=a_headers)
            assert r.status_code == 200, r.text
            assert all("£249" not in x["content"] for x in r.json()["results"])


def test_search_validation_errors(client, two_tenants, monkeypatch):
    _, headers, _, _ = two_tenants
    cases = [
        ({"query": "lenses", "limit": 0}, "VALIDATION_ERROR"),
        ({"query": "lenses", "limit": 51}, "VALIDATION_ERROR"),
        ({"query": "lenses", "mode": "fuzzy"}, "VALIDATION_ERROR"),
        ({"query": "lenses", "threshold": 2}, "VALIDATION_ERROR"),
        ({"query": ""}, "VALIDATION_ERROR"),
        ({"query": "   \n "}, "EMPTY_QUERY"),
        ({"query": "lens " * 1000}, "QUERY_TOO_LONG"),
        ({"query": "lenses", "tenant": "other"}, "VALIDATION_ERROR"),
    ]
    for payload, code in cases:
        r = client.post("/api/rag/search", json=payload, headers=headers)
        assert r.status_code == 422, (payload, r.text)
        assert r.json()["code"] == code
        assert r.json()["error"]
    assert client.post("/api/rag/search", json={"query": "lenses"}).status_code == 401
    r = client.post("/api/rag/search", json={"query": "lenses", "company_id": "someone-else"}, headers=headers)
    assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"


def test_search_threshold_defaults_to_the_setting(client, two_tenants):
    from core.settings import get_settings

    _, headers, _, _ = two_tenants
    default = get_settings().search_threshold
    body = client.post("/api/rag/search", json={"query": "progressive lenses", "limit": 50}, headers=headers).json()
    assert body["threshold"] == default and body["mode"] == get_settings().search_mode
    assert all(x["similarity"] >= default - 1e-6 for x in body["results"])
    everything = client.post("/api/rag/search", json={"query": "progressive lenses", "limit": 50, "threshold": -1},
                             headers=headers).json()
    kept = [x["id"] for x in everything["results"] if x["similarity"] >= default]
    assert sorted(x["id"] for x in body["results"]) == sorted(kept)


def test_search_nothing_above_threshold_is_empty_not_error(client, two_tenants):
    _, headers, _, _ = two_tenants
    r = client.post("/api/rag/search", json={"query": "lenses", "threshold": 0.99}, headers=headers)
    assert r.status_code == 200
    assert r.json()["results"] == [] and r.json()["total_found"] == 0


def test_embeddings_generate(client, staff_headers):
    r = client.post("/api/embeddings/generate", json={"text": "Progressive lenses"}, headers=staff_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == 384 == len(body["embedding"])
    assert body["model"] == "all-MiniLM-L6-v2"
    assert sum(x * x for x in body["embedding"]) == pytest.approx(1.0, abs=1e-3)
    assert client.post("/api/embeddings/generate", json={"text": "  "}, headers=staff_headers).status_code == 422
    assert client.post("/api/embeddings/generate", json={"text": "x"}).status_code == 401


def test_search_latency_report(client, two_tenants):
    """A quick timing of the whole HTTP round trip (embedding + SQL), printed (no timing assertion)."""
    _, headers, _, _ = two_tenants
    timings = {}
    for mode in ("vector", "text", "hybrid"):
        client.post("/api/rag/search", json={"query": "opening hours", "mode": mode}, headers=headers)
        start = time.perf_counter()
        for _ in range(5):
            assert client.post("/api/rag/search", json={"query": "opening hours on Sunday", "mode": mode},
                               headers=headers).status_code == 200
        timings[mode] = (time.perf_counter() - start) / 5 * 1000
    print("search latency ms:", {k: round(v, 1) for k, v in timings.items()})

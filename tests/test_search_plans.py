"""Large tenants' vector searches walk the HNSW index; small ones get an exact scan.

Real Postgres and the real model; the size threshold is lowered so a test-sized company
counts as large. Speed is measured by `ils-rag bench search`, never asserted here."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = [
    "Progressive lenses usually take one to two weeks to get used to.",
    "Never rinse soft contact lenses in tap water: Acanthamoeba keratitis is sight-threatening.",
    "NHS eye examinations are free for children under 16.",
    "Anti-reflective coatings reduce glare from screens and headlights at night.",
    "Myopia control spectacle lenses slow axial elongation in children.",
    "Dry eye is treated with warm compresses, lid hygiene and lubricating drops.",
    "Blue-light filtering lenses have little evidence for preventing eye disease.",
    "Varifocal wearers should lower their chin to read through the near zone.",
    "Glaucoma raises the pressure inside the eye and damages the optic nerve.",
    "Daily disposable contact lenses are thrown away every night.",
    "Cataract surgery replaces the cloudy natural lens with a clear implant.",
    "Photochromic lenses darken in ultraviolet light outdoors.",
    "Driving requires reading a number plate at twenty metres.",
    "Diabetic retinopathy screening photographs the back of the eye every year.",
]


def _search(company_id: str, vector: list[float]) -> list[tuple[str, float]]:
    from llama_index.core.vector_stores.types import MetadataFilter, VectorStoreQuery

    from core.db.tenant_scope import tenant
    from core.vector_store import company_filter, get_vector_store

    with tenant(company_id):
        result = get_vector_store().query(VectorStoreQuery(
            query_embedding=vector, similarity_top_k=10,
            filters=company_filter(company_id, MetadataFilter(key="is_active", value="true"))))
    return sorted(zip([n.node_id for n in result.nodes], result.similarities, strict=True), key=lambda r: -r[1])


def test_large_tenant_uses_hnsw_and_finds_the_exact_top_k(company, index_texts, embed_model, statements,
                                                          monkeypatch) -> None:
    import core.tenant_plans as tenant_plans
    import core.vector_store as vector_store

    index_texts(company, [(f"doc-{i}.md", text, "faq") for i, text in enumerate(TEXTS)])
    query = embed_model.get_query_embedding("how long to adapt to varifocal glasses")

    tenant_plans.forget_tenant_plans()
    exact = _search(company.id, query)
    assert any("'enable_indexscan'" in s and "'off'" in s for s in statements)  # a small tenant: an exact scan
    assert not any("enable_sort" in s for s in statements)

    monkeypatch.setattr(vector_store, "HNSW_MIN_TENANT_CHUNKS", 5)
    tenant_plans.forget_tenant_plans()
    walked = _search(company.id, query)
    assert any("'enable_sort'" in s and "'hnsw.ef_search'" in s and "'200'" in s
               for s in statements)  # planned as a walk of the shared HNSW index
    assert len(walked) == 10
    assert [node for node, _ in walked] == [node for node, _ in exact]
    assert np.allclose([score for _, score in walked], [score for _, score in exact], atol=1e-5)


def test_tenant_size_is_counted_under_the_tenant_and_cached(company, make_company, index_texts) -> None:
    import core.tenant_plans as tenant_plans

    other = make_company()
    index_texts(company, [(f"doc-{i}.md", text, None) for i, text in enumerate(TEXTS[:3])])
    index_texts(other, [(f"doc-{i}.md", text, None) for i, text in enumerate(TEXTS)])
    tenant_plans.forget_tenant_plans()
    assert tenant_plans.tenant_plan(company.id).chunks == 3
    assert tenant_plans.tenant_plan(other.id).chunks == len(TEXTS)
    index_texts(company, [("late.md", TEXTS[5], None)])
    assert tenant_plans.tenant_plan(company.id).chunks == 3  # cached for TENANT_PLAN_TTL_S
    tenant_plans.forget_tenant_plans()
    assert tenant_plans.tenant_plan(company.id).chunks == 4
    assert not tenant_plans.tenant_plan(company.id).own_index


def test_plan_settings_hold_for_their_transaction_only(company) -> None:
    """Set at BEGIN with the tenant, gone with the transaction: a pooled connection never hands
    one search's planner settings to the next statement."""
    import sqlalchemy as sa

    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant, transaction_settings

    engine = get_engine()
    with tenant(company.id):
        with transaction_settings(enable_sort="off", hnsw__ef_search="123"), engine.connect() as connection:
            assert connection.execute(sa.text("SHOW enable_sort")).scalar() == "off"
            assert connection.execute(sa.text("SHOW hnsw.ef_search")).scalar() == "123"
            assert connection.execute(sa.text("SELECT ils_current_company()")).scalar() == company.id
        for _ in range(engine.pool.size() + 1):  # whichever pooled connection comes next
            with engine.connect() as connection:
                assert connection.execute(sa.text("SHOW enable_sort")).scalar() == "on"
                assert connection.execute(sa.text("SHOW hnsw.ef_search")).scalar() != "123"
    with pytest.raises(ValueError, match="not a planner setting"), transaction_settings(work_mem="1GB"):
        pass

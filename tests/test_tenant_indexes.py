"""Per-company HNSW indexes (core.tenant_indexes): built for companies past the threshold,
used by their searches only, dropped when they shrink, rebuilt when a build was interrupted.

Real Postgres and the real model; thresholds are lowered so test-sized companies count, and
each sync is limited to the test's own companies (the session database is shared)."""

from __future__ import annotations

import threading
import time

import numpy as np
import sqlalchemy as sa

from core.settings import get_settings

WORDS = ["progressive", "contact", "lens", "frame", "glaucoma", "price", "children", "coating", "repair",
         "appointment", "dry", "eye", "varifocal", "warranty", "screen", "night", "driving", "myopia"]


def _texts(n: int, seed: int) -> list[tuple[str, str, str | None]]:
    rng = np.random.default_rng(seed)
    return [(f"doc-{i}.md", " ".join(rng.choice(WORDS, size=12)), None) for i in range(n)]


def _index_of(company_id: str) -> tuple[str | None, bool | None]:
    """(predicate, valid) of the company's own index, or (None, None)."""
    from core.db.owner import get_admin_engine
    from core.tenant_indexes import tenant_index_name

    with get_admin_engine().connect() as connection:
        row = connection.execute(sa.text(
            "SELECT pg_get_expr(i.indpred, i.indrelid), i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n"),
            {"n": tenant_index_name(company_id)}).first()
    return (row[0], row[1]) if row else (None, None)


def _explain(company_id: str, vector: list[float]) -> str:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from core.vector_store import get_vector_store
    from retrieval.retriever import tenant_filters

    statement = get_vector_store()._build_query(vector, 10, tenant_filters(company_id))
    compiled = str(statement.compile(get_engine(), compile_kwargs={"literal_binds": True}))
    with tenant(company_id), get_engine().connect() as connection:
        connection.execute(sa.text("SET LOCAL enable_sort = off"))
        return "\n".join(r[0] for r in connection.execute(sa.text(f"EXPLAIN {compiled}")))


def _exact_top(company_id: str, vector: list[float], k: int = 10) -> list[str]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        connection.execute(sa.text("SET LOCAL enable_indexscan = off"))
        return list(connection.execute(sa.text(
            "SELECT node_id FROM data_chunks WHERE company_id = :c ORDER BY embedding <=> CAST(:q AS vector) "
            "LIMIT :k"), {"c": company_id, "q": str(vector), "k": k}).scalars())


def test_a_large_company_gets_its_own_index_and_only_its_searches_use_it(make_company, index_texts, embed_model,
                                                                        statements) -> None:
    from core.tenant_indexes import sync_tenant_indexes, tenant_index_name
    from core.tenant_plans import tenant_plan
    from retrieval.retriever import TenantRetriever

    large, small = make_company(), make_company()
    index_texts(large, _texts(40, seed=1))
    index_texts(small, _texts(8, seed=2))
    result = sync_tenant_indexes(min_chunks=30, companies=[large.id, small.id])
    assert result.built == [large.id] and not result.skipped
    predicate, valid = _index_of(large.id)
    assert valid and large.id in predicate and "company_id" in predicate
    assert _index_of(small.id) == (None, None)
    assert tenant_plan(large.id).own_index and not tenant_plan(small.id).own_index  # cache forgotten by the sync

    query = embed_model.get_query_embedding("price of a varifocal lens coating")
    assert tenant_index_name(large.id) in _explain(large.id, query)
    assert tenant_index_name(large.id) not in _explain(small.id, query)  # another company never walks it

    statements.clear()
    nodes = TenantRetriever(large.id, mode="vector", top_k=10, threshold=-1.0,
                            settings=get_settings()).retrieve(query_bundle(query))
    assert any("'hnsw.ef_search'" in s and "'100'" in s for s in statements)  # the own-index plan
    assert {n.node.metadata["company_id"] for n in nodes} == {large.id}
    assert [n.node.node_id for n in nodes] == _exact_top(large.id, query)

    again = sync_tenant_indexes(min_chunks=30, companies=[large.id, small.id])
    assert again.built == [] and again.dropped == []  # idempotent


def test_a_company_keeps_its_index_down_to_half_the_threshold_then_loses_it(make_company, index_texts) -> None:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from core.tenant_indexes import sync_tenant_indexes, tenant_index_name

    company = make_company()
    index_texts(company, _texts(30, seed=3))
    assert sync_tenant_indexes(min_chunks=30, companies=[company.id]).built == [company.id]
    assert sync_tenant_indexes(min_chunks=50, companies=[company.id]).dropped == []  # 30 >= 50 / 2: kept
    with tenant(company.id), get_engine().begin() as connection:
        connection.execute(sa.text("DELETE FROM data_chunks WHERE company_id = :c AND id IN "
                                   "(SELECT id FROM data_chunks WHERE company_id = :c LIMIT 10)"), {"c": company.id})
    result = sync_tenant_indexes(min_chunks=50, companies=[company.id])  # 20 < 25
    assert result.dropped == [tenant_index_name(company.id)]
    assert _index_of(company.id) == (None, None)


def test_an_interrupted_build_is_dropped_and_built_again(make_company, index_texts) -> None:
    from core.db.owner import get_admin_engine
    from core.tenant_indexes import sync_tenant_indexes, tenant_index_name

    company = make_company()
    index_texts(company, _texts(12, seed=4))
    sync_tenant_indexes(min_chunks=10, companies=[company.id])
    with get_admin_engine().begin() as connection:  # what a killed CREATE INDEX CONCURRENTLY leaves behind
        connection.execute(sa.text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = CAST(:n AS regclass)"),
                           {"n": tenant_index_name(company.id)})
    assert _index_of(company.id)[1] is False
    result = sync_tenant_indexes(min_chunks=10, companies=[company.id])
    assert result.dropped == [tenant_index_name(company.id)] and result.built == [company.id]
    assert _index_of(company.id)[1] is True


def test_a_company_id_that_is_not_a_plain_id_never_reaches_ddl(database) -> None:
    from core.db.owner import get_admin_engine
    from core.tenant_indexes import sync_tenant_indexes

    hostile = "x' OR true) --"
    with get_admin_engine().begin() as connection:  # only the owner could write such a row
        connection.execute(sa.text(
            "INSERT INTO data_chunks (text, metadata_, node_id, embedding) VALUES "
            "('t', CAST(:m AS jsonb), 'hostile-node', CAST(:v AS vector))"),
            {"m": f'{{"company_id": "{hostile}"}}', "v": str([0.1] * 384)})
    try:
        result = sync_tenant_indexes(min_chunks=1, companies=[hostile])
        assert result.built == []
        assert _index_of(hostile) == (None, None)
    finally:
        with get_admin_engine().begin() as connection:
            connection.execute(sa.text("DELETE FROM data_chunks WHERE node_id = 'hostile-node'"))


def test_one_sync_at_a_time_across_processes(database) -> None:
    from core.db.owner import get_admin_engine
    from core.tenant_indexes import _LOCK_KEY, sync_tenant_indexes

    with get_admin_engine().connect() as holder:  # another process mid-sync
        holder.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": _LOCK_KEY})
        assert sync_tenant_indexes(min_chunks=10, companies=[]).skipped
        holder.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": _LOCK_KEY})
    assert not sync_tenant_indexes(min_chunks=10, companies=[]).skipped


def test_the_maintainer_syncs_at_start_and_periodically_and_survives_failures(monkeypatch) -> None:
    import core.tenant_indexes as tenant_indexes

    calls: list[float] = []
    ran_twice_after_failure = threading.Event()

    def fake_sync(min_chunks: int) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("database went away")
        if len(calls) >= 3:
            ran_twice_after_failure.set()

    monkeypatch.setattr(tenant_indexes, "sync_tenant_indexes", fake_sync)
    maintainer = tenant_indexes.TenantIndexMaintainer(interval_s=0.05, min_chunks=100).start()
    try:
        assert ran_twice_after_failure.wait(5)
    finally:
        maintainer.stop()
    calls.clear()
    tenant_indexes.TenantIndexMaintainer(interval_s=0.05, min_chunks=0).start().stop()
    assert calls == []  # threshold 0: no background maintenance


def query_bundle(vector: list[float]):
    from llama_index.core.schema import QueryBundle

    return QueryBundle(query_str="q", embedding=vector)

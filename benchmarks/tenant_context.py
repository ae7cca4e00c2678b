"""Tenant-context benchmark (`ils-rag bench tenant-context`): what the signed tenant claim and
the row-level security that verifies it cost per request.

Every transaction of the service role that works for a company first reads the backend's pid
and the transaction's start, then sets the HMAC-signed claim (two round trips, core.db.tenant_scope),
and every statement on a tenant table evaluates `ils_current_company()` once (migration
0004). Measured on a throwaway company with a few documents, interleaved one by one so load
drift hits both sides alike:

- `claim`: a transaction that runs one trivial statement, with a company in scope (claim set)
  and without one (no claim, no round trips): the set-up cost alone;
- `search`: the chunk-store query a search runs (the vector store's exact scan of the tenant,
  query embedding computed once), as the service role behind the wall and as the owner, who
  bypasses row-level security: the whole wall's cost on the query a search makes.

The budget is 1 ms p50 added to `/api/rag/search`.
"""

from __future__ import annotations

import json
import platform
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from llama_index.core.vector_stores.types import VectorStoreQuery

from benchmarks import RESULTS_DIR
from benchmarks.throwaway import drop_company, paired_difference_ms, stats_ms, timed_ms
from core.db.engines import get_engine
from core.db.owner import admin_session_scope, get_admin_engine
from core.db.tenant_scope import tenant
from core.embeddings import get_embed_model
from core.settings import Settings
from core.vector_store import TenantGuardedPGVectorStore, company_filter, get_vector_store

RESULT = RESULTS_DIR / "tenant-context.json"
BUDGET_MS = 1.0
TEXTS = [("hours.txt", "We open at nine on weekdays and at ten on Saturdays; closed on Sundays."),
         ("progressives.txt", "Progressive lenses take one to two weeks to get used to; come back if not."),
         ("prices.txt", "Single-vision lenses cost 89 pounds; anti-reflective coating adds 35 pounds.")]


def _owner_store() -> TenantGuardedPGVectorStore:
    """The same store on the owner's engine: the same SQL, no row-level security, no claim."""
    store = get_vector_store()
    return TenantGuardedPGVectorStore(engine=get_admin_engine(), async_engine=store._async_engine,
                                      table_name="chunks", embed_dim=store.embed_dim, hybrid_search=True,
                                      text_search_config=store.text_search_config, use_jsonb=True,
                                      perform_setup=False)


def run_tenant_context_bench(settings: Settings, output: Path = RESULT, requests: int = 300) -> dict[str, Any]:
    from auth.users import create_company
    from indexing.documents import index_text

    with admin_session_scope() as session:
        company = create_company(session, f"bench-tenant-{uuid.uuid4().hex[:8]}", "Tenant-context benchmark")
    try:
        for filename, text in TEXTS * 10:
            index_text(company.id, f"{uuid.uuid4().hex[:6]}-{filename}", text, settings=settings)
        engine = get_engine()
        trivial = sa.text("SELECT 1")

        def transaction(company_id: str | None) -> None:
            if company_id:
                with tenant(company_id), engine.connect() as connection:
                    connection.execute(trivial)
            else:
                with engine.connect() as connection:
                    connection.execute(trivial)

        embedding = get_embed_model().get_query_embedding("how much are single vision lenses")
        query = VectorStoreQuery(query_embedding=embedding, similarity_top_k=10,
                                 filters=company_filter(company.id))
        wall_store, owner_store = get_vector_store(), _owner_store()
        for _ in range(20):  # warm both pools and plans
            transaction(company.id), transaction(None)
            with tenant(company.id):
                wall_store.query(query)
            owner_store.query(query)
        claim, bare, wall, owner = [], [], [], []
        for _ in range(requests):
            claim.append(timed_ms(lambda: transaction(company.id)))
            bare.append(timed_ms(lambda: transaction(None)))
            with tenant(company.id):
                wall.append(timed_ms(lambda: wall_store.query(query)))
            owner.append(timed_ms(lambda: owner_store.query(query)))
        with tenant(company.id):
            behind_wall = [n.node_id for n in wall_store.query(query).nodes]
        if not behind_wall or behind_wall != [n.node_id for n in owner_store.query(query).nodes]:
            raise RuntimeError("the two sides of the benchmark did not run the same search")
    finally:
        drop_company(company.id)
    result = {
        "requests": requests, "machine": platform.platform(), "budget_p50_ms": BUDGET_MS,
        "transaction_with_claim_ms": stats_ms(claim), "transaction_without_claim_ms": stats_ms(bare),
        "claim_added_p50_ms": paired_difference_ms(claim, bare),
        "search_query_behind_wall_ms": stats_ms(wall), "search_query_as_owner_ms": stats_ms(owner),
        "wall_added_p50_ms": paired_difference_ms(wall, owner),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result

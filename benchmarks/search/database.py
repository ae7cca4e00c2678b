"""The benchmark's own database: `ils_bench` beside the service's, same migrations, the
synthetic store bulk-loaded into it.

Pointing the process at it: `use_bench_database()` installs a copy of the caller's settings
with DATABASE_URL (and the service role's URL) set to it and drops the cached engines, store and
model (core.reconfigure), so everything imported from core afterwards (migrations included)
talks to the bench database; it returns that copy, which the benchmark hands down from then on.
A server started from this process is given the same URLs in its environment
(`database_environment`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import numpy as np

from benchmarks.search.corpus import Store, company_id, user_email, user_id
from core.settings import Settings
from core.sql_text import quoted_identifier
from core.tenant_indexes import HNSW_WITH
from core.terminal import progress

BENCH_DATABASE = "ils_bench"
STANDARD_CHUNKS = 100_000
STANDARD_COMPANIES = 200
HNSW_INDEX = "data_chunks_embedding_idx"
# The migrations' DDL, used when an interrupted load left the index dropped.
HNSW_DDL = (f"CREATE INDEX {HNSW_INDEX} ON public.data_chunks USING hnsw (embedding vector_cosine_ops) "
            f"WITH ({HNSW_WITH})")


def bench_database_name(chunks: int, companies: int, tag: str = "") -> str:
    """`ils_bench` for the standard store; other shapes and text sources get their own database
    (no reload when switching, and one store never passes for another)."""
    name = BENCH_DATABASE
    if (chunks, companies) != (STANDARD_CHUNKS, STANDARD_COMPANIES):
        name += f"_{chunks}_{companies}"
    return f"{name}_{tag}" if tag else name


def bench_database_url(main_url: str, name: str = BENCH_DATABASE) -> str:
    from sqlalchemy.engine import make_url

    return make_url(main_url).set(database=name).render_as_string(hide_password=False)


def use_bench_database(settings: Settings, name: str = BENCH_DATABASE) -> Settings:
    """Create the bench database next to the service's and point this process at it; returns the
    settings now installed (the caller's, with the bench database's URLs)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from core.db.checks import check_database
    from core.db.owner import database_url
    from core.db.roles import APP_ROLE
    from core.migrate import upgrade
    from core.reconfigure import reconfigure

    main_url = database_url()  # starts the embedded server when DATABASE_URL is unset
    url = bench_database_url(main_url, name)
    admin = sa.create_engine(main_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            connection.execute(sa.text(f"CREATE DATABASE {quoted_identifier(name)}"))
    admin.dispose()
    update = {"database_url": url}
    # The service role (row-level security applies to it) must follow into the bench database.
    if settings.app_database_url:
        update["app_database_url"] = bench_database_url(settings.app_database_url, name)
    elif settings.embedded_database:  # trust authentication on the private socket, as core.db.roles derives it
        update["app_database_url"] = make_url(url).set(username=APP_ROLE, password=None).render_as_string(
            hide_password=False)
    bench = settings.model_copy(update=update)
    reconfigure(bench)
    check_database()
    upgrade()
    return bench


def database_environment(settings: Settings) -> dict[str, str]:
    """The variables that point a server started from this process at the same database: it
    reads its settings from its environment, not from this process's settings object."""
    urls = {"DATABASE_URL": settings.database_url, "APP_DATABASE_URL": settings.app_database_url}
    return {name: url for name, url in urls.items() if url}


def _node_metadata(chunk: int, company: str) -> dict[str, Any]:
    """Chunk metadata exactly as ingestion writes it (node_to_metadata_dict + our contract)."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    document = f"doc-{chunk // 8:06d}"
    node = TextNode(id_=f"bench-{chunk}", text="", metadata={
        "company_id": company, "source_document_id": document, "filename": f"{document}.md",
        "category": "bench", "section": None, "uploaded_by": None, "is_active": True})
    return node_to_metadata_dict(node, remove_text=True, flat_metadata=False) | {"ref_doc_id": f"{company}:{document}",
                                                                                  "doc_id": f"{company}:{document}"}


def _build_hnsw(engine: Any, indexdef: str, log: Any) -> None:
    log("building the HNSW index...")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(indexdef)
        cursor.execute("ANALYZE data_chunks")
        raw.commit()
    finally:
        raw.close()


def load_store(store: Store, log: Any = print) -> tuple[bool, float]:
    """Bulk-load the store into data_chunks (skipped when it is already there). Returns (reused, seconds).

    The COPY is one transaction, so an interrupted load leaves no half-filled table; an
    interrupted index build is finished on the next run."""
    import sqlalchemy as sa

    from core.db.owner import get_admin_engine
    from core.tenant_plans import INDEX_PREFIX

    engine = get_admin_engine()  # the owner: bulk load and DDL across every bench tenant (maintenance, not a request)
    with engine.begin() as connection:
        if not str(connection.execute(sa.text("SELECT current_database()")).scalar()).startswith(BENCH_DATABASE):
            raise RuntimeError("refusing to load the benchmark into a database other than a bench database")
        chunks = connection.execute(sa.text("SELECT count(*) FROM data_chunks")).scalar()
        companies = connection.execute(sa.text("SELECT count(*) FROM companies WHERE slug LIKE 'bench-%'")).scalar()
        indexdef = connection.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'data_chunks' AND indexname = :i"),
            {"i": HNSW_INDEX}).scalar()
    started = time.perf_counter()
    if chunks == store.chunks and companies == len(store.sizes):
        if indexdef:
            return True, 0.0
        _build_hnsw(engine, HNSW_DDL, log)
        return True, time.perf_counter() - started
    log(f"loading {store.chunks} chunks with COPY...")
    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE data_chunks, data_docstore, documents, companies CASCADE"))
        connection.execute(sa.text("INSERT INTO companies (id, slug, name) VALUES (:id, :slug, :name)"),
                           [{"id": company_id(n), "slug": f"bench-{n:04d}", "name": f"Bench practice {n}"}
                            for n in range(len(store.sizes))])
        connection.execute(sa.text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))  # one bulk build beats 100k inserts
        for name in connection.execute(sa.text(  # the per-tenant ones too: rebuilt after the load
                "SELECT indexname FROM pg_indexes WHERE tablename = 'data_chunks' AND starts_with(indexname, :p)"),
                {"p": INDEX_PREFIX}).scalars().all():
            connection.execute(sa.text(f"DROP INDEX IF EXISTS {quoted_identifier(name)}"))
    raw = engine.raw_connection()
    try:
        with progress("bench build") as bar:
            task = bar.add_task("chunks loaded", total=store.chunks)
            cursor = raw.cursor()
            step = 10_000
            for start in range(0, store.chunks, step):
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                block = store.vectors[start:start + step]
                formatted = io.StringIO()
                np.savetxt(formatted, block, fmt="%.7g", delimiter=",")
                for offset, line in enumerate(formatted.getvalue().splitlines()):
                    chunk = start + offset
                    company = company_id(int(store.company_of[chunk]))
                    writer.writerow([store.texts[int(store.base_index[chunk])],
                                     json.dumps(_node_metadata(chunk, company)), f"bench-{chunk}", f"[{line}]"])
                buffer.seek(0)
                cursor.copy_expert(
                    "COPY data_chunks (text, metadata_, node_id, embedding) FROM STDIN WITH (FORMAT csv)", buffer)
                bar.advance(task, min(step, store.chunks - start))
            raw.commit()
    finally:
        raw.close()
    _build_hnsw(engine, indexdef or HNSW_DDL, log)
    return False, time.perf_counter() - started


def ensure_users(companies: int) -> None:
    """One staff user per bench company: the service honours only tokens of users that exist.
    Their password hash is no hash at all, so nobody can sign in as them; the benchmark issues
    their tokens itself. Run after every load (reloading the companies drops their users)."""
    import sqlalchemy as sa

    from core.db.owner import get_admin_engine

    with get_admin_engine().begin() as connection:  # the owner: rows of every bench tenant at once
        connection.execute(sa.text(
            "INSERT INTO users (company_id, id, email, password_hash, role, is_active) "
            "VALUES (:c, :id, :email, '!', 'staff', true) ON CONFLICT DO NOTHING"),
            [{"c": company_id(n), "id": user_id(n), "email": user_email(n)} for n in range(companies)])


def store_size() -> dict[str, float]:
    """Bytes of the search store: the chunk table with its indexes, and the BM25 tables kept
    beside it (statistics and the narrow per-chunk terms, with their indexes)."""
    import sqlalchemy as sa

    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:  # counts every tenant's rows
        row = connection.execute(sa.text(
            "SELECT pg_total_relation_size('data_chunks'), pg_relation_size('data_chunks'), "
            "pg_relation_size('data_chunks_embedding_idx'), pg_indexes_size('data_chunks'), "
            "pg_total_relation_size('bm25_chunk_terms') + pg_total_relation_size('bm25_terms') "
            "+ pg_total_relation_size('bm25_corpus'), count(*) FROM data_chunks")).one()
    chunks_total, heap, hnsw, indexes, bm25, count = (int(v) for v in row)
    total = chunks_total + bm25
    return {"total_bytes": total, "heap_bytes": heap, "hnsw_bytes": hnsw, "indexes_bytes": indexes,
            "bm25_bytes": bm25, "bytes_per_chunk": total / max(count, 1), "chunks_per_gb": count / (total / 1e9)}

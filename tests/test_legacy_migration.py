"""Legacy `ai_knowledge_base` migration from a database built by the seed's schema."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from core.settings import get_settings

SEED_TABLE = """
CREATE TABLE ai_knowledge_base (
    id varchar PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id varchar NOT NULL,
    uploaded_by varchar NOT NULL,
    filename text NOT NULL,
    content text,
    embeddings jsonb,
    category varchar,
    is_active boolean DEFAULT true,
    created_at timestamp DEFAULT now() NOT NULL,
    updated_at timestamp DEFAULT now() NOT NULL
)
"""


@pytest.fixture
def legacy_url(database: str):
    name = f"legacy_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(database, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    url = make_url(database).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def _snapshot(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.text("SELECT * FROM ai_knowledge_base ORDER BY id"))]


def test_migrate_legacy_rows(company, legacy_url, embed_model) -> None:
    from core.db.owner import get_admin_engine
    from indexing.legacy import migrate_legacy

    new_company = f"legacy-co-{uuid.uuid4().hex[:8]}"
    vec384 = [0.0] * 383 + [1.0]
    long_text = " ".join(f"Sentence {i} about varifocal lens adaptation and follow-up visits." for i in range(80))
    rows = [
        ("good-plain", company.id, "Frames are adjusted free of charge for life.", None, "policy", True),
        ("good-ada", company.id, "Eye tests for over-60s cost twenty pounds.", [0.01] * 1536, "prices", True),
        ("good-kept", company.id, "Parking is free behind the Riverside practice.", vec384, None, True),
        ("long-384", company.id, long_text, vec384, None, True),
        ("bad-vector", company.id, "Contact lens checks are yearly.", "not a vector", None, True),
        ("inactive", company.id, "Old 2019 price list: exams 15 pounds.", None, "prices", False),
        ("empty", company.id, "   ", None, None, True),
        ("null", company.id, None, None, None, True),
        ("other-co", new_company, "Northgate opens on Saturdays.", None, None, True),
    ]
    source = sa.create_engine(legacy_url, poolclass=sa.pool.NullPool)
    with source.begin() as connection:
        connection.execute(sa.text(SEED_TABLE))
        for legacy_id, company_id, content, vector, category, active in rows:
            connection.execute(sa.text(
                "INSERT INTO ai_knowledge_base (id, company_id, uploaded_by, filename, content, embeddings, "
                "category, is_active) VALUES (:i, :c, 'u1', :f, :t, CAST(:e AS jsonb), :cat, :a)"),
                {"i": legacy_id, "c": company_id, "f": f"{legacy_id}.txt", "t": content,
                 "e": json.dumps(vector) if vector is not None else None, "cat": category, "a": active})
    before = _snapshot(source)

    report = migrate_legacy(legacy_url, settings=get_settings())
    by_id = {r.legacy_id: r for r in report.rows}
    assert (report.migrated, report.skipped, report.failed) == (7, 2, 0), report.rows
    assert by_id["good-plain"].reason.startswith("re-embedded (no legacy vector)")
    assert by_id["good-ada"].reason.startswith("re-embedded (legacy vector has 1536 dims, model has 384)")
    assert by_id["good-kept"].reason.startswith("legacy vector kept")
    assert by_id["long-384"].reason.startswith("re-embedded (content spans several chunks")
    assert by_id["bad-vector"].reason.startswith("re-embedded (no legacy vector)")
    assert "inactive" in by_id["inactive"].reason
    assert by_id["empty"].outcome == by_id["null"].outcome == "skipped"
    assert by_id["empty"].reason == by_id["null"].reason == "empty content"
    assert by_id["other-co"].outcome == "migrated" and by_id["other-co"].company_id == new_company

    engine = get_admin_engine()  # the operator's view: both companies at once (the service sees one per transaction)
    with engine.connect() as connection:
        docs = {r.legacy_id: r for r in connection.execute(sa.text(
            "SELECT * FROM documents WHERE company_id = ANY(:c) AND legacy_id IS NOT NULL"),
            {"c": [company.id, new_company]})}
        assert set(docs) == {"good-plain", "good-ada", "good-kept", "long-384", "bad-vector", "inactive", "other-co"}
        assert all(d.status == "indexed" and d.chunk_count >= 1 for d in docs.values())
        assert docs["long-384"].chunk_count > 1 and docs["inactive"].is_active is False
        assert connection.execute(sa.text("SELECT slug FROM companies WHERE id = :c"),
                                  {"c": new_company}).scalar() == f"legacy-{new_company}"
        kept = connection.execute(sa.text(
            "SELECT embedding::text FROM data_chunks WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
            {"c": company.id, "d": docs["good-kept"].id}).scalar()
        assert json.loads(kept) == vec384
        inactive = connection.execute(sa.text(
            "SELECT bool_and((metadata_->>'is_active')::boolean) FROM data_chunks "
            "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
            {"c": company.id, "d": docs["inactive"].id}).scalar()
        assert inactive is False
        chunks_before = connection.execute(sa.text("SELECT count(*) FROM data_chunks WHERE company_id = ANY(:c)"),
                                           {"c": [company.id, new_company]}).scalar()

    again = migrate_legacy(legacy_url, settings=get_settings())
    assert (again.migrated, again.skipped, again.failed) == (0, 9, 0)
    assert {r.reason for r in again.rows} == {"already migrated", "empty content"}
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM data_chunks WHERE company_id = ANY(:c)"),
                                  {"c": [company.id, new_company]}).scalar() == chunks_before
    assert _snapshot(source) == before  # the source is never written
    with source.begin() as connection:
        connection.execute(sa.text("DROP TABLE ai_knowledge_base"))
    source.dispose()


def test_migrate_legacy_unreadable_source(database) -> None:
    from core.errors import ConfigurationError
    from indexing.legacy import migrate_legacy

    url = make_url(database).render_as_string(hide_password=False)  # our own db: no ai_knowledge_base
    with pytest.raises(ConfigurationError, match="ai_knowledge_base"):
        migrate_legacy(url, settings=get_settings())

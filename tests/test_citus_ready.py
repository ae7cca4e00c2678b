"""The schema can be distributed by company_id with Citus (docs/scaling.md has the script).

Citus is not installable here, so the catalog is checked for what Citus refuses or cannot
route: a tenant table (one with a company_id column) whose primary key or a unique
constraint/index does not start with company_id, a generated company_id, a foreign key
between tenant tables that does not pair company_id with company_id, and a foreign key from
a table without company_id into a tenant table. Then the stores are watched at work: every
INSERT into the two formerly generated tables names company_id, and the docstore upserts on
the company-led key.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from core.settings import get_settings

_TENANT_TABLES = """
    SELECT c.oid, c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
      AND a.attname = 'company_id' AND NOT a.attisdropped ORDER BY c.relname
"""
_COLUMNS = "SELECT attnum, attname, attgenerated FROM pg_attribute WHERE attrelid = :t AND attnum > 0"
_UNIQUE_INDEXES = """
    SELECT i.indexrelid::regclass::text AS name, i.indisprimary AS primary_key, i.indkey::int2[] AS keys
    FROM pg_index i WHERE i.indrelid = :t AND i.indisunique
"""
_FOREIGN_KEYS = """
    SELECT conname, conrelid, confrelid, conkey, confkey FROM pg_constraint
    WHERE contype = 'f' AND connamespace = 'public'::regnamespace
"""


def citus_blockers(connection: sa.Connection) -> list[str]:
    """Everything in the catalog that would stop `create_distributed_table(..., 'company_id')`
    or make a tenant's statements fan out to every shard."""
    problems: list[str] = []
    tenant = dict(connection.execute(sa.text(_TENANT_TABLES)).all())
    names: dict[int, dict[int, str]] = {}
    for oid, table in tenant.items():
        columns = connection.execute(sa.text(_COLUMNS), {"t": oid}).all()
        names[oid] = {c.attnum: c.attname for c in columns}
        if any(c.attname == "company_id" and c.attgenerated for c in columns):
            problems.append(f"{table}.company_id is a generated column (an INSERT cannot be routed by it)")
        indexes = connection.execute(sa.text(_UNIQUE_INDEXES), {"t": oid}).all()
        if not any(i.primary_key for i in indexes):
            problems.append(f"{table} has no primary key")
        for index in indexes:
            keys = [names[oid].get(k, "<expression>") for k in index.keys]
            if not keys or keys[0] != "company_id":
                kind = "primary key" if index.primary_key else "unique index"
                problems.append(f"{table}: {kind} {index.name} ({', '.join(keys)}) does not start with company_id")
    for fk in connection.execute(sa.text(_FOREIGN_KEYS)).all():
        source, target = fk.conrelid, fk.confrelid
        if source in tenant and target in tenant:
            pairs = [(names[source][a], names[target][b]) for a, b in zip(fk.conkey, fk.confkey, strict=True)]
            if ("company_id", "company_id") not in pairs:
                problems.append(f"{tenant[source]} -> {tenant[target]}: foreign key {fk.conname} does not pair "
                                "company_id with company_id")
        elif target in tenant:
            problems.append(f"foreign key {fk.conname} points from a table without company_id into "
                            f"{tenant[target]} (a reference table cannot reference a distributed one)")
    return problems


def test_the_schema_has_no_citus_blocker(database: str) -> None:
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        tables = [row[1] for row in connection.execute(sa.text(_TENANT_TABLES))]
        assert {"data_chunks", "data_docstore", "documents", "users", "ingest_jobs"} <= set(tables)
        assert citus_blockers(connection) == []


def test_the_check_finds_each_kind_of_blocker(database: str) -> None:
    """The inspection itself, on a throwaway schema of deliberately wrong tables (rolled back)."""
    from core.db.owner import get_admin_engine

    with get_admin_engine().connect() as connection:
        connection.execute(sa.text("""
            CREATE TABLE zz_parent (company_id varchar(64) NOT NULL, id int NOT NULL, code text,
                                    PRIMARY KEY (company_id, id), UNIQUE (code));
            CREATE TABLE zz_child (company_id varchar(64) GENERATED ALWAYS AS ('x') STORED, id int PRIMARY KEY,
                                   parent int, FOREIGN KEY (company_id, parent) REFERENCES zz_parent);
            CREATE TABLE zz_orphan (company_id varchar(64), id int, parent int, parent_company varchar(64),
                                    FOREIGN KEY (parent_company, parent) REFERENCES zz_parent);
            CREATE TABLE zz_directory (id int PRIMARY KEY, company varchar(64), parent int,
                                       FOREIGN KEY (company, parent) REFERENCES zz_parent);
        """))
        found = "\n".join(citus_blockers(connection))
        connection.rollback()
    assert "zz_parent: unique index zz_parent_code_key (code) does not start with company_id" in found
    assert "zz_child.company_id is a generated column" in found
    assert "zz_child: primary key zz_child_pkey (id) does not start with company_id" in found
    assert "zz_orphan has no primary key" in found
    assert "zz_orphan -> zz_parent: foreign key" in found
    assert "from a table without company_id into zz_parent" in found
    assert "zz_child -> zz_parent" not in found  # (company_id, parent) pairs company_id: fine


def test_stores_name_company_id_in_every_insert_and_upsert_on_the_company_key(company) -> None:
    from core.db.engines import get_engine
    from indexing.documents import index_upload

    statements: list[str] = []

    def _record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(get_engine(), "before_cursor_execute", _record)
    try:
        document = index_upload(company.id, "routing.md", b"# Routing\n\nEvery insert names its shard.\n",
                                settings=get_settings())
    finally:
        event.remove(get_engine(), "before_cursor_execute", _record)
    assert document.status == "indexed" and document.chunk_count >= 1
    chunk_inserts = [s for s in statements if s.startswith("INSERT INTO public.data_chunks")
                     or s.startswith("INSERT INTO data_chunks")]
    docstore_inserts = [s for s in statements if "INSERT INTO" in s and "data_docstore" in s.split("(")[0]]
    assert chunk_inserts and docstore_inserts
    for statement in chunk_inserts + docstore_inserts:
        assert "company_id" in statement.split("VALUES")[0], statement
    for statement in docstore_inserts:
        assert "ON CONFLICT (company_id, key, namespace)" in statement, statement


def test_company_id_must_agree_with_what_it_was_derived_from(company, make_company) -> None:
    from sqlalchemy.exc import IntegrityError

    from core.db.owner import get_admin_engine

    other = make_company()
    with get_admin_engine().connect() as connection:  # the owner: no policy in the way, only the CHECKs
        with pytest.raises(IntegrityError, match="ck_data_chunks_company_matches_metadata"):
            connection.execute(sa.text(
                "INSERT INTO data_chunks (company_id, text, metadata_, node_id) VALUES (:c, 'x', "
                "CAST(:m AS jsonb), 'n-1')"), {"c": other.id, "m": f'{{"company_id": "{company.id}"}}'})
        connection.rollback()
        with pytest.raises(IntegrityError, match="ck_data_docstore_company_matches_namespace"):
            connection.execute(sa.text(
                "INSERT INTO data_docstore (company_id, key, namespace, value) VALUES (:c, 'k', :ns, '{}')"),
                {"c": other.id, "ns": f"{company.id}/docstore/data"})
        connection.rollback()
        # a writer that leaves the column out (a bulk COPY load) gets it filled from the metadata
        filled = connection.execute(sa.text(
            "INSERT INTO data_chunks (text, metadata_, node_id) VALUES ('x', CAST(:m AS jsonb), 'n-2') "
            "RETURNING company_id"), {"m": f'{{"company_id": "{company.id}"}}'}).scalar()
        connection.rollback()
    assert filled == company.id


def test_the_tenant_claim_can_be_set_with_set_local(company, make_user) -> None:
    """TENANT_SET_LOCAL (Citus forwards SET LOCAL to its workers): the wall still holds."""
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant
    from core.settings import get_settings

    settings = get_settings()
    statements: list[str] = []

    def _record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    make_user(company, "staff")
    event.listen(get_engine(), "before_cursor_execute", _record)
    settings.tenant_set_local = True
    try:
        with tenant(company.id), get_engine().connect() as connection:
            seen = connection.execute(sa.text("SELECT DISTINCT company_id FROM users")).scalars().all()
            claim = connection.execute(sa.text("SELECT current_setting('ils.tenant')")).scalar()
    finally:
        settings.tenant_set_local = False
        event.remove(get_engine(), "before_cursor_execute", _record)
    assert seen == [company.id]
    assert claim.endswith(f":{company.id}")
    assert any(s.startswith("SET LOCAL ils.tenant = '") for s in statements)
    assert not any("set_config('ils.tenant'" in s for s in statements)

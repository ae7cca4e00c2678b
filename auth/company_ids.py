"""Give an existing company the ILS platform's id (`ils-rag companies set-id SLUG PLATFORM_ID`).

Why: the platform's tokens carry its own `companyId`; a practice created here before the
platform integration has a UUID of ours. Rather than a mapping table that every request would
consult, the company's id itself changes, with every row that carries it, in one transaction
of the owner role: either everything moves or nothing does.

How: the foreign keys on company_id are DEFERRABLE (migration 0007) and are deferred to the
commit; every table with a company_id column (found in the catalog, so tables added later are
included) is updated. Two derive company_id from other columns and are rewritten at the
source: data_chunks (the `company_id` key of `metadata_`) and data_docstore (the namespace
prefix `<company_id>/`). Service clients allowed for the company follow it. The company's own
HNSW index (named after its id) is dropped; tenant-index maintenance rebuilds it under the new
name. Access tokens naming the old id stop working (401 UNKNOWN_COMPANY): users sign in again.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from auth import audit
from auth.clients import rename_company_in_clients
from auth.models import Company
from auth.users import check_company_id
from core.db.checks import tenant_tables
from core.errors import Conflict, NotFound, ServiceError
from core.sql_text import quoted_identifier
from core.tenant_plans import tenant_index_name

ID_CHANGED = "companies.id_change"
# The company id also appears inside stored JSON: as a whole string value ("<id>", the chunk's
# company_id, also in LlamaIndex's serialized `_node_content`), as the prefix of document ids
# ("<id>:<source>", ref_doc_id / doc_id / docstore keys) and of docstore namespaces ("<id>/");
# inside the nested `_node_content` string a whole value reads \"<id>\" (escaped quotes).
# Only those three shapes are rewritten, so document text that merely mentions an id is kept.
_REWRITE = ("replace(replace(replace(replace({column}, CAST(:q_whole_old AS text), CAST(:q_whole_new AS text)), "
            "CAST(:q_nested_old AS text), CAST(:q_nested_new AS text)), "
            "CAST(:q_colon_old AS text), CAST(:q_colon_new AS text)), CAST(:q_slash_old AS text), "
            "CAST(:q_slash_new AS text))")
# Tables whose company_id is generated from another column, and how that column is rewritten.
DERIVED = {
    "data_chunks": sa.text("UPDATE data_chunks SET metadata_ = CAST("
                           + _REWRITE.format(column="CAST(metadata_ AS text)") + " AS jsonb) WHERE company_id = :old"),
    "data_docstore": sa.text("UPDATE data_docstore SET namespace = CAST(:new AS text) || substr(namespace, "
                             "length(:old) + 1), key = CASE WHEN starts_with(key, CAST(:colon_old AS text)) "
                             "THEN CAST(:new AS text) || substr(key, length(:old) + 1) ELSE key END, value = CAST("
                             + _REWRITE.format(column="CAST(value AS text)") + " AS jsonb) WHERE company_id = :old"),
}

# Per-company BM25 tables that data_chunks' triggers keep (migrations 0006, 0015): the triggers
# move their rows with the chunks; what is left under the old id is empty, and goes.
TRIGGER_MAINTAINED = {
    "bm25_corpus": sa.text("DELETE FROM bm25_corpus WHERE company_id = :old AND chunks = 0"),
    "bm25_terms": sa.text("DELETE FROM bm25_terms WHERE company_id = :old AND df <= 0"),
    "bm25_chunk_terms": sa.text("DELETE FROM bm25_chunk_terms WHERE company_id = :old"),
}


@dataclass(frozen=True)
class IdChange:
    old_id: str
    new_id: str
    rows: dict[str, int]  # table -> rows moved
    clients: int


def _generated(connection: sa.Connection) -> set[str]:
    return set(connection.execute(sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND a.attname = 'company_id' "
        "AND a.attgenerated <> ''")).scalars())


def change_company_id(session: Session, ref: str, new_id: str) -> IdChange:
    """Move company `ref` (slug or id) to `new_id` in the caller's owner session (commits with it)."""
    check_company_id(new_id)
    company = session.scalar(sa.select(Company).where((Company.slug == ref) | (Company.id == ref)))
    if company is None:
        raise NotFound(f"no company with slug or id {ref!r} (see `ils-rag companies list`)", code="COMPANY_NOT_FOUND")
    old_id = company.id
    if old_id == new_id:
        return IdChange(old_id, new_id, {}, 0)
    if session.get(Company, new_id) is not None:
        raise Conflict(f"a company with id {new_id!r} already exists", code="COMPANY_EXISTS")

    connection = session.connection()
    connection.execute(sa.text("SET CONSTRAINTS ALL DEFERRED"))
    generated = _generated(connection)
    unknown = generated - set(DERIVED)
    if unknown:
        raise ServiceError(f"cannot move rows of {', '.join(sorted(unknown))}: their company_id is derived "
                           "from another column this command does not know", code="UNSUPPORTED_SCHEMA")
    params: dict[str, str] = {"old": old_id, "new": new_id, "colon_old": f"{old_id}:",
              "q_whole_old": f'"{old_id}"', "q_whole_new": f'"{new_id}"',
              "q_nested_old": f'\\"{old_id}\\"', "q_nested_new": f'\\"{new_id}\\"', "q_colon_old": f'"{old_id}:',
              "q_colon_new": f'"{new_id}:', "q_slash_old": f'"{old_id}/', "q_slash_new": f'"{new_id}/'}
    rows: dict[str, int] = {}
    # data_chunks first: its triggers move the BM25 statistics to the new id themselves (the old
    # id keeps only emptied rows, dropped below), so those tables are never updated directly.
    tables = sorted(tenant_tables(connection), key=lambda name: name != "data_chunks")
    for table in tables:
        if table in TRIGGER_MAINTAINED:
            connection.execute(TRIGGER_MAINTAINED[table], params)
            continue
        statement = DERIVED[table] if table in DERIVED else sa.text(
            f"UPDATE {quoted_identifier(table)} SET company_id = :new WHERE company_id = :old")
        rows[table] = connection.execute(statement, params).rowcount or 0
    rows["companies"] = connection.execute(sa.text("UPDATE companies SET id = :new WHERE id = :old"),
                                           params).rowcount or 0
    clients = rename_company_in_clients(session, old_id, new_id)
    connection.execute(sa.text(f"DROP INDEX IF EXISTS {quoted_identifier(tenant_index_name(old_id))}"))
    session.expire_all()
    audit.record(session, new_id, None, ID_CHANGED, target=new_id, details={"from": old_id, "to": new_id})
    session.flush()
    return IdChange(old_id, new_id, rows, clients)

"""SQL on one document's stored rows (its chunks in data_chunks, its hashes in the docstore),
run in the caller's transaction so it commits or rolls back with the registry change: delete
them (a redo, a failure, a purge) or rewrite one metadata key on every chunk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from core.db.engines import get_engine
from core.db.tenant_scope import tenant
from indexing.docstore import docstore_namespace, ref_doc_base


def chunk_ref_ids(connection: sa.Connection, company_id: str, document_id: str) -> list[str]:
    return list(connection.execute(sa.text(
        "SELECT DISTINCT metadata_->>'ref_doc_id' FROM data_chunks "
        "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"), {"c": company_id, "d": document_id},
    ).scalars())


def delete_chunks_and_hashes(connection: sa.Connection, company_id: str, document_id: str,
                              ref_ids: Sequence[str], *, keep_ref_ids: Sequence[str] = ()) -> None:
    """Delete a document's chunks (all, or those of parts not in keep_ref_ids) and the
    docstore entries of `ref_ids`, in the caller's transaction.

    Plain SQL on purpose: the vector store and the docstore each commit on their own, and
    this must be one transaction with the registry change (see indexing.pipeline).
    Every statement is scoped by company_id.
    """
    keep = list(keep_ref_ids)
    connection.execute(sa.text(
        "DELETE FROM data_chunks WHERE company_id = :c AND metadata_->>'source_document_id' = :d "
        "AND NOT (metadata_->>'ref_doc_id' = ANY(CAST(:keep AS text[])))"),
        {"c": company_id, "d": document_id, "keep": keep})
    ns = docstore_namespace(company_id)
    if ref_ids:
        connection.execute(sa.text(
            "DELETE FROM data_docstore WHERE company_id = :c AND namespace = ANY(CAST(:ns AS text[])) "
            "AND key = ANY(CAST(:ids AS text[]))"),
            {"c": company_id, "ns": [f"{ns}/data", f"{ns}/metadata", f"{ns}/ref_doc_info"], "ids": list(ref_ids)})


def purge_document(company_id: str, document_id: str) -> bool:
    """Delete a document, its chunks and its docstore entries in one transaction."""
    with tenant(company_id), get_engine().begin() as connection:
        refs = chunk_ref_ids(connection, company_id, document_id)
        key = connection.execute(sa.text("SELECT source_key FROM documents WHERE company_id = :c AND id = :d"),
                                 {"c": company_id, "d": document_id}).scalar()
        if key is None:
            return False
        base = ref_doc_base(company_id, key)
        hashes = connection.execute(sa.text(
            "SELECT key FROM data_docstore WHERE company_id = :c AND namespace = :ns "
            "AND (key = :base OR starts_with(key, :prefix))"),
            {"c": company_id, "ns": f"{docstore_namespace(company_id)}/metadata", "base": base,
             "prefix": f"{base}#part-"}).scalars().all()
        delete_chunks_and_hashes(connection, company_id, document_id, sorted(set(refs) | set(hashes)))
        connection.execute(sa.text("DELETE FROM documents WHERE company_id = :c AND id = :d"),
                           {"c": company_id, "d": document_id})
        return True


def set_chunk_metadata(connection: sa.Connection, company_id: str, document_id: str, key: str, value: Any) -> int:
    """Rewrite one metadata key on every chunk of a document, in the filterable column and
    in the serialised node (`_node_content`) that retrieval rebuilds nodes from; one UPDATE."""
    if key not in ("is_active", "category"):
        raise ValueError(f"chunk metadata key {key!r} is not patchable")
    result = connection.execute(sa.text(
        "UPDATE data_chunks SET metadata_ = jsonb_set(jsonb_set(metadata_, ARRAY[:k], CAST(:v AS jsonb)), "
        "'{_node_content}', to_jsonb(jsonb_set(CAST(metadata_->>'_node_content' AS jsonb), "
        "ARRAY['metadata', :k], CAST(:v AS jsonb))::text)) "
        "WHERE company_id = :c AND metadata_->>'source_document_id' = :d"),
        {"c": company_id, "d": document_id, "k": key, "v": json.dumps(value)})
    return int(result.rowcount or 0)

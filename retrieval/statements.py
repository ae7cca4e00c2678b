"""Each chunk's statement vectors, computed once and stored beside the chunk (`chunk_statements`,
migration 0009), so an offline answer embeds only the question.

A row holds the unit vectors of a chunk's answerable statements (retrieval/passages.py), in
order, as float16, with a digest of the statement texts and the embedding model: when either
changes (a new normaliser, another model), the digest no longer matches and the row is
recomputed instead of used. `precompute` fills the rows of a company's chunks after ingestion;
`vectors_for` reads them at answer time, and computes and stores any that are missing (chunks
indexed before the table existed, or a race with ingestion).

Every statement is bound-parameter only and runs inside `tenant(company_id)`, so row-level
security applies as it does to the chunks themselves.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from llama_index.core.base.embeddings.base import BaseEmbedding

from core.db.engines import get_engine
from core.db.replica import read_engine
from core.db.tenant_scope import tenant
from core.embeddings import get_embed_model
from retrieval.passages import Rendered, passage_of

logger = logging.getLogger(__name__)

PRECOMPUTE_BATCH = 64  # chunks per embedding call and write while precomputing

_READ = sa.text("SELECT node_id, digest, dims, vectors FROM chunk_statements "
                "WHERE company_id = :company AND node_id = ANY(:ids)")
_WRITE = sa.text(
    "INSERT INTO chunk_statements (company_id, node_id, digest, dims, vectors) "
    "SELECT :company, :node, :digest, :dims, :vectors "
    "WHERE EXISTS (SELECT 1 FROM data_chunks WHERE company_id = :company AND node_id = :node) "
    "ON CONFLICT (company_id, node_id) DO UPDATE SET digest = EXCLUDED.digest, dims = EXCLUDED.dims, "
    "vectors = EXCLUDED.vectors")
_CHUNKS = sa.text(
    "SELECT c.id, c.node_id, c.text, c.metadata_, s.digest FROM data_chunks c "
    "LEFT JOIN chunk_statements s ON s.company_id = c.company_id AND s.node_id = c.node_id "
    "WHERE c.company_id = :company AND c.id > :after "
    "AND (CAST(:document AS text) IS NULL OR c.metadata_->>'source_document_id' = :document) "
    "ORDER BY c.id LIMIT :limit")


def statement_texts(rendered: Rendered) -> list[str]:
    """What each answerable statement is embedded as (with its heading), in passage order."""
    return [unit.embed_text for unit in rendered.units if unit.answerable]


def digest(texts: Sequence[str], model_key: str) -> str:
    """`model_key` (Settings.embedding_key) is part of the digest: another model's vectors are stale."""
    raw = "\x1e".join([model_key, *texts])
    return hashlib.sha256(raw.encode()).hexdigest()


def embed(texts: Sequence[str], embed_model: BaseEmbedding) -> np.ndarray:
    """Unit vectors of `texts` (rows), float32."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = np.asarray(embed_model.get_text_embedding_batch(list(texts)), dtype=np.float32)
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)


def _store(company_id: str, rows: Sequence[tuple[str, str, np.ndarray]]) -> None:
    """Upsert (node id, digest, vectors) rows; a chunk deleted meanwhile is skipped, not an error."""
    params = [{"company": company_id, "node": node_id, "digest": key, "dims": int(matrix.shape[1]),
               "vectors": matrix.astype(np.float16).tobytes()} for node_id, key, matrix in rows]
    with tenant(company_id), get_engine().begin() as connection:
        connection.execute(_WRITE, params)


def vectors_for(company_id: str, node_ids: Sequence[str], rendered: Sequence[Rendered],
                embed_model: BaseEmbedding, model_key: str) -> list[np.ndarray]:
    """For each chunk, the unit vectors of its answerable statements (rows, passage order):
    read from the table, or computed (in one batch) and stored when missing or stale."""
    texts = [statement_texts(r) for r in rendered]
    keys = [digest(t, model_key) for t in texts]
    found: dict[str, np.ndarray] = {}
    with tenant(company_id), read_engine().connect() as connection:
        for row in connection.execute(_READ, {"company": company_id, "ids": list(node_ids)}):
            found[row.node_id] = (row.digest, row.dims, row.vectors)  # type: ignore[assignment]
    out: list[np.ndarray | None] = []
    todo: list[int] = []
    for i, (node_id, key, chunk_texts) in enumerate(zip(node_ids, keys, texts, strict=True)):
        stored = found.get(node_id)
        if stored is not None and stored[0] == key:  # type: ignore[index]
            matrix = np.frombuffer(stored[2], dtype=np.float16).reshape(-1, stored[1])  # type: ignore[index]
            out.append(matrix.astype(np.float32))
        elif not chunk_texts:
            out.append(np.zeros((0, 1), dtype=np.float32))
        else:
            out.append(None)
            todo.append(i)
    if todo:
        flat = [text for i in todo for text in texts[i]]
        matrix = embed(flat, embed_model)
        fresh, start = [], 0
        for i in todo:
            part = matrix[start:start + len(texts[i])]
            start += len(texts[i])
            out[i] = part
            fresh.append((node_ids[i], keys[i], part))
        try:
            _store(company_id, fresh)
        except sa.exc.SQLAlchemyError:  # the answer does not depend on the write; the next one retries
            logger.warning("could not store statement vectors for %d chunks", len(fresh), exc_info=True)
    return [m if m is not None else np.zeros((0, 1), dtype=np.float32) for m in out]


def precompute(company_id: str, embed_model: BaseEmbedding, model_key: str, batch: int = PRECOMPUTE_BATCH,
               document_id: str | None = None) -> int:
    """Store the statement vectors of every chunk of `company_id` (or of one of its documents)
    whose row is missing or stale (another normaliser or model); returns how many chunks were
    (re)computed. Run after ingestion, so no chat pays for them."""
    done, after = 0, 0
    while True:
        with tenant(company_id), get_engine().connect() as connection:
            rows = connection.execute(_CHUNKS, {"company": company_id, "after": after, "limit": batch * 8,
                                                "document": document_id}).all()
        if not rows:
            return done
        after = rows[-1].id
        todo = []
        for row in rows:
            rendered = passage_of(row.text, (row.metadata_ or {}).get("section"),
                                  starts_document=_starts_document(row.metadata_))
            texts = statement_texts(rendered)
            if row.digest != digest(texts, model_key):
                todo.append((row.node_id, texts))
        for start in range(0, len(todo), batch):
            part = todo[start:start + batch]
            matrix = embed([t for _, texts in part for t in texts], embed_model)
            fresh, offset = [], 0
            for node_id, texts in part:
                # a chunk with no statements stores an empty matrix, so it is not picked up again
                vectors = matrix[offset:offset + len(texts)] if texts else np.zeros((0, 1), dtype=np.float32)
                offset += len(texts)
                fresh.append((node_id, digest(texts, model_key), vectors))
            _store(company_id, fresh)
            done += len(part)


def _starts_document(metadata: dict | None) -> bool:
    """Whether the chunk begins its file: LlamaIndex keeps the offset in `_node_content`."""
    import json

    try:
        return json.loads((metadata or {}).get("_node_content") or "{}").get("start_char_idx") == 0
    except (TypeError, ValueError):
        return False


def precompute_document(company_id: str, document_id: str, model_key: str) -> None:
    """After an upload is indexed (a background task of the upload route, or the queue worker
    once the job is done): its chunks' statement vectors, so its first chat embeds only the
    question. A failure here costs only that: the first answer reading a chunk stores its own."""
    try:
        precompute(company_id, get_embed_model(), model_key, document_id=document_id)
    except Exception:
        logger.warning("statement vectors of document %s not stored; the first answer will store them",
                       document_id, exc_info=True, extra={"company_id": company_id})

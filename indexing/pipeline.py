"""The indexing core: LlamaIndex's IngestionPipeline (splitter + embedder) writing to the
tenant-guarded PGVectorStore, with a per-company Postgres docstore, kept in step with our
`documents` registry.

Crash safety rests on one order of events per file:

1. the registry row is set to 'indexing' (committed) before anything is touched;
2. if the row was not 'indexed' before, everything previously written for it (chunks and
   docstore hashes) is deleted in one transaction, so the pipeline starts clean;
3. the pipeline writes the batch's chunks in one INSERT transaction, then the docstore
   hashes (so a hash never exists without its chunks);
4. only then is the row set to 'indexed'.

A SIGKILL anywhere leaves the row at 'indexing', and the next run redoes it from step 2:
no duplicates (chunk ids are also deterministic and UNIQUE per company), no orphans.

Docstore strategy: UPSERTS, not UPSERTS_AND_DELETE. The latter deletes every docstore
document missing from *the current run*, and we run the pipeline per batch of files (for
per-file failure isolation and bounded memory), so it would delete the rest of the
company's knowledge base. Files gone from a folder are removed explicitly
(`indexing.chunk_rows.purge_document`).

The steps live in their own modules: registry rows and locks in indexing.document_state,
row deletion in indexing.chunk_rows, the docstore in indexing.docstore.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from llama_index.core import Document as LIDocument
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.schema import BaseNode, TransformComponent
from sqlalchemy import select

from core.db.engines import get_engine, session_scope
from core.db.tenant_scope import tenant
from core.embeddings import get_embed_model
from core.settings import Settings
from core.vector_store import get_vector_store
from indexing.chunk_context import context_metadata, document_title, embedded_keys
from indexing.chunk_rows import chunk_ref_ids, delete_chunks_and_hashes
from indexing.chunking import build_splitter
from indexing.docstore import get_docstore, ref_doc_base
from indexing.document_state import (
    RowState,
    claim_documents,
    document_locks,
    finish_documents,
    mark_failed,
    safe_failure,
)
from indexing.models import Document
from indexing.readers import Part
from indexing.sources import Outcome, Source

logger = logging.getLogger(__name__)

CHUNK_ID_NAMESPACE = uuid.UUID("5f1d3f64-5d5e-4d8e-9a53-1c9a4c2b7e10")


def chunk_id(i: int, doc: BaseNode) -> str:
    """Deterministic chunk ids: re-running the same part can never insert a second copy
    (data_chunks has UNIQUE (company_id, node_id)); a changed part gets new ids."""
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"{doc.id_}\x00{doc.hash}\x00{i}"))


@lru_cache
def chunk_splitter() -> Any:
    return build_splitter(get_embed_model(), id_func=chunk_id)


class AttachVector(TransformComponent):
    """Legacy migration: reuse a stored vector of the right width instead of re-embedding.

    Only used when the content is a single chunk, so the vector describes exactly that chunk.
    """

    vector: list[float]

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        if len(nodes) != 1:
            raise ValueError("a legacy vector can only stand for a single chunk")
        for node in nodes:
            node.embedding = list(self.vector)
        return nodes


def build_pipeline(company_id: str, transformations: list[TransformComponent] | None = None) -> IngestionPipeline:
    return IngestionPipeline(
        transformations=transformations or [chunk_splitter(), get_embed_model()],
        vector_store=get_vector_store(),
        docstore=get_docstore(company_id),
        docstore_strategy=DocstoreStrategy.UPSERTS,
        disable_cache=True,  # the docstore already skips unchanged parts; the cache would only cost memory
    )


def _prepare_clean(company_id: str, sources: Sequence[Source], states: dict[str, RowState],
                   part_ids: dict[str, list[str]]) -> None:
    """Step 2: start redone documents from nothing; drop parts a changed file no longer has."""
    with get_engine().begin() as connection:
        for source in sources:
            state = states[source.source_key]
            existing = chunk_ref_ids(connection, company_id, state.id)
            wanted = part_ids[source.source_key]
            if state.previous_status != "indexed":
                delete_chunks_and_hashes(connection, company_id, state.id, sorted(set(existing) | set(wanted)))
            else:
                stale = sorted(set(existing) - set(wanted))
                if stale:
                    delete_chunks_and_hashes(connection, company_id, state.id, stale, keep_ref_ids=wanted)


def _part_ids(company_id: str, source: Source) -> list[str]:
    base = ref_doc_base(company_id, source.source_key)
    if len(source.parts) == 1:
        return [base]
    return [f"{base}#part-{n}" for n in range(1, len(source.parts) + 1)]


def part_documents(filename: str, parts: Sequence[Part], context_mode: str,
                   metadata: dict[str, Any] | None = None, ids: Sequence[str] | None = None) -> list[LIDocument]:
    """The LlamaIndex documents of a file's parts, each with its context (CHUNK_CONTEXT) and
    `metadata`. The embed text is the chunk text, after its context when CHUNK_CONTEXT embeds it:
    the splitter counts embedded metadata against the chunk size, so the model reads all of it
    (see indexing.chunking). Answers quote the chunk text alone; retrieval reads metadata from
    its own columns. The ingestion benchmark embeds the same documents bare, so it compares like
    with like."""
    title = document_title(filename, list(parts))
    embedded = embedded_keys(context_mode)
    docs = []
    for n, part in enumerate(parts):
        full = {**(metadata or {}), **part.metadata, **context_metadata(context_mode, title, part)}
        excluded = [key for key in full if key not in embedded]
        kwargs: dict[str, Any] = {"id_": ids[n]} if ids is not None else {}
        docs.append(LIDocument(text=part.text, metadata=full, metadata_template="{value}",
                               excluded_embed_metadata_keys=excluded, excluded_llm_metadata_keys=list(full), **kwargs))
    return docs


def _documents(company_id: str, source: Source, state: RowState, ids: list[str],
               context_mode: str) -> list[LIDocument]:
    if len(ids) != len(source.parts):
        raise ValueError("one document id per part")
    metadata: dict[str, Any] = {
        "company_id": company_id,
        "source_document_id": state.id,
        "filename": source.filename,
        "category": state.category,
        "uploaded_by": source.uploaded_by,
        "is_active": state.is_active,
    }
    return part_documents(source.filename, source.parts, context_mode, metadata, ids)


def index_sources(company_id: str, sources: Sequence[Source], *, settings: Settings,
                  on_done: Callable[[Outcome], None] | None = None,
                  embed_model: BaseEmbedding | None = None) -> list[Outcome]:
    """Index parsed sources of one company as one pipeline run; isolate failures per source.
    `settings` are the caller's: CHUNK_CONTEXT decides what each chunk embeds."""
    if not sources:
        return []
    with tenant(company_id), document_locks(company_id, [s.source_key for s in sources]):
        try:
            outcomes = _run(company_id, sources, settings.chunk_context, embed_model)
        except Exception as exc:
            if len(sources) == 1:
                logger.warning("indexing %s failed: %s", sources[0].source_key, exc, exc_info=True)
                outcomes = [_failed(company_id, sources[0], exc)]
            else:
                outcomes = None
                logger.info("batch of %d failed (%s); retrying file by file", len(sources), exc)
    if outcomes is None:  # locks released: each retry takes its own
        outcomes = [o for s in sources
                    for o in index_sources(company_id, [s], settings=settings, embed_model=embed_model)]
        return outcomes
    if on_done:
        for outcome in outcomes:
            on_done(outcome)
    return outcomes


def _failed(company_id: str, source: Source, exc: Exception) -> Outcome:
    with tenant(company_id), session_scope() as session:
        document_id = session.scalar(select(Document.id).where(Document.company_id == company_id,
                                                               Document.source_key == source.source_key))
    if document_id:
        mark_failed(company_id, document_id, exc)
    code, message = safe_failure(exc)
    return Outcome(source.source_key, document_id, "failed", code=code, reason=message)


def _run(company_id: str, sources: Sequence[Source], context_mode: str,
         embed_model: BaseEmbedding | None = None) -> list[Outcome]:
    states = claim_documents(company_id, sources)
    part_ids = {s.source_key: _part_ids(company_id, s) for s in sources}
    _prepare_clean(company_id, sources, states, part_ids)
    documents = [d for s in sources
                 for d in _documents(company_id, s, states[s.source_key], part_ids[s.source_key], context_mode)]
    vectors = [s for s in sources if s.vector is not None]
    if vectors:
        if len(sources) != 1:
            raise ValueError("sources with legacy vectors are indexed one at a time")
        transformations = [chunk_splitter(), AttachVector(vector=vectors[0].vector)]
    else:
        # embed_model: the same model behind a cache (the evaluation harness), never another model
        transformations = [chunk_splitter(), embed_model] if embed_model is not None else None
    pipeline = build_pipeline(company_id, transformations)
    pipeline.docstore.prefetch_document_hashes([d.id_ for d in documents])
    nodes = pipeline.run(documents=documents, store_doc_text=False)
    embedded: dict[str, int] = {}
    for node in nodes:
        key = node.metadata.get("source_document_id")
        embedded[key] = embedded.get(key, 0) + 1
    counts = finish_documents(company_id, sources, states)
    outcomes = []
    for source in sources:
        state = states[source.source_key]
        action = "indexed" if state.previous_status is None else "updated"
        outcomes.append(Outcome(source.source_key, state.id, action, embedded.get(state.id, 0),
                                counts[source.source_key]))
    return outcomes



"""Folder ingestion against the real embedded Postgres and the bundled model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from llama_index.core.schema import MetadataMode
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from core.settings import get_settings

REPO = Path(__file__).resolve().parent.parent


def _chunks(company_id: str) -> list[tuple[str, dict]]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:  # row-level security: the company's rows only
        return [(r.text, r.metadata_) for r in connection.execute(sa.text(
            "SELECT text, metadata_ FROM data_chunks WHERE company_id = :c ORDER BY node_id"), {"c": company_id})]


def _docstore_keys(company_id: str) -> set[str]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:  # row-level security: the company's rows only
        return set(connection.execute(sa.text(
            "SELECT key FROM data_docstore WHERE company_id = :c AND namespace = :ns"),
            {"c": company_id, "ns": f"{company_id}/docstore/metadata"}).scalars())


def _registry(company_id: str) -> dict[str, tuple[str, int]]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:  # row-level security: the company's rows only
        return {r.source_key: (r.status, r.chunk_count) for r in connection.execute(sa.text(
            "SELECT source_key, status, chunk_count FROM documents WHERE company_id = :c"), {"c": company_id})}


def _per_document(company_id: str) -> Counter:
    """(filename, chunk text) multiset: what an uninterrupted run must equal."""
    return Counter((meta["filename"], text) for text, meta in _chunks(company_id))


def test_chunk_size_derived_from_model(embed_model) -> None:
    from core.embeddings import embedding_info
    from indexing.chunking import chunk_plan

    plan = chunk_plan(embed_model)
    info = embedding_info(embed_model)
    assert info.max_input_tokens == 256
    assert plan.special_tokens == 2
    assert plan.chunk_size + plan.special_tokens <= info.max_input_tokens
    assert plan.chunk_size >= 200  # not needlessly small either


def test_sample_folder_idempotent_sync_and_no_truncation(company, samples_dir, tmp_path, embed_model) -> None:
    from core.embeddings import count_tokens, embedding_info
    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    shutil.copytree(samples_dir / "brightsight-optical", folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    first = ingest_folder(folder, company.id, settings=get_settings())
    assert not first.failed, first.summary()
    assert sorted(first.indexed) == files
    assert first.chunks_embedded > len(files)
    chunks = _chunks(company.id)
    assert len(chunks) == first.chunks_embedded
    registry = _registry(company.id)
    assert sum(count for _, count in registry.values()) == len(chunks)
    assert all(status == "indexed" for status, _ in registry.values())

    # No stored chunk is longer than what the model reads: rebuild each node as retrieval
    # would and tokenize exactly the text the embedder was given.
    limit = embedding_info(embed_model).max_input_tokens
    longest = 0
    for text, meta in chunks:
        node = metadata_dict_to_node(meta)
        node.set_content(text)
        embed_text = node.get_content(metadata_mode=MetadataMode.EMBED)
        # Only the chunk's context (CHUNK_CONTEXT=both by default) joins the text: no other metadata
        assert embed_text == f"{meta['context']}\n\n{text}"
        assert meta["document_title"] and meta["context"].startswith(meta["document_title"])
        longest = max(longest, count_tokens(embed_text, embed_model))
    assert longest <= limit
    assert longest > limit * 0.6  # chunks are actually sized near the limit

    # Metadata contract.
    pdf_chunks = [m for _, m in chunks if m["filename"].endswith(".pdf")]
    assert pdf_chunks and all("page_label" in m for m in pdf_chunks)
    for _, meta in chunks:
        assert meta["company_id"] == company.id
        assert meta["is_active"] is True
        assert meta["source_document_id"] and meta["filename"]
        assert meta["ref_doc_id"].startswith(f"{company.id}:")

    second = ingest_folder(folder, company.id, settings=get_settings())
    assert second.chunks_embedded == 0
    assert sorted(second.unchanged) == files and not (second.indexed or second.updated or second.failed)
    assert len(_chunks(company.id)) == len(chunks)

    edited, deleted = "lens-coatings.md", "contact-lens-care.txt"
    (folder / edited).write_text((folder / edited).read_text() + "\n\n## Gift vouchers\nVouchers never expire.\n")
    (folder / deleted).unlink()
    third = ingest_folder(folder, company.id, sync=True, settings=get_settings())
    assert third.updated == [edited] and third.removed == [deleted]
    assert not third.indexed and not third.failed
    assert len(third.unchanged) == len(files) - 2
    assert 0 < third.chunks_embedded < first.chunks_embedded
    after = _chunks(company.id)
    assert not [m for _, m in after if m["filename"] == deleted]
    assert any("Vouchers never expire" in t for t, m in after if m["filename"] == edited)
    assert not any(key.startswith(f"{company.id}:{deleted}") for key in _docstore_keys(company.id))
    assert deleted not in _registry(company.id)
    registry = _registry(company.id)
    assert sum(count for _, count in registry.values()) == len(after)
    assert len({m["_node_content"] for _, m in after}) == len(after)  # no duplicates


def test_same_file_in_two_companies_is_two_documents(make_company, samples_dir, tmp_path, embed_model) -> None:
    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    folder.mkdir()
    shutil.copy(samples_dir / "brightsight-optical" / "contact-lens-care.txt", folder)
    a, b = make_company(), make_company()
    ra, rb = ingest_folder(folder, a.id, settings=get_settings()), ingest_folder(folder, b.id, settings=get_settings())
    assert ra.indexed == rb.indexed == ["contact-lens-care.txt"]
    assert ra.chunks_embedded == rb.chunks_embedded > 0
    # Removing it from one company leaves the other untouched.
    (folder / "contact-lens-care.txt").unlink()
    assert ingest_folder(folder, a.id, sync=True, settings=get_settings()).removed == ["contact-lens-care.txt"]
    assert _chunks(a.id) == [] and _docstore_keys(a.id) == set()
    assert len(_chunks(b.id)) == rb.chunks_embedded and _docstore_keys(b.id)


def test_bad_files_fail_individually_and_leave_nothing(company, tmp_path, embed_model) -> None:
    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "good.md").write_text("# Opening hours\nWe open at nine on weekdays.\n")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "junk.txt").write_bytes(os.urandom(2048))
    (folder / "latin1.txt").write_bytes("Caf\xe9 opening hours: 9am".encode("latin-1"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage without xref\n")
    (folder / "notpdf.pdf").write_bytes(b"hello")
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n")
    report = ingest_folder(folder, company.id, settings=get_settings())
    codes = {f.source_key: f.code for f in report.failed}
    assert report.indexed == ["good.md"]
    assert codes == {"empty.txt": "EMPTY_FILE", "junk.txt": "BINARY_CONTENT", "latin1.txt": "NOT_UTF8",
                     "broken.pdf": "CORRUPTED_PDF", "notpdf.pdf": "CORRUPTED_PDF",
                     "broken.docx": "CORRUPTED_DOCX", "image.png": "UNSUPPORTED_FILE_TYPE"}
    assert all(f.reason for f in report.failed)
    assert "failed" in report.summary() and "NOT_UTF8" in report.summary()
    assert {m["filename"] for _, m in _chunks(company.id)} == {"good.md"}
    assert set(_registry(company.id)) == {"good.md"}


def test_missing_folder_and_unknown_company(company, tmp_path) -> None:
    from core.errors import ServiceError
    from indexing.folder import ingest_folder

    with pytest.raises(ServiceError) as missing:
        ingest_folder(tmp_path / "nope", company.id, settings=get_settings())
    assert missing.value.code == "FOLDER_NOT_FOUND"
    with pytest.raises(ServiceError) as unknown:
        ingest_folder(tmp_path, "no-such-company", settings=get_settings())
    assert unknown.value.code == "COMPANY_NOT_FOUND"


def test_sigkill_half_way_then_rerun_converges(make_company, samples_dir, tmp_path, database, embed_model) -> None:
    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    folder.mkdir()
    source = samples_dir / "clearview-eyecare"
    for name in sorted(os.listdir(source))[:10]:
        shutil.copy(source / name, folder)
    killed, reference = make_company(), make_company()

    env = {**os.environ, "INGEST_BATCH_CHARS": "3000"}  # many small pipeline runs: a real "half-way"
    proc = subprocess.Popen([sys.executable, "-m", "app", "ingest", str(folder), "--company", killed.slug],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = [s for s, _ in _registry(killed.id).values() if s == "indexed"]
            if len(done) >= 2 and proc.poll() is None:
                break
            if proc.poll() is not None:
                pytest.fail(f"ingest ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("ingest did not make progress")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = _registry(killed.id)
    assert len(partial) < 10 or any(s != "indexed" for s, _ in partial.values())

    rerun = ingest_folder(folder, killed.id, settings=get_settings())
    assert not rerun.failed
    whole = ingest_folder(folder, reference.id, settings=get_settings())
    # the rerun counts the chunks it wrote, also those whose vectors the killed run had already made
    finished_before = sum(count for status, count in partial.values() if status == "indexed")
    assert rerun.chunks_written == whole.chunks_written - finished_before > 0, rerun.summary()
    assert f"{rerun.chunks_written:,} chunks" in rerun.summary()
    assert _per_document(killed.id) == _per_document(reference.id)
    assert sorted(_registry(killed.id).values()) == sorted(_registry(reference.id).values())
    assert len(_docstore_keys(killed.id)) == len(_docstore_keys(reference.id))
    # Idempotent afterwards too.
    assert ingest_folder(folder, killed.id, settings=get_settings()).chunks_embedded == 0

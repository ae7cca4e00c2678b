"""Bounded extraction: a small zip-based document that unpacks to a huge one, or a PDF with more
text than the limit, is refused with 413 EXTRACTION_TOO_LARGE over HTTP and reported failed by a
folder ingest, before anything is embedded or stored."""

from __future__ import annotations

import functools
import io
import struct
import time
import zipfile
from pathlib import Path

import pytest

from core.settings import get_settings
from indexing.readers import ExtractionLimits, IngestError, check_container, read_parts

SMALL = ExtractionLimits(max_expanded_bytes=1024 * 1024, max_text_chars=1000)


def _docx(document_xml: bytes, *, extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal Word document (what docx2txt reads: word/document.xml), deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", b"<Types/>")
        archive.writestr("word/document.xml", document_xml)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _paragraphs(text: str, repeat: int = 1) -> bytes:
    ns = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    para = f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>".encode()
    return f'<w:document xmlns:w="{ns}"><w:body>'.encode() + para * repeat + b"</w:body></w:document>"


def _bomb(expanded_mb: int) -> bytes:
    """A Word document a few hundred KB big whose XML unpacks to `expanded_mb` MB."""
    return _docx(_paragraphs("lens " * 200, repeat=expanded_mb * 1024 * 1024 // 1040))


def _lying(data: bytes, declared: int) -> bytes:
    """The same archive with every member claiming to unpack to `declared` bytes."""
    patched = bytearray(data)
    position = patched.find(b"PK\x01\x02")
    while position != -1:  # central directory entries: uncompressed size at +24
        struct.pack_into("<I", patched, position + 24, declared)
        position = patched.find(b"PK\x01\x02", position + 4)
    position = patched.find(b"PK\x03\x04")
    while position != -1:  # local headers: uncompressed size at +22
        struct.pack_into("<I", patched, position + 22, declared)
        position = patched.find(b"PK\x03\x04", position + 4)
    return bytes(patched)


def test_a_normal_docx_is_read() -> None:
    parts = read_parts("guide.docx", _docx(_paragraphs("Varifocal lenses take two weeks to get used to.")),
                       SMALL)
    assert [p.text for p in parts] == ["Varifocal lenses take two weeks to get used to."]


def test_an_expanding_docx_is_refused_by_its_declared_size() -> None:
    bomb = _bomb(3)
    assert len(bomb) < 64 * 1024  # 3 MB of XML in a few KB
    with pytest.raises(IngestError) as refused:
        read_parts("bomb.docx", bomb, SMALL)
    assert refused.value.status_code == 413 and refused.value.code == "EXTRACTION_TOO_LARGE"
    assert "MAX_EXPANDED_MB" in refused.value.message


def test_many_members_that_each_stay_small_still_count_together() -> None:
    members = {f"word/media/part{i}.xml": b"a" * 200_000 for i in range(8)}  # 1.6 MB in total
    with pytest.raises(IngestError) as refused:
        check_container("parts.docx", _docx(_paragraphs("hello"), extra=members), SMALL)
    assert refused.value.code == "EXTRACTION_TOO_LARGE"


def test_a_docx_whose_sizes_lie_is_never_unpacked_past_what_it_declares() -> None:
    liar = _lying(_bomb(3), declared=100)
    started = time.perf_counter()
    with pytest.raises(IngestError) as refused:  # declared sizes are small: the stream stops at them...
        check_container("liar.docx", liar, SMALL)
    assert refused.value.status_code == 422 and refused.value.code == "CORRUPTED_DOCX"  # ...and the CRC fails
    with pytest.raises(IngestError) as refused:
        read_parts("liar.docx", liar, SMALL)
    assert refused.value.code == "CORRUPTED_DOCX"
    assert time.perf_counter() - started < 5


def _prefixed_bomb(expanded_mb: int, prefix: bytes = b"\x00" * 8) -> bytes:
    """A Word document whose text is one word but which unpacks to `expanded_mb` MB (a member of
    zeros no reader looks at), behind bytes that hide the "PK" signature: zipfile (and so docx2txt)
    opens it all the same, as it would a self-extracting archive."""
    return prefix + _zeros_docx(expanded_mb)


@functools.cache
def _zeros_docx(expanded_mb: int) -> bytes:
    return _docx(_paragraphs("hello"), extra={"word/media/zeros.bin": bytes(expanded_mb * 1024 * 1024)})


def test_a_bomb_behind_prefixed_bytes_is_still_refused() -> None:
    bomb = _prefixed_bomb(3)
    assert not bomb.startswith(b"PK") and zipfile.ZipFile(io.BytesIO(bomb)).namelist()  # zipfile opens it
    for check in (check_container, read_parts):
        with pytest.raises(IngestError) as refused:
            check("bomb.docx", bomb, SMALL)
        assert refused.value.status_code == 413 and "MAX_EXPANDED_MB" in refused.value.message


def test_a_file_that_zipfile_opens_is_bounded_whatever_it_is_called() -> None:
    with pytest.raises(IngestError) as refused:
        check_container("report.pdf", _prefixed_bomb(3, prefix=b"%PDF-1.7\n"), SMALL)
    assert refused.value.status_code == 413


@pytest.mark.parametrize("data", [b"Just some text, named .docx.", b"PK\x03\x04" + b"not an archive" * 10,
                                  b"\x00" * 8 + b"PK\x05\x06" + b"\x00" * 4])
def test_a_docx_that_is_not_an_archive_is_refused_before_any_reader(data: bytes) -> None:
    with pytest.raises(IngestError) as refused:
        check_container("fake.docx", data, SMALL)
    assert refused.value.status_code == 422 and refused.value.code == "CORRUPTED_DOCX"
    check_container("notes.txt", data, SMALL)  # a file not named as an archive is left to its own reader


def test_docx_text_past_the_limit_is_refused() -> None:
    many_words = _docx(_paragraphs("progressive lenses " * 100))  # ~1,900 characters, 2 KB of XML
    with pytest.raises(IngestError) as refused:
        read_parts("long.docx", many_words, SMALL)
    assert refused.value.status_code == 413 and "MAX_EXTRACTED_CHARS" in refused.value.message


def test_pdf_text_past_the_limit_is_refused(samples_dir: Path) -> None:
    data = (samples_dir / "brightsight-optical" / "price-list-2026.pdf").read_bytes()
    assert read_parts("prices.pdf", data, ExtractionLimits(1 << 30, 10_000_000))  # the control
    with pytest.raises(IngestError) as refused:
        read_parts("prices.pdf", data, ExtractionLimits(1 << 30, 200))
    assert refused.value.status_code == 413 and refused.value.code == "EXTRACTION_TOO_LARGE"


@pytest.mark.parametrize("bomb", [_bomb, _prefixed_bomb], ids=["zip", "zip-behind-a-prefix"])
def test_folder_ingest_reports_the_expanding_docx_failed(company, tmp_path: Path, embed_model, bomb) -> None:
    from indexing.folder import ingest_folder

    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "good.md").write_text("# Opening hours\nWe open at nine on weekdays.\n")
    (folder / "bomb.docx").write_bytes(bomb(110))
    report = ingest_folder(folder, company.id, settings=get_settings())
    assert report.indexed == ["good.md"]
    assert {f.source_key: f.code for f in report.failed} == {"bomb.docx": "EXTRACTION_TOO_LARGE"}
    assert "EXTRACTION_TOO_LARGE" in report.summary()


# past the default MAX_EXPANDED_MB=100; the 600 KB ones are over UPLOAD_INLINE_MAX_KB, so they would be queued
@pytest.mark.parametrize("bomb", [lambda: _bomb(110),
                                  lambda: _prefixed_bomb(110, prefix=b"\x00" * 8 + bytes(64 * 1024)),
                                  lambda: _prefixed_bomb(110, prefix=b"\x00" * 8 + bytes(600 * 1024))],
                         ids=["zip", "zip-behind-64-kb", "zip-behind-600-kb"])
def test_upload_of_an_expanding_docx_gets_413_and_stores_nothing(client, company, make_user, bomb) -> None:
    _, admin = make_user(company, "admin")
    files = [("files", ("bomb.docx", io.BytesIO(bomb()), "application/octet-stream"))]
    response = client.post("/api/documents", headers=admin, files=files)
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["code"] == "EXTRACTION_TOO_LARGE" and body["request_id"]
    assert client.get("/api/documents", headers=admin).json()["total"] == 0


def test_upload_of_a_docx_that_is_not_an_archive_gets_422_even_when_it_would_be_queued(client, company,
                                                                                      make_user) -> None:
    _, admin = make_user(company, "admin")
    fake = b"Not a Word document. " * 20_000  # ~400 KB: past UPLOAD_INLINE_MAX_KB
    files = [("files", ("fake.docx", io.BytesIO(fake), "application/octet-stream"))]
    response = client.post("/api/documents", headers=admin, files=files)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "CORRUPTED_DOCX" and body["request_id"]
    assert client.get("/api/documents", headers=admin).json()["total"] == 0

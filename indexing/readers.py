"""Turn one file's bytes into text parts with LlamaIndex's file readers, or a clear error.

Every input is checked before a reader sees it (name, size, emptiness, binary junk,
encoding), because the readers themselves either crash with library errors or, worse,
index garbage. A file becomes one or more *parts* (PDF pages, Markdown sections); each
part is one LlamaIndex Document in the pipeline, so an edit to one page re-embeds only it.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ServiceError
from core.settings import Settings
from core.terminal import plural

MAX_NAME_LENGTH = 512
MAX_ZIP_MEMBERS = 10_000  # a real .docx has a few dozen; thousands of entries is a bomb's trick
# Formats that are zip archives by definition, with the code a file refused as one gets: a file
# named so that is not a readable archive is refused up front (not queued to fail in a worker).
ZIP_FORMATS = {".docx": "CORRUPTED_DOCX"}
_READ_CHUNK = 1 << 20


class IngestError(ServiceError):
    """A file that cannot be indexed; `code` says why, per file, in a batch."""

    status_code = 422
    code = "INVALID_DOCUMENT"


@dataclass(frozen=True)
class ExtractionLimits:
    """How much a file may become once unpacked: a 400 KB .docx can hold 400 MB of XML, and a
    small PDF can hold more text than any plain upload could carry."""

    max_expanded_bytes: int
    max_text_chars: int

    @classmethod
    def of(cls, settings: Settings) -> ExtractionLimits:
        return cls(max_expanded_bytes=settings.max_expanded_mb * 1024 * 1024,
                   max_text_chars=settings.max_extracted_chars)


def _too_large(message: str) -> IngestError:
    return IngestError(message, code="EXTRACTION_TOO_LARGE", status_code=413)


def _check_text_size(name: str, chars: int, limits: ExtractionLimits) -> None:
    if chars > limits.max_text_chars:
        raise _too_large(f"{name!r} holds more than {limits.max_text_chars:,} characters of text "
                         "(MAX_EXTRACTED_CHARS); split it into smaller files.")


def is_zip_container(data: bytes) -> bool:
    """Whether Python's zipfile (what docx2txt opens a .docx with) would read `data` as an archive.

    Asked of zipfile itself, not of the first bytes: zipfile finds the archive by its end record
    and accepts any bytes in front of it (self-extracting archives), so a bomb behind eight NUL
    bytes does not start with "PK" and yet unpacks all the same.
    """
    return zipfile.is_zipfile(io.BytesIO(data))


def check_container(name: str, data: bytes, limits: ExtractionLimits) -> None:
    """Refuse (413) a zip-based file whose unpacked size passes the limit, before any reader opens it.

    Two checks, because the first can lie: the sizes the archive declares, then the bytes
    that actually come out of decompressing every member, counted as they stream and stopped
    at the limit. A file named as a zip-based format (ZIP_FORMATS) that is not a readable,
    intact archive is refused (422) too: its reader could do nothing with it. Any other file
    that zipfile happens to open is bounded the same way; if it is damaged, its own reader decides.
    """
    corrupt_code = ZIP_FORMATS.get(Path(name).suffix.lower())
    if not is_zip_container(data):
        if corrupt_code:
            raise IngestError(f"{name!r} is not a valid {Path(name).suffix.lower()} file "
                              "(it is not a readable zip archive).", code=corrupt_code)
        return
    message = (f"{name!r} unpacks to more than {limits.max_expanded_bytes // (1024 * 1024)} MB "
               "(MAX_EXPANDED_MB); a document that large is refused.")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise _too_large(f"{name!r} is an archive of more than {plural(MAX_ZIP_MEMBERS, 'file')}.")
            if sum(member.file_size for member in members) > limits.max_expanded_bytes:
                raise _too_large(message)
            expanded = 0
            for member in members:
                with archive.open(member) as stream:
                    while chunk := stream.read(_READ_CHUNK):
                        expanded += len(chunk)
                        if expanded > limits.max_expanded_bytes:
                            raise _too_large(message)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
            RuntimeError) as exc:
        # Damaged, encrypted, or a member that does not hold what it declares. What was unpacked
        # is bounded already: zipfile never decompresses a member past its declared size, and
        # those sizes were checked above.
        if corrupt_code:
            raise IngestError(f"{name!r} is a damaged {Path(name).suffix.lower()} file "
                              "(its zip archive cannot be read).", code=corrupt_code) from exc
        return


@dataclass
class Part:
    """A piece of a file with the location metadata the reader knows (page or section)."""

    text: str
    metadata: dict[str, str] = field(default_factory=dict)


def safe_source_key(name: str) -> str:
    """Validate a client- or folder-supplied relative name and return its normal form.

    Absolute paths, `..` components, drive letters, backslashes and control characters
    are refused: the name becomes our source key and is shown back to users.
    """
    if not name or not name.strip():
        raise IngestError("The file has no name.", code="INVALID_FILENAME")
    if len(name) > MAX_NAME_LENGTH:
        raise IngestError(f"The file name is longer than {MAX_NAME_LENGTH} characters.", code="INVALID_FILENAME")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise IngestError("The file name contains control characters.", code="INVALID_FILENAME")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise IngestError(f"{name!r} is an absolute or Windows path; send a plain file name.", code="UNSAFE_FILENAME")
    parts = name.split("/")
    if any(part in ("..", "") for part in parts):
        raise IngestError(f"{name!r} contains '..' or empty path segments; send a plain file name.",
                          code="UNSAFE_FILENAME")
    normal = posixpath.normpath(name)
    if normal.startswith("../") or normal == ".." or normal == ".":
        raise IngestError(f"{name!r} points outside the knowledge base.", code="UNSAFE_FILENAME")
    return normal


def check_extension(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in READERS:
        raise IngestError(
            f"{Path(name).name!r}: unsupported file type {suffix or '(none)'}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}.",
            code="UNSUPPORTED_FILE_TYPE", status_code=415)
    return suffix


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > max(1, len(sample) // 20)


def decode_text(name: str, data: bytes) -> str:
    if _looks_binary(data):
        raise IngestError(f"{name!r} is named as text but contains binary data.", code="BINARY_CONTENT")
    if b"\x00" in data:  # past the sniffed sample too: Postgres text cannot hold NUL
        raise IngestError(f"{name!r} is named as text but contains NUL bytes (binary data).", code="BINARY_CONTENT")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{name!r} is not UTF-8 text (invalid byte at position {exc.start}); save it as UTF-8 and retry.",
            code="NOT_UTF8") from exc


# Joins a section's heading path in Part metadata ("Lens coatings > Anti-reflective coating");
# the parser is given a separator no heading contains, so a "/" in a heading stays in it.
SECTION_PATH_SEPARATOR = " > "
_PARSER_SEPARATOR = "\x1f"


_MD_HEADING_LINE = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _markdown_parts(text: str) -> list[Part]:
    """One part per heading's section, as MarkdownReader cuts them, each knowing its heading
    path (MarkdownNodeParser keeps the stack of enclosing headings; MarkdownReader drops levels)."""
    from llama_index.core import Document as LIDocument
    from llama_index.core.node_parser import MarkdownNodeParser
    from llama_index.readers.file import MarkdownReader

    reader = MarkdownReader()
    text = reader.remove_images(reader.remove_hyperlinks(text))
    parser = MarkdownNodeParser(include_prev_next_rel=False, header_path_separator=_PARSER_SEPARATOR)
    parts = []
    for node in parser.get_nodes_from_documents([LIDocument(text=text)]):
        first, _, body = node.get_content().partition("\n")
        heading = _MD_HEADING_LINE.match(first)
        if heading is None:
            parts.append(Part(node.get_content()))
            continue
        header = heading.group(1).strip()
        enclosing = [h for h in node.metadata.get("header_path", "").split(_PARSER_SEPARATOR) if h]
        path = SECTION_PATH_SEPARATOR.join([*enclosing, header])
        parts.append(Part(f"{header}\n{body.strip()}", {"section": header[:200], "section_path": path[:400]}))
    return parts


# Part metadata of text made of one record per line (a CSV's rows): chunks are cut between lines
# only (indexing.chunking), so no row is split across two chunks.
ROWS_KEY = "layout"


def _csv_parts(text: str) -> list[Part]:
    # Hand-written on purpose: LlamaIndex's CSV readers join bare cell values, so a row
    # such as "Anti-reflective, Coating, 35.00" loses which number is the price once it is
    # split away from the header. Each row here carries its column names.
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if not body:
        return [Part(", ".join(header))]
    lines = []
    for row in body:
        cells = [f"{h.strip()}: {v.strip()}" for h, v in zip(header, row, strict=False) if v.strip()]
        if cells:
            lines.append("; ".join(cells))
    return [Part("\n".join(lines), {ROWS_KEY: "rows"})]


def _with_temp_file(suffix: str, data: bytes, load: object) -> list:
    with tempfile.TemporaryDirectory(prefix="ils-rag-read-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        return load(path)  # type: ignore[operator]


def _html_parts(text: str) -> list[Part]:
    from llama_index.readers.file import HTMLTagReader

    docs = _with_temp_file(".html", text.encode("utf-8"), HTMLTagReader(tag="body").load_data)
    if not docs:  # a fragment without <body>
        from bs4 import BeautifulSoup

        return [Part(BeautifulSoup(text, "html.parser").get_text("\n"))]
    return [Part(doc.text) for doc in docs]


def _pdf_parts(name: str, data: bytes, limits: ExtractionLimits) -> list[Part]:
    # pypdf page by page, as LlamaIndex's PDFReader does (same text, same page labels), but
    # counting as it goes: PDFReader extracts every page before anyone could look at the total.
    import pypdf

    if not data.lstrip().startswith(b"%PDF-"):
        raise IngestError(f"{name!r} is not a PDF (no %PDF header).", code="CORRUPTED_PDF")
    parts: list[Part] = []
    total = 0
    try:
        pdf = pypdf.PdfReader(io.BytesIO(data))
        for index, page in enumerate(pdf.pages):
            text = page.extract_text() or ""
            total += len(text)
            _check_text_size(name, total, limits)
            parts.append(Part(text, {"page_label": str(pdf.page_labels[index])}))
    except IngestError:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        raise IngestError(f"{name!r} is a damaged PDF that cannot be read.", code="CORRUPTED_PDF") from exc
    return parts


def _docx_parts(name: str, data: bytes, limits: ExtractionLimits) -> list[Part]:
    from llama_index.readers.file import DocxReader

    check_container(name, data, limits)  # bounds what docx2txt will unpack and parse
    try:
        docs = _with_temp_file(".docx", data, DocxReader().load_data)
    except Exception as exc:  # docx2txt raises BadZipFile, KeyError...
        raise IngestError(f"{name!r} is a damaged Word document that cannot be read.",
                          code="CORRUPTED_DOCX") from exc
    _check_text_size(name, sum(len(doc.text or "") for doc in docs), limits)
    return [Part(doc.text or "") for doc in docs]


def read_parts(name: str, data: bytes, limits: ExtractionLimits) -> list[Part]:
    """Parse `data` (the contents of file `name`) into non-empty text parts.

    Raises IngestError with a specific code for every kind of bad input, 413
    EXTRACTION_TOO_LARGE when the file unpacks to more than `limits` allow (`ExtractionLimits.of(settings)`).
    """
    suffix = check_extension(name)
    label = Path(name).name
    if not data or not data.strip():
        raise IngestError(f"{label!r} is empty.", code="EMPTY_FILE")
    parts = READERS[suffix](label, data, limits)
    # PDF/DOCX extraction can yield NUL characters, which Postgres text cannot store.
    parts = [Part(p.text.replace("\x00", "").strip(), p.metadata) for p in parts
             if p.text and p.text.replace("\x00", "").strip()]
    if not parts:
        raise IngestError(f"{label!r} contains no extractable text (a scanned PDF needs OCR first).",
                          code="NO_TEXT")
    return parts


# -- the formats ------------------------------------------------------------------------------
Reader = Callable[[str, bytes, ExtractionLimits], list[Part]]  # (file name, bytes, limits) -> parts


def _decoded(parse: Callable[[str], list[Part]]) -> Reader:
    """A reader of a UTF-8 text format: the bytes are checked and decoded (decode_text) first."""
    return lambda name, data, limits: parse(decode_text(name, data))


def _plain_parts(text: str) -> list[Part]:
    return [Part(text)]


# The text formats, by suffix: parsers of decoded text.
TEXT_PARSERS: dict[str, Callable[[str], list[Part]]] = {
    ".md": _markdown_parts,
    ".markdown": _markdown_parts,
    ".txt": _plain_parts,
    ".html": _html_parts,
    ".htm": _html_parts,
    ".csv": _csv_parts,
}
# Every supported file type, by suffix: a new format is one entry here (help texts and the
# unsupported-type error list what is here).
READERS: dict[str, Reader] = {
    **{suffix: _decoded(parse) for suffix, parse in TEXT_PARSERS.items()},
    ".pdf": _pdf_parts,
    ".docx": _docx_parts,
}


def text_parts(name: str, text: str) -> list[Part]:
    """Parts of the text of file `name` as an upload of it would be parsed (an evaluation corpus
    holds text formats as their files' text, and other formats as extracted text)."""
    parse = TEXT_PARSERS.get(Path(name.lower()).suffix, _plain_parts)
    return [part for part in parse(text) if part.text.strip()]
SUPPORTED_EXTENSIONS = tuple(sorted(READERS))

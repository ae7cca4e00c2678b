"""Chunks that know their place: document title and heading path, kept apart from the chunk
text, reaching the embedding and the text-search index (CHUNK_CONTEXT=both, the default)."""

from __future__ import annotations

import io

import sqlalchemy as sa

from core.settings import get_settings
from indexing.chunk_context import context_metadata, context_of, document_title, embedded_keys
from indexing.readers import ExtractionLimits, Part, read_parts

GUIDE = b"""# Gift Vouchers

Vouchers can be bought at reception.

## Expiry

They never run out, and a part-used one keeps its balance.

### Lost / stolen

Bring the receipt and we reissue it.
"""


def _files(name: str, data: bytes) -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    return [("files", (name, io.BytesIO(data), "application/octet-stream"))]


def _chunks(company_id: str) -> list[tuple[str, dict, str]]:
    from core.db.engines import get_engine
    from core.db.tenant_scope import tenant

    with tenant(company_id), get_engine().connect() as connection:
        return [(row.text, row.metadata_, row.tsv) for row in connection.execute(sa.text(
            "SELECT text, metadata_, text_search_tsv::text AS tsv FROM data_chunks WHERE company_id = :c "
            "ORDER BY id"), {"c": company_id})]


def test_markdown_parts_carry_their_heading_path() -> None:
    parts = read_parts("vouchers.md", GUIDE, ExtractionLimits.of(get_settings()))
    assert [p.metadata.get("section_path") for p in parts] == [
        "Gift Vouchers", "Gift Vouchers > Expiry", "Gift Vouchers > Expiry > Lost / stolen"]
    assert parts[2].text == "Lost / stolen\nBring the receipt and we reissue it."  # a "/" stays in its heading
    assert document_title("vouchers.md", parts) == "Gift Vouchers"
    assert context_of("Gift Vouchers", parts[2]) == "Gift Vouchers > Expiry > Lost / stolen"  # the title once


def test_title_falls_back_to_the_file_name_and_modes_place_the_context() -> None:
    part = Part("Wash your hands first.")
    assert document_title("care/contact-lens_care.txt", [part]) == "Contact lens care"
    assert document_title("x.txt", [Part("a", {"title": "Given Title"})]) == "Given Title"
    assert "search_context" not in context_metadata("embedding", "T", part)
    assert context_metadata("text", "T", part)["search_context"] == "T"
    assert embedded_keys("text") == set() and embedded_keys("both") == {"context"}
    assert context_metadata("none", "T", part) == {"document_title": "T", "context": "T"}


def test_context_is_searchable_but_never_shown(client, company, make_user) -> None:
    _, admin = make_user(company, "admin")
    assert client.post("/api/documents", headers=admin, files=_files("vouchers.md", GUIDE)).status_code == 200
    chunks = _chunks(company.id)
    lost = next(c for c in chunks if c[0].startswith("Lost / stolen"))
    assert lost[1]["context"] == "Gift Vouchers > Expiry > Lost / stolen"
    assert "voucher" not in lost[0].lower() and "'voucher'" in lost[2]  # indexed from the context only

    # A question naming only the document's subject finds the section that never says it.
    response = client.post("/api/rag/search", headers=admin, json={
        "query": "stolen voucher", "mode": "text", "threshold": -1, "limit": 3})
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert top["content"].startswith("Lost / stolen") and "Gift Vouchers >" not in top["content"]


def test_hostile_headings_and_names_are_data_on_first_call_and_replace(client, company, make_user) -> None:
    """Headings and file names travel into metadata (and the context into the tsvector): bound
    values, on the first upload and on the replace that deletes the old chunks."""
    _, admin = make_user(company, "admin")
    name = "x'; DROP TABLE data_chunks; --.md"
    hostile = b"# Title'); DELETE FROM documents; --\n\n## \\' OR 1=1 --\n\nBody text about frames.\n"
    ids = set()
    for attempt in range(2):  # the second upload replaces the first: its old chunks are deleted
        response = client.post("/api/documents", headers=admin, files=_files(name, hostile + b"x" * attempt))
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert result["status"] == "indexed" and result["document"]["size_bytes"] == len(hostile) + attempt
        ids.add(result["document"]["document_id"])
    assert len(ids) == 1
    chunks = _chunks(company.id)
    assert len(chunks) == result["document"]["chunk_count"] and chunks[-1][0].endswith("frames.\nx")
    contexts = {c[1]["context"] for c in chunks}
    assert "Title'); DELETE FROM documents; -- > \\' OR 1=1 --" in contexts
    listing = client.get("/api/documents", headers=admin).json()
    assert listing["total"] == 1


def test_evaluation_parses_corpus_files_as_uploads() -> None:
    """The evaluation indexes a corpus document as an upload of its file would be: a Markdown
    file by sections, a CSV by rows (one part marked as rows), the corpus title on the first part."""
    from evals.beir import CorpusDoc
    from evals.runner import corpus_parts
    from indexing.readers import ROWS_KEY

    guide = corpus_parts(CorpusDoc("p/vouchers.md", "Gift Vouchers", GUIDE.decode()), get_settings())
    assert len(guide) == 3 and guide[0].metadata["title"] == "Gift Vouchers"
    assert guide[2].metadata["section_path"].endswith("Expiry > Lost / stolen")
    table = corpus_parts(CorpusDoc("p/prices.csv", "Prices", "item,price\nLens,35.00\nCase,5.00\n"), get_settings())
    assert len(table) == 1 and table[0].metadata[ROWS_KEY] == "rows"
    assert table[0].text == "item: Lens; price: 35.00\nitem: Case; price: 5.00"


def test_csv_rows_are_never_split_across_chunks(embed_model) -> None:
    from llama_index.core import Document as LIDocument

    from indexing.pipeline import chunk_splitter

    rows = "\n".join(f"item: Lens {n}; category: Coatings; notes: Grey, brown, green and {n} other tints, "
                     f"each fitted, checked, and boxed" for n in range(200))
    parts = read_parts("prices.csv", ("item,category,notes\n" + "\n".join(
        f'Lens {n},Coatings,"Grey, brown, green and {n} other tints, each fitted, checked, and boxed"'
        for n in range(200))).encode(), ExtractionLimits.of(get_settings()))
    assert parts[0].text == rows
    chunks = chunk_splitter().get_nodes_from_documents([LIDocument(text=parts[0].text, metadata=parts[0].metadata)])
    assert len(chunks) > 3
    lines = set(rows.split("\n"))
    assert all(line in lines for chunk in chunks for line in chunk.get_content().split("\n"))

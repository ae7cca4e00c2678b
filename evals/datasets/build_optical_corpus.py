"""Build evals/datasets/optical/corpus.jsonl from the sample knowledge base in samples/.

One corpus document per sample FILE, in BEIR corpus format plus a `company` field:

    {"_id": "<practice-slug>/<filename>", "title": ..., "text": ..., "company": "<practice-slug>"}

Every sub-folder of samples/ is one practice; its folder name is the company slug. The
folder's files are read as follows:

- .md, .txt, .csv: UTF-8 text as it is on disk
- .html: BeautifulSoup(...).get_text("\n", strip=True)
- .pdf: pypdf, the pages' extract_text() joined by a blank line

Titles: the first "# " heading for Markdown, <title> for HTML, the /Title metadata for PDF,
the leading upper-case heading line(s) for plain text, and the file name (hyphens turned
into spaces) for CSV or anything without a heading.

The output is deterministic: practices and files are sorted, keys are written in a fixed
order, and nothing depends on the clock or the environment. Re-run it whenever samples/
changes (the queries and qrels in the same folder are hand-written and are NOT regenerated):

    /work/main/.venv/bin/python evals/datasets/build_optical_corpus.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bs4 import BeautifulSoup
from pypdf import PdfReader

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLES = ROOT / "samples"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "optical" / "corpus.jsonl"


def _title_from_filename(path: Path) -> str:
    stem = path.stem.replace("-", " ").replace("_", " ").strip()
    return stem[:1].upper() + stem[1:]


def _markdown(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip(), text
    return _title_from_filename(path), text


def _plain_text(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    heading: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            if heading:
                break
            continue
        # A heading line is written in capitals (e.g. "BRIGHTSIGHT OPTICAL - RECEPTION TELEPHONE GUIDE").
        if any(ch.isalpha() for ch in line) and line == line.upper():
            heading.append(line)
            continue
        break
    return (" - ".join(heading) if heading else _title_from_filename(path)), text


def _csv(path: Path) -> tuple[str, str]:
    return _title_from_filename(path), path.read_text(encoding="utf-8")


def _html(path: Path) -> tuple[str, str]:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    title = soup.title.get_text(strip=True) if soup.title and soup.title.get_text(strip=True) else ""
    text = soup.get_text("\n", strip=True)
    return title or _title_from_filename(path), text


def _pdf(path: Path) -> tuple[str, str]:
    reader = PdfReader(str(path))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    text = "\n\n".join(page for page in pages if page)
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    if not title:
        title = next((line.strip() for line in text.splitlines() if line.strip()), "") or _title_from_filename(path)
    return title, text


# The formats this builder reads, by suffix: its own readers rather than indexing.readers', because
# a corpus document also needs a title, which the service's readers do not extract.
READERS = {".md": _markdown, ".txt": _plain_text, ".csv": _csv, ".html": _html, ".htm": _html, ".pdf": _pdf}


def build(samples: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    practices = sorted(p for p in samples.iterdir() if p.is_dir() and not p.name.startswith("."))
    for practice in practices:
        for path in sorted(p for p in practice.iterdir() if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            if suffix not in READERS:
                print(f"skipping unsupported file {path}", file=sys.stderr)
                continue
            title, text = READERS[suffix](path)
            rows.append({"_id": f"{practice.name}/{path.name}", "title": title, "text": text.strip(),
                         "company": practice.name})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder with one sub-folder per practice")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="corpus.jsonl to write")
    args = parser.parse_args(argv)

    rows = build(args.samples)
    if not rows:
        print(f"no documents found under {args.samples}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    companies = sorted({row["company"] for row in rows})
    counts = ", ".join(f"{c}: {sum(r['company'] == c for r in rows)}" for c in companies)
    print(f"wrote {len(rows)} documents to {args.output} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

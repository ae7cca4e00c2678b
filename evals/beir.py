"""Loading BEIR-format folders: corpus.jsonl, queries.jsonl, qrels/test.tsv (graded allowed).

Two optional fields beyond BEIR, used by the bundled optical set: `company` on corpus
documents and queries (each query is evaluated inside its own company only), and `type`
on queries (reported as a breakdown).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ServiceError


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    text: str
    company: str | None = None

    @property
    def content(self) -> str:
        """Title and text joined with a space, as MTEB does."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    company: str | None = None
    type: str | None = None


@dataclass
class Dataset:
    name: str
    path: Path
    corpus: list[CorpusDoc]
    queries: list[Query]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def companies(self) -> list[str | None]:
        return sorted({doc.company for doc in self.corpus}, key=lambda c: c or "")

    def relevant(self, query_id: str) -> dict[str, int]:
        return {doc: grade for doc, grade in self.qrels.get(query_id, {}).items() if grade > 0}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ServiceError(f"{path} is missing: a BEIR folder holds corpus.jsonl, queries.jsonl and "
                           "qrels/test.tsv", code="DATASET_INVALID")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ServiceError(f"{path}:{number} is not JSON ({exc.msg})", code="DATASET_INVALID") from exc
    return rows


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise ServiceError(f"{path} is missing", code="DATASET_INVALID")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(reader, 1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise ServiceError(f"{path}:{number}: expected query-id, corpus-id, score", code="DATASET_INVALID")
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return qrels


def load_dataset(path: Path, split: str = "test") -> Dataset:
    path = Path(path)
    if not path.is_dir():
        raise ServiceError(f"dataset folder {path} does not exist", code="DATASET_NOT_FOUND")
    corpus = [CorpusDoc(id=str(row["_id"]), title=row.get("title") or "", text=row.get("text") or "",
                        company=row.get("company")) for row in _read_jsonl(path / "corpus.jsonl")]
    qrels = load_qrels(path / "qrels" / f"{split}.tsv")
    queries = [Query(id=str(row["_id"]), text=row["text"], company=row.get("company"), type=row.get("type"))
               for row in _read_jsonl(path / "queries.jsonl")]
    # BEIR convention: evaluate the queries that have judgements; sets that also list
    # unanswerable queries mark them with a company or type, and those are kept.
    queries = [q for q in queries if q.id in qrels or q.company is not None or q.type is not None]
    return Dataset(name=path.name, path=path, corpus=corpus, queries=queries, qrels=qrels)

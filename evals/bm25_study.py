"""The BM25 study: how much a chunk's title and headings should weigh in `text` search, and
whether spelling tolerance helps, on several datasets at once.

The service weighs a word of a chunk's search context (document title and heading path) when
it writes the chunk's terms (migration 0015) and corrects misspelled query words with
retrieval.spelling, so trying other weights through the service would mean re-indexing every
corpus per weight. This study instead reads, from the evaluation companies `ils-rag eval`
indexes, each active chunk's text and context lexemes (Postgres's own `english` tsvectors),
its BM25 length and the company's statistics (`bm25_corpus`, `bm25_terms`), and ranks every
query in memory with the service's formula (retrieval/bm25.py) for each setting:

- context weight 1 (plain BM25: the context counts like text), 1.5, 2 (the service), 3;
- spelling tolerance off, with the service's edit limits (`AUTO:4,7`) and with
  Elasticsearch's default (`AUTO:3,6`).

Documents rank by their best chunk, ties by chunk id, as in the evaluation. The row of the
service's own setting is checked against the service: the `text` retriever is run through
`TenantRetriever` on the same queries and its nDCG@10 printed beside it.

    .venv/bin/python -m evals.bm25_study evals/datasets/optical ../shared/datasets/scifact

writes evals/reports/bm25-study.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console

from core.db.engines import get_engine
from core.db.tenant_scope import tenant
from core.settings import Settings, get_settings
from core.terminal import wide_console
from evals.beir import Dataset, load_dataset
from evals.metrics import ndcg_at_k
from evals.report import REPORTS_DIR, write_study
from evals.runner import DOC_DEPTH, cached_embedder, index_corpus, run_queries
from retrieval.bm25 import idf
from retrieval.spelling import FUZZY_MIN_LENGTH, FUZZY_TWO_EDITS_LENGTH, nearest

WEIGHTS = (1.0, 1.5, 2.0, 3.0)
SERVICE_WEIGHT = 2.0
SPELLING: dict[str, tuple[int, int] | None] = {
    "off": None, f"AUTO:{FUZZY_MIN_LENGTH},{FUZZY_TWO_EDITS_LENGTH}": (FUZZY_MIN_LENGTH, FUZZY_TWO_EDITS_LENGTH),
    "AUTO:3,6": (3, 6)}
SERVICE_SPELLING = f"AUTO:{FUZZY_MIN_LENGTH},{FUZZY_TWO_EDITS_LENGTH}"

_CHUNKS = sa.text("""
SELECT id, metadata_->>'filename' AS document, text_search_length AS length,
       (SELECT coalesce(jsonb_object_agg(lexeme, cardinality(positions)), '{}')
        FROM unnest(to_tsvector('english', text))) AS text_tf,
       (SELECT coalesce(jsonb_object_agg(lexeme, cardinality(positions)), '{}')
        FROM unnest(to_tsvector('english', coalesce(metadata_->>'search_context', '')))) AS context_tf
FROM data_chunks WHERE company_id = :c AND is_active IS TRUE
""")


@dataclass
class Company:
    """One evaluation company's BM25 inputs: postings (lexeme -> [(chunk, text tf, context tf)])."""

    chunks: int
    avglen: float
    df: dict[str, int]
    postings: dict[str, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))
    lengths: dict[int, int] = field(default_factory=dict)
    documents: dict[int, str] = field(default_factory=dict)


def load_company(company_id: str) -> Company:
    with tenant(company_id), get_engine().connect() as connection:
        corpus = connection.execute(sa.text("SELECT chunks, total_length FROM bm25_corpus WHERE company_id = :c"),
                                    {"c": company_id}).one()
        df = dict(connection.execute(sa.text("SELECT lexeme, df FROM bm25_terms WHERE company_id = :c AND df > 0"),
                                     {"c": company_id}).tuples().all())
        company = Company(int(corpus.chunks), int(corpus.total_length) / int(corpus.chunks), df)
        for row in connection.execute(_CHUNKS, {"c": company_id}):
            company.lengths[row.id] = int(row.length)
            company.documents[row.id] = row.document
            for lexeme in set(row.text_tf) | set(row.context_tf):
                company.postings[lexeme].append((row.id, row.text_tf.get(lexeme, 0), row.context_tf.get(lexeme, 0)))
    return company


def query_lexemes(texts: list[str]) -> list[list[str]]:
    with get_engine().connect() as connection:
        return [list(connection.execute(sa.text(
            "SELECT lexeme FROM unnest(to_tsvector('english', CAST(:q AS text)))"), {"q": text}).scalars())
            for text in texts]


def rank(company: Company, lexemes: list[str], weight: float, spelling: tuple[int, int] | None,
         k1: float, b: float) -> list[str]:
    terms = {lexeme for lexeme in lexemes if company.df.get(lexeme)}
    if spelling is not None:
        for lexeme in lexemes:
            if not company.df.get(lexeme):
                corrected = nearest(lexeme, company.df.items(), spelling)
                if corrected is not None:
                    terms.add(corrected[0])
    scores: dict[int, float] = defaultdict(float)
    for lexeme in terms:
        weight_idf = idf(company.chunks, company.df[lexeme])
        for chunk, text_tf, context_tf in company.postings.get(lexeme, ()):
            tf = text_tf + weight * context_tf
            norm = k1 * (1 - b + b * company.lengths[chunk] / company.avglen)
            scores[chunk] += weight_idf * tf / (tf + norm)
    best: dict[str, tuple[float, int]] = {}
    for chunk, score in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        best.setdefault(company.documents[chunk], (score, chunk))
    return [doc for doc, _ in sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))][:DOC_DEPTH]


def study_dataset(dataset: Dataset, console: Console, settings: Settings) -> dict:
    embedder = cached_embedder(settings.data_dir.resolve() / "eval-cache", settings)
    companies = index_corpus(dataset, embedder, console, settings)
    loaded = {name: load_company(company_id) for name, company_id in companies.items()}
    judged = [q for q in dataset.queries if dataset.qrels.get(q.id)]
    lexemes = dict(zip((q.id for q in judged), query_lexemes([q.text for q in judged]), strict=True))
    rows = []
    for spelling_name, spelling in SPELLING.items():
        for weight in WEIGHTS:
            ndcg = [ndcg_at_k(rank(loaded[q.company], lexemes[q.id], weight, spelling, settings.bm25_k1,
                                   settings.bm25_b), dataset.qrels[q.id]) for q in judged]
            rows.append({"spelling": spelling_name, "context_weight": weight, "ndcg@10": sum(ndcg) / len(ndcg)})
    service = run_queries("text", judged, companies, console, settings)
    service_ndcg = [ndcg_at_k(service[q.id].doc_ids, dataset.qrels[q.id]) for q in judged]
    return {"rows": rows, "service_text_ndcg@10": sum(service_ndcg) / len(service_ndcg), "queries": len(judged)}


def markdown(study: dict) -> str:
    names = list(study["datasets"])
    lines = ["# BM25 study: context weight and spelling tolerance", "",
             "Text nDCG@10 per dataset (" + ", ".join(names) + f"); k1 {study['k1']}, b {study['b']}. The service "
             f"weighs context {SERVICE_WEIGHT:g} with spelling `{SERVICE_SPELLING}`.", "",
             "| spelling | context weight | " + " | ".join(names) + " | mean |",
             "|---|---:|" + "---:|" * (len(names) + 1)]
    first = study["datasets"][names[0]]["rows"]
    for i, row in enumerate(first):
        values = [study["datasets"][n]["rows"][i]["ndcg@10"] for n in names]
        mark = "**" if row["spelling"] == SERVICE_SPELLING and row["context_weight"] == SERVICE_WEIGHT else ""
        lines.append(f"| {row['spelling']} | {mark}{row['context_weight']:g}{mark} | "
                     + " | ".join(f"{v:.4f}" for v in values) + f" | {sum(values) / len(values):.4f} |")
    lines += ["", "The service's own `text` retriever on the same queries: " + ", ".join(
        f"{n} {study['datasets'][n]['service_text_ndcg@10']:.4f}" for n in names)
        + " (the bold row, computed here, should match it).", "", f"Study run time: {study['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path, help="BEIR-format dataset folders")
    parser.add_argument("--output", type=Path, default=REPORTS_DIR)
    args = parser.parse_args(argv)
    from core.db.checks import check_database
    from core.migrate import upgrade

    console = wide_console()  # tables whole in a pipe, as the CLI prints them
    check_database()
    upgrade()
    started = time.perf_counter()
    settings = get_settings()  # an entry point (`python -m`): the composition root of this run
    study: dict = {"k1": settings.bm25_k1, "b": settings.bm25_b, "datasets": {}}
    for path in args.datasets:
        dataset = load_dataset(path)
        console.print(f"studying {dataset.name}...")
        study["datasets"][dataset.name] = study_dataset(dataset, console, settings)
    study["seconds"] = time.perf_counter() - started
    text = markdown(study)
    write_study(args.output, "bm25-study", study, text)
    console.print(text)


if __name__ == "__main__":
    main()

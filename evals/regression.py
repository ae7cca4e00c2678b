"""The evaluation regression check run by `make test`: nDCG@10 of the default retriever on a
fixed subset of the optical set must not fall more than TOLERANCE below the recorded value.

The subset (every 4th query, both practices, every query type) and the recorded values live
in evals/baselines/optical-regression.json. Record them again after an intended change:

    .venv/bin/python -m evals.regression --record

It runs through `run_evaluation`, the same indexing and retriever code as `ils-rag eval`.
Corpus embeddings are cached under evals/.cache/ (keyed by model, runtime and text), so
only the first run on a machine embeds the corpus.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from core.settings import Settings, get_settings
from evals.beir import load_dataset
from evals.report import RetrieverResult
from evals.runner import run_evaluation

ROOT = Path(__file__).resolve().parent
DATASET = ROOT / "datasets" / "optical"
BASELINE = ROOT / "baselines" / "optical-regression.json"
CACHE_DIR = ROOT / ".cache" / "embeddings"
TOLERANCE = 0.02
EVERY = 4


@dataclass
class Baseline:
    retriever: str
    embedding_runtime: str
    query_ids: list[str]
    ndcg_at_10: float
    hit_at_5: float
    tolerance: float = TOLERANCE


def subset() -> list[str]:
    return [query.id for query in load_dataset(DATASET).queries[::EVERY]]


def load_baseline(path: Path = BASELINE) -> Baseline:
    return Baseline(**json.loads(path.read_text()))


def evaluate(query_ids: list[str], settings: Settings, retriever: str | None = None,
             console: Console | None = None) -> RetrieverResult:
    """Score `retriever` (default: SEARCH_MODE) on the given optical queries."""
    mode = retriever or settings.search_mode
    console = console or Console(quiet=True)
    report = run_evaluation(DATASET, [mode], settings=settings, query_ids=query_ids, console=console,
                            cache_dir=CACHE_DIR)
    return report.results[0]


def record(settings: Settings, path: Path = BASELINE) -> Baseline:
    from core.embeddings import embedding_runtime

    ids = subset()
    result = evaluate(ids, settings, console=Console())
    baseline = Baseline(retriever=result.retriever, embedding_runtime=embedding_runtime(), query_ids=ids,
                        ndcg_at_10=round(result.averages["ndcg@10"], 4), hit_at_5=round(result.averages["hit@5"], 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline.__dict__, indent=2) + "\n")
    return baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="measure and write the baseline file")
    args = parser.parse_args()
    from core.db.checks import check_database
    from core.migrate import upgrade

    check_database()
    upgrade()
    settings = get_settings()  # an entry point (`python -m`): the composition root of this run
    if args.record:
        baseline = record(settings)
        print(f"recorded {BASELINE}: {baseline.retriever} nDCG@10 {baseline.ndcg_at_10} "
              f"hit@5 {baseline.hit_at_5} on {len(baseline.query_ids)} queries")
    else:
        baseline = load_baseline()
        result = evaluate(baseline.query_ids, settings, baseline.retriever)
        print(f"{baseline.retriever}: nDCG@10 {result.averages['ndcg@10']:.4f} (baseline {baseline.ndcg_at_10})")


if __name__ == "__main__":
    main()

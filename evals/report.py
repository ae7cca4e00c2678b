"""Evaluation reports: a terminal table, and JSON + Markdown + a PNG chart on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.metrics import METRICS

REPORTS_DIR = Path(__file__).resolve().parent / "reports"


@dataclass
class RetrieverResult:
    retriever: str
    averages: dict[str, float]
    latency_ms_p50: float
    latency_ms_p95: float
    queries: int
    unanswerable: int = 0
    unanswerable_with_hits: int = 0  # unanswerable queries with any result at or above the threshold
    threshold: float | None = None
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_study: list[dict[str, float]] = field(default_factory=list)
    best_threshold: float | None = None  # best F1 of the threshold study
    recommended_threshold: float | None = None  # highest threshold keeping RECALL_FLOOR (runner)
    per_query: list[dict[str, object]] = field(default_factory=list)


@dataclass
class EvalReport:
    dataset: str
    embedding_model: str
    corpus_docs: int
    chunks: int
    results: list[RetrieverResult]
    embedding_runtime: str = ""
    default_mode: str = ""
    search_threshold: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    notes: list[str] = field(default_factory=list)


SHORT = {"hit@1": "hit@1", "hit@5": "hit@5", "mrr@10": "MRR@10", "ndcg@10": "nDCG@10", "recall@10": "R@10",
         "recall@100": "R@100", "precision@5": "P@5"}


def _unanswered(result: RetrieverResult) -> str:
    return f"{result.unanswerable_with_hits}/{result.unanswerable}" if result.unanswerable else "-"


def _title(report: EvalReport) -> str:
    queries = report.results[0].queries if report.results else 0
    unanswerable = report.results[0].unanswerable if report.results else 0
    return (f"{report.dataset}: {report.corpus_docs} docs, {report.chunks} chunks, {queries} judged queries"
            + (f" + {unanswerable} unanswerable" if unanswerable else "")
            + f" · {report.embedding_model} ({report.embedding_runtime})")


def winner(report: EvalReport) -> tuple[RetrieverResult, RetrieverResult | None] | None:
    """The best service mode on nDCG@10 and the runner-up (Jaccard is the floor, not a mode)."""
    modes = sorted((r for r in report.results if r.retriever != "jaccard"),
                   key=lambda r: r.averages["ndcg@10"], reverse=True)
    return (modes[0], modes[1] if len(modes) > 1 else None) if modes else None


def print_table(report: EvalReport, console: Console) -> None:
    table = Table(title=_title(report))
    table.add_column("retriever")
    for name in METRICS:
        table.add_column(SHORT[name], justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column(f"unans. ≥{report.search_threshold}", justify="right")
    for result in report.results:
        table.add_row(result.retriever, *(f"{result.averages[m]:.3f}" for m in METRICS),
                      f"{result.latency_ms_p50:.1f}", f"{result.latency_ms_p95:.1f}", _unanswered(result))
    console.print(table)
    for result in report.results:
        if result.recommended_threshold is not None:
            console.print(f"{result.retriever}: threshold keeping ≥95% of relevant top-5 = "
                          f"{result.recommended_threshold:.2f}, best F1 at {result.best_threshold:.2f}")
    top = winner(report)
    if top and top[1]:
        best, second = top
        console.print(f"best mode on nDCG@10: {best.retriever} ({best.averages['ndcg@10']:.3f}, "
                      f"+{best.averages['ndcg@10'] - second.averages['ndcg@10']:.3f} over {second.retriever})")


def markdown(report: EvalReport) -> str:
    lines = [f"# Retrieval evaluation: {report.dataset}", "",
             f"{report.created_at} · model `{report.embedding_model}` (runtime `{report.embedding_runtime}`) · "
             f"{report.corpus_docs} documents · {report.chunks} chunks · default mode `{report.default_mode}`, "
             f"threshold {report.search_threshold}", "",
             "| retriever | " + " | ".join(METRICS) + " | p50 ms | p95 ms | unanswerable with hits ≥ threshold |",
             "|---" * (len(METRICS) + 4) + "|"]
    for r in report.results:
        lines.append(f"| {r.retriever} | " + " | ".join(f"{r.averages[m]:.3f}" for m in METRICS)
                     + f" | {r.latency_ms_p50:.1f} | {r.latency_ms_p95:.1f} | {_unanswered(r)} |")
    lines += ["", "Jaccard is the legacy word-overlap search (the floor); its unanswerable count is "
              "\"any word overlap\", as the legacy code had no threshold. Latency includes the query embedding."]
    if report.timings:
        t = report.timings
        lines += ["", f"Corpus ready in {t.get('index_s', 0):.1f} s ({t.get('chunks_embedded', 0):.0f} chunks "
                  f"embedded, {t.get('chunks_from_cache', 0):.0f} from the cache); whole run "
                  f"{t.get('total_s', 0):.1f} s."]
        if t.get("query_workers", 1) > 1:
            lines += ["", f"Queries ran {t['query_workers']:.0f} at a time (`--workers`): latencies were measured "
                      "under that load."]
    top = winner(report)
    if top and top[1]:
        best, second = top
        lines += ["", f"Best mode on nDCG@10: **{best.retriever}** ({best.averages['ndcg@10']:.3f}), "
                  f"{best.averages['ndcg@10'] - second.averages['ndcg@10']:+.3f} over {second.retriever}."]
    for r in report.results:
        if r.by_type:
            lines += ["", f"## {r.retriever} by query type", "", "| type | queries | hit@5 | ndcg@10 |",
                      "|---|---|---|---|"]
            for kind, values in sorted(r.by_type.items()):
                lines.append(f"| {kind} | {int(values['queries'])} | {values['hit@5']:.3f} | {values['ndcg@10']:.3f} |")
    for r in report.results:
        if r.threshold_study:
            lines += ["", f"## Threshold study: {r.retriever}", "",
                      "Cosine threshold t applied to each query's top-5 documents. Recall: share of the relevant "
                      "top-5 documents kept; answerable kept: share of answerable queries that keep a relevant "
                      "document; unanswerable with hits: unanswerable queries whose best result passes t.", "",
                      f"Best F1 at **{r.best_threshold:.2f}**; highest threshold keeping ≥95% recall: "
                      f"**{r.recommended_threshold:.2f}**.", "",
                      "| threshold | precision | recall | f1 | answerable kept | unanswerable with hits |",
                      "|---|---|---|---|---|---|"]
            for row in r.threshold_study:
                lines.append(f"| {row['threshold']:.2f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                             f"{row['f1']:.3f} | {row.get('answerable_kept', 0):.3f} | "
                             f"{row.get('unanswerable_with_hits', 0):.0f}/{r.unanswerable} |")
    if report.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"


def chart(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.retriever for r in report.results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r.averages["ndcg@10"] for r in report.results], color="#3b7dd8")
    left.set_title("nDCG@10 (higher is better)")
    left.set_ylim(0, 1)
    right.bar(names, [r.latency_ms_p50 for r in report.results], color="#d8833b")
    right.set_title("p50 latency per query, ms (lower is better)")
    fig.suptitle(f"{report.dataset} · {report.embedding_model} ({report.embedding_runtime})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_paths(directory: Path, name: str) -> dict[str, Path]:
    """The json/md/png trio every evaluation report is written as."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / name
    return {"json": stem.with_suffix(".json"), "markdown": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}


def write_report(report: EvalReport, directory: Path = REPORTS_DIR, name: str | None = None) -> dict[str, Path]:
    paths = report_paths(directory, name or report.dataset)
    paths["json"].write_text(json.dumps(asdict(report), indent=2))
    paths["markdown"].write_text(markdown(report))
    chart(report, paths["png"])
    return paths


def write_study(directory: Path, name: str, study: dict, text: str) -> None:
    """A study's figures (`<name>.json`) and its Markdown report (`<name>.md`) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(study, indent=2) + "\n")
    (directory / f"{name}.md").write_text(text)

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
    per_query: list[dict[str, object]] = field(default_factory=list)


@dataclass
class EvalReport:
    dataset: str
    embedding_model: str
    corpus_docs: int
    chunks: int
    results: list[RetrieverResult]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    notes: list[str] = field(default_factory=list)


def print_table(report: EvalReport, console: Console) -> None:
    table = Table(title=f"{report.dataset}: {report.corpus_docs} docs, {report.chunks} chunks, "
                        f"{report.results[0].queries if report.results else 0} queries")
    table.add_column("retriever")
    for name in METRICS:
        table.add_column(name, justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("unanswerable w/ hits", justify="right")
    for result in report.results:
        unanswered = (f"{result.unanswerable_with_hits}/{result.unanswerable}" if result.unanswerable else "-")
        table.add_row(result.retriever, *(f"{result.averages[m]:.3f}" for m in METRICS),
                      f"{result.latency_ms_p50:.1f}", f"{result.latency_ms_p95:.1f}", unanswered)
    console.print(table)


def markdown(report: EvalReport) -> str:
    lines = [f"# Retrieval evaluation: {report.dataset}", "",
             f"{report.created_at} · model `{report.embedding_model}` · {report.corpus_docs} documents · "
             f"{report.chunks} chunks", "",
             "| retriever | " + " | ".join(METRICS) + " | p50 ms | p95 ms | unanswerable with hits |",
             "|---" * (len(METRICS) + 4) + "|"]
    for r in report.results:
        unanswered = f"{r.unanswerable_with_hits}/{r.unanswerable}" if r.unanswerable else "-"
        lines.append(f"| {r.retriever} | " + " | ".join(f"{r.averages[m]:.3f}" for m in METRICS)
                     + f" | {r.latency_ms_p50:.1f} | {r.latency_ms_p95:.1f} | {unanswered} |")
    for r in report.results:
        if r.by_type:
            lines += ["", f"## {r.retriever} by query type", "", "| type | queries | hit@5 | ndcg@10 |",
                      "|---|---|---|---|"]
            for kind, values in sorted(r.by_type.items()):
                lines.append(f"| {kind} | {int(values['queries'])} | {values['hit@5']:.3f} | {values['ndcg@10']:.3f} |")
    for r in report.results:
        if r.threshold_study:
            lines += ["", f"## Threshold study: {r.retriever}", "",
                      "| threshold | precision | recall | f1 | unanswerable with hits |", "|---|---|---|---|---|"]
            for row in r.threshold_study:
                lines.append(f"| {row['threshold']:.2f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                             f"{row['f1']:.3f} | {row.get('unanswerable_with_hits', 0):.0f} |")
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
    fig.suptitle(f"{report.dataset} · {report.embedding_model}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: EvalReport, directory: Path = REPORTS_DIR) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / report.dataset
    paths = {"json": stem.with_suffix(".json"), "markdown": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    slim = asdict(report)
    paths["json"].write_text(json.dumps(slim, indent=2))
    paths["markdown"].write_text(markdown(report))
    chart(report, paths["png"])
    return paths

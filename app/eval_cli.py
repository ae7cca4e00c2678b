"""CLI of the evaluation room: `ils-rag eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from app.cli import console, fail, prepared

    @app.command("eval")
    def evaluate(
        dataset: Annotated[Path, typer.Option(help="BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/).")] = Path(
            "evals/datasets/optical"),
        retrievers: Annotated[str, typer.Option(help="Comma-separated: jaccard,text,vector,hybrid.")] = (
            "jaccard,text,vector,hybrid"),
        limit_queries: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N queries.")] = None,
        output: Annotated[Path | None, typer.Option(help="Report folder (default evals/reports/).")] = None,
    ) -> None:
        """Score retrievers on a dataset: terminal table + JSON, Markdown and PNG report."""
        from evals.report import REPORTS_DIR, print_table, write_report
        from evals.runner import run_evaluation

        if not dataset.is_dir():
            raise fail(f"dataset folder {dataset} does not exist "
                       "(expected corpus.jsonl, queries.jsonl, qrels/test.tsv)")
        names = [name.strip() for name in retrievers.split(",") if name.strip()]
        prepared()
        report = run_evaluation(dataset, names, limit_queries=limit_queries, console=console)
        print_table(report, console)
        for result in report.results:
            best = result.by_type.get("_threshold", {}).get("best_f1_threshold")
            if best is not None:
                console.print(f"{result.retriever}: best-F1 similarity threshold on this set = {best:.2f}")
        paths = write_report(report, output or REPORTS_DIR)
        console.print("report: " + ", ".join(str(p) for p in paths.values()))

"""`ils-rag eval`: score retrievers on a BEIR-format dataset (logic in evals.*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from app.cli.common import app, console, fail, prepared

Runtime = Literal["torch", "onnx", "onnx-int8"]


def use_runtime(runtime: Runtime) -> None:
    """Run this command with another embedding runtime than EMBEDDING_RUNTIME: the process's
    settings become a copy with that runtime, and a model loaded with the old one is dropped."""
    from core.reconfigure import reconfigure
    from core.settings import get_settings

    reconfigure(get_settings().model_copy(update={"embedding_runtime": runtime}))


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option(help="BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/).")] = Path(
        "evals/datasets/optical"),
    retrievers: Annotated[str, typer.Option(help="Comma-separated: jaccard,ts_rank,text,vector,hybrid.")] = (
        "jaccard,ts_rank,text,vector,hybrid"),
    limit_queries: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N queries.")] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder (default evals/reports/).")] = None,
    name: Annotated[str | None, typer.Option(
        help="Report file name, without suffix (default: <dataset>[-<runtime>]).")] = None,
    runtime: Annotated[Runtime | None, typer.Option(
        help="Embedding runtime for this run (default: EMBEDDING_RUNTIME). Each runtime indexes into "
             "its own evaluation companies and cache entries.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=16, help=(
        "Queries in flight at once: 2 on a 2-core machine nearly halves a large run; latencies are then "
        "measured under that load (the report says so)."))] = 1,
) -> None:
    """Score retrievers on a dataset: terminal table + JSON, Markdown and PNG report."""
    from core.errors import ServiceError
    from core.settings import get_settings
    from evals.report import REPORTS_DIR, print_table, write_report
    from evals.runner import RETRIEVERS, run_evaluation

    if not dataset.is_dir():
        raise fail(f"dataset folder {dataset} does not exist "
                   "(expected corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    names = [name.strip() for name in retrievers.split(",") if name.strip()]
    unknown = [name for name in names if name not in RETRIEVERS]
    if unknown or not names:
        raise fail(f"unknown retriever(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(RETRIEVERS)}")
    if runtime:
        use_runtime(runtime)
    prepared()
    settings = get_settings()  # after use_runtime: the run's settings, handed down
    try:
        report = run_evaluation(dataset, names, settings=settings, limit_queries=limit_queries, console=console,
                                workers=workers)
    except ServiceError as exc:
        raise fail(exc.message) from exc
    print_table(report, console)
    name = name or report.dataset + (f"-{runtime}" if runtime else "")
    paths = write_report(report, output or REPORTS_DIR, name=name)
    console.print("report: " + ", ".join(str(p) for p in paths.values()))

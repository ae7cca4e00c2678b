"""`ils-rag eval-answers`: score the answers of `POST /api/chat` (logic in evals.answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import app, console, fail, prepared


@app.command("eval-answers")
def evaluate_answers(
    dataset: Annotated[Path, typer.Option(help="Folder with questions.jsonl.")] = Path(
        "evals/datasets/optical-answers"),
    samples: Annotated[Path, typer.Option(help="Folder with one sub-folder of documents per practice.")] = Path(
        "samples"),
    ids: Annotated[str | None, typer.Option(help="Comma-separated question ids (default: all).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    label: Annotated[str | None, typer.Option(help=(
        "Report name suffix (default: `llm` when an LLM is configured, else `offline`)."))] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder (default evals/reports/).")] = None,
) -> None:
    """Ask the answer set through the real chat route (offline answerer, or the configured LLM)
    and write fact recall, citation precision, fragments, duplicates, abstention and latency
    as JSON, Markdown and PNG."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import get_settings
    from evals.answers import REPORTS_DIR, client_post, load_questions, prepare_practices, run_answers, write_report

    if not (dataset / "questions.jsonl").is_file():
        raise fail(f"{dataset}/questions.jsonl does not exist")
    questions = load_questions(dataset)
    if ids:
        wanted = {i.strip() for i in ids.split(",") if i.strip()}
        questions = [q for q in questions if q.id in wanted]
    questions = questions[:limit] if limit else questions
    if not questions:
        raise fail("no questions selected")
    missing = sorted({q.company for q in questions if not (samples / q.company).is_dir()})
    if missing:
        raise fail(f"no documents folder for {', '.join(missing)} under {samples}")
    prepared()
    # The evaluation asks more than a person would in a minute: no chat rate limit for it.
    settings = get_settings().model_copy(update={"chat_rate_per_minute": 1_000_000})
    label = label or ("llm" if settings.openai_api_key else "offline")
    console.print(f"preparing {len({q.company for q in questions})} practices (unchanged files are skipped)…")
    headers = prepare_practices(sorted({q.company for q in questions}), settings, samples)
    with TestClient(create_app(settings)) as client:
        report = run_answers(questions, client_post(client), headers, settings=settings, samples=samples,
                             label=label,
                             dataset=dataset.name,
                             progress=lambda s: console.print(f"{s.id} {s.latency_ms:6.0f} ms {s.mode:10} "
                                                             f"facts {s.facts_found}/{s.facts}", highlight=False))
    for key, value in report.metrics.items():
        console.print(f"{key:26} {'-' if value is None else round(value, 3)}")
    paths = write_report(report, output or REPORTS_DIR)
    console.print("report: " + ", ".join(str(p) for p in paths.values()))

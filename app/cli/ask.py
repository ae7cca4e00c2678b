"""`ils-rag ask --company SLUG "question"`: one answer with its sources, in the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import app, console, prepared
from core.search_modes import SearchMode, describe_modes

CLI_USER = "cli"


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    company: Annotated[str, typer.Option(help="Company slug.")],
    mode: Annotated[SearchMode | None, typer.Option(help=f"{describe_modes()} (default: SEARCH_MODE).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Minimum cosine similarity.")] = None,
) -> None:
    """Answer a question from one company's documents and list the cited sources."""
    from app.responses import chat_body
    from auth.users import get_company_by_slug
    from core.database import admin_session_scope
    from core.settings import get_settings
    from retrieval.chat import ChatService

    prepared()
    with admin_session_scope() as session:  # the company directory: row-level security shows it to the owner
        company_id = get_company_by_slug(session, company).id
    updates = {k: v for k, v in {"search_mode": mode, "search_threshold": threshold}.items() if v is not None}
    settings = get_settings().model_copy(update=updates)
    result = ChatService(company_id, CLI_USER, settings, store=False).ask(question)
    console.print(result.answer, highlight=False, soft_wrap=True)
    body = chat_body(result)
    console.print(f"\n[dim]mode {body['metadata']['mode']}, confidence {body['confidence']}, "
                  f"{body['metadata']['responseTime']} ms[/]")
    if result.sources:
        table = Table("#", "file", "similarity", "snippet")
        for source in result.sources:
            table.add_row(str(source["citation"]), str(source["filename"]), f"{source['similarity']:.3f}",
                          source["snippet"][:100])
        console.print(table)

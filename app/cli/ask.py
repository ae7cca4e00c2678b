"""`ils-rag ask --company SLUG "question"`: one answer with its sources, in the terminal.

Answering in this process means importing the model stack and loading the embedding model
first (10-30 s before a 0.1-2 s answer). When the service already runs on HOST:PORT it has
all of that warm, so the question goes to its `/api/chat` instead, signed in as the CLI's own
service client (`ils-rag-cli`, chat only, its secret in DATA_DIR with mode 600, created on
first use; `ils-rag clients revoke ils-rag-cli` withdraws it). `--local` (or `--mode` /
`--threshold`, which the HTTP chat has no field for) answers in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from app.cli.common import app, console, fail, prepared
from core.search_modes import SearchMode, describe_modes

if TYPE_CHECKING:
    from core.settings import Settings

CLI_USER = "cli"
CLI_CLIENT_NAME = "ils-rag-cli"
CREDENTIAL_FILE = "cli-client.json"
HEALTH_TIMEOUT_S = 0.5


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    company: Annotated[str, typer.Option(help="Company slug.")],
    mode: Annotated[SearchMode | None, typer.Option(help=f"{describe_modes()} (default: SEARCH_MODE).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Minimum cosine similarity.")] = None,
    local: Annotated[bool, typer.Option("--local/--server", help="Answer in this process even when the service "
                                        "runs on HOST:PORT (default: ask the running service).")] = False,
) -> None:
    """Answer a question from one company's documents and list the cited sources."""
    from auth.users import get_company_by_slug
    from core.db.checks import check_database
    from core.db.owner import admin_session_scope
    from core.settings import get_settings

    settings = get_settings()
    base = server_url(settings)
    served = not local and mode is None and threshold is None and server_running(base)
    if served:
        check_database()  # the running service keeps the schema current
    else:
        prepared()
    with admin_session_scope() as session:  # the company directory: row-level security shows it to the owner
        company_id = get_company_by_slug(session, company).id
    body = ask_server(base, settings, company_id, question) if served else None
    answered_by = base if body is not None else None
    if body is None:
        body = _ask_here(settings, company_id, question, mode, threshold)
    _print(body, answered_by)


def server_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def server_running(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/health", timeout=HEALTH_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def _credential_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / CREDENTIAL_FILE


def cli_credentials(settings: Settings, *, renew: bool = False) -> tuple[str, str]:
    """The CLI's service client (id, secret): read from DATA_DIR, or created (replacing a
    live one of the same name, whose secret is lost) and written there readable by its owner only."""
    from auth.clients import create_client, revoke_client
    from auth.permissions import Permission
    from core.db.owner import admin_session_scope
    from core.errors import NotFound

    path = _credential_path(settings)
    if not renew and path.exists():
        saved = json.loads(path.read_text())
        return saved["client_id"], saved["client_secret"]
    with admin_session_scope() as session:
        with contextlib.suppress(NotFound):
            revoke_client(session, CLI_CLIENT_NAME)
        created = create_client(session, CLI_CLIENT_NAME, [Permission.CHAT.value], all_companies=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"client_id": created.id, "client_secret": created.secret}, file)
    return created.id, created.secret


def ask_server(base: str, settings: Settings, company_id: str, question: str) -> dict[str, Any] | None:
    """The running service's answer (its JSON chat body), or None when it does not know this
    CLI's client (another deployment on the port: answer here instead). The conversation the
    chat stores is deleted again: the CLI keeps no history."""
    import httpx

    renewable = _credential_path(settings).exists()
    for attempt in range(2):
        client_id, secret = cli_credentials(settings, renew=attempt > 0)
        granted = httpx.post(f"{base}/api/auth/token", auth=(client_id, secret), timeout=10,
                             data={"grant_type": "client_credentials", "company_id": company_id})
        if granted.status_code == 200:
            break
        if granted.status_code != 401 or attempt or not renewable:
            return None
    headers = {"Authorization": f"Bearer {granted.json()['access_token']}"}
    response = httpx.post(f"{base}/api/chat", json={"message": question}, headers=headers,
                          timeout=settings.llm_timeout_s * (settings.llm_max_retries + 1) + 30)
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise fail(f"the service at {base} answered {response.status_code}: {message}")
    body = response.json()
    if body.get("conversationId"):
        httpx.delete(f"{base}/api/conversations/{body['conversationId']}", headers=headers, timeout=10)
    return body


def _ask_here(settings: Settings, company_id: str, question: str, mode: SearchMode | None,
              threshold: float | None) -> dict[str, Any]:
    from app.responses import chat_body
    from retrieval.chat import ChatService

    updates = {k: v for k, v in {"search_mode": mode, "search_threshold": threshold}.items() if v is not None}
    result = ChatService(company_id, CLI_USER, settings.model_copy(update=updates), store=False).ask(question)
    return chat_body(result)


def _print(body: dict[str, Any], answered_by: str | None) -> None:
    console.print(body["answer"], highlight=False, soft_wrap=True)
    where = f", answered by the service at {answered_by}" if answered_by else ""
    console.print(f"\n[dim]mode {body['metadata']['mode']}, confidence {body['confidence']}, "
                  f"{body['metadata']['responseTime']} ms{where}[/]", highlight=False)
    if body["sources"]:
        table = Table("#", "file", "similarity", "snippet")
        for source in body["sources"]:
            table.add_row(str(source["citation"]), str(source["filename"]), f"{source['similarity']:.3f}",
                          source["snippet"][:100])
        console.print(table)

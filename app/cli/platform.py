"""The ILS platform integration: `ils-rag clients ...` (service credentials for its Node
backend), `ils-rag companies set-id` (the platform's id for an existing practice) and
`ils-rag calibrate-scores` (the relevance-score calibration). Logic lives in auth.clients,
auth.company_ids and evals.calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import JSON_OPTION, app, companies_app, console, fail, prepared, show_rows
from core.terminal import plural

clients_app = typer.Typer(help="Service credentials (OAuth 2.0 client credentials) for backends.",
                          no_args_is_help=True)
app.add_typer(clients_app, name="clients")


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="Who uses it, e.g. node-backend (shown in audit rows).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated permissions: knowledge:read,knowledge:write,...")],
    company: Annotated[list[str] | None, typer.Option(
        "--company", help="A company (id or slug) the client may act for; repeat for several.")] = None,
    all_companies: Annotated[bool, typer.Option(help="May act for every company, present and future.")] = False,
) -> None:
    """Create a client; its secret is printed once and only its hash is kept."""
    from auth.clients import create_client
    from core.db.owner import admin_session_scope

    if all_companies == bool(company):
        raise fail("give --company (one or more) or --all-companies")
    prepared()
    with admin_session_scope() as session:
        created = create_client(session, name, scopes, companies=company or [], all_companies=all_companies)
    console.print(f"created client {created.name}\n  client_id:     {created.id}\n  client_secret: {created.secret}\n"
                  f"  scopes:        {' '.join(created.scopes)}\n  companies:     "
                  f"{'all' if created.all_companies else ', '.join(created.companies)}\n"
                  "Store the secret now: it is not shown again. Exchange both at POST /api/auth/token.",
                  highlight=False, soft_wrap=True)


@clients_app.command("list")
def clients_list(include_revoked: Annotated[bool, typer.Option("--all/--active",
                                                               help="Include revoked clients.")] = False,
                 as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """List service clients (never their secrets)."""
    from auth.clients import list_clients
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        rows = [{"name": c.name, "client_id": c.id, "scopes": " ".join(c.scopes),
                 "companies": "all" if c.all_companies else ", ".join(c.companies),
                 "created": f"{c.created_at:%Y-%m-%d %H:%M}",
                 "revoked": f"{c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else None}
                for c in list_clients(session, include_revoked=include_revoked)]
    show_rows(rows, as_json, whole=("client_id",))


@clients_app.command("revoke")
def clients_revoke(client: Annotated[str, typer.Argument(help="The client's name or client_id.")]) -> None:
    """Revoke a client: its tokens are refused from their next request on."""
    from auth.clients import revoke_client
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        revoked = revoke_client(session, client)
        console.print(f"revoked client {revoked.name} ({revoked.id})", highlight=False, soft_wrap=True)


@companies_app.command("set-id")
def companies_set_id(company: Annotated[str, typer.Argument(help="The company's slug (or current id).")],
                     platform_id: Annotated[str, typer.Argument(help="The ILS platform's id for it.")]) -> None:
    """Give an existing company the platform's id: every row moves in one transaction."""
    from auth.company_ids import change_company_id
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        change = change_company_id(session, company, platform_id)
    moved = sum(count for table, count in change.rows.items() if table != "companies")
    console.print(f"company {change.old_id} is now {change.new_id} ({plural(moved, 'row')} moved, "
                  f"{plural(change.clients, 'service client')} updated)", highlight=False, soft_wrap=True)


@app.command("calibrate-scores")
def calibrate_scores(
    dataset: Annotated[Path, typer.Option(help="BEIR-format folder with qrels.")] = Path("evals/datasets/optical"),
    plot: Annotated[Path | None, typer.Option(help="Write the calibration curve as a PNG here.")] = Path(
        "docs/score-calibration.png"),
    cache_dir: Annotated[Path | None, typer.Option(
        help="Embedding cache (default: the evaluation's, DATA_DIR/eval-cache).")] = None,
) -> None:
    """Refit the calibrated `score` (probability a passage is relevant) for the configured model."""
    from core.settings import get_settings
    from evals.calibration import refit
    from evals.report import REPORTS_DIR

    prepared()
    settings = get_settings()
    cache = cache_dir or settings.data_dir.resolve() / "eval-cache"
    calibration, path = refit(dataset, cache, console, settings=settings, plot=plot, report_dir=REPORTS_DIR)
    info = calibration.fitted_on
    console.print(f"{calibration.model}: {calibration.method} on {plural(info['pairs'], 'passage')} of "
                  f"{plural(info['questions'], 'question')} (cv Brier {info['cv_brier']}); threshold 0.7 = cosine >= "
                  f"{calibration.min_similarity(0.7):.3f}; written {path}", highlight=False)

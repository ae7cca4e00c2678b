"""`ils-rag companies ...`: tenants, created and listed by the operator (owner role)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import JSON_OPTION, companies_app, console, prepared, show_rows


@companies_app.command("create")
def companies_create(slug: str, name: Annotated[str | None, typer.Option(help="Display name.")] = None,
                     company_id: Annotated[str | None, typer.Option(
                         "--id", help="The ILS platform's id for this practice (its tokens' companyId); "
                                      "default a new UUID.")] = None) -> None:
    """Create a company (tenant)."""
    from auth.users import create_company
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        company = create_company(session, slug, name or slug.replace("-", " ").title(), company_id=company_id)
        console.print(f"created company {company.slug} ({company.id})")


@companies_app.command("list")
def companies_list(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """List companies."""
    from auth.users import list_companies
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        rows = [{"slug": c.slug, "name": c.name, "id": c.id, "active": c.is_active} for c in list_companies(session)]
    show_rows(rows, as_json)

"""`ils-rag users ...`: a company's users, from the operator's terminal."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from app.cli.common import JSON_OPTION, console, fail, prepared, show_rows, users_app


def _read_password(confirm: bool = True) -> str:
    """Prompted on a terminal; one line of standard input otherwise, so scripts can pipe it in."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise fail("passwords do not match")
    return password


@users_app.command("create")
def users_create(
    company: Annotated[str, typer.Option(help="Company slug.")],
    email: Annotated[str, typer.Option(help="Login email.")],
    role: Annotated[str, typer.Option(help="admin or staff.")] = "staff",
    full_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    user_id: Annotated[str | None, typer.Option(
        "--id", help="The ILS platform's id for this user (its tokens' userId); default a new UUID.")] = None,
) -> None:
    """Create a user; the password is prompted for, or read from standard input."""
    from auth.users import create_user, get_company_by_slug
    from core.db.owner import admin_session_scope

    prepared()
    password = _read_password()
    with admin_session_scope() as session:
        company_row = get_company_by_slug(session, company)
        user = create_user(session, company_row.id, email, password, role, full_name, user_id=user_id)
        console.print(f"created {user.role} {user.email} in {company_row.slug}")


@users_app.command("list")
def users_list(company: Annotated[str | None, typer.Option(help="Company slug.")] = None,
               as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """List users, optionally of one company."""
    from auth.users import get_company_by_slug, list_companies, list_users
    from core.db.owner import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        slugs = {c.id: c.slug for c in list_companies(session)}
        company_id = get_company_by_slug(session, company).id if company else None
        rows = [{"company": slugs.get(u.company_id, u.company_id), "email": u.email, "role": u.role,
                 "active": u.is_active, "id": u.id} for u in list_users(session, company_id)]
    show_rows(rows, as_json)


@users_app.command("deactivate")
def users_deactivate(
    company: Annotated[str, typer.Option(help="Company slug.")],
    email: Annotated[str, typer.Option(help="Login email.")],
    reactivate: Annotated[bool, typer.Option("--reactivate/--deactivate", help="Re-enable the user instead.")] = False,
) -> None:
    """Deactivate a user (sign-in and refresh stop at once), or re-enable one with --reactivate."""
    from auth.users import find_user_in_company, get_company_by_slug, update_user
    from core.db.engines import session_scope
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant
    from core.errors import NotFound

    prepared()
    with admin_session_scope() as session:  # the company directory is the operator's to read
        company_id = get_company_by_slug(session, company).id
    with tenant(company_id), session_scope() as session:
        user = find_user_in_company(session, company_id, email)
        if user is None:
            raise NotFound(f"no user {email} in {company} (see `ils-rag users list --company {company}`)")
        update_user(session, company_id, user.id, actor_id=None, is_active=reactivate)
        console.print(f"{'reactivated' if reactivate else 'deactivated'} {user.email} in {company}")

"""`ils-rag`: the one command-line entry point (serve, db, companies, users, samples...).

Sub-commands of other rooms (ingest, ask, eval, bench) register themselves in
COMMAND_GROUPS / COMMANDS below; each keeps its own logic in its package.
"""

from __future__ import annotations

import getpass
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.errors import ConfigurationError, ServiceError

app = typer.Typer(help="ILS RAG: multi-tenant retrieval-augmented generation for optical practices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
companies_app = typer.Typer(help="Companies (tenants).", no_args_is_help=True)
users_app = typer.Typer(help="Users of a company.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(companies_app, name="companies")
app.add_typer(users_app, name="users")
bench_app = typer.Typer(help="Benchmarks (each writes JSON to bench/results/).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def prepared() -> None:
    """Check the database and apply migrations before a command touches data."""
    from core.database import check_database
    from core.migrate import upgrade

    check_database()
    upgrade()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: HOST setting).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT setting).")] = None,
    load_samples: Annotated[bool, typer.Option("--load-samples", help="Create the sample practices first.")] = False,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Start the HTTP service (migrations are applied at start)."""
    import uvicorn

    from app.logs import configure_logging, logging_config
    from app.main import create_app, prepare_runtime
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # JSON lines with request/user/company ids
    log_config = logging_config(settings.log_level, settings.log_format)
    prepare_runtime(settings)
    if load_samples:
        from app.samples import load_samples as _load

        _load(console)
    console.print(f"ILS RAG listening on http://{host or settings.host}:{port or settings.port}")
    # uvicorn re-raises SIGTERM once it has shut down gracefully; its default action would end the
    # process before the exit hooks run, leaving the embedded Postgres running (and this process
    # registered with it). Exiting normally instead lets the last process stop it.
    signal.signal(signal.SIGTERM, _exit_normally)
    if workers > 1:
        uvicorn.run("app.main:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                    workers=workers, log_level=settings.log_level.lower(), log_config=log_config)
    else:
        uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                    log_level=settings.log_level.lower(), log_config=log_config)


def _exit_normally(signum: int, frame: object) -> None:
    raise SystemExit(0)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from core.database import check_database
    from core.migrate import current_revision, upgrade

    version = check_database()
    upgrade()
    console.print(f"schema at revision {current_revision()} (pgvector {version})")


def sync_tenant_indexes_verbose(companies: list[str] | None = None) -> None:
    """Build/drop the per-company HNSW indexes (core.tenant_indexes), saying what changed."""
    from core.tenant_indexes import sync_tenant_indexes

    result = sync_tenant_indexes(companies=companies, on_build=lambda company, chunks: console.print(
        f"built the HNSW index of company {company} ({chunks} chunks)", highlight=False))
    if result.skipped:
        console.print("tenant indexes: another process is updating them", highlight=False)
    elif result.dropped:
        console.print(f"tenant indexes: dropped {len(result.dropped)} no longer needed", highlight=False)


@db_app.command("tenant-indexes")
def db_tenant_indexes() -> None:
    """Give each company above TENANT_INDEX_MIN_CHUNKS its own HNSW index (and drop unneeded ones)."""
    from core.tenant_indexes import tenant_index_summary

    prepared()
    sync_tenant_indexes_verbose()
    console.print(tenant_index_summary(), highlight=False)


@companies_app.command("create")
def companies_create(slug: str, name: Annotated[str | None, typer.Option(help="Display name.")] = None) -> None:
    """Create a company (tenant)."""
    from auth.users import create_company
    from core.database import admin_session_scope

    prepared()
    with admin_session_scope() as session:
        company = create_company(session, slug, name or slug.replace("-", " ").title())
        console.print(f"created company {company.slug} ({company.id})")


@companies_app.command("list")
def companies_list() -> None:
    """List companies."""
    from auth.users import list_companies
    from core.database import admin_session_scope

    prepared()
    table = Table("slug", "name", "id", "active")
    with admin_session_scope() as session:
        for company in list_companies(session):
            table.add_row(company.slug, company.name, company.id, str(company.is_active))
    console.print(table)


def _read_password(confirm: bool = True) -> str:
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
) -> None:
    """Create a user; the password is prompted for, or read from standard input."""
    from auth.users import create_user, get_company_by_slug
    from core.database import admin_session_scope

    prepared()
    password = _read_password()
    with admin_session_scope() as session:
        company_row = get_company_by_slug(session, company)
        user = create_user(session, company_row.id, email, password, role, full_name)
        console.print(f"created {user.role} {user.email} in {company_row.slug}")


@users_app.command("list")
def users_list(company: Annotated[str | None, typer.Option(help="Company slug.")] = None) -> None:
    """List users, optionally of one company."""
    from auth.users import get_company_by_slug, list_companies, list_users
    from core.database import admin_session_scope

    prepared()
    table = Table("company", "email", "role", "active", "id")
    with admin_session_scope() as session:
        slugs = {c.id: c.slug for c in list_companies(session)}
        company_id = get_company_by_slug(session, company).id if company else None
        for user in list_users(session, company_id):
            table.add_row(slugs.get(user.company_id, user.company_id), user.email, user.role,
                          str(user.is_active), user.id)
    console.print(table)


@users_app.command("deactivate")
def users_deactivate(
    company: Annotated[str, typer.Option(help="Company slug.")],
    email: Annotated[str, typer.Option(help="Login email.")],
    reactivate: Annotated[bool, typer.Option("--reactivate", help="Re-enable the user instead.")] = False,
) -> None:
    """Deactivate a user (sign-in and refresh stop at once), or re-enable one with --reactivate."""
    from auth.users import find_user_in_company, get_company_by_slug, update_user
    from core.database import session_scope, tenant
    from core.errors import NotFound

    prepared()
    with session_scope() as session:
        company_id = get_company_by_slug(session, company).id
    with tenant(company_id), session_scope() as session:
        user = find_user_in_company(session, company_id, email)
        if user is None:
            raise NotFound(f"no user {email} in {company} (see `ils-rag users list --company {company}`)")
        update_user(session, company_id, user.id, actor_id=None, is_active=reactivate)
        console.print(f"{'reactivated' if reactivate else 'deactivated'} {user.email} in {company}")


@app.command("load-samples")
def load_samples_command() -> None:
    """Create the two sample practices, their users, and ingest their documents (idempotent)."""
    from app.samples import load_samples

    prepared()
    load_samples(console)


COMMANDS: list[Callable[[typer.Typer], None]] = []


def _register_indexing(typer_app: typer.Typer) -> None:
    from app.indexing_cli import register

    register(typer_app)


COMMANDS.append(_register_indexing)


def _register_retrieval(typer_app: typer.Typer) -> None:
    from retrieval.cli import register

    register(typer_app)


COMMANDS.append(_register_retrieval)


def _register_evals(typer_app: typer.Typer) -> None:
    from app.eval_cli import register

    register(typer_app)


COMMANDS.append(_register_evals)


def _register_bench_search(typer_app: typer.Typer) -> None:
    from app.bench_cli import register

    register(typer_app)


COMMANDS.append(_register_bench_search)


def _register_bench_soak(typer_app: typer.Typer) -> None:
    from app.soak import register

    register(typer_app)


COMMANDS.append(_register_bench_soak)


def main() -> None:
    for register in COMMANDS:
        register(app)
    try:
        app()
    except (ConfigurationError, ServiceError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None

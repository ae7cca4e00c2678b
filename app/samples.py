"""The sample knowledge base behind `make run`: two fictional practices whose documents
disagree on prices and policies, so a tenant mix-up is visible at once."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from auth.models import Company
from auth.users import create_company, create_user, find_user_in_company
from core.db.owner import admin_session_scope
from core.settings import Settings

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"

SAMPLE_COMPANIES = {
    "brightsight-optical": "BrightSight Optical",
    "clearview-eyecare": "ClearView Eyecare",
}
# Development credentials, printed by `make run`; never use them outside a laptop.
SAMPLE_PASSWORD = "optical-demo-2026"


def sample_users(slug: str) -> list[tuple[str, str]]:
    return [(f"admin@{slug}.example", "admin"), (f"staff@{slug}.example", "staff")]


def ensure_sample_company(slug: str) -> Company:
    with admin_session_scope() as session:
        company = session.scalar(select(Company).where(Company.slug == slug))
        if company is None:
            company = create_company(session, slug, SAMPLE_COMPANIES[slug])
        for email, role in sample_users(slug):
            if find_user_in_company(session, company.id, email) is None:
                create_user(session, company.id, email, SAMPLE_PASSWORD, role)
        return company


def load_samples(console: Console, settings: Settings) -> None:
    from core.embeddings import get_embed_model
    from indexing.folder import ingest_folder
    from retrieval.statements import precompute

    for slug in SAMPLE_COMPANIES:
        company = ensure_sample_company(slug)
        report = ingest_folder(SAMPLES_DIR / slug, company_id=company.id, settings=settings, sync=True,
                               show_progress=True)
        precompute(company.id, get_embed_model(), settings.embedding_key)  # no offline answer embeds statements
        console.print(f"[bold]{SAMPLE_COMPANIES[slug]}[/] ({slug}): {report.summary()}")
    console.print(f"\nSample sign-ins (password for all: [bold]{SAMPLE_PASSWORD}[/]):")
    for slug in SAMPLE_COMPANIES:
        for email, role in sample_users(slug):
            console.print(f"  {role:5}  {email}")

"""The platform's ids and the operator's commands: `companies create --id`, `companies set-id`
(every row of the company moves, nothing is left under the old id, documents still replace
rather than duplicate), and `clients create|list|revoke`."""

from __future__ import annotations

import base64
import re
import uuid

import sqlalchemy as sa
from typer.testing import CliRunner

from app.cli import app as cli_app
from core.settings import get_settings

runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(cli_app, list(args), env={"COLUMNS": "400"})  # tables unwrapped
    assert result.exit_code == 0, result.output
    return result.output


def _refused(*args: str) -> str:
    """What a refused command says: its output, or the service error `ils-rag` prints in one line."""
    result = runner.invoke(cli_app, list(args))
    assert result.exit_code != 0, result.output
    return result.output + str(result.exception or "")


def _search(client, headers: dict[str, str], query: str = "progressive lenses price") -> list[dict]:
    response = client.post("/api/rag/search", json={"query": query, "threshold": 0, "limit": 20}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _token_headers(company_id: str, user) -> dict[str, str]:
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token

    token, _ = issue_access_token(user_id=user.id, company_id=company_id, email=user.email, role=user.role,
                                  permissions=permissions_for(user.role), settings=get_settings())
    return {"Authorization": f"Bearer {token}"}


def test_companies_create_with_the_platforms_id(database: str) -> None:
    from auth.models import Company
    from core.db.owner import admin_session_scope

    platform_id, slug = str(uuid.uuid4()), f"t-{uuid.uuid4().hex[:12]}"
    assert platform_id in _invoke("companies", "create", slug, "--id", platform_id)
    with admin_session_scope() as session:
        assert session.get(Company, platform_id).slug == slug
    assert "already exists" in _refused("companies", "create", f"{slug}-2", "--id", platform_id)
    assert "letters, digits or dashes" in _refused("companies", "create", f"{slug}-3", "--id", "x' OR 1=1 --")


def test_set_id_moves_every_row_of_the_company(client, company, make_company, make_user) -> None:
    from auth.clients import create_client
    from core.db.checks import tenant_tables
    from core.db.owner import admin_session_scope, get_admin_engine
    from indexing.documents import index_text

    other = make_company("Bystander")
    user, headers = make_user(company, "admin")
    _, other_headers = make_user(other, "staff")
    price = "Progressive lenses cost £189 a pair at this practice."
    index_text(company.id, "prices.md", price, uploaded_by=user.id, settings=get_settings())
    index_text(other.id, "prices.md", "Progressive lenses cost £249 a pair elsewhere.", settings=get_settings())
    with admin_session_scope() as session:
        credential = create_client(session, f"node-{uuid.uuid4().hex[:6]}", "knowledge:read", companies=[company.id])
    before = _search(client, headers)
    assert [r["content"] for r in before] == [price]

    platform_id = f"{uuid.uuid4()}"
    output = _invoke("companies", "set-id", company.slug, platform_id)
    assert f"is now {platform_id}" in output

    old = client.post("/api/rag/search", json={"query": "lenses"}, headers=headers)
    assert old.status_code == 401 and old.json()["code"] == "UNKNOWN_COMPANY"
    moved_headers = _token_headers(platform_id, user)
    assert [r["content"] for r in _search(client, moved_headers)] == [price]
    assert [r["content"] for r in _search(client, other_headers)] != [price]  # the bystander is untouched

    with get_admin_engine().connect() as connection:
        for table in tenant_tables(connection):
            left = connection.execute(sa.text(f'SELECT count(*) FROM "{table}" WHERE company_id = :c'),
                                      {"c": company.id}).scalar_one()
            assert left == 0, table
        leftovers = connection.execute(sa.text(
            "SELECT count(*) FROM data_chunks WHERE strpos(CAST(metadata_ AS text), :c) > 0"),
            {"c": company.id}).scalar_one()
        assert leftovers == 0
        docstore = connection.execute(sa.text(
            "SELECT count(*) FROM data_docstore WHERE strpos(key || namespace || CAST(value AS text), :c) > 0"),
            {"c": company.id}).scalar_one()
        assert docstore == 0
        stats = connection.execute(sa.text("SELECT chunks FROM bm25_corpus WHERE company_id = :c"),
                                   {"c": platform_id}).scalar_one()
        assert stats == 1  # the BM25 statistics moved with the chunk
        terms = connection.execute(sa.text("SELECT count(*) FROM bm25_chunk_terms WHERE company_id = :c"),
                                   {"c": platform_id}).scalar_one()
        assert terms == 1  # and BM25's copy of its terms
        assert connection.execute(sa.text("SELECT companies FROM service_clients WHERE id = :id"),
                                  {"id": credential.id}).scalar_one() == [platform_id]

    # The moved documents are still the same documents: re-sending one replaces it, no duplicate.
    changed = "Progressive lenses cost £199 a pair at this practice from June."
    index_text(platform_id, "prices.md", changed, uploaded_by=user.id, settings=get_settings())
    assert [r["content"] for r in _search(client, moved_headers)] == [changed]
    listed = client.get("/api/documents", headers=moved_headers).json()
    assert listed["total"] == 1

    token = client.post("/api/auth/token", data={"grant_type": "client_credentials"}, headers={
        "Authorization": "Basic " + base64.b64encode(f"{credential.id}:{credential.secret}".encode()).decode()})
    assert token.status_code == 200 and token.json()["company_id"] == platform_id


def test_set_id_refuses_a_taken_or_malformed_id(company, make_company) -> None:
    other = make_company("Holder")
    for new_id, message in ((other.id, "already exists"), ("bad id!", "letters, digits or dashes")):
        assert message in _refused("companies", "set-id", company.slug, new_id)


def test_clients_commands(client, company) -> None:
    name = f"node-backend-{uuid.uuid4().hex[:6]}"
    output = _invoke("clients", "create", "--name", name, "--scopes", "knowledge:read,knowledge:write",
                     "--company", company.slug)
    client_id = re.search(r"client_id:\s+(\S+)", output).group(1)
    secret = re.search(r"client_secret:\s+(\S+)", output).group(1)
    basic = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}
    granted = client.post("/api/auth/token", data={"grant_type": "client_credentials"}, headers=basic)
    assert granted.status_code == 200 and granted.json()["scope"] == "knowledge:read knowledge:write"

    listing = _invoke("clients", "list")
    assert name in listing and client_id in listing and secret not in listing

    assert "revoked" in _invoke("clients", "revoke", name)
    refused = client.post("/api/auth/token", data={"grant_type": "client_credentials"}, headers=basic)
    assert refused.status_code == 401
    assert name not in _invoke("clients", "list") and name in _invoke("clients", "list", "--all")

    assert "--all-companies" in _refused("clients", "create", "--name", "x", "--scopes", "knowledge:read")


def test_users_create_with_the_platforms_id(client, company) -> None:
    import os
    import time

    from jose import jwt

    platform_user = f"platform-user-{uuid.uuid4().hex[:8]}"
    result = runner.invoke(cli_app, ["users", "create", "--company", company.slug, "--email",
                                     f"{platform_user}@example.com", "--id", platform_user],
                           input="correct horse battery\n")
    assert result.exit_code == 0, result.output
    now = int(time.time())
    token = jwt.encode({"userId": platform_user, "companyId": company.id, "email": f"{platform_user}@example.com",
                        "role": "staff", "permissions": ["knowledge:read"], "iat": now, "exp": now + 600,
                        "iss": "ils-platform", "aud": "ils-api"}, os.environ["JWT_SECRET"], algorithm="HS256")
    assert _search(client, {"Authorization": f"Bearer {token}"}) == []
    assert "letters, digits or dashes" in str(runner.invoke(cli_app, [
        "users", "create", "--company", company.slug, "--email", "x@example.com", "--id", "a b"],
        input="correct horse battery\n").exception)

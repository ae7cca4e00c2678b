"""Property: whatever five companies upload, every search result, chat source and document
listing a user gets belongs to that user's company (hypothesis draws the corpora, file names
and queries, including quote, comment and wildcard characters aimed at SQL built from them)."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.settings import get_settings

VOCAB = ["varifocal", "lenses", "price", "pounds", "contact", "frames", "eye", "test", "appointment", "children",
         "glaucoma", "coating", "anti-glare", "repair", "warranty", "refund", "parking", "opening", "hours",
         "discount", "student", "NHS", "voucher", "optician", "dry", "retina", "scan", "myopia", "sunglasses"]
HOSTILE = ["'", '"', "--", ";", "%", "_", "\\", "') OR 1=1 --", "*/", "|", "&", "!", ":*", "<->"]

words = st.lists(st.sampled_from(VOCAB) | st.sampled_from(HOSTILE) | st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=12), min_size=1, max_size=30)
document = st.tuples(st.from_regex(r"[a-z][a-z0-9' -]{0,15}[a-z0-9]", fullmatch=True),
                     words.map(" ".join).filter(lambda t: len(t.strip()) > 2))
corpora = st.lists(st.lists(document, max_size=3), min_size=5, max_size=5)
queries = words.map(" ".join).filter(lambda t: t.strip())


def _company(client: Any, tag: int) -> tuple[str, dict[str, str], dict[str, str]]:
    from auth.permissions import permissions_for
    from auth.tokens import issue_access_token
    from auth.users import create_company, create_user
    from core.db.engines import session_scope
    from core.db.owner import admin_session_scope
    from core.db.tenant_scope import tenant

    with admin_session_scope() as session:
        company = create_company(session, f"prop-{tag}-{uuid.uuid4().hex[:10]}", f"Property practice {tag}")
    headers = {}
    with tenant(company.id), session_scope() as session:
        for role in ("admin", "staff"):
            user = create_user(session, company.id, f"{role}-{uuid.uuid4().hex[:8]}@example.com",
                               "property test password", role)
            token, _ = issue_access_token(user_id=user.id, company_id=company.id, email=user.email, role=role,
                                          permissions=permissions_for(role), settings=get_settings())
            headers[role] = {"Authorization": f"Bearer {token}"}
    return company.id, headers["admin"], headers["staff"]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(corpus=corpora, query=queries, mode=st.sampled_from(["vector", "text", "hybrid"]))
def test_everything_a_user_gets_belongs_to_their_company(client, corpus: list[list[tuple[str, str]]], query: str,
                                                         mode: str) -> None:
    companies = [_company(client, n) for n in range(5)]
    owned: dict[str, set[str]] = {}
    for (company_id, admin, _), docs in zip(companies, corpus, strict=True):
        owned[company_id] = set()
        for filename, content in docs:
            response = client.post("/api/rag/index-document", headers=admin,
                                   json={"filename": filename, "content": content})
            assert response.status_code == 200, response.text
            owned[company_id].add(response.json()["document_id"])
    everyone = set().union(*owned.values())

    for company_id, _admin, staff in companies:
        mine = owned[company_id]
        listing = client.get("/api/documents", headers=staff, params={"page_size": 100})
        assert listing.status_code == 200
        assert {d["document_id"] for d in listing.json()["items"]} == mine

        search = client.post("/api/rag/search", headers=staff,
                             json={"query": query[:500], "limit": 50, "threshold": -1.0, "mode": mode})
        assert search.status_code in (200, 422), search.text  # 422: a query of only stop characters
        if search.status_code == 200:
            results = search.json()["results"]
            assert {r["document_id"] for r in results} <= mine
            if mode == "vector" and mine:
                assert results  # threshold -1: the caller's own chunks do come back
            for other in everyone - mine:
                assert other not in search.text

        chat = client.post("/api/chat", headers=staff, json={"message": query[:500]})
        assert chat.status_code in (200, 422), chat.text
        if chat.status_code == 200:
            assert {s["document_id"] for s in chat.json()["sources"]} <= mine
            for other in everyone - mine:
                assert other not in chat.text

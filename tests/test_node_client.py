"""The platform's own client (clients/node/PythonRAGService.js) against the real service: the
served process on the session's database, the machine's `node` (20+, no npm download), a
company created with the platform's id, a service credential, and a platform user's token.

The flow (clients/node/examples/platform-flow.mjs): an embedding, index-document, a search with
the plan's default threshold (0.7, on the calibrated score), a search naming another company
(refused), and the same search with a platform-minted JWT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from jose import jwt

from tests.servers import ROOT, serve

NODE = shutil.which("node")
FLOW = ROOT / "clients" / "node" / "examples" / "platform-flow.mjs"

pytestmark = pytest.mark.skipif(NODE is None, reason="needs node 20+ on PATH (Debian: apt-get install -y nodejs)")


def _node_major() -> int:
    version = subprocess.run([NODE or "node", "--version"], capture_output=True, text=True, check=True).stdout
    return int(version.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def rag_server(database: str, embed_model: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("node-server") / "server.log"
    with serve({**os.environ, "LOG_LEVEL": "WARNING"}, log) as (base, _):
        yield base


@pytest.fixture
def platform_company(database: str):
    """A practice created with the platform's own id, as `ils-rag companies create --id` does."""
    from auth.users import create_company
    from core.db.owner import admin_session_scope

    platform_id = str(uuid.uuid4())
    with admin_session_scope() as session:
        return create_company(session, f"t-{uuid.uuid4().hex[:12]}", "Platform practice", company_id=platform_id)


def _platform_token(company_id: str, user_id: str, email: str) -> str:
    """What the platform's JWTService.generateToken signs (the plan's claim set, HS256, shared secret)."""
    now = int(time.time())
    return jwt.encode({"userId": user_id, "companyId": company_id, "email": email, "role": "staff",
                       "permissions": ["knowledge:read"], "iat": now, "exp": now + 600,
                       "iss": "ils-platform", "aud": "ils-api"}, os.environ["JWT_SECRET"], algorithm="HS256")


def _run_flow(base: str, env: dict[str, str], tmp_path: Path) -> dict:
    result = subprocess.run([NODE or "node", str(FLOW)], env={**os.environ, "RAG_SERVICE_URL": base, **env},
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, f"node failed: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_plans_client_runs_against_the_service(rag_server: str, platform_company, make_user,
                                                   tmp_path: Path) -> None:
    from auth.clients import create_client
    from core.db.owner import admin_session_scope

    assert _node_major() >= 20
    user, _ = make_user(platform_company, "staff")  # the platform's user, known to the service
    with admin_session_scope() as session:
        credential = create_client(session, f"node-backend-{uuid.uuid4().hex[:6]}",
                                   "knowledge:read,knowledge:write", companies=[platform_company.id])

    out = _run_flow(rag_server, {"RAG_CLIENT_ID": credential.id, "RAG_CLIENT_SECRET": credential.secret,
                                 "RAG_COMPANY_ID": platform_company.id,
                                 "PLATFORM_TOKEN": _platform_token(platform_company.id, user.id, user.email)},
                    tmp_path)

    assert out["embedding"] == {"dimensions": 384, "finite": True}
    assert out["indexed"]["status"] == "indexed" and out["indexed"]["document_id"]
    search = out["search"]
    assert search["threshold"] == 0.7 and search["threshold_applies_to"] == "score"
    assert search["total_found"] >= 1, search
    best = search["results"][0]
    assert best["filename"] == "platform-price-list.md" and "£189" in best["content"]
    assert best["score"] >= 0.7 and best["similarity"] >= search["min_similarity"]
    # The credential may act for its own company only: the token for another one is refused.
    assert out["otherCompany"] == {"status": 403, "code": "COMPANY_NOT_ALLOWED"}
    assert [r["id"] for r in out["platformSearch"]["results"]] == [r["id"] for r in search["results"]]


def test_a_revoked_credential_fails_with_the_services_code(rag_server: str, platform_company, tmp_path: Path) -> None:
    from auth.clients import create_client, revoke_client
    from core.db.owner import admin_session_scope

    with admin_session_scope() as session:
        credential = create_client(session, f"node-revoked-{uuid.uuid4().hex[:6]}", "knowledge:read",
                                   companies=[platform_company.id])
        revoke_client(session, credential.id)
    result = subprocess.run([NODE or "node", str(FLOW)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "RAG_SERVICE_URL": rag_server, "RAG_CLIENT_ID": credential.id,
                                 "RAG_CLIENT_SECRET": credential.secret, "RAG_COMPANY_ID": platform_company.id})
    assert result.returncode != 0
    assert "RAGServiceError" in result.stderr and "INVALID_CLIENT" in result.stderr

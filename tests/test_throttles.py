"""Sign-in throttles that cannot be raced or spoofed: parallel wrong guesses for one account get
at most LOGIN_MAX_FAILURES_PER_ACCOUNT password checks (the rest 429), and X-Forwarded-For is
believed only from TRUSTED_PROXIES, so rotating it neither escapes the per-address limit nor
puts a made-up address in the audit log."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

import auth.sessions
from app.main import create_app
from auth import audit
from auth.passwords import verify_password
from auth.rate_limit import RateLimited, SlidingWindowLimiter, reserve_failures
from auth.sessions import login_limiters
from core.db.engines import session_scope
from core.db.tenant_scope import tenant
from core.settings import get_settings

PASSWORD = "correct horse battery"
LOGIN = "/api/auth/login"


@pytest.fixture(autouse=True)
def _fresh_limits():
    login_limiters(get_settings()).reset()
    yield
    login_limiters(get_settings()).reset()


@pytest.fixture
def password_checks(monkeypatch) -> Counter:
    """How many argon2 verifications sign-in really ran (the real function, counted)."""
    seen: Counter = Counter()
    lock = threading.Lock()

    def counting(password: str, password_hash: str | None) -> bool:
        with lock:
            seen["checks"] += 1
        return verify_password(password, password_hash)

    monkeypatch.setattr(auth.sessions, "verify_password", counting)
    return seen


def _app_client(**overrides: object) -> TestClient:
    return TestClient(create_app(get_settings().model_copy(update=overrides), prepare=False))


def _failed_logins(company_id: str) -> list:
    with tenant(company_id), session_scope() as session:
        return audit.list_entries(session, company_id, audit.LOGIN_FAILED, limit=1000)


def test_sixteen_parallel_wrong_guesses_get_at_most_five_password_checks(client, company, make_user,
                                                                         password_checks) -> None:
    user, _ = make_user(company, "staff")
    limit = get_settings().login_max_failures_per_account
    start = threading.Barrier(16)

    def guess(i: int) -> int:
        start.wait()
        return client.post(LOGIN, json={"email": user.email, "password": f"wrong guess {i}"}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(guess, range(16)))
    assert password_checks["checks"] <= limit, (password_checks, statuses)
    assert statuses[401] == password_checks["checks"] and statuses[429] == 16 - statuses[401], statuses
    assert statuses[429] >= 16 - limit
    # and the right password is refused too until the window passes (the account is locked, not the guesser)
    assert client.post(LOGIN, json={"email": user.email, "password": PASSWORD}).status_code == 429
    assert len(_failed_logins(company.id)) == statuses[401]


def test_a_success_gives_its_reservation_back(client, company, make_user, password_checks) -> None:
    user, _ = make_user(company, "staff")
    limit = get_settings().login_max_failures_per_account
    for _ in range(limit + 3):  # successes never count as failures
        assert client.post(LOGIN, json={"email": user.email, "password": PASSWORD}).status_code == 200
    for _ in range(limit):
        assert client.post(LOGIN, json={"email": user.email, "password": "nope nope"}).status_code == 401
    assert client.post(LOGIN, json={"email": user.email, "password": "nope nope"}).status_code == 429
    assert password_checks["checks"] == 2 * limit + 3


def test_reservations_are_all_or_nothing() -> None:
    account, address = SlidingWindowLimiter(2, 60), SlidingWindowLimiter(1, 60)
    held = reserve_failures(((account, "a"), (address, "ip")), "slow down")
    with pytest.raises(RateLimited):  # the address budget is spent: the account's is not touched
        reserve_failures(((account, "a"), (address, "ip")), "slow down")
    assert account.retry_after("a") == 0
    held.release()
    assert address.retry_after("ip") == 0 and account.retry_after("a") == 0


def test_rotating_x_forwarded_for_from_an_untrusted_client_does_not_escape_the_address_limit(
        company, make_user) -> None:
    user, _ = make_user(company, "staff")
    limited = _app_client(login_max_failures_per_address=3, login_max_failures_per_account=100)
    statuses = []
    for i in range(5):
        spoofed = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
        statuses.append(limited.post(LOGIN, json={"email": user.email, "password": f"wrong {i}"},
                                     headers=spoofed).status_code)
    assert statuses == [401, 401, 401, 429, 429]
    recorded = {entry.client_ip for entry in _failed_logins(company.id)}
    assert recorded == {"testclient"}  # the real peer, never the header
    login_limiters(limited.app.state.settings).reset()


def test_x_forwarded_for_is_believed_from_a_listed_proxy(company, make_user) -> None:
    user, _ = make_user(company, "staff")
    behind_proxy = _app_client(login_max_failures_per_address=3, login_max_failures_per_account=100,
                               trusted_proxies=["testclient"])
    for i in range(5):  # five different clients behind the proxy: five budgets of their own
        forwarded = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
        response = behind_proxy.post(LOGIN, json={"email": user.email, "password": f"wrong {i}"}, headers=forwarded)
        assert response.status_code == 401, response.text
    recorded = {entry.client_ip for entry in _failed_logins(company.id)}
    assert recorded == {f"198.51.100.{i + 1}" for i in range(5)}
    login_limiters(behind_proxy.app.state.settings).reset()


def test_a_wildcard_proxy_list_is_refused_at_start() -> None:
    from core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        _app_client(trusted_proxies=["*"])


def test_wrong_current_passwords_share_the_sign_in_budget(client, company, make_user, password_checks) -> None:
    user, _ = make_user(company, "staff")
    token = client.post(LOGIN, json={"email": user.email, "password": PASSWORD}).json()["token"]
    limit = get_settings().login_max_failures_per_account
    codes = [client.post("/api/auth/password", headers={"Authorization": f"Bearer {token}"},
                         json={"current_password": f"guess {uuid.uuid4()}", "new_password": "whatever it is"}
                         ).status_code for _ in range(limit + 2)]
    assert codes == [401] * limit + [429, 429]
    assert password_checks["checks"] == 1 + limit  # the sign-in, then one per allowed guess


def test_the_served_process_ignores_x_forwarded_for_from_a_local_client(company, make_user, embed_model,
                                                                          tmp_path) -> None:
    """End to end through uvicorn, whose own handling would believe X-Forwarded-For from 127.0.0.1."""
    import os

    import httpx

    from tests.servers import serve

    user, _ = make_user(company, "staff")
    env = {**os.environ, "LOG_LEVEL": "WARNING", "LOGIN_MAX_FAILURES_PER_ADDRESS": "3",
           "LOGIN_MAX_FAILURES_PER_ACCOUNT": "1000"}
    with serve(env, tmp_path / "server.log") as (base, _):
        statuses = [httpx.post(f"{base}{LOGIN}", json={"email": user.email, "password": f"wrong {i}"},
                               headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}, timeout=30).status_code
                    for i in range(6)]
    assert statuses.count(401) <= 3 and statuses[-2:] == [429, 429], statuses
    assert {entry.client_ip for entry in _failed_logins(company.id)} == {"127.0.0.1"}

"""Replicas share one budget: failed sign-ins and per-user search limits are counted in Postgres
(RATE_LIMIT_STORAGE=postgres, the default), so a server process and the two workers of an
`ils-rag serve --workers 2` on the same database refuse the 6th wrong password for an account
whichever of them gets it, and a user's searches are one budget across them."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import sqlalchemy as sa

from auth.rate_limit import RateLimited, RateLimiter, limiter_for, reserve_failures
from core.errors import ServiceError
from tests.conftest import FLEET_ACCOUNT_BUDGET, FLEET_SEARCH_BUDGET, Fleet
from tests.servers import free_port

LOGIN = "/api/auth/login"
SEARCH = "/api/rag/search"

pytestmark = pytest.mark.timeout(600)


def _login(base: str, email: str, password: str) -> int:
    with httpx.Client() as fresh:  # a new connection each time: the kernel spreads them over the workers
        return fresh.post(f"{base}{LOGIN}", json={"email": email, "password": password}, timeout=30).status_code


def test_serve_workers_runs_two_processes_on_one_port(fleet: Fleet) -> None:
    children = psutil.Process(fleet.workers_pid).children()
    workers = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
    assert len(workers) == 2, [child.cmdline() for child in children]


def test_the_sixth_failed_sign_in_is_refused_whichever_process_gets_it(fleet: Fleet, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    bases = [fleet.single, fleet.workers, fleet.single, fleet.workers, fleet.workers]
    assert [_login(base, user.email, f"wrong {i}") for i, base in enumerate(bases)] == [401] * FLEET_ACCOUNT_BUDGET
    assert _login(fleet.workers, user.email, "wrong again") == 429
    assert _login(fleet.single, user.email, "wrong again") == 429
    assert _login(fleet.workers, user.email, "correct horse battery") == 429  # the account is locked


def test_parallel_guesses_over_three_processes_get_at_most_the_budget(fleet: Fleet, company, make_user) -> None:
    user, _ = make_user(company, "staff")
    bases = (fleet.single, fleet.workers)
    start = threading.Barrier(16)

    def guess(i: int) -> int:
        start.wait()
        return _login(bases[i % 2], user.email, f"guess {i}")

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(guess, range(16)))
    assert statuses[401] == FLEET_ACCOUNT_BUDGET and statuses[429] == 16 - FLEET_ACCOUNT_BUDGET, statuses


def test_a_users_search_budget_is_shared_by_every_process(fleet: Fleet, company, make_user) -> None:
    _, headers = make_user(company, "staff")
    _, colleague = make_user(company, "staff")

    def search(base: str, who: dict[str, str]) -> httpx.Response:
        with httpx.Client() as fresh:
            return fresh.post(f"{base}{SEARCH}", json={"query": f"frames {uuid.uuid4().hex[:6]}"}, headers=who,
                              timeout=60)

    bases = [fleet.single, fleet.workers, fleet.single, fleet.workers]
    assert [search(base, headers).status_code for base in bases] == [200] * FLEET_SEARCH_BUDGET
    refused = search(fleet.single, headers)
    assert refused.status_code == 429 and refused.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert search(fleet.workers, headers).status_code == 429
    assert search(fleet.workers, colleague).status_code == 200  # a colleague's budget is their own


# --- the shared limiters themselves (in this process): Postgres, and Redis where one is installed -----


def _scope() -> str:
    return f"test.{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (skips where none is installed:
    Debian `apt-get install redis-server`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server on PATH (Debian: apt-get install -y redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(params=["postgres", "redis"])
def make_limiter(request: pytest.FixtureRequest, database: str) -> Callable[[int, float], RateLimiter]:
    storage = "postgres" if request.param == "postgres" else request.getfixturevalue("redis_url")
    return lambda limit, window_s: limiter_for(storage, _scope(), limit, window_s)


def test_shared_limiter_checks_records_and_gives_back(make_limiter) -> None:
    limiter = make_limiter(3, 60)
    for _ in range(3):
        limiter.attempt("k")
    with pytest.raises(RateLimited) as refused:
        limiter.attempt("k")
    assert 59 <= refused.value.retry_after_s <= 60 and refused.value.status_code == 429
    assert 59 <= limiter.retry_after("k") <= 60
    assert limiter.retry_after("other") == 0
    limiter.reset("k")
    wait, stamp = limiter.reserve("k")
    assert wait == 0 and stamp is not None
    limiter.release("k", stamp)
    for _ in range(3):  # the given-back event no longer counts
        assert limiter.reserve("k")[1] is not None
    assert limiter.reserve("k")[1] is None
    limiter.reset()
    assert limiter.retry_after("k") == 0


def test_shared_limiter_window_slides(make_limiter) -> None:
    limiter = make_limiter(2, 0.5)
    limiter.attempt("k")
    limiter.attempt("k")
    with pytest.raises(RateLimited):
        limiter.attempt("k")
    time.sleep(0.6)
    limiter.attempt("k")  # the first two left the window


def test_reservations_are_all_or_nothing_in_shared_storage(make_limiter) -> None:
    account, address = make_limiter(2, 60), make_limiter(1, 60)
    held = reserve_failures(((account, "a"), (address, "ip")), "slow down")
    with pytest.raises(RateLimited):  # the address budget is spent: the account's event is given back
        reserve_failures(((account, "a"), (address, "ip")), "slow down")
    assert account.reserve("a")[1] is not None and account.reserve("a")[1] is None
    held.release()
    assert address.retry_after("ip") == 0


def test_concurrent_attempts_never_exceed_the_limit(make_limiter) -> None:
    limiter = make_limiter(5, 60)
    start = threading.Barrier(20)

    def attempt(_: int) -> bool:
        start.wait()
        try:
            limiter.attempt("shared")
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(attempt, range(20))) == 5


def test_an_unreachable_redis_answers_503_not_unlimited() -> None:
    limiter = limiter_for(f"redis://127.0.0.1:{free_port()}/0", _scope(), 3, 60)
    with pytest.raises(ServiceError) as caught:
        limiter.attempt("k")
    assert caught.value.status_code == 503 and caught.value.code == "RATE_LIMIT_STORE_UNAVAILABLE"


def test_keys_are_stored_hashed_and_the_request_role_cannot_touch_the_table(database: str) -> None:
    from core.db.engines import get_engine
    from core.db.owner import get_admin_engine

    scope = _scope()
    limiter_for("postgres", scope, 3, 60).hit("someone@example.com")
    with get_admin_engine().connect() as connection:
        keys = connection.execute(sa.text("SELECT key_hash FROM ils_rate_limits WHERE scope = :s"),
                                  {"s": scope}).scalars().all()
    assert len(keys) == 1 and "example.com" not in keys[0] and len(keys[0]) == 64
    with get_engine().connect() as connection:
        for statement in ("SELECT count(*) FROM ils_rate_limits", "DELETE FROM ils_rate_limits",
                          f"SELECT ils_rate_forget('{scope}', 'x')"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                connection.execute(sa.text(statement))
            connection.rollback()


def test_memory_storage_is_still_available() -> None:
    limiter = limiter_for("memory", "anything", 1, 60)
    limiter.attempt("k")
    with pytest.raises(RateLimited):
        limiter.attempt("k")

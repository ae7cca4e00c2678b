"""Sliding-window rate limits keyed by any string, in shared storage or in this process.

Used for failed logins (per account and per client address), failed client authentications and
per-user search/chat limits: `limiter.attempt(key)` raises RateLimited (429 with Retry-After)
once `key` has used its budget in the last `window_s`.

Failure budgets (sign-in) must be checked and spent in one step, or N requests in flight
all pass the check before any of them records its failure: `reserve_failures` takes one
event from every budget at once before the expensive check, and the caller `release()`s it
when the attempt turns out not to be a failure.

Three stores behind one interface (`RateLimiter`), chosen by RATE_LIMIT_STORAGE (`limiter_for`):

- `PostgresSlidingWindowLimiter` (the default): the counters of every API process and replica
  are one table (migration 0011), so N processes share one budget instead of allowing N of
  them. Each operation is one autocommit call of a SECURITY DEFINER function on the sign-in
  role's connection (like the revocation check: one round trip, no tenant transaction);
  `reserve` is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE count < limit` that locks the
  key's row, so it stays atomic across processes. Keys are stored as SHA-256 digests, in an
  UNLOGGED table, so recording an event does not wait for a WAL flush.
- `RedisSlidingWindowLimiter` (RATE_LIMIT_STORAGE=redis://...): the same log in a Redis the
  deployment already runs, one atomic Lua script per operation.
- `SlidingWindowLimiter`: in this process only (each of N processes allows the whole budget);
  for a single process without a database round trip, and for unit tests.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core import metrics
from core.db.connections import is_unavailable
from core.db.engines import get_auth_engine
from core.db.owner import get_admin_engine
from core.errors import DatabaseUnavailable, ServiceError


class RateLimited(ServiceError):
    status_code = 429
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: float, *, code: str | None = None) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(message, code=code, headers={"Retry-After": str(self.retry_after_s)})


DEFAULT_MESSAGE = "Too many requests; try again later."


class RateLimiter(Protocol):
    """At most `limit` events per key in any `window_s`-second window."""

    scope: str
    limit: int
    window_s: float

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may act again; 0 when it may act now."""

    def hit(self, key: str) -> None:
        """Record one event for `key` whatever its budget (a failure that already happened)."""

    def attempt(self, key: str, message: str = DEFAULT_MESSAGE) -> None:
        """Check and record in one step: raises RateLimited when the budget is used up."""

    def reserve(self, key: str) -> tuple[float, float | None]:
        """Check and record in one step: (0, the event's stamp), or (seconds to wait, None)."""

    def release(self, key: str, stamp: float) -> None:
        """Take back one event `reserve` recorded."""

    def reset(self, key: str | None = None) -> None:
        """Forget `key`, or every key of this limiter."""


def _refused(scope: str, message: str, wait_s: float) -> RateLimited:
    metrics.RATE_LIMIT_REFUSALS.labels(scope).inc()
    return RateLimited(message, wait_s)


class SlidingWindowLimiter:
    """At most `limit` events per key in any `window_s`-second window (a sliding log), in this
    process only."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000, scope: str = "memory") -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.scope = scope
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys  # bounds memory when keys are attacker-chosen (e.g. emails)
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def _sweep(self, now: float) -> None:
        for key in list(self._events):
            self._prune(key, now)
        while len(self._events) >= self._max_keys:  # still full: forget the oldest keys first
            oldest = min(self._events, key=lambda k: self._events[k][-1])
            del self._events[oldest]

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may act again; 0 when it may act now."""
        with self._lock:
            now = self._clock()
            events = self._prune(key, now)
            if events is None or len(events) < self.limit:
                return 0.0
            return events[-self.limit] + self.window_s - now

    def hit(self, key: str) -> None:
        """Record one event for `key`."""
        with self._lock:
            now = self._clock()
            events = self._prune(key, now)
            if events is None:
                if len(self._events) >= self._max_keys:
                    self._sweep(now)
                events = self._events[key] = deque()
            events.append(now)

    def attempt(self, key: str, message: str = DEFAULT_MESSAGE) -> None:
        """Check and record in one step: raises RateLimited when the budget is used up."""
        with self._lock:
            now = self._clock()
            events = self._prune(key, now)
            if events is not None and len(events) >= self.limit:
                raise _refused(self.scope, message, events[-self.limit] + self.window_s - now)
            if events is None:
                if len(self._events) >= self._max_keys:
                    self._sweep(now)
                events = self._events[key] = deque()
            events.append(now)

    def reserve(self, key: str) -> tuple[float, float | None]:
        """Check and record one event in one step: (0, the event's stamp) when there was room,
        (seconds to wait, None) when the budget is used up (then nothing is recorded)."""
        with self._lock:
            now = self._clock()
            events = self._prune(key, now)
            if events is not None and len(events) >= self.limit:
                return events[-self.limit] + self.window_s - now, None
            if events is None:
                if len(self._events) >= self._max_keys:
                    self._sweep(now)
                events = self._events[key] = deque()
            events.append(now)
            return 0.0, now

    def release(self, key: str, stamp: float) -> None:
        """Take back one event `reserve` recorded (the attempt was not a failure after all)."""
        with self._lock:
            events = self._events.get(key)
            if events is None:
                return
            try:
                events.remove(stamp)
            except ValueError:  # already pruned or reset
                return
            if not events:
                del self._events[key]

    def reset(self, key: str | None = None) -> None:
        """Forget `key` (e.g. after a successful login), or every key."""
        with self._lock:
            if key is None:
                self._events.clear()
            else:
                self._events.pop(key, None)


@dataclass
class Reservation:
    """One event taken from each of several budgets; `release()` gives them all back."""

    taken: list[tuple[RateLimiter, str, float]] = field(default_factory=list)

    def release(self) -> None:
        for limiter, key, stamp in self.taken:
            limiter.release(key, stamp)
        self.taken.clear()


def reserve_failures(budgets: Sequence[tuple[RateLimiter, str]], message: str) -> Reservation:
    """Spend one event of every `(limiter, key)` budget, or none: raises RateLimited (429) when any
    is used up. Each budget is checked and spent in one atomic step (a lock in this process, a
    locked row in Postgres), so however many attempts run at once, on however many processes,
    at most `limit` of them get through per window before any has finished."""
    reservation = Reservation()
    for limiter, key in budgets:
        wait, stamp = limiter.reserve(key)
        if stamp is None:
            reservation.release()
            raise _refused(limiter.scope, message, wait)
        reservation.taken.append((limiter, key, stamp))
    return reservation


# --- shared storage --------------------------------------------------------------------------

# Migration 0011: SECURITY DEFINER functions only the sign-in role may execute.
_TAKE = sa.text("SELECT stamp, wait_us FROM ils_rate_take(:scope, :key, :limit, :window_us)")
_GIVE_BACK = sa.text("SELECT ils_rate_give_back(:scope, :key, :stamp)")
_WAIT = sa.text("SELECT ils_rate_wait(:scope, :key, :limit, :window_us)")
_FORGET = sa.text("SELECT ils_rate_forget(:scope, :key)")
_FORGET_SCOPE = sa.text("DELETE FROM ils_rate_limits WHERE scope = :scope")
_UNLIMITED = 2**31 - 1


class _SharedLimiter:
    """What the shared stores have in common: every operation is one atomic `_take` (check and
    record together) on the store, so only `_take` and the store-specific calls differ."""

    def __init__(self, scope: str, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.scope = scope
        self.limit = limit
        self.window_s = window_s
        self._window_us = int(window_s * 1_000_000)  # both stores count in microseconds of their own clock

    def _take(self, key: str, limit: int) -> tuple[float, float | None]:
        raise NotImplementedError

    def hit(self, key: str) -> None:
        self._take(key, _UNLIMITED)

    def attempt(self, key: str, message: str = DEFAULT_MESSAGE) -> None:
        wait, stamp = self._take(key, self.limit)
        if stamp is None:
            raise _refused(self.scope, message, wait)

    def reserve(self, key: str) -> tuple[float, float | None]:
        return self._take(key, self.limit)


class PostgresSlidingWindowLimiter(_SharedLimiter):
    """The sliding log of `SlidingWindowLimiter`, kept in Postgres for every process at once.

    Stamps are microseconds of the database's clock, so processes on machines whose clocks
    disagree still agree on the window. A database outage answers 503 (fail closed: an
    unlimited sign-in would be worse than a refused one)."""

    def _key(self, key: str) -> str:
        # A digest: the table never holds an email or an address, and any key fits the column.
        return hashlib.sha256(f"{self.scope}\0{key}".encode()).hexdigest()

    def _call(self, statement: sa.TextClause, **params: object) -> sa.Row | None:
        try:
            with get_auth_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                return connection.execute(statement, {"scope": self.scope, **params}).first()
        except (DBAPIError, PoolTimeoutError) as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
            raise

    def _take(self, key: str, limit: int) -> tuple[float, float | None]:
        row = self._call(_TAKE, key=self._key(key), limit=limit, window_us=self._window_us)
        if row is None or row.stamp is None:
            return (row.wait_us if row is not None else self._window_us) / 1_000_000, None
        return 0.0, float(row.stamp)

    def retry_after(self, key: str) -> float:
        row = self._call(_WAIT, key=self._key(key), limit=self.limit, window_us=self._window_us)
        return (row[0] or 0) / 1_000_000 if row is not None else 0.0

    def release(self, key: str, stamp: float) -> None:
        self._call(_GIVE_BACK, key=self._key(key), stamp=int(stamp))

    def reset(self, key: str | None = None) -> None:
        if key is not None:
            self._call(_FORGET, key=self._key(key))
            return
        # Every key of the scope: an operator's action (tests, a support reset), on the owner's
        # connection; the service roles can only forget one key they name.
        with get_admin_engine().begin() as connection:
            connection.execute(_FORGET_SCOPE, {"scope": self.scope})


# One sorted set per key, scored and named by stamps (microseconds of the Redis server's clock),
# pruned to the window on every call. Each script runs atomically on the server.
_REDIS_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
    local stamp = now
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    if last[2] and tonumber(last[2]) >= stamp then stamp = tonumber(last[2]) + 1 end
    local member = string.format('%.0f', stamp)
    redis.call('ZADD', KEYS[1], member, member)
    redis.call('PEXPIRE', KEYS[1], math.ceil((stamp + window - now) / 1000) + 1)
    return {member, '0'}
end
local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {false, string.format('%.0f', math.max(1, tonumber(oldest[2]) + window - now))}
"""
_REDIS_WAIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.0f', now - window), '+inf', 'WITHSCORES')
local count = #live / 2
if count < limit then return '0' end
return string.format('%.0f', math.max(0, tonumber(live[2 * (count - limit) + 2]) + window - now))
"""


class RedisSlidingWindowLimiter(_SharedLimiter):
    """The same sliding log in a Redis every process shares (RATE_LIMIT_STORAGE=redis://...), for
    deployments that run one anyway: no database round trip on the request path. Each operation
    is one Lua script, atomic on the server, on the Redis server's clock. An unreachable Redis
    answers 503, like an unreachable database."""

    def __init__(self, url: str, scope: str, limit: int, window_s: float) -> None:
        super().__init__(scope, limit, window_s)
        import redis

        self._redis = _redis_client(url)
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._take_script = self._redis.register_script(_REDIS_TAKE)
        self._wait_script = self._redis.register_script(_REDIS_WAIT)

    def _key(self, key: str) -> str:
        return f"ils-rate:{self.scope}:" + hashlib.sha256(f"{self.scope}\0{key}".encode()).hexdigest()

    def _run(self, operation: Callable[[], object]) -> object:
        try:
            return operation()
        except self._errors as exc:
            raise ServiceError("The rate-limit store (Redis) is unavailable; try again shortly.",
                               code="RATE_LIMIT_STORE_UNAVAILABLE", status_code=503,
                               headers={"Retry-After": "5"}) from exc

    def _take(self, key: str, limit: int) -> tuple[float, float | None]:
        stamp, wait_us = self._run(lambda: self._take_script(keys=[self._key(key)],
                                                             args=[limit, self._window_us]))  # type: ignore[misc]
        if stamp is None:
            return int(wait_us) / 1_000_000, None
        return 0.0, float(int(stamp))

    def retry_after(self, key: str) -> float:
        wait_us = self._run(lambda: self._wait_script(keys=[self._key(key)], args=[self.limit, self._window_us]))
        return int(wait_us) / 1_000_000  # type: ignore[call-overload]

    def release(self, key: str, stamp: float) -> None:
        self._run(lambda: self._redis.zrem(self._key(key), str(int(stamp))))

    def reset(self, key: str | None = None) -> None:
        if key is not None:
            self._run(lambda: self._redis.delete(self._key(key)))
            return

        def forget_scope() -> None:
            for found in self._redis.scan_iter(match=f"ils-rate:{self.scope}:*", count=1000):
                self._redis.delete(found)

        self._run(forget_scope)


@lru_cache(maxsize=4)
def _redis_client(url: str) -> Any:
    """One connection pool per URL and process, shared by every limiter."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def limiter_for(storage: str, scope: str, limit: int, window_s: float) -> RateLimiter:
    """The limiter RATE_LIMIT_STORAGE names for one budget. `scope` names the budget in shared
    storage, so every process that builds it counts into the same keys."""
    if storage == "memory":
        return SlidingWindowLimiter(limit, window_s, scope=scope)
    if storage == "postgres":
        return PostgresSlidingWindowLimiter(scope, limit, window_s)
    if storage.startswith(("redis://", "rediss://")):
        return RedisSlidingWindowLimiter(storage, scope, limit, window_s)
    raise ValueError(f"unknown RATE_LIMIT_STORAGE {storage!r}: postgres, memory or a redis:// URL")

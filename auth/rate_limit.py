"""A small in-process sliding-window rate limiter, keyed by any string.

Used for failed logins (per account and per client address) and meant for per-user
search/chat limits too: `SlidingWindowLimiter(limit, window_s).attempt(key)` raises
RateLimited (429 with Retry-After) once `key` has used its budget in the last `window_s`.

Failure budgets (sign-in) must be checked and spent in one step, or N requests in flight
all pass the check before any of them records its failure: `reserve_failures` takes one
event from every budget at once before the expensive check, and the caller `release()`s it
when the attempt turns out not to be a failure.

Hand-written rather than a dependency: it is ~60 lines and needs no store. It is
per process, so with several workers or replicas each one counts on its own (an
attacker gets up to N times the budget); a multi-replica deployment should move the
counters to a shared store (Redis, or a Postgres table) behind the same interface, where
`reserve` must stay one atomic step (a Lua script, or one conditional INSERT).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.errors import ServiceError


class RateLimited(ServiceError):
    status_code = 429
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: float, *, code: str | None = None) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(message, code=code, headers={"Retry-After": str(self.retry_after_s)})


class SlidingWindowLimiter:
    """At most `limit` events per key in any `window_s`-second window (a sliding log)."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
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

    def attempt(self, key: str, message: str = "Too many requests; try again later.") -> None:
        """Check and record in one step: raises RateLimited when the budget is used up."""
        with self._lock:
            now = self._clock()
            events = self._prune(key, now)
            if events is not None and len(events) >= self.limit:
                raise RateLimited(message, events[-self.limit] + self.window_s - now)
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

    taken: list[tuple[SlidingWindowLimiter, str, float]] = field(default_factory=list)

    def release(self) -> None:
        for limiter, key, stamp in self.taken:
            limiter.release(key, stamp)
        self.taken.clear()


def reserve_failures(budgets: Sequence[tuple[SlidingWindowLimiter, str]], message: str) -> Reservation:
    """Spend one event of every `(limiter, key)` budget, or none: raises RateLimited (429) when any
    is used up. Each budget is checked and spent under its own lock, so however many attempts
    run at once, at most `limit` of them get through per window before any has finished."""
    reservation = Reservation()
    for limiter, key in budgets:
        wait, stamp = limiter.reserve(key)
        if stamp is None:
            reservation.release()
            raise RateLimited(message, wait)
        reservation.taken.append((limiter, key, stamp))
    return reservation

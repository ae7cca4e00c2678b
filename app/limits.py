"""Per-user rate limits on the expensive endpoints: search (and embedding generation) and chat.

`Depends(rate_limited(Permission.KNOWLEDGE_READ, "search"))` checks the permission first,
then counts the call against the user's budget (SEARCH_RATE_PER_MINUTE /
CHAT_RATE_PER_MINUTE): above it the answer is 429 RATE_LIMITED with Retry-After.

Keyed by company and user id (from the verified token), so one busy user cannot starve their
colleagues, and a forged company id buys nothing. The counters are in RATE_LIMIT_STORAGE
(Postgres by default), so every API process and replica spends from the same budget; see
auth.rate_limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from fastapi import Depends, FastAPI, Request

from app.deps import CurrentUser, get_app_settings, require
from auth.permissions import Permission
from auth.rate_limit import RateLimiter, limiter_for
from core.settings import Settings

Kind = Literal["search", "chat"]
WINDOW_S = 60.0
_SETTING = {"search": "SEARCH_RATE_PER_MINUTE", "chat": "CHAT_RATE_PER_MINUTE"}
_lock = threading.Lock()


def _build(settings: Settings) -> dict[str, RateLimiter]:
    storage = settings.rate_limit_storage
    return {"search": limiter_for(storage, "search", settings.search_rate_per_minute, WINDOW_S),
            "chat": limiter_for(storage, "chat", settings.chat_rate_per_minute, WINDOW_S)}


def install_rate_limiters(app: FastAPI, settings: Settings) -> None:
    app.state.rate_limiters = _build(settings)


def limiter(request: Request, kind: Kind) -> RateLimiter:
    limiters = getattr(request.app.state, "rate_limiters", None)
    if limiters is None:  # an app assembled without create_app
        with _lock:
            limiters = getattr(request.app.state, "rate_limiters", None) or _build(get_app_settings(request))
            request.app.state.rate_limiters = limiters
    return limiters[kind]


def rate_limited(permission: Permission, kind: Kind) -> Callable[..., CurrentUser]:
    """A dependency: the permission check, then one call of `kind` for the user."""
    guard = require(permission)

    def dependency(request: Request, user: CurrentUser = Depends(guard)) -> CurrentUser:
        bucket = limiter(request, kind)
        bucket.attempt(f"{user.company_id}:{user.id}",
                       f"Too many {kind} requests: the limit is {bucket.limit} per minute per user "
                       f"({_SETTING[kind]}). Retry after the Retry-After seconds.")
        return user

    return dependency

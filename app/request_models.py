"""The base of every JSON request body: one rule for text the whole API shares.

NUL (U+0000) is valid JSON but no text a practice means to send: Postgres `text` and `jsonb`
cannot store it, and where it is not stored (a search query) it only hides what follows it
from tokenizers and logs. So any string anywhere in a body, nested lists and objects
included, that contains one is a 422 VALIDATION_ERROR naming the field, before a route runs.
Query, path and form parameters get the same rule from `app.deps.reject_nul_parameters`
(installed on the whole app), and tests/test_safe_errors.py fails when a route's body model
does not derive from `RequestModel`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator
from pydantic_core import PydanticCustomError

NUL = "\x00"
NUL_ERROR = "may not contain NUL (\\u0000) characters"


def holds_nul(value: Any) -> bool:
    """True when `value`, or any string inside it, contains NUL."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(holds_nul(item) for item in value)
    return False


class RequestModel(BaseModel):
    """Derive every request body from this instead of `BaseModel`."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if holds_nul(value):
            raise PydanticCustomError("nul_character", NUL_ERROR)
        return value

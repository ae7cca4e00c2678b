"""The two things SQL text may carry besides constants: validated identifiers and literals.

DDL (CREATE/DROP INDEX, CREATE DATABASE, partial-index predicates) takes no bound
parameters, so a name or a value must be spelled into the statement. These functions accept
only plain names and plain id-shaped values and refuse everything else, so what they return
cannot change a statement's meaning. Everything else is bound (tests/test_sql_binding.py).
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LITERAL = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def quoted_identifier(name: str) -> str:
    """`"name"` for a plain identifier (letters, digits, underscore; at most 63 bytes)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def quoted_literal(value: str) -> str:
    """`'value'` for an id-shaped value (letters, digits, `_.:-`), for DDL that cannot bind it."""
    if not _LITERAL.match(value):
        raise ValueError(f"not an id-shaped SQL literal: {value!r}")
    return f"'{value}'"

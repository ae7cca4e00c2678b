"""Metadata filters compiled to SQL with every key and value a bound parameter.

LlamaIndex's PGVectorStore pastes filter keys and values into the SQL text
(`metadata_->>'key' = 'value'`), on every path that takes filters: queries in every mode,
`delete_nodes`, `get_nodes`. A value that carries request input (a `ref_doc_id` built from
an uploaded file name, say) then runs as SQL. The guarded store hands every filter to
`compile_filter` instead, so no path can reach the upstream compiler.

Keys are names we choose in code, but they are bound too (`metadata_ -> :key`), and checked
against a plain-identifier pattern so a bad one fails loudly instead of matching nothing.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

COMPANY_KEY = "company_id"
ACTIVE_KEY = "is_active"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_COMPARISONS = {
    FilterOperator.EQ: lambda a, b: a == b,
    FilterOperator.NE: lambda a, b: a != b,
    FilterOperator.GT: lambda a, b: a > b,
    FilterOperator.LT: lambda a, b: a < b,
    FilterOperator.GTE: lambda a, b: a >= b,
    FilterOperator.LTE: lambda a, b: a <= b,
}


class FilterError(ValueError):
    """A filter the service cannot compile safely: a bug in our code, never user input."""


def _like_pattern(value: object) -> str:
    """`%value%` with LIKE's own wildcards in the value escaped (they are data, not pattern)."""
    escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def column_clause(filter_: MetadataFilter) -> Any | None:
    """Equality on the metadata keys data_chunks also holds as real columns.

    The (company_id, id) primary key serves the tenant filter, and no row's JSONB is decoded
    to evaluate it (what a tenant's exact scan would otherwise pay per row).
    """
    if filter_.operator != FilterOperator.EQ:
        return None
    if filter_.key == COMPANY_KEY:
        return sa.column(COMPANY_KEY) == sa.bindparam(None, str(filter_.value), type_=sa.String)
    if filter_.key == ACTIVE_KEY and str(filter_.value).lower() == "true":  # the generated column is NULL-safe
        return sa.column(ACTIVE_KEY).is_(True)
    return None


def compile_filter(metadata: Any, filter_: MetadataFilter) -> Any:
    """One metadata filter as a SQLAlchemy clause over the JSONB column `metadata`."""
    clause = column_clause(filter_)
    if clause is not None:
        return clause
    if not _KEY.match(filter_.key):
        raise FilterError(f"metadata filter key {filter_.key!r} is not a plain identifier")
    key = sa.bindparam(None, filter_.key, type_=sa.String)
    as_json = metadata.op("->", return_type=JSONB)(key)
    as_text = metadata.op("->>", return_type=sa.Text)(key)
    operator, value = filter_.operator, filter_.value
    if operator in _COMPARISONS:
        if _is_number(value):  # numbers compare as numbers, as upstream does
            return _COMPARISONS[operator](sa.cast(as_text, sa.Float), sa.bindparam(None, float(value), type_=sa.Float))
        return _COMPARISONS[operator](as_text, sa.bindparam(None, str(value), type_=sa.Text))
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        values = [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        bound = sa.bindparam(None, values, type_=ARRAY(sa.Text))
        matched = as_text == sa.func.any(bound)
        return matched if operator == FilterOperator.IN else sa.not_(matched)  # a missing key matches neither
    if operator in (FilterOperator.ANY, FilterOperator.ALL):
        values = [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        symbol = "?|" if operator == FilterOperator.ANY else "?&"
        return as_json.op(symbol, return_type=sa.Boolean)(sa.bindparam(None, values, type_=ARRAY(sa.Text)))
    if operator == FilterOperator.CONTAINS:
        return as_json.op("@>", return_type=sa.Boolean)(sa.bindparam(None, [value], type_=JSONB))
    if operator == FilterOperator.TEXT_MATCH:
        return as_text.like(sa.bindparam(None, _like_pattern(value), type_=sa.Text), escape="\\")
    if operator == FilterOperator.TEXT_MATCH_INSENSITIVE:
        return as_text.ilike(sa.bindparam(None, _like_pattern(value), type_=sa.Text), escape="\\")
    if operator == FilterOperator.IS_EMPTY:
        return as_text.is_(None)
    raise FilterError(f"metadata filter operator {operator!r} is not supported")

"""Every value that reaches SQL is a bound parameter.

Two halves: the chunk store's filter compiler (what LlamaIndex would otherwise paste into SQL
text) is exercised with hostile values on every operator and every store path, and the
source tree is walked for SQL text built by f-string, `%` or `.format` from anything but a
constant, a validated identifier or an entry of a short, justified allow-list.
"""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter
from sqlalchemy.dialects import postgresql

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "auth", "benchmarks", "core", "evals", "indexing", "retrieval")
HOSTILE = ["x'; SELECT 1; --", "a' OR '1'='1", "%", "_", "\\", "back\\slash'", "ü" * 300, "$$; DROP TABLE x; $$",
           "/* c */", "1e3", "42"]

# --- the filter compiler ---------------------------------------------------------------------


def _compile(filter_: MetadataFilter) -> tuple[str, dict]:
    from core.chunk_filters import compile_filter
    from core.vector_store import get_vector_store

    clause = compile_filter(get_vector_store()._table_class.metadata_, filter_)
    compiled = clause.compile(dialect=postgresql.dialect())
    return str(compiled), compiled.params


@pytest.mark.parametrize("operator", list(FilterOperator))
@pytest.mark.parametrize("value", HOSTILE)
def test_every_operator_binds_keys_and_values(database, operator: FilterOperator, value: str) -> None:
    from core.chunk_filters import FilterError

    is_list = operator in (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL)
    try:
        sql, params = _compile(MetadataFilter(key="filename", value=[value] if is_list else value, operator=operator))
    except FilterError:
        return  # an operator we refuse outright is safe too
    bound = " ".join(map(str, params.values()))
    assert "filename" not in sql and "filename" in bound, sql  # the key is bound, not SQL text
    if operator != FilterOperator.IS_EMPTY:
        assert value.replace("\\", "").replace("%", "").replace("_", "") in bound.replace("\\", ""), params
        if len(value) > 2 and not value.replace("e", "").isdigit():  # '%', '_', '42' also occur in SQL syntax
            assert value not in sql, sql


def test_a_key_that_is_not_an_identifier_is_refused(database) -> None:
    from core.chunk_filters import FilterError

    with pytest.raises(FilterError):
        _compile(MetadataFilter(key="filename') OR (1=1", value="x"))


def _sql_texts() -> list[str]:
    """Start recording the SQL text (without parameters) the service engine sends."""
    from core.db.engines import get_engine

    seen: list[str] = []
    sa.event.listen(get_engine(), "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: seen.append(statement))
    return seen


def test_store_paths_with_hostile_values_match_exactly_and_only_the_tenant(database, make_company,
                                                                           index_texts) -> None:
    from core.db.tenant_scope import tenant
    from core.vector_store import company_filter, get_vector_store

    a, b = make_company("Bind A"), make_company("Bind B")
    store = get_vector_store()
    sql = _sql_texts()
    for value in HOSTILE[:6]:
        name = f"{value}-{uuid.uuid4().hex[:6]}.txt"
        index_texts(a, [(name, "A's lens guide", None)])
        canary = index_texts(b, [(name, "B's canary chunk", None)])
        by_name = MetadataFilter(key="filename", value=name)
        with tenant(a.id):
            found = store.get_nodes(filters=company_filter(a.id, by_name))
            assert [n.get_content() for n in found] == ["A's lens guide"]
            like = MetadataFilter(key="filename", value=value, operator=FilterOperator.TEXT_MATCH)
            assert all(n.metadata["company_id"] == a.id for n in store.get_nodes(filters=company_filter(a.id, like)))
            store.delete_nodes(filters=company_filter(a.id, by_name))
            assert store.get_nodes(filters=company_filter(a.id, by_name)) == []
        with tenant(b.id):
            assert [n.node_id for n in store.get_nodes(node_ids=canary, filters=company_filter(b.id))] == canary
    assert sql and not any("SELECT 1;" in s or "OR '1'='1" in s or "slash'" in s for s in sql)


def test_delete_by_ref_doc_id_binds_the_id(database, make_company) -> None:
    from core.db.tenant_scope import tenant
    from core.vector_store import get_vector_store

    company = make_company("Bind ref")
    ref = f"{company.id}:upload:x'; SELECT pg_sleep(5); --.txt"
    sql = _sql_texts()
    with tenant(company.id):
        get_vector_store().delete(ref)
    deletes = [s for s in sql if s.startswith("DELETE FROM")]
    assert deletes and all("pg_sleep" not in s for s in deletes)


# --- the source tree -------------------------------------------------------------------------

SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|TRUNCATE|COPY|SET|WITH|"
                       r"VACUUM|ANALYZE|REINDEX|DO\s|CALL|LOCK|COMMENT|EXPLAIN)\b", re.IGNORECASE)
SQL_ANYWHERE = re.compile(r"\b(FROM|WHERE|VALUES|JOIN|ORDER BY|GROUP BY|RETURNING|ON CONFLICT)\b")
SAFE_CALLS = {"int", "float", "len", "quoted_identifier", "quoted_literal", "range"}

# Interpolations that build SQL text from something other than a constant, each with its reason.
ALLOWED = {
    ("0004_tenant_wall.py", "upgrade"): "table and column names read from pg_catalog, through _quoted()",
    ("0004_tenant_wall.py", "downgrade"): "table names read from pg_catalog, through _quoted()",
    ("0006_bm25_statistics.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0009_chunk_statements.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0015_bm25_chunk_terms.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0015_bm25_chunk_terms.py", "_grant_execute"): "function signatures written in the migration itself",
    ("embedding_cache.py", "_lookup"): "SQLite placeholders only: one '?' per key, the keys themselves bound",
    ("tenant_scope.py", "_set_local_claim"): "SET takes no parameter: the claim is matched against a hex MAC "
                                             "and an id-shaped company id first",
}


def _is_constant(node: ast.AST, constant_loops: set[str]) -> bool:
    """Interpolated expressions that cannot carry input: literals, ALL_CAPS constants (and
    their items and methods), loop variables over constant collections, validated or numeric
    casts."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper() or node.id in constant_loops
    if isinstance(node, ast.Attribute):
        return node.attr.isupper() or _is_constant(node.value, constant_loops)
    if isinstance(node, ast.Subscript):
        return _is_constant(node.value, constant_loops)
    if isinstance(node, ast.Tuple | ast.List):
        return all(_is_constant(e, constant_loops) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in SAFE_CALLS or (node.func.id in ("reversed", "sorted", "tuple", "list")
                                              and all(_is_constant(a, constant_loops) for a in node.args))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in SAFE_CALLS or _is_constant(node.func.value, constant_loops)
    return False


def _literal(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ""


def _looks_like_sql(text: str) -> bool:
    return bool(SQL_START.search(text)) and (bool(SQL_ANYWHERE.search(text)) or len(text.split()) <= 12)


def _enclosing_functions(tree: ast.Module) -> dict[ast.AST, ast.AST]:
    """Each node's innermost enclosing function (or the module)."""
    owner: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, current: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            owner[child] = current
            visit(child, child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else current)

    visit(tree, tree)
    return owner


def _constant_loop_names(function: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.For | ast.comprehension) and _is_constant(node.iter, names):
            names |= {t.id for t in ast.walk(node.target) if isinstance(t, ast.Name)}
    return names


def _sql_built_from_variables(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    owner = _enclosing_functions(tree)
    loops: dict[ast.AST, set[str]] = {}
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
            text = _literal(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _literal(node.left):
            parts = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            text = _literal(node.left)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
              and _literal(node.func.value)):
            parts = [*node.args, *(k.value for k in node.keywords)]
            text = _literal(node.func.value)
        else:
            continue
        function = owner.get(node, tree)
        name = getattr(function, "name", "<module>")
        if not _looks_like_sql(text) or (path.name, name) in ALLOWED:
            continue
        if function not in loops:
            loops[function] = _constant_loop_names(function)
        if not all(_is_constant(p, loops[function]) for p in parts):
            problems.append(f"{path.relative_to(ROOT)}:{node.lineno} in {name}: {text.strip()[:70]!r}")
    return sorted(problems)


def test_no_sql_is_built_from_variables() -> None:
    problems = [p for package in PACKAGES if (ROOT / package).is_dir()
                for path in sorted((ROOT / package).rglob("*.py")) for p in _sql_built_from_variables(path)]
    assert problems == [], "SQL text built from variables (bind them, or validate an identifier):\n" + "\n".join(
        problems)


def test_the_scanner_catches_what_it_should(tmp_path: Path) -> None:
    """The scanner itself: it must flag each way of pasting a variable into SQL."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(name, cur):\n"
        "    cur.execute(f\"SELECT * FROM docs WHERE filename = '{name}'\")\n"
        "    cur.execute(\"DELETE FROM docs WHERE id = '%s'\" % name)\n"
        "    cur.execute(\"UPDATE docs SET t = '{}' WHERE id = 1\".format(name))\n"
        "    cur.execute(f\"SELECT 1 FROM {TABLE} WHERE id = :id\")\n")  # a constant: fine
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_sql_built_from_variables(bad)) == 3
    finally:
        ROOT = saved


def test_sqlalchemy_text_statements_in_the_service_bind_their_values() -> None:
    """A sanity check of the scan's premise: sa.text() with :name placeholders compiles to binds."""
    compiled = sa.text("SELECT 1 WHERE 'x' = :v").bindparams(v="y'; --").compile(dialect=postgresql.dialect())
    assert "y'; --" not in str(compiled)

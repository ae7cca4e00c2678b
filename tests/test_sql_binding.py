"""Every value that reaches SQL is a bound parameter.

Two halves: the chunk store's filter compiler (what LlamaIndex would otherwise paste into SQL
text) is exercised with hostile values on every operator and every store path, and the
source tree is walked for SQL text (a statement or a fragment of one) built by f-string, `%`,
`.format` or `+` from anything but a constant, a validated identifier or an entry of a short,
justified allow-list (ALLOWED below).
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

# SQL text is a string with a statement's verb at its start (any case: "select ... from"), or an
# upper-case SQL keyword anywhere: fragments such as "WHERE f = '...'" or " AND x IN (...)" are
# pasted into statements too. Keywords are matched case-sensitively and as whole words, so
# English ("select a file", "and", "Sign in") and setting names (MAX_UPLOAD_MB) are not SQL.
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|TRUNCATE|COPY|SET|WITH|"
                       r"VACUUM|ANALYZE|REINDEX|DO\s|CALL|LOCK|COMMENT|EXPLAIN)\b", re.IGNORECASE)
SQL_ANYWHERE = re.compile(r"\b(FROM|WHERE|VALUES|JOIN|ORDER BY|GROUP BY|RETURNING|ON CONFLICT)\b")
SQL_KEYWORD = re.compile(
    r"(?<![\w.])(SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE|ALTER|DROP|GRANT|REVOKE|TRUNCATE|WHERE|AND|OR|"
    r"NOT|UNION|FROM|SET|VALUES|JOIN|ORDER BY|GROUP BY|HAVING|LIMIT|OFFSET|RETURNING|ON CONFLICT|LIKE|ILIKE|"
    r"BETWEEN|EXISTS|IS (NOT )?NULL|CASE WHEN|COALESCE|CAST)(?![\w.])"
    r"|(?<![\w.])(IN|ANY|ALL)\s*\(")
SAFE_CALLS = {"int", "float", "len", "quoted_identifier", "quoted_literal", "range"}
# Calls whose result is made only of their arguments: constant when every argument is.
PURE_CALLS = {"reversed", "sorted", "tuple", "list", "str", "min", "max", "abs", "round", "enumerate", "zip",
              "join", "format", "upper", "lower", "strip", "replace"}

# Interpolations that build SQL text from something other than a constant, each with its reason.
ALLOWED = {
    ("0004_tenant_wall.py", "upgrade"): "table and column names read from pg_catalog, through _quoted()",
    ("0004_tenant_wall.py", "downgrade"): "table names read from pg_catalog, through _quoted()",
    ("0006_bm25_statistics.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0006_bm25_statistics.py", "_matches_function"): "the same policy expression, quoted as one literal",
    ("0009_chunk_statements.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0015_bm25_chunk_terms.py", "upgrade"): "the policy expression is data_chunks' own, read from pg_policies",
    ("0015_bm25_chunk_terms.py", "_postings_function"): "the same policy expression, quoted as one literal",
    ("0015_bm25_chunk_terms.py", "_grant_execute"): "function signatures written in the migration itself",
    ("0016_request_role_session_state.py", "_for_each_role"): "role names and statements are the migration's own",
    ("0014_chunk_search_context.py", "_generate_from"): "one of the migration's two constant expressions",
    ("checks.py", "app_role_problems"): "an error message naming the GRANT an operator should run; never executed",
    ("tenant_scope.py", "_set_local_claim"): "SET takes no parameter: the claim is matched against a hex MAC "
                                             "and an id-shaped company id first",
}


def _is_constant(node: ast.AST | None, constant_loops: set[str]) -> bool:
    """Interpolated expressions that cannot carry input: literals, ALL_CAPS constants, loop
    variables over constant collections, validated or numeric casts, and what is built only of
    these (an item is constant only if its container and its key are; a call only if what is
    called and every argument are: `", ".join(names)` is as variable as `names`)."""
    if node is None or isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper() or node.id in constant_loops
    if isinstance(node, ast.Attribute):
        return node.attr.isupper() or _is_constant(node.value, constant_loops)
    if isinstance(node, ast.Subscript):
        return _is_constant(node.value, constant_loops) and _is_constant(node.slice, constant_loops)
    if isinstance(node, ast.Slice):
        return all(_is_constant(n, constant_loops) for n in (node.lower, node.upper, node.step))
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_is_constant(e, constant_loops) for e in node.elts)
    if isinstance(node, ast.Starred):
        return _is_constant(node.value, constant_loops)
    if isinstance(node, ast.JoinedStr):
        return all(_is_constant(v.value, constant_loops) for v in node.values if isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left, constant_loops) and _is_constant(node.right, constant_loops)
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand, constant_loops)
    if isinstance(node, ast.IfExp):  # the condition only chooses between the two
        return _is_constant(node.body, constant_loops) and _is_constant(node.orelse, constant_loops)
    if isinstance(node, ast.BoolOp):
        return all(_is_constant(v, constant_loops) for v in node.values)
    if isinstance(node, ast.GeneratorExp | ast.ListComp | ast.SetComp):  # targets: in constant_loops if their
        return _is_constant(node.elt, constant_loops) and all(  # iterables are constant
            _is_constant(g.iter, constant_loops) for g in node.generators)
    if isinstance(node, ast.Call):
        arguments = [*node.args, *(k.value for k in node.keywords)]
        if isinstance(node.func, ast.Name):
            if node.func.id in SAFE_CALLS:
                return True
            callee = node.func.id in PURE_CALLS or node.func.id.isupper()
        elif isinstance(node.func, ast.Attribute):
            if node.func.attr in SAFE_CALLS:
                return True
            callee = _is_constant(node.func, constant_loops) or (
                node.func.attr in PURE_CALLS and _is_constant(node.func.value, constant_loops))
        else:
            callee = False
        return callee and all(_is_constant(a, constant_loops) for a in arguments)
    return False


def _literal(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ""


def _looks_like_sql(text: str) -> bool:
    starts = bool(SQL_START.search(text)) and (bool(SQL_ANYWHERE.search(text)) or len(text.split()) <= 12)
    return starts or bool(SQL_KEYWORD.search(text))


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


def _concatenated(node: ast.AST, chained: set[ast.AST]) -> list[ast.AST]:
    """The operands of `a + b + c` (an f-string operand counts as one: its own values are checked
    where it is visited), marking the inner additions as read."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        chained.add(node)
        return [*_concatenated(node.left, chained), *_concatenated(node.right, chained)]
    return [node]


def _sql_built_from_variables(path: Path, allowed: dict[tuple[str, str], str] = ALLOWED) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    owner = _enclosing_functions(tree)
    loops: dict[ast.AST, set[str]] = {}
    problems: dict[int, str] = {}
    chained: set[ast.AST] = set()  # the inner `+` of a chain, read with its outermost one
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
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and node not in chained:
            operands = _concatenated(node, chained)
            parts = [o for o in operands if not (isinstance(o, ast.Constant) and isinstance(o.value, str))]
            text = " ".join(_literal(o) for o in operands)
        else:
            continue
        function = owner.get(node, tree)
        name = getattr(function, "name", "<module>")
        if not _looks_like_sql(text) or (path.name, name) in allowed:
            continue
        if function not in loops:
            loops[function] = _constant_loop_names(function)
        if not all(_is_constant(p, loops[function]) for p in parts):
            problems.setdefault(node.lineno, f"{path.relative_to(ROOT)}:{node.lineno} in {name}: {text.strip()[:70]!r}")
    return [problems[line] for line in sorted(problems)]  # one per line: `base + f"..."` is two findings


def test_no_sql_is_built_from_variables() -> None:
    problems = [p for package in PACKAGES if (ROOT / package).is_dir()
                for path in sorted((ROOT / package).rglob("*.py")) for p in _sql_built_from_variables(path)]
    assert problems == [], "SQL text built from variables (bind them, or validate an identifier):\n" + "\n".join(
        problems)


def test_every_allowed_entry_excuses_something() -> None:
    """An allow-list entry whose function no longer builds SQL from variables is removed, so the
    list stays the short, exact record of what the scan cannot prove."""
    excused = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            excused |= {(path.name, p.split(" in ", 1)[1].split(":", 1)[0])
                        for p in _sql_built_from_variables(path, allowed={})}
    assert set(ALLOWED) - excused == set()


def test_the_scanner_catches_what_it_should(tmp_path: Path) -> None:
    """The scanner itself: it must flag each way of pasting a variable into SQL, and only those."""
    bad = tmp_path / "bad.py"
    flagged = [
        "    cur.execute(f\"SELECT * FROM docs WHERE filename = '{name}'\")\n",
        "    cur.execute(\"DELETE FROM docs WHERE id = '%s'\" % name)\n",
        "    cur.execute(\"UPDATE docs SET t = '{}' WHERE id = 1\".format(name))\n",
        "    where = f\"WHERE f = '{name}'\"\n",  # a fragment, not a statement
        "    query = base + f\" AND f='{name}'\"\n",
        "    cur.execute(f\"SELECT 1 FROM t WHERE a IN ({', '.join(names)})\")\n",  # a call of variables
        "    cur.execute(f\"SELECT {NAME[name]}\")\n",  # a constant's item at a variable key
        "    cur.execute(f\"select * from docs where id = {name}\")\n",
        "    cur.execute(f\"SELECT 1 FROM t ORDER BY {name.upper()}\")\n",
        "    cur.execute(f\"SELECT 1 FROM {TABLES.get(name)}\")\n",
        "    cur.execute(\"SELECT 1 FROM t WHERE a = '\" + name + \"'\")\n",
        "    cur.execute(base + \" AND b = :b\")\n",  # whatever `base` holds, it is not known here
    ]
    fine = [
        "    cur.execute(f\"SELECT 1 FROM {TABLE} WHERE id = :id\")\n",  # a constant
        "    cur.execute(f\"SELECT 1 FROM t WHERE a IN ({', '.join(f':v{i}' for i in range(len(names)))})\")\n",
        "    cur.execute(f\"SELECT {NAME['id']}, {', '.join(COLUMNS)} FROM t LIMIT {int(name)}\")\n",
        "    raise ValueError(f\"Select a file and sign in or out, {name}: set it in MAX_UPLOAD_MB\")\n",
        "    log.info(f\"{name} is not a supported format; see FROM_ADDRESS or ORDER_LIMIT\")\n",
        "    cur.execute(\"SELECT 1 FROM \" + TABLE + \" WHERE a = :a\")\n",
        "    log.info(\"Sign in or \" + name)\n",
    ]
    bad.write_text("def f(name, names, base, cur, log):\n" + "".join(flagged) + "".join(fine))
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _sql_built_from_variables(bad)
    finally:
        ROOT = saved
    lines = sorted(int(p.split(":")[1].split()[0]) for p in found)
    assert lines == list(range(2, 2 + len(flagged))), found


def test_sqlalchemy_text_statements_in_the_service_bind_their_values() -> None:
    """A sanity check of the scan's premise: sa.text() with :name placeholders compiles to binds."""
    compiled = sa.text("SELECT 1 WHERE 'x' = :v").bindparams(v="y'; --").compile(dialect=postgresql.dialect())
    assert "y'; --" not in str(compiled)

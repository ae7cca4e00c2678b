"""The shape of the code, checked: no import cycle among the project's modules, the layers
point inward (nothing below `app` imports it), and settings are handed down to auth, indexing,
retrieval, evals and benchmarks rather than fetched there.

Imports are read from each module's syntax tree, function-level and TYPE_CHECKING imports
included: an import hidden inside a function still ties two modules together, it only
postpones the failure to the first call. A `from package import name` counts as an import of
the submodule `package.name` when there is one, else of `package`.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "auth", "core", "indexing", "retrieval", "evals", "benchmarks")
INNER_LAYERS = ("auth", "core", "indexing", "retrieval", "evals", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _project_module(name: str) -> str | None:
    """The project module an imported name lives in (`core.db.engines.get_engine` -> `core.db.engines`)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """Project modules that module `name` imports, anywhere in its body."""
    path = modules()[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` levels up
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
                       for alias in node.names]
        else:
            continue
        found.update(module for target in targets if (module := _project_module(target)))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in modules()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "core.db.engines" in graph["core.vector_store"]  # a top-level `from x import y`
    assert "app.cli.common" in graph["app.cli.serve"]
    assert "app.main" in graph["app.cli.serve"]  # inside a function
    assert "app.cli.serve" in graph["app.cli"]  # `from package import submodule`


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_nothing_below_app_imports_it() -> None:
    offenders = {name: sorted(m for m in deps if m == "app" or m.startswith("app."))
                 for name, deps in import_graph().items() if name.split(".")[0] in INNER_LAYERS}
    assert {name: deps for name, deps in offenders.items() if deps} == {}


# Layers whose code takes its settings (or the values it needs) from its caller: the composition
# roots (routes through Depends, CLI commands at their top) decide them once. A module here that
# asks for `get_settings()` itself would read the process's settings behind a caller's back.
SETTINGS_HANDED_DOWN = ("auth", "retrieval", "indexing", "evals", "benchmarks")
# module -> why it may still read the process's settings itself (none today)
SETTINGS_READERS_ALLOWED: dict[str, str] = {}
# `python -m` scripts: their `main()` is a composition root, as a CLI command is (nothing calls
# it but the interpreter), so it may read the process's settings exactly once and hand them
# down; every other function of the module takes them from its caller.
ENTRY_POINTS = ("evals.fusion", "evals.bm25_study", "evals.reference", "evals.regression")


def settings_lookups(source: str) -> list[int]:
    """Lines that use `get_settings` (a call, a reference or an import of it)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            named = [alias.name for alias in node.names]
        elif isinstance(node, ast.Name):
            named = [node.id]
        elif isinstance(node, ast.Attribute):
            named = [node.attr]
        else:
            continue
        if "get_settings" in named:
            lines.append(node.lineno)
    return sorted(set(lines))


def test_settings_lookups_are_found() -> None:
    source = ("from core.settings import get_settings\n"
              "def f():\n    import core.settings\n    return core.settings.get_settings().x\n"
              "def g(settings=None):\n    return settings or get_settings()\n")
    assert settings_lookups(source) == [1, 4, 6]
    assert settings_lookups("def f(settings):\n    return settings.get('get_settings')\n") == []


def entry_point_lookups(source: str) -> list[int]:
    """The lookups an entry point makes beyond its one allowed: a single `get_settings()` call
    in its top-level `main()`, and the import of the name. Two calls in main, or any elsewhere,
    are all reported."""
    tree = ast.parse(source)
    calls = [node.lineno for function in tree.body
             if isinstance(function, ast.FunctionDef) and function.name == "main"
             for node in ast.walk(function)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get_settings"]
    if len(calls) != 1:
        return settings_lookups(source)
    imports = {node.lineno for node in tree.body if isinstance(node, ast.ImportFrom)
               and any(alias.name == "get_settings" for alias in node.names)}
    return [line for line in settings_lookups(source) if line not in {*calls, *imports}]


def test_entry_point_lookups_allow_one_call_in_main_only() -> None:
    main_only = ("from core.settings import Settings, get_settings\n"
                 "def run(settings: Settings):\n    return settings.x\n"
                 "def main():\n    settings = get_settings()\n    run(settings)\n")
    assert entry_point_lookups(main_only) == []
    assert entry_point_lookups(main_only + "def other():\n    return get_settings()\n") == [8]
    twice = main_only.replace("run(settings)", "run(get_settings())")
    assert entry_point_lookups(twice) == [1, 5, 6]


def test_inner_layers_take_their_settings_from_the_caller() -> None:
    found = {name: entry_point_lookups(path.read_text()) if name in ENTRY_POINTS else settings_lookups(path.read_text())
             for name, path in modules().items() if name.split(".")[0] in SETTINGS_HANDED_DOWN}
    assert {name: lines for name, lines in found.items() if lines and name not in SETTINGS_READERS_ALLOWED} == {}
    assert set(SETTINGS_READERS_ALLOWED) <= set(found)  # an exception for a module that is gone is stale
    assert set(ENTRY_POINTS) <= set(found)


def test_search_modes_are_named_once() -> None:
    from typing import get_args

    from app.routes.search import SearchRequest
    from core.search_modes import MODE_NAMES
    from core.settings import Settings
    from evals.runner import RETRIEVERS
    from retrieval.retriever import RANKERS

    assert tuple(RANKERS) == MODE_NAMES
    assert get_args(Settings.model_fields["search_mode"].annotation) == MODE_NAMES
    schema = SearchRequest.model_json_schema()["properties"]["mode"]["anyOf"]
    assert next(s for s in schema if "enum" in s)["enum"] == list(MODE_NAMES)
    assert set(MODE_NAMES) <= set(RETRIEVERS)


def test_every_document_format_has_one_reader() -> None:
    from indexing.readers import READERS, SUPPORTED_EXTENSIONS, IngestError, check_extension

    assert tuple(sorted(READERS)) == SUPPORTED_EXTENSIONS
    for suffix in READERS:
        assert check_extension(f"notes{suffix.upper()}") == suffix
    with pytest.raises(IngestError) as refused:
        check_extension("notes.xlsx")
    assert all(suffix in refused.value.message for suffix in READERS)


def test_the_architecture_page_names_only_paths_that_exist() -> None:
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    named = {token for token in re.findall(r"`([^`\s]+)`", page)
             if "/" in token and not token.startswith(("POST", "GET", "/api", "/"))}
    named |= set(re.findall(r"^(\w+/)\s", page, flags=re.MULTILINE))  # the layer diagram
    assert len(named) > 30  # the page really names files
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    # a module named without its folder (`factory.py`) must exist in one of the packages
    modules_named = {token for token in re.findall(r"`([\w.]+\.py)`", page) if "/" not in token}
    missing += sorted(name for name in modules_named
                      if not any(any((ROOT / package).rglob(name)) for package in PACKAGES))
    # a dotted name (`retrieval.retriever.TenantRetriever`) must import: a renamed function fails here
    dotted = set(re.findall(rf"`((?:{'|'.join(PACKAGES)})(?:\.\w+)+)`", page))
    assert dotted  # the page really names code
    missing += sorted(name for name in dotted if not resolves(name))
    assert missing == []


def resolves(dotted: str) -> bool:
    """Whether `pkg.module.attr...` names something: the longest importable prefix, then
    attributes. Imported, not parsed, so a name re-exported by a package counts too."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            found: object = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not f"{module}.".startswith(f"{exc.name}."):  # a broken module that exists fails the test
                raise
            continue
        for attr in parts[cut:]:
            if not hasattr(found, attr):
                return False
            found = getattr(found, attr)
        return True
    return False


def test_dotted_names_resolve_to_code() -> None:
    assert resolves("retrieval.retriever.TenantRetriever.retrieve")
    assert resolves("core.db.tenant_scope")
    assert not resolves("retrieval.retriever.search")
    assert not resolves("retrieval.nowhere.thing")


def test_the_image_copies_every_package_the_wheel_holds() -> None:
    """`pip install .` in the Dockerfile builds from what was copied: a package left out would
    make `ils-rag` fail at import inside the image only."""
    import re
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE))
    assert packages == set(PACKAGES) and packages <= copied

"""The package's layout (issue 17): an AST import graph of all of `zapier_async`, function-local
and TYPE_CHECKING imports included.

The protocol core (wire helpers, runs, the API surface modules, models, errors, redaction) must
have no import cycle and no module over 800 non-blank lines. Cycles elsewhere in the package
are printed (``pytest -s``) for whoever owns those modules, not failed on here.
"""

from __future__ import annotations

import ast
import pathlib

import zapier_async

PACKAGE = "zapier_async"
ROOT = pathlib.Path(zapier_async.__file__).parent
MAX_LINES = 800

CORE = {
    f"{PACKAGE}.{name}"
    for name in (
        "_wire",
        "_runs",
        "_validators",
        "_protocol",
        "_actions",
        "_discovery",
        "_redact",
        "models",
        "errors",
    )
}


def modules() -> dict[str, pathlib.Path]:
    """Every module of the package, subpackages included, by dotted name."""
    found: dict[str, pathlib.Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph() -> dict[str, set[str]]:
    """Edges from each module to the package's modules it imports, anywhere in its body."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:
                        deps.add(f"{base}.{alias.name}")
                    elif base in known:
                        deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search (empty iff the graph is acyclic)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert f"{PACKAGE}._wire" in graph[f"{PACKAGE}._runs"]
    assert f"{PACKAGE}._runs" in graph[f"{PACKAGE}._protocol"]
    assert f"{PACKAGE}.models" in graph[f"{PACKAGE}.errors"]  # under TYPE_CHECKING
    assert f"{PACKAGE}.redis._limiter" in graph[f"{PACKAGE}.redis"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_protocol_core_has_no_import_cycle():
    graph = import_graph()
    core = {name: graph[name] & CORE for name in CORE}
    assert cycles(core) == []
    # Nor does any cycle of the whole package pass through the core.
    assert [c for c in cycles(graph) if CORE & set(c)] == []


def test_the_core_imports_nothing_above_it():
    # The core is pure: it never reaches up into the engine, the client or the emulator.
    graph = import_graph()
    assert {name: graph[name] - CORE for name in CORE if graph[name] - CORE} == {}


def test_report_cycles_elsewhere_in_the_package():
    found = cycles(import_graph())
    for cycle in found:
        print("import cycle:", " -> ".join(cycle))


def test_no_core_module_is_over_800_non_blank_lines():
    known = modules()
    sizes = {}
    for name in CORE:
        lines = known[name].read_text(encoding="utf-8").splitlines()
        sizes[name] = sum(1 for line in lines if line.strip())
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}

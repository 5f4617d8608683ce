"""The emulator's layout (issue 17): no module of `zapier_async.testing` over 800 non-blank
lines, and no import cycle among them, function-local and TYPE_CHECKING imports included."""

from __future__ import annotations

import ast
import pathlib

import zapier_async.testing

PACKAGE = "zapier_async.testing"
ROOT = pathlib.Path(zapier_async.testing.__file__).parent
MAX_LINES = 800


def modules() -> dict[str, pathlib.Path]:
    return {
        PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}": path
        for path in sorted(ROOT.glob("*.py"))
    }


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
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    base = ".".join([PACKAGE, *([base] if base else [])])
                for alias in node.names:
                    if f"{base}.{alias.name}" in known:
                        deps.add(f"{base}.{alias.name}")
                    elif base in known:
                        deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
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


def test_the_cycle_finder_finds_a_function_local_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_emulator_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert graph[f"{PACKAGE}._fake"] >= {f"{PACKAGE}._fake_actions", f"{PACKAGE}._fake_runs"}
    assert cycles(graph) == []


def test_no_emulator_module_is_over_800_non_blank_lines():
    sizes = {
        path.name: sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        for path in modules().values()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}

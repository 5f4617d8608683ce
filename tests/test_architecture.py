"""The package's architecture, measured as issue 17 measures it (see docs/architecture.md).

Figures over the whole `zapier_async` package, subpackages included:

- non-blank lines per module (the limit is 800);
- import cycles in the AST import graph. Function-local imports count (issue 17), and so do
  imports under ``if TYPE_CHECKING:``: a type annotation is a dependency a reader must follow,
  and every module is counted, the emulator (``testing/``) included. The runtime-only graph
  (top-level and function-local imports) is measured too, in its own test, so neither figure
  hides the other;
- private names (one leading underscore) one module imports from another (``from m import
  _x``, or ``m._x`` on an imported module);
- the root ``__all__`` and ``ZapierClient.__init__``'s keyword arguments.

What holds today is asserted, so it cannot regress; what does not yet is a strict xfail whose
reason carries the measured figures (an xfail that starts passing fails: drop the marker then).
Everything here reads source files with `ast`, nothing is imported but the package itself.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import re
from collections.abc import Iterable

import pytest

import zapier_async

PACKAGE = "zapier_async"
ROOT = pathlib.Path(zapier_async.__file__).parent
DOCS = ROOT.parent / "docs"
MAX_LINES = 800

# --- today's figures (the ratchets); lower them when the code improves --------------------

# Modules over MAX_LINES, measured with this file (non-blank lines).
KNOWN_LONG: dict[str, int] = {}
# Every edge that lies on an import cycle (TYPE_CHECKING and function-local imports included).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()  # no cycle left, TYPE_CHECKING included
# Private names imported across modules: none in the library, 70 in the emulator (testing/).
MAX_PRIVATE_CROSSINGS = 70
ROOT_ALL_SIZE = 78  # + AuthView, SyncAuthView, CredentialMetrics (issue 16)
CLIENT_KEYWORDS = 24  # + track_credentials (issue 16), rate_window (issue 15)


# --- the measurements -----------------------------------------------------------------------


@functools.cache
def modules() -> dict[str, pathlib.Path]:
    """Every module of the package, subpackages included, by dotted name."""
    found: dict[str, pathlib.Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def non_blank_lines(path: pathlib.Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _resolve(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _kinds(tree: ast.Module) -> dict[int, str]:
    """``id(import node) -> "type" | "local"``; imports absent from it are top-level."""
    kinds: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for inner in ast.walk(node):
                kinds.setdefault(id(inner), "local")
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for stmt in node.body:  # type: ignore[attr-defined]
                for inner in ast.walk(stmt):
                    kinds[id(inner)] = "type"
    return kinds


def scan(
    name: str, source: str, known: Iterable[str], *, is_package: bool = False
) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """One module's package imports: ``{(target, kind)}`` and ``[(source module, _name)]``."""
    known = set(known)
    tree = ast.parse(source)
    kinds = _kinds(tree)
    edges: set[tuple[str, str]] = set()
    private: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        kind = kinds.get(id(node), "top")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    edges.add((alias.name, kind))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    edges.add((f"{base}.{alias.name}", kind))
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
                elif base in known:
                    edges.add((base, kind))
                    if _is_private(alias.name):
                        private.append((base, alias.name))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _is_private(node.attr)
        ):
            private.append((aliases[node.value.id], node.attr))
    return {(target, kind) for target, kind in edges if target != name}, private


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def measured() -> tuple[dict[str, set[tuple[str, str]]], list[tuple[str, str, str]]]:
    """``(module -> {(target, kind)}, [(importer, source, private name)])`` for the package."""
    known = modules()
    imports: dict[str, set[tuple[str, str]]] = {}
    private: list[tuple[str, str, str]] = []
    for name, path in known.items():
        edges, names = scan(
            name, path.read_text(encoding="utf-8"), known, is_package=path.name == "__init__.py"
        )
        imports[name] = edges
        private.extend((name, source, attr) for source, attr in names if source != name)
    return imports, private


def import_graph(*, type_checking: bool = True) -> dict[str, set[str]]:
    imports, _ = measured()
    return {
        name: {target for target, kind in edges if type_checking or kind != "type"}
        for name, edges in imports.items()
    }


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Edges inside a strongly connected component: exactly the edges on some cycle."""
    return {
        (a, b)
        for component in components(graph)
        for a in component
        for b in graph[a]
        if b in component
    }


def _describe(edges: Iterable[tuple[str, str]]) -> str:
    imports, _ = measured()
    return "; ".join(
        f"{a} -> {b} ({'/'.join(sorted(k for t, k in imports[a] if t == b))})"
        for a, b in sorted(edges)
    )


def long_modules() -> dict[str, int]:
    sizes = {name: non_blank_lines(path) for name, path in modules().items()}
    return {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}


def private_by_pair(private: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    pairs: dict[tuple[str, str], list[str]] = {}
    for importer, source, attr in private:
        pairs.setdefault((importer, source), []).append(attr)
    return {pair: sorted(names) for pair, names in sorted(pairs.items())}


# --- the measuring tools measure -------------------------------------------------------------


def test_the_scanner_sees_relative_local_type_only_and_private_imports():
    known = {"p", "p.a", "p.b", "p.c", "p.sub", "p.sub.d"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import a\n"
        "from .b import _hidden, shown\n"
        "import p.c as c\n"
        "from .sub import d\n"
        "if TYPE_CHECKING:\n"
        "    from .sub.d import T\n"
        "def f():\n"
        "    from . import __version__\n"
        "    return c._secret, a.public\n"
    )
    edges, private = scan("p.sub.m", source, known)
    assert ("p.sub", "top") in edges  # `from . import a` there: p.sub.a is no module
    assert ("p", "top") not in edges
    edges, private = scan("p.m", source, known)
    assert edges == {
        ("p.a", "top"),
        ("p.b", "top"),
        ("p.c", "top"),
        ("p.sub.d", "top"),
        ("p.sub.d", "type"),
        ("p", "local"),
    }
    assert sorted(private) == [("p.b", "_hidden"), ("p.c", "_secret")]


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert components({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert components({"a": {"b"}, "b": set()}) == []
    assert cycle_edges({"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set()}) == {
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
    }


def test_the_package_graph_has_what_we_know_is_there():
    graph = import_graph()
    assert f"{PACKAGE}._wire" in graph[f"{PACKAGE}._runs"]
    assert f"{PACKAGE}._pipeline" in graph[f"{PACKAGE}._engine"]
    assert f"{PACKAGE}.models" in graph[f"{PACKAGE}.errors"]  # under TYPE_CHECKING
    assert f"{PACKAGE}.models" not in import_graph(type_checking=False)[f"{PACKAGE}.errors"]
    assert len(modules()) >= 60


# --- layers -------------------------------------------------------------------------------

PURE_CORE = {
    f"{PACKAGE}.{name}"
    for name in [
        "_wire",
        "_runs",
        "_protocol",
        "_actions",
        "_discovery",
        "_ratelimit",
        "_budget",
        "_budget_config",
        "_learnt",
        "_windows",
        "_backoff",
        "_cadence",
        "_polling",
        "_estimate",
        "models",
        "errors",
        "_redact",
        "_validators",
        "_clock",
    ]
}
# The planner annotates handles; a protocol in the core would remove this edge.
KNOWN_CORE_REACHES_UP = {(f"{PACKAGE}._polling", f"{PACKAGE}._handle")}


def test_the_pure_core_imports_nothing_above_it():
    graph = import_graph()
    up = {(m, t) for m in PURE_CORE for t in graph[m] if t not in PURE_CORE}
    assert up <= KNOWN_CORE_REACHES_UP, _describe(up - KNOWN_CORE_REACHES_UP)


# --- module size ----------------------------------------------------------------------------


def test_no_module_grows_over_800_lines_beyond_the_known_ones():
    grown = {name: n for name, n in long_modules().items() if n > KNOWN_LONG.get(name, MAX_LINES)}
    assert grown == {}, f"over {MAX_LINES} non-blank lines (or longer than measured): {grown}"


def test_no_module_over_800_lines():
    assert long_modules() == {}


# --- import cycles --------------------------------------------------------------------------


def test_no_new_import_cycle():
    new = cycle_edges(import_graph()) - KNOWN_CYCLE_EDGES
    assert not new, f"imports that close a new cycle: {_describe(new)}"


def test_no_import_cycle_at_runtime():
    # Top-level and function-local imports: what issue 17's "done" names.
    graph = import_graph(type_checking=False)
    assert components(graph) == [], _describe(cycle_edges(graph))


def test_no_import_cycle():
    graph = import_graph()
    assert components(graph) == [], _describe(cycle_edges(graph))


# --- private names --------------------------------------------------------------------------


def test_private_names_crossing_modules_do_not_grow():
    _, private = measured()
    listing = "\n".join(
        f"{importer} <- {source}: {', '.join(names)}"
        for (importer, source), names in private_by_pair(private).items()
    )
    assert len(private) <= MAX_PRIVATE_CROSSINGS, f"{len(private)} crossings:\n{listing}"


def test_no_private_name_crosses_library_modules():
    _, private = measured()
    library = [p for p in private if not p[0].startswith(f"{PACKAGE}.testing")]
    assert private_by_pair(library) == {}


# --- the public surface ---------------------------------------------------------------------


def test_the_root_all_does_not_grow_and_every_name_exists():
    names = zapier_async.__all__
    assert len(names) == len(set(names))
    assert [n for n in names if not hasattr(zapier_async, n)] == []
    assert len(names) <= ROOT_ALL_SIZE, f"{len(names)} names in zapier_async.__all__"


def test_the_client_constructor_does_not_grow():
    params = inspect.signature(zapier_async.ZapierClient.__init__).parameters.values()
    keywords = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert len(keywords) <= CLIENT_KEYWORDS, keywords


# --- docs/architecture.md names what exists -------------------------------------------------

TICKED = re.compile(r"`([^`\s]+)`")


def _reference(token: str) -> str | None:
    """The package-relative dotted name a backticked token refers to, or None."""
    token = re.sub(r"\(.*\)$", "", token).rstrip("/")
    token = token.removeprefix(f"{PACKAGE}.")
    if token.endswith(".py"):
        token = token[:-3]
    token = token.replace("/", ".")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", token):
        return None
    head = token.split(".")[0]
    if head.startswith("__") or not (head.startswith("_") or f"{PACKAGE}.{head}" in modules()):
        return None
    return token


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join([PACKAGE, *parts[:cut]])
        if name not in modules():
            continue
        if cut == len(parts):  # a module: it exists (optional extras are not imported)
            return True
        obj: object = importlib.import_module(name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_module_and_name_the_architecture_page_mentions_exists():
    page = DOCS / "architecture.md"
    if not page.is_file():  # an sdist ships tests/ without docs/
        pytest.skip("docs/ is not here")
    references = {
        r for t in TICKED.findall(page.read_text(encoding="utf-8")) if (r := _reference(t))
    }
    assert len(references) >= 40, sorted(references)
    assert sorted(r for r in references if not _resolves(r)) == []


def test_the_reference_checker_rejects_what_does_not_exist():
    assert _reference("_engine.Engine.create") == "_engine.Engine.create"
    assert _reference("client.run(...)") is None
    assert _reference("redis/") == "redis"
    assert _resolves("_engine.Engine.create")
    assert not _resolves("_engine.Engine.no_such_method")
    assert not _resolves("_no_such_module.thing")


# --- the flow of one run --------------------------------------------------------------------


def test_the_engine_prices_polls_by_the_limiters_pressure():
    client = zapier_async.ZapierClient(
        auth=zapier_async.BearerToken("architecture-test-token"),
        base_url="http://127.0.0.1:9",
        transport=_NoTransport(),
    )
    # Step 6 of docs/architecture.md: the planner reads the live budget (at 898c0da it did
    # not: AdaptivePolling(policy=poll_policy) alone, so polls were priced as if the budget
    # were always slack; only tests/cadence_sim.py wired it). `pressure_of` reads the bucket
    # of each run's own credential, `pressure` one budget for all.
    planner = client._engine._polling
    readers = [getattr(planner, name, None) for name in ("pressure_of", "pressure")]
    assert any(reader is not None for reader in readers)
    # ... against the runs in flight of that same bucket (every action's, no other user's).
    assert planner.runs_of == client._engine.spare.following


class _NoTransport:
    async def send(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("nothing is sent")

    async def aclose(self) -> None:
        pass

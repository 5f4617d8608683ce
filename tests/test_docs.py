"""The documentation's examples and references cannot silently rot.

Every ```python block under docs/ is compiled (top-level ``await`` allowed, for snippets that
live inside a coroutine). A block preceded by a marker line runs, against the emulator:

- ``<!-- test -->``: executed as a script (``asyncio.run(main())`` and all); a block that
  defines ``test_*`` functions then has each of them run, coroutines with a started
  `FakeZapier` as their ``fake_zapier`` argument (as the pytest plugin's fixture gives, with
  the block's own ``fake_zapier_options()`` if it defines one);
- ``<!-- test: needs zapier_async.Name.attr -->`` (or ``...Name.method(param)``): the same,
  once that name (or parameter) exists; until then skipped, naming it (an example written
  from the design ahead of its code);
- ``<!-- test: compile -->``: compiled only (it needs Zapier, Redis, a web framework...).

Also checked here, since pytest does not run ``mkdocs build`` (CI does, with ``--strict``):
every ``::: name`` of the API reference imports, every public error has its row on the
errors page, and every environment variable `_config` reads is on the configuration page.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import zapier_async
from zapier_async import errors
from zapier_async.testing import FakeZapier

DOCS = Path(__file__).resolve().parent.parent / "docs"
if not DOCS.is_dir():  # an sdist ships tests/ without docs/
    pytest.skip("docs/ is not here (an sdist?)", allow_module_level=True)
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!--\s*test(?::\s*(?P<arg>[^>]*?))?\s*-->\s*$")


def _blocks() -> list[Any]:
    params = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            mode = "compile" if marker is None else (marker.group("arg") or "run").strip()
            line = text.count("\n", 0, match.start()) + 2
            name = f"{page.relative_to(DOCS)}:{line}"
            params.append(pytest.param(name, match.group(1), mode, id=name))
    return params


BLOCKS = _blocks()


def _resolve(dotted: str) -> object:
    """The object a dotted path names (a module, then attributes); AttributeError if none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AttributeError(dotted)


def _exists(needed: str) -> bool:
    """Whether ``a.b.name`` exists, or, for ``a.b.fn(param)``, fn takes that parameter."""
    dotted, _, param = needed.partition("(")
    try:
        obj = _resolve(dotted)
    except AttributeError:
        return False
    if not param:
        return True
    return param.rstrip(")").strip() in inspect.signature(obj).parameters  # type: ignore[arg-type]


def test_the_docs_have_runnable_examples():
    modes = [param.values[2] for param in BLOCKS]
    assert len(BLOCKS) >= 20
    assert modes.count("run") >= 6
    assert all(mode in ("run", "compile") or mode.startswith("needs ") for mode in modes), modes


@pytest.mark.parametrize(("name", "source", "mode"), BLOCKS)
def test_example(name: str, source: str, mode: str):
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if mode == "compile":
        return
    if mode.startswith("needs "):
        for needed in mode.removeprefix("needs ").split(","):
            if not _exists(needed.strip()):
                pytest.skip(f"{needed.strip()} does not exist yet")
    assert not code.co_flags & inspect.CO_COROUTINE, f"{name}: top-level await in a run block"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(code, namespace)
    tests = [fn for key, fn in namespace.items() if key.startswith("test_") and callable(fn)]
    for fn in tests:
        if inspect.iscoroutinefunction(fn):
            options = namespace.get("fake_zapier_options")
            kwargs = options.__wrapped__() if hasattr(options, "__wrapped__") else {}
            asyncio.run(_with_fake(fn, kwargs))
        else:
            fn()


async def _with_fake(fn: Any, options: dict[str, Any]) -> None:
    wanted = inspect.signature(fn).parameters
    if "fake_zapier" not in wanted:
        await fn()
        return
    async with FakeZapier(**options) as fake:
        await fn(fake_zapier=fake)


def test_every_api_reference_target_imports():
    targets = [
        line.removeprefix(":::").strip()
        for page in DOCS.rglob("*.md")
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith(":::")
    ]
    assert "zapier_async" in targets
    for target in targets:
        _resolve(target)


def test_the_errors_page_covers_every_public_error():
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    public = [name for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    missing = [name for name in public if f"`{name}`" not in page]
    assert not missing, f"docs/errors.md says nothing about {missing}"
    # ... and names no error that does not exist.
    documented = set(re.findall(r"^\| *`(\w+Error)`", page, re.MULTILINE))
    extra = {
        name for name in documented if not hasattr(errors, name) and not _exists_elsewhere(name)
    }
    assert not extra, f"docs/errors.md documents errors that do not exist: {sorted(extra)}"


def _exists_elsewhere(name: str) -> bool:
    for module in ("zapier_async.callbacks", "zapier_async.journal", "zapier_async.redis"):
        if hasattr(importlib.import_module(module), name):
            return True
    return False


def test_the_configuration_page_names_every_variable():
    source = Path(zapier_async.__file__).with_name("_config.py").read_text(encoding="utf-8")
    variables = set(re.findall(r"``(ZAPIER_[A-Z_]+)``", source))
    assert "ZAPIER_BASE_URL" in variables
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(v for v in variables if f"`{v}`" not in page)
    assert not missing, f"docs/configuration.md does not mention {missing}"


# --- documented arguments match the signatures -----------------------------------------------
# mkdocs.yml turns griffe's `warn_unknown_params` off (griffe cannot see the __init__ that attrs
# generates); this check does its job on the runtime signatures instead.

REFERENCED = (
    "zapier_async",
    "zapier_async.errors",
    "zapier_async.callbacks",
    "zapier_async.testing",
    "zapier_async.redis",
    "zapier_async.journal",
    "zapier_async.celery",
    "zapier_async.otel",
    "zapier_async.prometheus",
)
ARG_LINE = re.compile(r"^(?P<indent> *)(?:\*{0,2})(?P<name>\w+)(?: \([^)]*\))?:(?: |$)")


def _documented_args(doc: str) -> list[str]:
    """The names in a Google-style ``Args:`` section."""
    lines = inspect.cleandoc(doc).splitlines()
    names: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() not in ("Args:", "Arguments:", "Parameters:"):
            continue
        section_indent = len(line) - len(line.lstrip())
        arg_indent = None
        for body in lines[i + 1 :]:
            if not body.strip():
                continue
            indent = len(body) - len(body.lstrip())
            if indent <= section_indent:
                break
            if arg_indent is None:
                arg_indent = indent
            match = ARG_LINE.match(body)
            if indent == arg_indent and match:
                names.append(match.group("name"))
    return names


def _callables() -> list[tuple[str, Any]]:
    found: dict[str, Any] = {}
    for module_name in REFERENCED:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and inspect.isfunction(member):
                        found.setdefault(f"{obj.__module__}.{member.__qualname__}", member)
            elif inspect.isfunction(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return sorted(found.items())


def test_documented_arguments_are_in_the_signatures():
    mismatches = []
    checked = 0
    for name, obj in _callables():
        doc = obj.__doc__ or ""
        if inspect.isclass(obj) and "Args:" not in doc:
            doc = obj.__init__.__doc__ or ""
        documented = _documented_args(doc)
        if not documented:
            continue
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        checked += 1
        unknown = [arg for arg in documented if arg not in signature.parameters]
        if unknown:
            mismatches.append(f"{name}: {unknown}")
    assert checked >= 30
    assert not mismatches, "documented arguments missing from signatures:\n" + "\n".join(mismatches)


def test_the_args_reader_finds_names_and_skips_their_descriptions():
    doc = """Summary.

    Args:
        client: A client.
            Continued: not an argument.
        *clients (ZapierClient): More.
        **options: Passed on.

    Returns:
        value: not an argument.
    """
    assert _documented_args(doc) == ["client", "clients", "options"]

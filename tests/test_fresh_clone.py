"""A fresh clone has everything its tests need, or says in one line how to get it.

`.ci/run` proves the whole of it (it clones the repository into an empty folder and runs the
README's command there); these are the cheap checks that fail first, in any test run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A parent folder's `shared` (as a path string, a `Path` join or `os.path.join` arguments):
# a file outside the repository.
OUTSIDE = re.compile(r"\.\.\W{1,6}shared\b")


def test_no_test_or_module_reads_files_from_outside_the_repository():
    offenders = []
    for top in ("zapier_async", "tests", "benchmarks"):
        for path in sorted((REPO / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [
                f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
                for m in OUTSIDE.finditer(text)
            ]
    assert not offenders, "files outside the repository are referenced:\n" + "\n".join(offenders)


def test_the_outside_pattern_catches_the_old_spec_path():
    assert OUTSIDE.search('SPEC = Path("..") / "shared" / "spec" / "zapier-partner-api.yml"')
    assert OUTSIDE.search("expected .." + "/shared/spec/zapier-partner-api.yml")
    assert not OUTSIDE.search("the shared rate limiter")


def test_redis_tests_skip_with_the_one_line_install_command(monkeypatch, tmp_path):
    pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")
    from _redis_fixtures import SKIP_REASON, redis_server_or_skip

    assert SKIP_REASON == "redis-server not found: sudo apt-get install redis-server"
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no redis-server on PATH
    with pytest.raises(pytest.skip.Exception) as skipped, redis_server_or_skip():
        pytest.fail("a redis-server was started without one on PATH")
    assert str(skipped.value) == SKIP_REASON


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^readme_test_command=(.+)$", ci, re.MULTILINE)
    assert match, ".ci/run no longer names the README's test command"
    (command,) = shlex.split(match.group(1))
    readme_lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in readme_lines
    assert "pip install -e '.[test]'" in command
    assert "pytest -W error" in command

"""What the built distributions promise: types (`py.typed`), versions, supported Pythons.

The wheel and the sdist are built from this checkout with hatchling (the build backend,
installed by the `test` extra) in a subprocess, with no network and no build isolation.
"""

from __future__ import annotations

import email
import importlib.metadata
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

import zapier_async

REPO = Path(__file__).resolve().parents[1]
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _build(kind: str, out: Path) -> Path:
    """Build a wheel or an sdist of the checkout into `out` with hatchling's PEP 517 hooks."""
    pytest.importorskip("hatchling", reason="the 'test' extra installs hatchling")
    script = f"import sys, hatchling.build as b; print(b.build_{kind}(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"building the {kind} failed:\n{result.stderr}"
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    path = _build("wheel", tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    path = _build("sdist", tmp_path_factory.mktemp("sdist"))
    with tarfile.open(path) as archive:
        return archive.getnames()


def _metadata(wheel: zipfile.ZipFile) -> Message:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.message_from_bytes(wheel.read(name))


def test_the_wheel_ships_py_typed(wheel):
    names = wheel.namelist()
    assert "zapier_async/py.typed" in names
    assert "zapier_async/__init__.py" in names
    assert "Typing :: Typed" in _metadata(wheel).get_all("Classifier", [])


def test_the_sdist_ships_py_typed_and_what_its_tests_need(sdist):
    root = f"zapier_async-{zapier_async.__version__}"
    for needed in (
        "zapier_async/py.typed",
        "pyproject.toml",
        "README.md",
        "tests/test_contract.py",
        "tests/spec/zapier-partner-api.yml",
    ):
        assert f"{root}/{needed}" in sdist, needed


def test_the_wheel_has_the_packages_version(wheel):
    assert _metadata(wheel)["Version"] == zapier_async.__version__
    assert any(
        n.startswith(f"zapier_async-{zapier_async.__version__}.dist-info/")
        for n in wheel.namelist()
    )


def test_one_classifier_per_supported_python(wheel):
    metadata = _metadata(wheel)
    versions = {
        c.rsplit(" :: ", 1)[1]
        for c in metadata.get_all("Classifier", [])
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == set(SUPPORTED_PYTHONS)
    assert metadata["Requires-Python"] == f">={SUPPORTED_PYTHONS[0]}"


def test_version_is_the_installed_distributions():
    assert re.fullmatch(
        r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", zapier_async.__version__
    )
    assert importlib.metadata.version("zapier-async") == zapier_async.__version__

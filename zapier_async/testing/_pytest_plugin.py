"""The pytest plugin of zapier_async: a `fake_zapier` fixture.

Installed with the package (entry point `pytest11: zapier_async`), it gives every test a
started `FakeZapier` on a free loopback port, closed after the test::

    import pytest

    @pytest.mark.asyncio
    async def test_send(fake_zapier):
        async with ZapierClient(auth=BearerToken("t"), base_url=fake_zapier.url) as client:
            run = await (await client.run("core:x", authentication=None, inputs={}))
        assert fake_zapier.stats.runs_created == 1

The fixture is async, so it needs pytest-asyncio (any mode). Without it the plugin still
loads, and using the fixture fails with a message that says what to install.

To configure the emulator for a module or a directory, override `fake_zapier_options`::

    @pytest.fixture
    def fake_zapier_options():
        return {"error_rate": 0.2, "seed": 1, "rate_limit": (60, 60.0)}

or build your own fixture, which is all `fake_zapier` does::

    @pytest_asyncio.fixture
    async def zapier():
        async with FakeZapier(durations=0.2, fault_rate=0.05, seed=3) as fake:
            yield fake
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import pytest

from zapier_async.testing._fake import FakeZapier

__all__ = ["fake_zapier", "fake_zapier_options"]


@pytest.fixture
def fake_zapier_options() -> dict[str, Any]:
    """Keyword arguments for the `FakeZapier` of the `fake_zapier` fixture; override it.

    Returns:
        An empty dict: the emulator's defaults.
    """
    return {}


async def _fake_zapier(fake_zapier_options: dict[str, Any]) -> AsyncIterator[FakeZapier]:
    """A started `FakeZapier` (configured by `fake_zapier_options`), closed after the test.

    Yields:
        The emulator; point a client at `fake_zapier.url`.
    """
    async with FakeZapier(**fake_zapier_options) as fake:
        yield fake


def _missing_pytest_asyncio() -> NoReturn:
    """Stands in for `fake_zapier` when pytest-asyncio is not installed: fails the test."""
    pytest.fail(
        "the fake_zapier fixture is async and needs pytest-asyncio: "
        "pip install pytest-asyncio (or zapier-async[test])",
        pytrace=False,
    )


def _make_fixture() -> Callable[..., Any]:
    # Imported here, guarded, so that a session without pytest-asyncio still starts: the
    # plugin is loaded into every pytest run of every project that installs zapier-async.
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(name="fake_zapier")(_missing_pytest_asyncio)
    return pytest_asyncio.fixture(name="fake_zapier")(_fake_zapier)


fake_zapier = _make_fixture()

"""Fixtures shared across test modules.

The Redis fixtures (`redis_server`, `rclient`) exist only when the ``redis`` extra is
installed (the ``test`` extra includes it); the modules using them skip themselves otherwise.
Without a ``redis-server`` executable the tests that need one skip with the command that
installs it (`_redis_fixtures.SKIP_REASON`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio
from aiohttp import web  # noqa: TID251 (test servers on 127.0.0.1)

if importlib.util.find_spec("redis") is not None:
    from _redis_fixtures import rclient, redis_server

    __all__ = ["rclient", "redis_server"]


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start aiohttp.web apps on 127.0.0.1 (an ephemeral port each); all stopped afterwards."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()

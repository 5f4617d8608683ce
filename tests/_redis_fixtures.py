"""The redis-server and client fixtures shared by the Redis test modules.

Import both names into a test module (``from _redis_fixtures import rclient, redis_server``)
after its ``pytest.importorskip("redis.asyncio")``: without the extra those modules skip.

``redis-server`` is the one thing the README's test command cannot install (it is not on
PyPI): where it is missing, the tests that need it skip with the one-line command that
installs it (`SKIP_REASON`); `.ci/run` installs it, so CI runs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Final

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from zapier_async.testing import _redis as launcher

INSTALL_COMMAND: Final = "sudo apt-get install redis-server"
SKIP_REASON: Final = f"redis-server not found: {INSTALL_COMMAND}"


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[launcher.RedisServer]:
    """A private redis-server on 127.0.0.1, stopped on exit; skips the test without one."""
    try:
        with launcher.redis_server() as server:
            yield server
    except launcher.RedisServerNotFoundError:
        pytest.skip(SKIP_REASON)


@pytest.fixture
def redis_server() -> Iterator[launcher.RedisServer]:
    """A private redis-server on 127.0.0.1 for the test, stopped afterwards."""
    with redis_server_or_skip() as server:
        yield server


@pytest_asyncio.fixture
async def rclient(redis_server: launcher.RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of that server (socket timeout 5 s), closed afterwards."""
    client = aioredis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()

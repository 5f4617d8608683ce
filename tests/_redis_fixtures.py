"""The redis-server and client fixtures shared by the Redis test modules.

Import both names into a test module (``from _redis_fixtures import rclient, redis_server``)
after its ``pytest.importorskip("redis.asyncio")``: without the extra those modules skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from zapier_async.testing import _redis as launcher


@pytest.fixture
def redis_server() -> Iterator[launcher.RedisServer]:
    """A private redis-server on 127.0.0.1 for the test, stopped afterwards."""
    try:
        with launcher.redis_server() as server:
            yield server
    except launcher.RedisServerNotFoundError as exc:
        pytest.skip(str(exc))


@pytest_asyncio.fixture
async def rclient(redis_server: launcher.RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of that server (socket timeout 5 s), closed afterwards."""
    client = aioredis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()

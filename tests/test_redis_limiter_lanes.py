"""`RedisLimiter` lanes: the in-memory limiter's scenarios (``test_limiter_lanes.py``) on a
budget kept in Redis, this process's waiters raised while they wait."""

from __future__ import annotations

import uuid

import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from _util import until  # noqa: E402
from test_limiter_lanes import (  # noqa: E402
    a_raised_lane_jumps_the_line,
    natives_go_before_a_raised_lane,
)

from zapier_async.redis import RedisLimiter  # noqa: E402
from zapier_async.testing import FakeClock  # noqa: E402


@pytest.mark.asyncio
async def test_a_raised_lane_jumps_the_line_and_spends_the_reserve_through_redis(rclient):
    name = f"lanes-{uuid.uuid4().hex}"
    async with RedisLimiter(rclient, name=name, clock=FakeClock(), spend_window=True) as limiter:

        async def flush() -> None:  # real I/O; the fake clock stands still meanwhile
            await until(lambda: not limiter.busy and not any(b.ops for b in limiter._all()))

        await a_raised_lane_jumps_the_line(limiter, flush)
        assert limiter.in_flight == 89 + 10  # the cancelled waiter's place went to another
        assert all(b.raised == [0, 0, 0] for b in limiter._all())  # no count left behind


@pytest.mark.asyncio
async def test_a_native_interactive_request_goes_before_a_raised_lane_through_redis(rclient):
    name = f"lanes-{uuid.uuid4().hex}"
    clock = FakeClock()
    async with RedisLimiter(rclient, name=name, clock=clock, spend_window=True) as limiter:

        async def flush() -> None:  # real I/O; the fake clock stands still meanwhile
            await until(lambda: not limiter.busy and not any(b.ops for b in limiter._all()))

        await natives_go_before_a_raised_lane(limiter, clock, flush)
        assert limiter.in_flight == 0

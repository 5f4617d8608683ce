"""`RedisLimiter.pressure` shows the line of every process sharing a bucket: each process
writes its waiters per priority with the round trips it makes anyway, and sees the others'
(`zapier_async.redis._peers`). Two limiters on one real redis-server and one `FakeClock`."""

from __future__ import annotations

import asyncio
import uuid

import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from _redis_limiter_state import line_name  # noqa: E402
from _util import until  # noqa: E402

from zapier_async._budget import Priority  # noqa: E402
from zapier_async.redis import RedisLimiter  # noqa: E402
from zapier_async.testing import FakeClock  # noqa: E402

SPENT = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "60"}


async def quiet(*limiters: RedisLimiter) -> None:
    """Until no round trip is out (real I/O; the fake clock stands still meanwhile)."""
    await until(lambda: not any(lim.busy for lim in limiters))


async def advance_to(clock: FakeClock, target: float, *limiters: RedisLimiter) -> None:
    """Move the clock in steps of 10 ms, each limiter's round trips done at each step."""
    while clock.monotonic() < target:
        await quiet(*limiters)
        await clock.advance(min(0.01, target - clock.monotonic()))
    await quiet(*limiters)


def waiting_for(limiter: RedisLimiter, priority: Priority, **options: float) -> asyncio.Task:
    async def wait() -> None:
        async with limiter.slot(priority, key="user", **options):
            pass

    return asyncio.ensure_future(wait())


@pytest.mark.asyncio
async def test_pressure_counts_the_waiters_of_every_process_sharing_the_bucket(rclient):
    clock = FakeClock()
    name = f"lines-{uuid.uuid4().hex}"
    options = {"name": name, "clock": clock, "lease": 30.0}
    async with RedisLimiter(rclient, **options) as a, RedisLimiter(rclient, **options) as b:
        async with a.slot(key="user") as slot:  # the window is spent for a minute
            slot.record(200, SPENT)
        await quiet(a, b)
        # Another process's creates and a poll wait for it; this one has nobody waiting.
        theirs = [waiting_for(b, Priority.BULK) for _ in range(2)]
        theirs.append(waiting_for(b, Priority.BULK, max_wait=5.0))
        theirs.append(waiting_for(b, Priority.POLL))
        await until(lambda: b.waiting == 4)
        await advance_to(clock, 0.05, a, b)
        assert b.pressure("user").waiting_by_priority == (0, 1, 3)
        mine = waiting_for(a, Priority.INTERACTIVE)  # a round trip of this process's own
        await until(lambda: a.waiting == 1)
        await advance_to(clock, 0.1, a, b)
        seen = a.pressure("user")
        assert seen.waiting_by_priority == (1, 1, 3)  # its own and the other process's
        assert getattr(seen, "processes", None) == 2
        trips = a.round_trips
        # A waiter that gave up (max_wait) leaves the other's line; a process waiting
        # writes (and reads) the lines every lease / 3 seconds.
        await advance_to(clock, 10.2, a, b)
        assert theirs[2].done()
        assert b.waiting == 3
        assert a.pressure("user").waiting_by_priority == (1, 1, 2)
        assert a.round_trips - trips <= 2  # no round trip per poll interval of its own
        # Cancelled waiters leave it too.
        for task in theirs:
            task.cancel()
        await asyncio.gather(*theirs, return_exceptions=True)
        await advance_to(clock, 20.2, a, b)
        assert a.pressure("user").waiting_by_priority == (1, 0, 0)
        assert getattr(a.pressure("user"), "processes", None) == 2
        # A line not written for `lease` seconds is dropped (its process stopped or died).
        line = line_name(name, "user")
        await rclient.hset(line, "dead", f"{clock.time() - 31.0!r} 0 0 7")
        await rclient.hset(line, "alive", f"{clock.time()!r} 0 0 2")
        await advance_to(clock, 30.2, a, b)
        seen = a.pressure("user")
        assert seen.waiting_by_priority == (1, 0, 2)
        assert getattr(seen, "processes", None) == 3
        assert not await rclient.hexists(line, "dead")
        # Past `lease` since the other process last made a round trip: it is gone.
        await advance_to(clock, 50.2, a, b)
        assert getattr(a.pressure("user"), "processes", None) == 2  # this one and "alive"
        mine.cancel()
        await asyncio.gather(mine, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_process_alone_sees_only_its_own_line(rclient):
    clock = FakeClock()
    async with RedisLimiter(rclient, name=f"alone-{uuid.uuid4().hex}", clock=clock) as limiter:
        async with limiter.slot(key="user") as slot:
            slot.record(200, SPENT)
        waiters = [waiting_for(limiter, Priority.BULK) for _ in range(3)]
        await until(lambda: limiter.waiting == 3)
        await advance_to(clock, 0.1, limiter)
        seen = limiter.pressure("user")
        assert seen.waiting_by_priority == (0, 0, 3)  # not counted twice
        assert getattr(seen, "processes", None) == 1
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await advance_to(clock, 0.2, limiter)
        assert limiter.pressure("user").waiting_by_priority == (0, 0, 0)

"""`RedisLimiter.spare`: reads ahead of plan for processes sharing a budget through Redis.

The same answers at the same (injected) times give the same spare budget as the in-memory
limiter's; with another process seen spending the bucket, each is offered its share; and end
to end, a client on a `RedisLimiter` reads its runs ahead of plan on a window's leftover.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable

import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from _redis_limiter_state import bucket_name  # noqa: E402
from _util import client_for, until  # noqa: E402

import zapier_async as za  # noqa: E402
from zapier_async._budget import BudgetConfig, Priority  # noqa: E402
from zapier_async.redis import RedisLimiter  # noqa: E402
from zapier_async.redis._codec import load  # noqa: E402
from zapier_async.testing import FakeClock, FakeZapier  # noqa: E402


def window_headers(limit: int, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{reset_after:.3f}",
    }


async def written(limiter: RedisLimiter) -> None:
    """Until every answer recorded is in Redis (real I/O; the fake clock stands still)."""
    await until(lambda: not limiter.busy and not any(b.ops for b in limiter._all()))


def same(found: tuple[int, float, int] | None, expected: tuple[int, float, int] | None) -> bool:
    """Equal spare answers (``at`` within float rounding: Redis keeps epoch seconds)."""
    if found is None or expected is None:
        return found is expected
    return (
        found[0] == expected[0]
        and found[2] == expected[2]
        and math.isclose(found[1], expected[1], abs_tol=1e-5)
    )


@pytest.mark.asyncio
async def test_spare_answers_as_the_in_memory_limiter_for_the_same_answers(rclient):
    clock = FakeClock()
    memory = za.Limiter(clock=clock, spend_window=True)
    name = f"spare-{uuid.uuid4().hex}"
    async with RedisLimiter(rclient, name=name, clock=clock, spend_window=True) as shared:
        assert shared.spare("user") is None  # an unknown bucket
        assert memory.spare("user") is None
        answers: list[tuple[int, float, int] | None] = []
        for remaining in range(9, 0, -1):  # background requests: all but the reserve (1)
            slots = [
                await limiter.slot(Priority.POLL, key="user").__aenter__()
                for limiter in (memory, shared)
            ]
            await clock.advance(0.02)  # the round trip to the server
            for slot in slots:
                slot.record(200, window_headers(10, remaining, 10.0))
                slot._release()
            await written(shared)
            await clock.advance(0.5)
            found, expected = shared.spare("user"), memory.spare("user")
            assert same(found, expected), (remaining, found, expected)
            answers.append(found)
        assert [a[0] if a else None for a in answers] == [9, 8, 7, 6, 5, 4, 3, 2, 1]
        assert answers[0] is not None
        assert 8.5 < answers[0][1] < 10.0  # just before the window may end
        # A request waiting here is entitled to the last one: nothing is spare.
        waiter = asyncio.ensure_future(shared.slot(Priority.POLL, key="user").__aenter__())
        await until(lambda: shared.waiting == 1)
        assert shared.spare("user") is None
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert shared.spare("nobody") is None
    await memory.aclose()


@pytest.mark.asyncio
async def test_nothing_is_spare_without_spend_window(rclient):
    clock = FakeClock()
    async with RedisLimiter(rclient, name=f"paced-{uuid.uuid4().hex}", clock=clock) as limiter:
        async with limiter.slot(Priority.POLL, key="user") as slot:
            slot.record(200, window_headers(10, 9, 10.0))
        await written(limiter)
        assert limiter.pressure("user").mode == "window"  # the window is known
        assert limiter.spare("user") is None


@pytest.mark.asyncio
async def test_processes_sharing_the_window_are_each_offered_a_share(rclient):
    clock = FakeClock()
    name = f"share-{uuid.uuid4().hex}"
    options = {"name": name, "clock": clock, "spend_window": True}
    async with RedisLimiter(rclient, **options) as first, RedisLimiter(rclient, **options) as other:
        async with first.slot(Priority.POLL, key="user") as slot:
            slot.record(200, window_headers(20, 19, 10.0))
        await written(first)
        alone = first.spare("user")
        assert alone is not None
        assert alone[0] == 19  # nobody else seen: all of it
        # Another process holds a slot while this one writes an answer: it is seen.
        held = await other.slot(Priority.POLL, key="user").__aenter__()
        async with first.slot(Priority.POLL, key="user") as slot:
            slot.record(200, window_headers(20, 17, 10.0))
        await written(first)
        fields = await rclient.hgetall(bucket_name(name, "user"))
        budget, in_flight = load(fields[b"s"].decode(), BudgetConfig(spend_window=True))
        assert any(not slot_id.startswith(first._owner) for slot_id in in_flight)
        left = budget.spare(clock.time())
        assert left is not None
        shared = first.spare("user")
        assert shared is not None
        assert shared[0] == math.ceil(left[0] / 2)  # two processes: half each, rounded up
        held.record(200, window_headers(20, 16, 10.0))
        held._release()
        await written(other)
        # Seen over two window lengths ago: this process has the window to itself again.
        await clock.advance(21.0)
        async with first.slot(Priority.POLL, key="user") as slot:
            slot.record(200, window_headers(20, 19, 10.0))
        await written(first)
        again = first.spare("user")
        assert again is not None
        assert again[0] == 19


@pytest.mark.asyncio
async def test_a_client_on_a_redis_limiter_reads_runs_ahead_of_plan(rclient):
    # As tests/test_spare.py's end-to-end test, through Redis: 20 requests per 10 s, runs
    # of 3 s whose first poll the cadence puts at 30 s. The window's leftover reads the five
    # runs before it ends; without `spare` they are seen ended at 30 s.
    clock = FakeClock()
    limiter = RedisLimiter(rclient, name=f"e2e-{uuid.uuid4().hex}", clock=clock, spend_window=True)
    slow_first = za.PollPolicy(initial=30.0, factor=1.5, cap=60.0, jitter=0.0)
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(20, 10.0), durations=3.0)
    idle: Callable[[], bool] = lambda: not limiter.busy  # noqa: E731
    async with (
        limiter,
        fake,
        client_for(fake, clock=clock, poll_policy=slow_first, limiter=limiter) as client,
    ):
        handles = []
        for i in range(5):
            task = asyncio.ensure_future(client.run("core:x", authentication=None, inputs={"i": i}))
            while not task.done():  # time stands still during Redis round trips
                await until(idle)
                await clock.advance(0.01)
            handles.append(task.result())
        while not all(h.done() for h in handles) and clock.monotonic() < 10.0:
            await until(idle)
            await clock.advance(0.05)
        assert all(h.done() for h in handles), "not read before the window ended"
        assert all(h.status is za.RunStatus.SUCCESS for h in handles)
        assert client._engine.spare.reads == 5
        assert fake.stats.rate_limited == 0

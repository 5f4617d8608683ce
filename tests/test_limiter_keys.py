"""Budgets per key (issue 16), the pressure view and wait estimates (issue 15)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import Hashable, Mapping

import pytest
from _util import UnkeyedLimiter

from zapier_async._limiter import Limiter, Priority
from zapier_async._limits import estimate_wait_of, pressure_of, slot_for
from zapier_async.errors import InvalidRequestError
from zapier_async.testing import FakeClock

INTERACTIVE, POLL, BULK = Priority.INTERACTIVE, Priority.POLL, Priority.BULK
TIMER_NAME = "zapier_async.limiter"


def budget(remaining: int, reset: str = "30", limit: int = 50) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset,
    }


async def settle(turns: int = 30) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def answered(
    limiter: Limiter, key: Hashable, status: int = 200, headers: Mapping[str, str] | None = None
) -> bool | None:
    async with limiter.slot(INTERACTIVE, key=key, max_wait=None) as slot:
        return slot.record(status, budget(40) if headers is None else headers)


def timers() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == TIMER_NAME}


# ---------------------------------------------------------------------------- one budget per key


@pytest.mark.asyncio
async def test_a_429_on_one_key_does_not_delay_another() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, max_wait=1.0) as limiter:
        await answered(limiter, "a")
        await answered(limiter, "b")
        assert await answered(limiter, "a", 429, {"Retry-After": "30"}) is True
        with pytest.raises(Exception, match="rate limited"):
            async with limiter.slot(INTERACTIVE, key="a"):
                pytest.fail("key a is frozen")
        async with limiter.slot(INTERACTIVE, key="b") as slot:  # at once
            assert slot.key == "b"
            assert clock.monotonic() == 0.0
        assert limiter.pressure("a").frozen_until == 30.0
        assert limiter.pressure("b").frozen_until is None
        assert limiter.frozen_until is None  # the default bucket is another one still


@pytest.mark.asyncio
async def test_each_key_learns_from_its_own_answers() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        await answered(limiter, "a", headers=budget(3, limit=10))
        await answered(limiter, "b", headers=budget(180, limit=200))
        assert (limiter.pressure("a").limit, limiter.pressure("a").remaining_estimate) == (10, 3)
        assert (limiter.pressure("b").limit, limiter.pressure("b").remaining_estimate) == (200, 180)
        assert limiter.pressure(None).mode == "probe"  # nothing learnt for the default bucket


@pytest.mark.asyncio
async def test_one_timer_serves_every_key() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        order: list[str] = []

        async def one(key: str) -> None:
            async with limiter.slot(BULK, key=key):
                order.append(key)

        for key, seconds in (("a", 30), ("b", 10), ("c", 20)):
            limiter.freeze(seconds, key=key)
        tasks = [asyncio.create_task(one(k)) for k in "abc"]
        await settle()
        assert len(timers()) == 1
        await clock.advance(10)
        assert order == ["b"]
        await clock.advance(10)
        assert order == ["b", "c"]
        await clock.advance(10)
        assert order == ["b", "c", "a"]
        await asyncio.gather(*tasks)
        await settle()
        assert timers() == set()


# ---------------------------------------------------------------------------- forgetting idle keys


@pytest.mark.asyncio
async def test_least_recently_used_idle_buckets_are_forgotten_past_the_cap() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, max_buckets=3) as limiter:
        for key in range(6):
            await answered(limiter, key)
        stats = limiter.snapshot()
        assert stats.buckets == 4  # three keys and the default bucket
        assert stats.evictions == 3
        assert limiter.pressure(5).remaining_estimate == 40  # the latest are kept
        assert limiter.pressure(0).mode == "probe"  # the oldest forgotten: probe again


@pytest.mark.asyncio
async def test_idle_buckets_are_forgotten_after_bucket_idle() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, bucket_idle=60.0) as limiter:
        await answered(limiter, "old", headers=budget(40, reset="300"))
        await clock.advance(30)
        await answered(limiter, "recent", headers=budget(40, reset="300"))
        await clock.advance(31)
        await answered(limiter, "new")  # any use looks at the oldest buckets
        assert limiter.snapshot().evictions == 1
        assert limiter.pressure("old").mode == "probe"
        assert limiter.pressure("recent").mode == "window"


@pytest.mark.asyncio
async def test_busy_buckets_are_never_forgotten() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, max_buckets=1, bucket_idle=1.0) as limiter:
        async with contextlib.AsyncExitStack() as stack:
            flying = await stack.enter_async_context(limiter.slot(key="in-flight"))
            await answered(limiter, "frozen", 429, {"Retry-After": "600"})
            limiter.freeze(600, key="waited-on")
            waiter = asyncio.create_task(answered(limiter, "waited-on"))
            await settle()
            await clock.advance(5)
            for key in range(20):  # churn far past the cap and the idle time
                await answered(limiter, ("churn", key))
            assert limiter.pressure("in-flight").in_flight == 1
            assert limiter.pressure("frozen").frozen_until is not None
            assert limiter.pressure("waited-on").waiting_by_priority == (1, 0, 0)
            flying.record(200, budget(10))
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        assert limiter.snapshot().evictions >= 19


@pytest.mark.asyncio
async def test_an_idle_bucket_costs_well_under_a_kilobyte() -> None:
    clock = FakeClock()
    n = 10_000
    async with Limiter(clock=clock, max_buckets=2 * n) as limiter:
        keys = [f"user-{key:05d}" for key in range(n)]  # the keys are the caller's memory
        for key in range(10):  # warm up code paths and caches
            await answered(limiter, ("warm-up", key))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for key in keys:
                async with limiter.slot(BULK, key=key) as slot:
                    slot.record(200, budget(199, reset="300", limit=200))
            gc.collect()
            per_bucket = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        assert limiter.snapshot().buckets == n + 11
        print(f"\n{per_bucket:.0f} bytes per idle bucket")
        assert per_bucket < 1024


# ---------------------------------------------------------------------------- pressure, estimates


@pytest.mark.asyncio
async def test_pressure_is_read_only_and_shows_the_line() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        fresh = limiter.pressure("nobody")
        assert (fresh.mode, fresh.remaining_estimate, fresh.next_free_at) == ("probe", None, 0.0)
        assert limiter.snapshot().buckets == 1  # looking created nothing
        await answered(limiter, "k", headers=budget(0, reset="20", limit=50))
        tasks = [asyncio.create_task(answered(limiter, "k")) for _ in range(2)]
        bulk = asyncio.create_task(limiter.slot(BULK, key="k").__aenter__())
        await settle()
        p = limiter.pressure("k", priority=BULK)
        assert p.waiting_by_priority == (2, 0, 1)
        assert p.remaining_estimate == 0
        assert p.window_ends_at is not None
        assert 20.0 <= p.window_ends_at <= 21.5
        assert p.next_free_at >= p.window_ends_at  # nothing left before the window ends
        assert p.period is not None
        assert 20.0 <= p.period <= 21.5  # the window's length, learnt from its Reset
        assert p.now == clock.monotonic()
        for task in (*tasks, bulk):
            task.cancel()
        await asyncio.gather(*tasks, bulk, return_exceptions=True)


@pytest.mark.asyncio
async def test_estimate_wait_counts_those_ahead_and_whole_windows() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, spend_window=True, interactive_reserve=0.0) as limiter:
        await answered(limiter, "k", headers=budget(9, reset="60", limit=10))
        assert limiter.estimate_wait(INTERACTIVE, 9, key="k") == 0.0
        assert 59.0 <= limiter.estimate_wait(INTERACTIVE, 10, key="k") <= 62.0
        assert 119.0 <= limiter.estimate_wait(INTERACTIVE, 20, key="k") <= 122.0
        assert limiter.estimate_wait(BULK, 1, key="other") == 0.0  # unknown: a probe goes now


@pytest.mark.asyncio
async def test_spend_window_keeps_a_reserve_for_interactive_requests() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, spend_window=True, interactive_reserve=0.1) as limiter:
        await answered(limiter, "k", headers=budget(99, reset="60", limit=100))
        background = [
            asyncio.create_task(limiter.slot(BULK, key="k").__aenter__()) for _ in range(99)
        ]
        await settle()
        granted = sum(t.done() for t in background)
        assert granted == 89  # all at once, down to the reserve of 10
        async with limiter.slot(INTERACTIVE, key="k", max_wait=0.0):  # no wait at all
            pass
        assert limiter.estimate_wait(BULK, 1, key="k") > 30.0
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)


# ---------------------------------------------------------------------------- any limiter


@pytest.mark.asyncio
async def test_helpers_fall_back_for_a_limiter_without_keys() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as inner:
        old = UnkeyedLimiter(inner)
        async with slot_for(old, POLL, key="user") as slot:  # type: ignore[arg-type]
            slot.record(200, budget(10))
        assert old.asked == [POLL]
        assert inner.pressure(None).remaining_estimate == 10  # the one bucket
        assert pressure_of(old, "user") is None  # type: ignore[arg-type]
        assert estimate_wait_of(old, POLL, 1, "user") is None  # type: ignore[arg-type]
        async with slot_for(inner, POLL, key="user") as slot:
            slot.record(200, budget(7))
        assert pressure_of(inner, "user") == inner.pressure("user")
        assert estimate_wait_of(inner, POLL, 1, "user") == inner.estimate_wait(POLL, 1, "user")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interactive_reserve": 1.0},
        {"interactive_reserve": -0.1},
        {"max_buckets": 0},
        {"max_buckets": True},
        {"bucket_idle": 0.0},
    ],
)
def test_new_arguments_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        Limiter(**kwargs)  # type: ignore[arg-type]

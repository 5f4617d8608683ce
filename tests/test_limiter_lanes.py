"""Lanes: requests whose priority is raised together, those waiting for a slot included (a
bulk job's creates once its input is exhausted), and go after those natively at their new
priority. The scenarios run on the in-memory limiter here and on `RedisLimiter` in
``test_redis_limiter_lanes.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _util import UnkeyedLimiter, until

from zapier_async._limiter import Limiter, Priority
from zapier_async._limits import Lane, slot_for
from zapier_async.testing import FakeClock

INTERACTIVE, POLL, BULK = Priority.INTERACTIVE, Priority.POLL, Priority.BULK
KEY = "user"


def window(limit: int, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{reset_after:.3f}",
    }


async def a_raised_lane_jumps_the_line(limiter: Any, flush: Callable[[], Awaitable[None]]) -> None:
    """With ``spend_window`` and a reserve of 10 (limit 100): background requests spend the
    window down to the reserve, then a lane's BULK waiters, raised, go ahead of POLL waiters
    queued before them and spend the reserve; counts per priority follow; a raised waiter
    cancelled gives its place (or its grant) back; the lane's later requests go at once at
    INTERACTIVE."""

    def ask(priority: Priority, lane: Lane | None = None) -> asyncio.Task[Any]:
        return asyncio.create_task(limiter.slot(priority, key=KEY, lane=lane).__aenter__())

    def waiting() -> tuple[int, int, int]:
        return tuple(limiter.pressure(KEY).waiting_by_priority)

    async with limiter.slot(INTERACTIVE, key=KEY) as slot:
        slot.record(200, window(100, 99, 60.0))
    await flush()
    fillers = [ask(BULK) for _ in range(89)]
    await until(lambda: all(task.done() for task in fillers))  # down to the reserve of 10
    polls = [ask(POLL) for _ in range(3)]
    lane = Lane()
    creates = [ask(BULK, lane) for _ in range(12)]
    await until(lambda: waiting() == (0, 3, 12))
    await flush()
    assert not any(task.done() for task in (*polls, *creates))  # the reserve holds them
    assert limiter.estimate_wait(BULK, 1, KEY) > 30.0

    lane.raise_to(INTERACTIVE)
    creates[0].cancel()  # raised, then cancelled before it ran: its grant (if any) goes back
    await until(lambda: sum(task.done() for task in creates) == 11)
    assert creates[0].cancelled()
    assert all(not task.cancelled() for task in creates[1:] if task.done())
    assert not any(task.done() for task in polls)  # promoted ahead of the POLL waiters
    assert waiting() == (1, 3, 0)
    assert limiter.waiting == 4
    assert limiter.estimate_wait(INTERACTIVE, 1, KEY) > 30.0  # the reserve is spent

    last = next(task for task in creates if not task.done())
    cancelled = limiter.snapshot().cancelled
    last.cancel()
    await asyncio.gather(last, return_exceptions=True)
    await flush()
    assert waiting() == (0, 3, 0)
    assert limiter.snapshot().cancelled == cancelled + 1

    lane.raise_to(POLL)  # never lowers
    assert lane.priority is INTERACTIVE
    later = ask(BULK, lane)  # asked after the raise: at INTERACTIVE
    await until(lambda: waiting() == (1, 3, 0))
    for task in (*fillers, *polls, *creates, later):
        task.cancel()
    await asyncio.gather(*fillers, *polls, *creates, later, return_exceptions=True)
    await flush()
    assert waiting() == (0, 0, 0)
    assert limiter.waiting == 0


async def natives_go_before_a_raised_lane(
    limiter: Any, clock: FakeClock, flush: Callable[[], Awaitable[None]]
) -> None:
    """A window of 10 is spent; a lane's 12 BULK waiters are raised to INTERACTIVE and one
    more is asked by the raised lane; then an INTERACTIVE request (a web call) and a POLL
    one arrive. The next window's first grant (its probe) goes to the web call, the rest of
    that window to the raised ones in their order, and the window after that to the last
    raised ones, then the POLL one. An estimate for a new INTERACTIVE request does not count
    the raised lane; one for a POLL request does."""
    order: list[str] = []
    slots: list[Any] = []

    async def ask(name: str, priority: Priority, lane: Lane | None = None) -> None:
        slot = await limiter.slot(priority, key=KEY, lane=lane).__aenter__()
        order.append(name)
        slots.append(slot)

    def waiting() -> tuple[int, int, int]:
        return tuple(limiter.pressure(KEY).waiting_by_priority)

    async def next_window(granted: int) -> None:
        """Answer every slot out (the window spent), let it end, answer the new window's
        probe (9 left), and let the grants that follow be made."""
        for slot in slots:
            slot.record(200, window(10, 0, 60.0))
        slots.clear()
        await flush()
        await clock.advance(61.0)
        await flush()
        await until(lambda: len(slots) == 1)
        slots.pop().record(200, window(10, 9, 60.0))
        await flush()
        await until(lambda: len(order) == granted)

    async with limiter.slot(INTERACTIVE, key=KEY) as slot:
        slot.record(200, window(10, 9, 60.0))
    await flush()
    tasks = [asyncio.create_task(ask(f"filler{i}", INTERACTIVE)) for i in range(9)]
    await until(lambda: len(order) == 9)  # the window is spent
    lane = Lane()
    creates = [f"create{i}" for i in range(12)]
    tasks += [asyncio.create_task(ask(name, BULK, lane)) for name in creates]
    await until(lambda: waiting() == (0, 0, 12))
    lane.raise_to(INTERACTIVE)
    tasks.append(asyncio.create_task(ask("later", BULK, lane)))  # asked by the raised lane
    await until(lambda: waiting() == (13, 0, 0))
    await flush()
    assert limiter.estimate_wait(INTERACTIVE, 1, KEY) < 61.0  # the next window: not behind them
    tasks.append(asyncio.create_task(ask("web", INTERACTIVE)))
    tasks.append(asyncio.create_task(ask("poll", POLL)))
    await until(lambda: waiting() == (14, 1, 0))
    await flush()
    assert limiter.estimate_wait(INTERACTIVE, 1, KEY) < 61.0
    assert limiter.estimate_wait(POLL, 1, KEY) > 100.0  # behind the raised lane

    await next_window(9 + 10)
    assert order[9:] == ["web", *creates[:9]]
    assert waiting() == (4, 1, 0)
    await next_window(9 + 10 + 5)
    assert order[19:] == [*creates[9:], "later", "poll"]
    assert waiting() == (0, 0, 0)
    for slot in slots:
        slot.record(200, window(10, 5, 60.0))
    await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_a_native_interactive_request_goes_before_a_raised_lane() -> None:
    clock = FakeClock()

    async def flush() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async with Limiter(clock=clock, spend_window=True, interactive_reserve=0.1) as limiter:
        await natives_go_before_a_raised_lane(limiter, clock, flush)
        assert limiter.in_flight == 0


@pytest.mark.asyncio
async def test_a_raised_lane_jumps_the_line_and_spends_the_reserve() -> None:
    async def flush() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async with Limiter(clock=FakeClock(), spend_window=True, interactive_reserve=0.1) as limiter:
        await a_raised_lane_jumps_the_line(limiter, flush)
        assert limiter.in_flight == 89 + 10  # the cancelled waiter's grant was given back
        # Raised waiters cancelled leave no count behind: a native's place in line (and so
        # its estimate) subtracts the raised ones of its priority.
        assert limiter._buckets[KEY].raised == [0, 0, 0]


@pytest.mark.asyncio
async def test_a_limiter_without_lanes_gets_the_raised_priority_for_later_requests() -> None:
    limiter = UnkeyedLimiter(Limiter(clock=FakeClock()))  # no keys, no lanes
    lane = Lane()
    async with slot_for(limiter, BULK, key=KEY, lane=lane):  # no `key` nor `lane` passed on
        pass
    lane.raise_to(INTERACTIVE)
    async with slot_for(limiter, BULK, key=KEY, lane=lane):
        pass
    async with slot_for(limiter, POLL, key=KEY):
        pass
    assert limiter.asked == [BULK, INTERACTIVE, POLL]
    await limiter.aclose()

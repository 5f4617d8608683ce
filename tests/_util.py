"""Shared test helpers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import attrs

import zapier_async as za
from zapier_async._cadence import PollRecord
from zapier_async.testing import FakeClock, FakeZapier


async def until(predicate: Callable[[], bool], *, turns: int = 200_000) -> None:
    """Yield to the event loop until `predicate()` holds; fail after `turns` turns.

    This waits for work that is already runnable (no time passes), so it is not a sleep used
    as synchronisation: it fails loudly instead of guessing a duration.
    """
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition not reached after {turns} event-loop turns")


async def drive(clock: FakeClock, predicate: Callable[[], bool], *, steps: int = 100_000) -> None:
    """Run the loop and move the fake clock from deadline to deadline until `predicate()`."""
    for _ in range(steps):
        for _ in range(50):
            if predicate():
                return
            await asyncio.sleep(0)
        deadline = clock.next_deadline()
        if deadline is not None:
            await clock.advance_to(deadline)
    raise AssertionError(f"condition not reached after {steps} clock steps")


async def eventually(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds, for conditions that depend on real I/O (loopback HTTP).

    Checks every millisecond and fails loudly after `timeout` seconds; it waits on an
    observable condition, never for a guessed duration.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(0.001)


# Fast cadences for end-to-end tests against the emulator on loopback.
FAST_POLLS = za.PollPolicy(initial=0.01, factor=1.5, cap=0.05, jitter=0.1)
FAST_RETRIES = za.RetryPolicy(base=0.01, cap=0.05)


def client_for(fake: FakeZapier, **kwargs: Any) -> za.ZapierClient:
    """A client for `fake` with fast polls and retries; `kwargs` override any option."""
    options: dict[str, Any] = {
        "auth": za.BearerToken("test-token"),
        "base_url": fake.url,
        "poll_policy": FAST_POLLS,
        "retry_policy": FAST_RETRIES,
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return za.ZapierClient(**options)


class UnkeyedLimiter:
    """A user's own limiter from before keys and lanes: one bucket, no pressure, no estimate;
    it records the priorities it was asked at."""

    def __init__(self, inner: za.Limiter) -> None:
        self.inner = inner
        self.asked: list[za.Priority] = []

    def slot(self, priority: za.Priority = za.Priority.INTERACTIVE, *, max_wait: Any = None) -> Any:
        self.asked.append(priority)
        return self.inner.slot(priority, max_wait=max_wait)

    def freeze(self, seconds: float) -> None:
        self.inner.freeze(seconds)

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.frozen
class FakePressure:
    """A limiter bucket's pressure as the poll planner reads it (`_cadence.PressureLike`,
    plus what the planner reads when present: the window's ``limit`` and ``period``, and
    the ``processes`` sharing a Redis budget)."""

    waiting_by_priority: tuple[int, int, int] = (0, 0, 0)
    remaining_estimate: int | None = None
    in_flight: int = 0
    limit: int | None = None
    period: float | None = None
    processes: int = 1


class PlannerHandle:
    """Stands in for `RunHandle` where the poll planner is tested alone: what the planner
    reads (creation time, done) and the run's polling record."""

    created_at = 0.0

    def __init__(self) -> None:
        self.reads = PollRecord()

    def done(self) -> bool:
        return False

"""Shared test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from zapier_async.testing import FakeClock


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

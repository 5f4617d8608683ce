"""A manual clock for deterministic, instant tests of anything that waits."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock"]


class FakeClock:
    """A `zapier_async.Clock` whose time moves only when a test moves it.

    `sleep()` parks the caller until `advance()` carries the clock past its deadline. Sleepers
    wake in deadline order, and between wake-ups the event loop is given turns, so whatever a
    woken task does at time *t* happens before the clock moves beyond *t*.

    Example:
        clock = FakeClock()
        client = ZapierClient(..., clock=clock)
        ...
        await clock.advance(30)     # thirty seconds pass, instantly
    """

    def __init__(self, *, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut  # a cancelled sleeper's future is cancelled; advance() skips it

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.Future[None]:
        """Call `callback()` once `advance()` carries the clock `seconds` on (at once if <= 0).

        Returns the pending call, which counts as a sleeper; `cancel()` calls it off.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: None if f.cancelled() else callback())
        if seconds <= 0:
            fut.set_result(None)
        else:
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        return fut

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in `sleep()` now."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        """The earliest time a sleeper wakes, or None."""
        self._drop_done()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking sleepers in order on the way."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, target: float) -> None:
        """Move time forward to `target`, waking sleepers in order on the way."""
        await settle()
        while True:
            self._drop_done()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = max(self._now, target)
        await settle()

    async def run_until_idle(self, *, limit: float = 1e9) -> None:
        """Keep jumping to the next deadline until nobody sleeps (or `limit` is reached)."""
        while (deadline := self.next_deadline()) is not None and deadline <= limit:
            await self.advance_to(deadline)

    def _drop_done(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleepers={self.sleepers})"


async def settle(turns: int = 20) -> None:
    """Give the event loop `turns` turns so that ready tasks run (no time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)

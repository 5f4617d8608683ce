"""Time, injected.

Everything in the library that waits or measures time goes through a `Clock`, so tests of
backoff, pacing and polling run instantly and deterministically on a `FakeClock`
(see `zapier_async.testing`). Nothing in the library calls `time.*` or `asyncio.sleep`
directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Cancellable", "Clock", "SystemClock"]


class Cancellable(Protocol):
    """What `Clock.call_later` returns: a scheduled call that can be called off."""

    def cancel(self) -> object:
        """Do not make the call (no effect once it was made)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """The source of time for a client.

    `monotonic()` orders events and measures durations; `time()` is wall-clock epoch seconds
    and is only used to turn absolute server times (`Retry-After` dates, epoch
    `X-RateLimit-Reset`) into durations.
    """

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of this clock's time."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Cancellable:
        """Call `callback()` on the running event loop after `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time` and `asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)

    def __repr__(self) -> str:
        return "SystemClock()"

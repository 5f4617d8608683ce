"""Admission control for awaited creates, and the counts of what is under way per bucket.

An awaited create with a deadline (``run(timeout=)``) or a ``max_wait`` is admitted only when
the rate budget before that deadline covers it, and with a deadline also the reads its run
will need; otherwise it fails fast with `RateLimitedError` (issue #15, "a run admitted is a
run answered"). The reads so promised are spoken for: the engine serves them before new
creates and keeps them out of what the poll planner may spend (`Admission.owed`).

Used by `zapier_async._engine.Engine` only; one per engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final

from . import errors
from ._limiter import Priority
from ._limits import estimate_wait_of, pressure_of

if TYPE_CHECKING:
    from ._clock import Clock
    from ._handle import RunHandle

__all__ = ["Admission", "count_down"]

UNLEARNT_READS: Final = 2
"""Reads admission control counts for a run of an action with no plan yet."""


def count_down(counts: collections.Counter[Hashable], key: Hashable, n: int = 1) -> None:
    """Take `n` off `key`'s count, forgetting the key at zero (buckets come and go)."""
    counts[key] -= n
    if counts[key] <= 0:
        del counts[key]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Admission:
    """Admits awaited creates against the budget before their deadline (see `admit`).

    Args:
        limiter: The client's limiter (its pressure and wait estimates per bucket).
        clock: The engine's clock.
        call_later: Schedules a callback after a delay (the poller's timer).
        expected_polls: The planner's expected reads per run of an action in a bucket
            (None: nothing learnt).
    """

    def __init__(
        self,
        *,
        limiter: Any,
        clock: Clock,
        call_later: Callable[..., Any],
        expected_polls: Callable[..., float | None],
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._call_later = call_later
        self._expected_polls = expected_polls
        self.owed: collections.Counter[Hashable] = collections.Counter()
        """Reads promised to admitted runs, per read bucket."""
        self.promised: weakref.WeakKeyDictionary[RunHandle, list[Any]] = weakref.WeakKeyDictionary()
        """Each admitted run still owed reads: its promise ``[read bucket, reads left]``."""
        self._answer_waiters: list[asyncio.Future[None]] = []

    async def admit(
        self,
        create_key: Hashable,
        read_key: Hashable,
        poll_key: str | None,
        until: float,
        *,
        reads: bool,
    ) -> list[Any]:
        """Admit a create only if the budget before `until` covers it (and, with `reads`,
        the reads its run will need); else raise `RateLimitedError` at once.

        Reads promised to runs admitted earlier are served before new creates (their
        polls go `first`), so they count as ahead. While nothing is known of the bucket and
        its probe is out, the probe's answer is awaited (up to `until`): a cold client
        then fails fast too, instead of every caller waiting out its cap.

        Returns:
            The promise ``[read bucket, reads]`` now counted in `owed` (see `keep`).
        """
        needed = 0
        if reads:
            expected = self._expected_polls(poll_key, bucket=read_key)
            # Nothing learnt of the action yet: a cold run's first poll may find it going.
            needed = UNLEARNT_READS if expected is None else max(1, math.ceil(expected - 0.1))
        limiter, owed = self._limiter, self.owed
        while True:
            left = until - self._clock.monotonic()
            pressure = pressure_of(limiter, create_key)
            if (
                pressure is not None
                and pressure.mode == "probe"
                and pressure.limit is None
                and (pressure.in_flight or sum(pressure.waiting_by_priority))
                and left > 0
            ):
                await self._next_answer(left)
                continue
            if read_key == create_key:
                n = owed[create_key] + 1 + needed
                wait = estimate_wait_of(limiter, Priority.INTERACTIVE, n, create_key)
            else:
                n = owed[create_key] + 1
                wait = estimate_wait_of(limiter, Priority.INTERACTIVE, n, create_key)
                if needed and wait is not None:
                    n = owed[read_key] + needed
                    more = estimate_wait_of(limiter, Priority.INTERACTIVE, n, read_key)
                    wait = max(wait, more or 0.0)
            if wait is not None and wait > max(left, 0.0):
                raise errors.RateLimitedError(wait, self._clock.time() + wait)
            owed[read_key] += needed
            return [read_key, needed]

    async def _next_answer(self, timeout: float) -> None:
        """Wait for the next answer the pipeline hands to the limiter, or `timeout`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answer_waiters.append(fut)
        timer = self._call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._answer_waiters.remove(fut)

    def answered(self) -> None:
        """An answer reached the limiter (the pipeline's ``on_answer``)."""
        waiters, self._answer_waiters = self._answer_waiters, []
        for fut in waiters:
            _resolve(fut)

    def keep(self, promise: list[Any] | None, reads: int) -> None:
        """Take `reads` of the reads left in `promise` (all, with 0: the run is done)."""
        if promise is None or promise[1] <= 0:
            return
        take = promise[1] if reads <= 0 else min(reads, promise[1])
        promise[1] -= take
        count_down(self.owed, promise[0], take)

    def follow(self, handle: RunHandle, promise: list[Any] | None) -> None:
        """`handle`'s run was admitted with `promise`: its reads are owed until it ends."""
        if promise is not None and promise[1] and not handle.done():
            self.promised[handle] = promise
            handle.add_done_callback(self._fulfilled)
        else:
            self.keep(promise, 0)

    def _fulfilled(self, handle: RunHandle) -> None:
        self.keep(self.promised.pop(handle, None), 0)

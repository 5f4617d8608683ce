"""The poller: one task drives every run a client follows.

Theory of operation
-------------------
There is one heap of timers per client, keyed by due time on the injected clock. A timer is
either "poll this handle" or a callback (e.g. a `result(timeout=)` deadline). One runner task
loops:

1. pop every timer that is due; a poll timer puts its handle on the ready queue, a callback
   timer runs inline (callbacks are tiny and synchronous);
2. start polls from the ready queue while fewer than `max_concurrent_polls` are in flight.
   A poll is one short-lived task (read, decide, reschedule), so the number of tasks tracks
   the number of HTTP requests in flight, never the number of runs. A poll due at once
   (``schedule(handle, 0)``) with a slot free is started directly, without the heap;
3. sleep until the earliest timer, on a future that `clock.call_later` resolves; `_wake()`
   resolves it early when an earlier timer arrives or a poll slot frees up.

Handles that someone awaits jump the ready queue (and their requests get the limiter's
interactive priority), so runs a web request is waiting on are not stuck behind a bulk job.

With ``bucket_of`` (the engine passes each run's rate-limit bucket: its credential), the cap
is per bucket, under a larger total: a poll waiting at the limiter for its own bucket's budget
holds one of its bucket's slots, never another user's. A handle whose bucket is full waits in
that bucket's parked queue and goes back to the front of the ready queue when one of its
bucket's polls ends, so one heavy user's polls, all waiting for its budget, cannot keep the
light users' polls from starting (issue #16).

The runner starts lazily on the first timer and exits when the heap and the ready queue are
empty and nothing is in flight, so an idle client holds no task at all. Cancelled timers are
dropped lazily when they reach the top of the heap (O(log n) per operation, nothing per tick).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

from . import errors
from ._clock import Clock

if TYPE_CHECKING:
    from ._handle import RunHandle

__all__ = ["Poller", "Timer"]

logger = logging.getLogger("zapier_async")

POLLER_TASK_NAME = "zapier_async-poller"
POLL_TASK_NAME = "zapier_async-poll"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Timer:
    """A scheduled entry in the poller's heap; `cancel()` to drop it."""

    __slots__ = ("args", "callback", "cancelled", "handle", "when")

    def __init__(
        self,
        when: float,
        *,
        handle: RunHandle | None = None,
        callback: Callable[..., object] | None = None,
        args: tuple[Any, ...] = (),
    ) -> None:
        self.when = when
        self.handle = handle
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Poller:
    """Schedules and runs polls for every handle of one client.

    Args:
        clock: The client's clock.
        poll: Coroutine function that reads one handle's run and reschedules it (or finishes
            it). It should not raise; if it does (a bug), the poller logs it and fails the
            handle with `UnexpectedError`, so no awaiter hangs on a handle nobody polls.
        max_concurrent_polls: Upper bound on poll requests in flight at once (8, as the
            client's default); per bucket when `bucket_of` is given.
        bucket_of: The rate-limit bucket a handle's polls spend (e.g. its credential's); None
            puts every handle in one bucket.
        max_total_polls: Upper bound on polls in flight over all buckets; by default
            `max_concurrent_polls` without `bucket_of`, 32 times it with.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        poll: Callable[[RunHandle], Awaitable[None]],
        max_concurrent_polls: int = 8,
        bucket_of: Callable[[RunHandle], Hashable] | None = None,
        max_total_polls: int | None = None,
    ) -> None:
        if max_concurrent_polls < 1:
            raise ValueError("max_concurrent_polls must be at least 1")
        if max_total_polls is None:
            max_total_polls = max_concurrent_polls * (1 if bucket_of is None else 32)
        if max_total_polls < max_concurrent_polls:
            raise ValueError("max_total_polls must be at least max_concurrent_polls")
        self._clock = clock
        self._poll = poll
        self._per_bucket_max = max_concurrent_polls
        self._max = max_total_polls
        self._bucket_of = bucket_of
        # Polls in flight per bucket, each poll task's bucket, and handles due whose bucket
        # was full (back to the ready queue when one of the bucket's polls ends).
        self._busy: collections.Counter[Hashable] = collections.Counter()
        self._task_bucket: dict[asyncio.Task[None], Hashable] = {}
        self._parked: dict[Hashable, collections.deque[RunHandle]] = {}
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._ready: collections.deque[RunHandle] = collections.deque()
        self._urgent: collections.deque[RunHandle] = collections.deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.polls_started = 0

    @property
    def clock(self) -> Clock:
        """The clock its timers run on (a handle's deadline is on it too)."""
        return self._clock

    # --- scheduling -----------------------------------------------------------------------

    def schedule(self, handle: RunHandle, delay: float) -> None:
        """Poll `handle` after `delay` seconds (replacing any poll already scheduled)."""
        self._cancel_timer(handle)
        if (
            delay <= 0.0
            and not self._closed
            and len(self._inflight) < self._max
            and not self._urgent
            and not self._ready
        ):
            bucket = self._bucket(handle)
            if self._busy[bucket] < self._per_bucket_max:
                # Due now and a poll slot is free: start it here, without a trip through the
                # heap and the runner (an instant action's runs are all polled this way).
                self._start(asyncio.get_running_loop(), handle, bucket)
                return
        timer = Timer(self._clock.monotonic() + max(0.0, delay), handle=handle)
        handle.reads.timer = timer
        self._push(timer)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Run `callback(*args)` on the poller after `delay` seconds (on the client's clock)."""
        timer = Timer(self._clock.monotonic() + max(0.0, delay), callback=callback, args=args)
        self._push(timer)
        return timer

    def forget(self, handle: RunHandle) -> None:
        """Stop polling `handle` (an in-flight poll's answer will be ignored by the handle)."""
        self._cancel_timer(handle)

    @property
    def scheduled(self) -> int:
        """Timers in the heap (including cancelled ones not yet dropped)."""
        return len(self._heap)

    @property
    def in_flight(self) -> int:
        """Poll requests running now."""
        return len(self._inflight)

    @property
    def running(self) -> bool:
        """Whether the runner task is alive."""
        return self._runner is not None and not self._runner.done()

    def _cancel_timer(self, handle: RunHandle) -> None:
        reads = handle.reads
        timer = reads.timer
        if isinstance(timer, Timer):
            timer.cancel()
        reads.timer = None

    def _push(self, timer: Timer) -> None:
        if self._closed:
            return
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name=POLLER_TASK_NAME
            )
        elif earliest is None or timer.when < earliest:
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            _resolve(wakeup)

    # --- the runner -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                self._fire_due()
                self._start_ready()
                if not self._heap and not self._ready and not self._urgent:
                    if not self._inflight:
                        return  # idle: exit; the next timer starts a new runner
                    delay: float | None = None
                elif (self._ready or self._urgent) and len(self._inflight) >= self._max:
                    delay = None  # wait for a poll slot; a finishing poll wakes us
                elif self._heap:
                    delay = self._heap[0][0] - self._clock.monotonic()
                else:
                    delay = 0.0
                if delay is not None and delay <= 0:
                    await asyncio.sleep(0)  # yield, then fire what is due
                    continue
                await self._sleep(delay)
        finally:
            self._wakeup = None

    async def _sleep(self, delay: float | None) -> None:
        """Sleep `delay` seconds of the clock (None: until woken); `_wake()` ends it early."""
        wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = None if delay is None else self._clock.call_later(delay, partial(_resolve, wakeup))
        self._wakeup = wakeup
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def _fire_due(self) -> None:
        now = self._clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            if timer.handle is not None:
                handle = timer.handle
                handle.reads.timer = None
                if not handle.done():
                    (self._urgent if handle.awaited else self._ready).append(handle)
            elif timer.callback is not None:
                try:
                    timer.callback(*timer.args)
                except Exception:  # a bug in a callback must not stop every run's polling
                    logger.exception("timer callback failed")

    def _bucket(self, handle: RunHandle) -> Hashable:
        return None if self._bucket_of is None else self._bucket_of(handle)

    def _start_ready(self) -> None:
        loop = asyncio.get_running_loop()
        if self._parked:
            # A bucket with a free slot starts its parked handles first (awaited ones lead).
            for bucket in list(self._parked):
                parked = self._parked[bucket]
                while (
                    parked
                    and self._busy[bucket] < self._per_bucket_max
                    and len(self._inflight) < self._max
                ):
                    handle = parked.popleft()
                    if not handle.done() and handle.reads.timer is None:
                        self._start(loop, handle, bucket)
                if not parked:
                    del self._parked[bucket]
        while len(self._inflight) < self._max and (self._urgent or self._ready):
            handle = (self._urgent or self._ready).popleft()
            if handle.done() or handle.reads.timer is not None:
                continue  # finished, cancelled or rescheduled meanwhile
            bucket = self._bucket(handle)
            if self._busy[bucket] >= self._per_bucket_max:
                # Its bucket is full (its polls wait for that bucket's budget): park it, so
                # that handles of other buckets behind it start now.
                queue = self._parked.setdefault(bucket, collections.deque())
                if handle.awaited:
                    queue.appendleft(handle)
                else:
                    queue.append(handle)
                continue
            self._start(loop, handle, bucket)

    def _start(self, loop: asyncio.AbstractEventLoop, handle: RunHandle, bucket: Hashable) -> None:
        task = loop.create_task(self._poll_one(handle), name=POLL_TASK_NAME)
        self._inflight.add(task)
        self._busy[bucket] += 1
        self._task_bucket[task] = bucket
        task.add_done_callback(self._poll_done)
        self.polls_started += 1

    async def _poll_one(self, handle: RunHandle) -> None:
        try:
            await self._poll(handle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Neither dropped nor left pending: an awaiter would hang for ever. The handle ends
            # with a typed error; the run goes on at Zapier and can be resumed by id.
            logger.exception(
                "unexpected error while polling run %s; the handle fails",
                handle.id,
                extra={"run_id": handle.id, "action": handle.reads.key},
            )
            if not handle.done():
                failure = errors.UnexpectedError(
                    f"polling run {handle.id} failed: {type(exc).__name__}: {exc}"
                )
                failure.__cause__ = exc
                self.forget(handle)
                handle._finish(failure)

    def _poll_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        bucket = self._task_bucket.pop(task, None)
        left = self._busy[bucket] - 1
        if left > 0:
            self._busy[bucket] = left
        else:
            del self._busy[bucket]
        if not self._closed and (
            self._ready or self._urgent or bucket in self._parked or not self._inflight
        ):
            # A slot freed up for a waiting (or parked) poll, or the runner may now exit
            # idle; otherwise the runner's own timer is still right and waking it would be a
            # wasted turn.
            self._wake()

    # --- shutdown -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the runner and every poll in flight; forget all timers."""
        self._closed = True
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        self._ready.clear()
        self._urgent.clear()
        self._parked.clear()
        tasks = list(self._inflight)
        if self._runner is not None:
            tasks.append(self._runner)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._runner = None

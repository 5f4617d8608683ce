"""The shared rate limiter: budgets per key, one heap of due buckets, one timer.

Theory of operation
===================

Every request the client sends (a create, a poll, a discovery call) first takes a *slot* of
the bucket its key names, and hands the response back::

    async with limiter.slot(Priority.POLL, key=user) as slot:
        response = await transport.send(request)
        slot.record(response.status, response.headers)

**What is decided where.** Every budget decision (probe, open or window mode; what is left;
where the window ends; freezes; the cap on server-dictated waits) is made by the pure state
machine `zapier_async._budget.Budget`, one per key, tested synchronously; its docstring
tells how and what each mechanism earns. This module only drives it: it keeps who waits,
asks the budget when the next of them may go, and wakes up then.

**Keys.** A key names what the server limits (a credential, an endpoint family, a
partner-wide limit declared by the deployment); ``key=None`` is the default bucket. Each key
has its own budget, learnt from its own answers: a 429 freezes only its bucket. Buckets are
created on first use and forgotten when idle: least recently used past ``max_buckets``, or
unused for ``bucket_idle`` seconds. A bucket with waiters, slots in flight or an active
freeze is never forgotten; a forgotten one starts again in probe mode (one request, then
pacing from its answer), which is what losing the state costs.

**Waiting.** Each bucket keeps its waiters in a heap keyed by ``(priority, arrival)``:
INTERACTIVE before POLL before BULK, FIFO within each (a ``first`` waiter before the others
of its priority, a lane's raised one after them). Grants are decided by one synchronous
``_dispatch(bucket)``, run on every event of that bucket (a slot asked for, a response
recorded, a slot released, a waiter cancelled) and when its next grant is due. The due
times of all buckets sit in one heap served by one timer task, which exists only while
someone waits for time to pass; an earlier due time wakes it by a cancellation it absorbs
(the injected clock's ``sleep`` cannot be woken otherwise). A waiter cancelled while waiting
leaves the heap; a grant that races with the cancellation is given back; one whose future is
already done when its turn comes (cancelled, or timed out by ``wait_for``, before its task
could run) is skipped: a slot nobody will use is never counted.

**Lanes.** A request asked with a `Lane` (a bulk job's creates) joins it while it waits:
when the lane is raised (the job's input is exhausted), its waiters move up their lines,
counts per priority with them, and their buckets are dispatched again. Raised, they go after
the waiters natively at their new priority, later ones included (`RAISED`): a web request
arriving while a drained job has a window's worth queued goes first, not a window later;
they still spend what is kept for that priority (the interactive reserve). Natives cannot
starve them beyond what an unraised lane would wait: they would have gone first anyway.

**Failing fast.** ``max_wait``: when the estimated wait is longer, `slot` raises
`RateLimitedError` at once, its ``retry_at`` saying when to come back; when the estimate was
too hopeful, the waiter fails when ``max_wait`` runs out. When the server dictated a wait
past ``max_server_wait``, every request of that bucket fails at once, waiters included
(``reason="max_server_wait"``). Waits over a second are logged at INFO, with the reason
(frozen, probe, paced); background ones summarised.

**For planners.** `pressure` shows a key's live budget and line without changing anything;
`estimate_wait` says when ``n`` more requests of a priority could go (admission control).

Time comes only from the injected `Clock`: tests drive all of this on a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from types import TracebackType
from typing import Final

from ._budget import Budget, BudgetConfig, Grant, Priority
from ._clock import Clock, SystemClock
from ._closing import AsyncCloseable
from ._limits import DEFAULT_BUCKET_IDLE as DEFAULT_BUCKET_IDLE
from ._limits import DEFAULT_MAX_BUCKETS as DEFAULT_MAX_BUCKETS
from ._limits import (
    FIRST,
    Lane,
    LimiterCounts,
    ahead_in_line,
    check_limiter_args,
    first_deadline,
    forget_idle,
    granted,
    in_lane,
    pressure_from,
    raise_in_line,
)
from ._limits import LOG_SUMMARY_EVERY as LOG_SUMMARY_EVERY
from ._limits import LOG_WAIT_OVER as LOG_WAIT_OVER
from ._limits import USE_DEFAULT as USE_DEFAULT
from ._limits import BaseWaiter as BaseWaiter
from ._limits import DefaultMarker as DefaultMarker
from ._limits import LimiterLike as LimiterLike
from ._limits import LimiterStats as LimiterStats
from ._limits import OneShotSlot as OneShotSlot
from ._limits import Pressure as Pressure
from ._limits import SlotLike as SlotLike
from ._ratelimit import DEFAULT_COOLDOWN, DEFAULT_MAX_SERVER_WAIT
from .errors import LimiterClosedError, RateLimitedError

__all__ = [
    "Limiter",
    "LimiterLike",
    "LimiterStats",
    "Pressure",
    "Priority",
    "Slot",
    "SlotLike",
]


class Slot(OneShotSlot):
    """Permission to send one request; hand its response back with `record`."""

    __slots__ = ("_bucket", "_budget", "_grant")

    def __init__(
        self, limiter: Limiter, bucket: _Bucket, priority: Priority, grant: Grant, waited: float
    ) -> None:
        super().__init__(limiter, priority, grant.sent, probe=grant.probe, waited=waited)
        self._bucket = bucket
        self._budget = bucket.budget  # the one that granted it (see _forget_all)
        self._grant = grant

    @property
    def key(self) -> Hashable:
        """The key of the bucket the slot was granted from."""
        return self._bucket.key

    def __repr__(self) -> str:
        return (
            f"Slot(priority={self.priority.name}, granted_at={self.granted_at:.3f}, "
            f"probe={self.probe})"
        )


class _Waiter(BaseWaiter[Slot]):
    __slots__ = ("bucket", "reason")

    def __init__(
        self,
        bucket: _Bucket,
        priority: Priority,
        seq: int,
        fut: asyncio.Future[Slot],
        enqueued_at: float,
        deadline: float | None,
        reason: str,
        *,
        raised: bool = False,
    ) -> None:
        super().__init__(priority, seq, fut, enqueued_at, deadline, raised=raised)
        self.bucket = bucket
        self.reason = reason


class _Bucket:
    """One key's budget and line. The line is created on first wait."""

    __slots__ = ("budget", "due", "heap", "key", "live", "raised", "used_at")

    def __init__(self, key: Hashable, budget: Budget, now: float) -> None:
        self.key = key
        self.budget = budget
        self.heap: list[tuple[int, int, _Waiter]] | None = None
        self.live: list[int] | None = None  # live waiters per priority
        self.raised = [0, 0, 0]  # of them, those a lane raised (`RAISED`)
        self.due: float | None = None  # when the timer must look at it again
        self.used_at = now

    def ahead(self, priority: int, *, raised: bool = False) -> int:
        """Waiters served before a new one of ``priority`` (``raised`` by a lane)."""
        return ahead_in_line(self.live, self.raised, priority, last=raised)

    def waiting(self) -> int:
        return 0 if self.live is None else sum(self.live)


class _SlotRequest:
    """The async context manager returned by `Limiter.slot`."""

    __slots__ = ("_first", "_key", "_lane", "_limiter", "_max_wait", "_priority", "_slot")

    def __init__(
        self,
        limiter: Limiter,
        priority: Priority,
        max_wait: float | DefaultMarker | None,
        key: Hashable,
        first: bool = False,
        lane: Lane | None = None,
    ) -> None:
        self._limiter = limiter
        self._priority = priority
        self._max_wait = max_wait
        self._key = key
        self._first = first
        self._lane = lane
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._limiter._acquire(
            self._priority, self._max_wait, self._key, self._first, self._lane
        )
        return self._slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot is not None:
            self._slot._release()


class Limiter(AsyncCloseable):
    """Rate budgets shared by every request of one or more clients, one per key.

    See the module docstring for how it works. Share one limiter between clients that spend
    the same budget (same IP, same partner) by passing the same object to each; it belongs to
    the event loop that first uses it.

    Args:
        clock: Source of time; the real clock by default.
        max_wait: Default longest wait for a slot, in seconds; None waits as long as needed.
            Over it, `slot` raises `RateLimitedError` instead of waiting.
        rate: A budget known beforehand, ``(requests, per_seconds)``, enforced per key as a
            sliding window on top of what the server reports (e.g. ``(60, 60.0)`` for the
            Partner API's per-IP limit). With it, the first requests are not sent one by one.
        on_wait: Called as ``on_wait(seconds, priority)`` after each slot that had to wait.
        default_cooldown: Freeze after a 429 that says neither ``Retry-After`` nor
            ``X-RateLimit-Reset``; also the assumed window length when ``Reset`` is missing.
        max_server_wait: The longest wait a server may dictate, in seconds (900 by default;
            above 0, at most a day). Freezes (``Retry-After``, ``Reset``, `freeze`) and pacing
            horizons are capped to it; a request whose wait the server dictates past it fails
            at once with `RateLimitedError`, whatever its priority, ``retry_at`` saying the
            time the server named. Unlike ``max_wait``, it applies to background requests too.
        spend_window: Spend each window's budget as fast as the server allows instead of
            spreading it evenly until the reset (for a job alone on its budget).
        interactive_reserve: With ``spend_window``, the share of the limit (at least one
            request) that POLL and BULK requests leave to INTERACTIVE ones until the window
            may end; 0 for none. Below 1.
        window_length: The length in seconds of the server's rate-limit windows, if known
            beforehand (Zapier documents a minute for the Workflow API's budgets and five
            minutes for the Actions API's). Each window then ends at most that long after any
            request it counted arrived, which pins its end to the round trip instead of the
            second a whole-second ``X-RateLimit-Reset`` leaves open: no request is held back
            for the turn. None (the default) learns the end from the headers. A length that
            an answer contradicts (a ``Reset`` later than it allows, a request sent after the
            end it allowed still counted in the old window, or any 429) is dropped for that
            bucket; a length shorter than the server's by less than a second can cost one 429
            before that. Longer than the server's by over a second, it changes nothing; by
            less, each window's turn waits up to the excess.
        max_buckets: Buckets (keys) kept at most; past it the least recently used idle ones
            are forgotten.
        bucket_idle: Seconds after which an idle bucket is forgotten.

    Raises:
        InvalidRequestError: An argument is out of range.
    """

    supports_keys: Final = True
    """`slot` and `freeze` take ``key=`` (see `zapier_async._limits.slot_for`)."""

    supports_first: Final = True
    """`slot` takes ``first=`` (see `zapier_async._limits.slot_for`)."""

    supports_lanes: Final = True
    """`slot` takes ``lane=`` (see `zapier_async._limits.Lane`)."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_wait: float | None = None,
        rate: tuple[int, float] | None = None,
        on_wait: Callable[[float, Priority], None] | None = None,
        default_cooldown: float = DEFAULT_COOLDOWN,
        max_server_wait: float = DEFAULT_MAX_SERVER_WAIT,
        spend_window: bool = False,
        interactive_reserve: float = 0.1,
        window_length: float | None = None,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        bucket_idle: float = DEFAULT_BUCKET_IDLE,
    ) -> None:
        check_limiter_args(max_wait, max_buckets, bucket_idle=bucket_idle)
        self._config = BudgetConfig.checked(
            rate=rate,
            default_cooldown=default_cooldown,
            max_server_wait=max_server_wait,
            spend_window=spend_window,
            interactive_reserve=interactive_reserve,
            window_length=window_length,
        )
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_wait = max_wait
        self._counts = LimiterCounts(on_wait)
        self._max_buckets = max_buckets
        self._bucket_idle = bucket_idle
        self._closed = False

        # The default bucket (key None) is never forgotten; keyed ones are, when idle.
        self._default = _Bucket(None, Budget(self._config), self._clock.monotonic())
        self._buckets: collections.OrderedDict[Hashable, _Bucket] = collections.OrderedDict()
        self._due: list[tuple[float, int, _Bucket]] = []  # due times of every bucket
        self._deadlines: list[tuple[float, int, _Waiter]] = []  # max_wait of every waiter
        self._seq = itertools.count()
        self._live = 0  # waiters, all buckets
        self._in_flight = 0

        # The one timer.
        self._timer: asyncio.Task[None] | None = None
        self._timer_target: float | None = None
        self._timer_sleeping: float | None = None
        self._wake_pending = False
        self._dispatching = False
        self._again: list[_Bucket] = []

    # ------------------------------------------------------------------ public surface

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | DefaultMarker | None = USE_DEFAULT,
        key: Hashable = None,
        first: bool = False,
        lane: Lane | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Slot]:
        """Wait for permission to send one request.

        Use as ``async with limiter.slot(priority) as slot:``; call ``slot.record(status,
        headers)`` with the response. Leaving the block without recording means there was no
        response (connect error, cancellation mid-request).

        Args:
            priority: Who is waiting (see `Priority`).
            max_wait: The longest acceptable wait in seconds; None waits as long as needed;
                by default the limiter's ``max_wait``.
            key: The bucket (what the server limits: a credential, an endpoint family);
                None for the default bucket.
            first: Served before the other waiters of its priority (FIFO among such):
                a read of a run someone awaits goes before new creates of the same priority.
            lane: Requests whose priority is raised together (`Lane`): asked at the lane's
                priority once it was raised, and moved up the line while waiting when it is;
                raised, they go after the waiters natively at that priority.

        Returns:
            An async context manager yielding the `Slot`.

        Raises:
            RateLimitedError: (on entering) The estimated wait is longer than ``max_wait``
                (raised at once, without waiting), or ``max_wait`` ran out while waiting.
            LimiterClosedError: (on entering) The limiter is or was closed while waiting.
        """
        return _SlotRequest(self, Priority(priority), max_wait, key, first, lane)

    def freeze(self, seconds: float, *, key: Hashable = None) -> None:
        """Stop granting slots of a bucket for ``seconds`` (a ``Retry-After`` seen elsewhere).

        A freeze never shortens an earlier one. When it ends, one request probes the budget
        before pacing resumes. Longer than ``max_server_wait``, it holds requests back for
        ``max_server_wait`` only, and meanwhile every request fails at once with
        `RateLimitedError` (``retry_at`` = now + ``seconds``) instead of waiting.

        Args:
            seconds: How long to hold every request back.
            key: The bucket; None for the default one.
        """
        now = self._clock.monotonic()
        bucket = self._bucket(key, now)
        wall = self._clock.time()
        answer = bucket.budget.freeze(seconds, now=now, wall=wall)
        self._counts.freeze(
            answer.wait, answer.extended, "freeze() called", cap=self.max_server_wait, wall=wall
        )
        self._dispatch(bucket)

    def pressure(self, key: Hashable = None, *, priority: Priority = Priority.POLL) -> Pressure:
        """A key's live budget and line, read-only (an unknown key reads as a fresh one).

        Args:
            key: The bucket; None for the default one.
            priority: The priority ``next_free_at`` is for.

        Returns:
            A frozen `Pressure`.
        """
        bucket, budget, now = self._look(key)
        return pressure_from(
            budget.view(now),
            None if bucket is None else bucket.live,
            in_flight=budget.in_flight,
            next_free_at=now + self.estimate_wait(priority, 1, key),
            now=now,
        )

    def estimate_wait(self, priority: Priority, n: int = 1, key: Hashable = None) -> float:
        """Seconds until ``n`` more requests of ``priority`` could be sent, behind those
        already waiting at that priority or above, less those a lane raised to it (they go
        after; rough; for admission control).

        Args:
            priority: Their priority.
            n: How many (at least 1).
            key: The bucket; None for the default one.

        Returns:
            Seconds; the time the server named when it dictated a wait past
            ``max_server_wait``.
        """
        bucket, budget, now = self._look(key)
        refused = budget.refusal(now)
        if refused is not None:
            return max(refused - self._clock.time(), 0.0)
        ahead = bucket.ahead(priority) if bucket is not None else 0
        return budget.estimate(now, ahead + max(n, 1), Priority(priority))

    def spare(self, key: Hashable = None) -> tuple[int, float, int] | None:
        """Requests of a key's window that nobody waits for and that background work may
        spend from ``at`` on (monotonic), and the window's identity: ``(count, at,
        window)``, or None (see `Budget.spare`).
        Read-only; with ``spend_window`` only (the client's own limiter)."""
        bucket = self._find(key)
        if bucket is None:
            return None  # an unknown bucket knows no window: nothing is spare
        now = self._clock.monotonic()
        bucket.budget.advance(now)
        found = bucket.budget.spare(now)
        if found is None:
            return None
        count = found[0] - bucket.waiting()
        return (count, found[1], found[2]) if count > 0 else None

    @property
    def max_server_wait(self) -> float:
        """The cap on any server-dictated wait, in seconds."""
        return self._config.max_server_wait

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self._live

    @property
    def in_flight(self) -> int:
        """Slots granted whose response has not been recorded (or released) yet."""
        return self._in_flight

    @property
    def frozen_until(self) -> float | None:
        """Monotonic time at which the default bucket's freeze ends, or None."""
        return self._default.budget.view(self._clock.monotonic()).frozen_until

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def snapshot(self) -> LimiterStats:
        """The counters and the current view of the default bucket's budget.

        Returns:
            A frozen `LimiterStats`.
        """
        now = self._clock.monotonic()
        return self._counts.stats(
            self._default.budget.view(now),
            now,
            in_flight=self._in_flight,
            waiting=self._live,
            buckets=len(self._buckets) + 1,
        )

    async def aclose(self) -> None:
        """Close the limiter: stop the timer and fail every waiter with `LimiterClosedError`.

        Slots already granted may still record their responses. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        for bucket in (self._default, *self._buckets.values()):
            while bucket.heap:
                _, _, waiter = heapq.heappop(bucket.heap)
                if waiter.alive:
                    self._kill(waiter)
                    if not waiter.fut.done():
                        waiter.fut.set_exception(
                            LimiterClosedError(
                                "the rate limiter was closed while this request waited"
                            )
                        )
        self._deadlines.clear()
        self._due.clear()
        task = self._timer
        self._timer = None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    def __repr__(self) -> str:
        return (
            f"Limiter(mode={self.snapshot().mode!r}, in_flight={self._in_flight}, "
            f"waiting={self._live}, frozen_until={self.frozen_until!r})"
        )

    # ------------------------------------------------------------------ buckets

    def _bucket(self, key: Hashable, now: float) -> _Bucket:
        """The bucket of ``key``, created if new, marked as just used; forgets idle ones."""
        if key is None:
            return self._default
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(key, Budget(self._config), now)
        else:
            buckets.move_to_end(key)
            bucket.used_at = now
        self._evict(now, bucket)
        return bucket

    def _forget_all(self) -> None:
        """Lose every budget's state (what a restart or a flushed Redis costs; for tests)."""
        now = self._clock.monotonic()
        for bucket in (self._default, *self._buckets.values()):
            bucket.budget = Budget(self._config)
            self._dispatch(bucket)
        self._arm(self._timer_due(now))

    def _look(self, key: Hashable) -> tuple[_Bucket | None, Budget, float]:
        """A key's bucket (None: unknown) and budget (a fresh one if unknown), at now."""
        now = self._clock.monotonic()
        bucket = self._find(key)
        budget = bucket.budget if bucket is not None else Budget(self._config)
        budget.advance(now)
        return bucket, budget, now

    def _find(self, key: Hashable) -> _Bucket | None:
        return self._default if key is None else self._buckets.get(key)

    def _evict(self, now: float, keep: _Bucket) -> None:
        """Forget a few idle buckets: past ``max_buckets``, or unused for ``bucket_idle``."""

        def idle(bucket: _Bucket) -> bool:
            return bucket.live is None and bucket.budget.idle(now)

        gone = forget_idle(self._buckets, now, self._max_buckets, self._bucket_idle, idle, keep)
        self._counts.evictions += len(gone)

    # ------------------------------------------------------------------ acquiring

    async def _acquire(
        self,
        priority: Priority,
        max_wait: float | DefaultMarker | None,
        key: Hashable,
        first: bool = False,
        lane: Lane | None = None,
    ) -> Slot:
        if self._closed:
            raise LimiterClosedError("the rate limiter is closed")
        priority, raised = in_lane(priority, lane)
        limit = self._max_wait if isinstance(max_wait, DefaultMarker) else max_wait
        now = self._clock.monotonic()
        bucket = self._bucket(key, now)
        budget = bucket.budget
        budget.advance(now)
        refused = budget.refusal(now)
        if refused is not None:
            self._counts.rejected += 1
            raise self._refused_error(refused)
        ahead = bucket.ahead(priority, raised=raised)
        if ahead == 0:
            when = budget.next_time(now, priority, raised=raised)
            if when is not None and when <= now:
                self._counts.immediate += 1
                return self._grant(bucket, priority, now, waited=0.0)

        estimate = budget.estimate(now, ahead + 1, priority)
        if limit is not None and estimate > limit:
            self._counts.rejected += 1
            raise RateLimitedError(estimate, self._clock.time() + estimate)

        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            bucket,
            priority,
            # The line is ordered by (priority, seq): a `first` waiter sorts before every
            # other one of its priority, a raised one after them, FIFO among its kind.
            next(self._seq) - (FIRST if first else 0),
            loop.create_future(),
            now,
            None if limit is None else now + limit,
            budget.reason(now),
            raised=raised,
        )
        if bucket.heap is None or bucket.live is None:
            bucket.heap, bucket.live = [], [0, 0, 0]
        heapq.heappush(bucket.heap, (priority, waiter.seq, waiter))
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, waiter.seq, waiter))
        bucket.live[priority] += 1
        bucket.raised[priority] += raised
        self._live += 1
        self._dispatch(bucket)
        try:
            return await granted(
                waiter, partial(self._give_up, waiter), lane, bucket, self._promote
            )
        except BaseException:
            self._dispatch(bucket)
            raise

    def _give_up(self, waiter: _Waiter) -> None:
        """Its caller left while ``waiter`` was in line (cancelled)."""
        self._kill(waiter)
        self._counts.cancelled += 1

    def _promote(self, bucket: _Bucket, waiters: list[_Waiter], to: Priority) -> None:
        """A `Lane` was raised: its ``waiters`` in ``bucket`` move up, and may go now."""
        heap, live = bucket.heap, bucket.live
        if heap is None or live is None:
            return
        if raise_in_line(heap, live, bucket.raised, waiters, to):
            self._dispatch(bucket)

    def _kill(self, waiter: _Waiter) -> None:
        waiter.alive = False
        bucket = waiter.bucket
        assert bucket.live is not None
        assert bucket.heap is not None
        bucket.live[waiter.priority] -= 1
        bucket.raised[waiter.priority] -= waiter.raised
        self._live -= 1
        live = bucket.waiting()
        if not live:
            bucket.heap, bucket.live = None, None  # an idle bucket keeps no line
        elif len(bucket.heap) > 1024 and len(bucket.heap) > 2 * live:
            bucket.heap = [entry for entry in bucket.heap if entry[2].alive]
            heapq.heapify(bucket.heap)
        if len(self._deadlines) > 1024 and len(self._deadlines) > 2 * self._live:
            self._deadlines = [entry for entry in self._deadlines if entry[2].alive]
            heapq.heapify(self._deadlines)

    def _grant(self, bucket: _Bucket, priority: Priority, now: float, *, waited: float) -> Slot:
        self._in_flight += 1
        self._counts.grants += 1
        return Slot(self, bucket, priority, bucket.budget.grant(now), waited)

    def _ungrant(self, slot: Slot) -> None:
        self._in_flight -= 1
        self._counts.grants -= 1
        slot._budget.ungrant(slot._grant)
        self._dispatch(slot._bucket)

    # ------------------------------------------------------------------ responses

    def _complete(self, slot: Slot, status: int | None, headers: Mapping[str, str]) -> None:
        self._in_flight -= 1
        bucket = slot._bucket
        if self._closed:
            status = None
        wall, counts = self._clock.time(), self._counts
        answer = slot._budget.complete(
            slot._grant, status, headers, now=self._clock.monotonic(), wall=wall
        )
        if status is not None:
            counts.responses += 1
            counts.rate_limited += status == 429
            counts.windows += answer.opened
            if answer.wait is not None:
                slot.froze = True
                cap, why = self.max_server_wait, f"HTTP {status}"
                counts.freeze(answer.wait, answer.extended, why, cap=cap, wall=wall)
        self._dispatch(bucket)

    def _refused_error(self, retry_at: float) -> RateLimitedError:
        return RateLimitedError(
            max(retry_at - self._clock.time(), 0.0), retry_at, reason="max_server_wait"
        )

    # ------------------------------------------------------------------ dispatching

    def _dispatch(self, bucket: _Bucket) -> None:
        """Grant every waiter of ``bucket`` that may go now, then arm the timer."""
        if self._dispatching:
            self._again.append(bucket)  # e.g. an on_wait hook called freeze()
            return
        if self._closed:
            return
        if not self._live and self._timer is None:
            return  # nobody waits and no timer to disarm: nothing to do (the common case)
        self._dispatching = True
        try:
            self._dispatch_once(bucket)
            while self._again:
                self._dispatch_once(self._again.pop())
        finally:
            self._dispatching = False

    def _dispatch_once(self, bucket: _Bucket) -> None:
        now = self._clock.monotonic()
        budget = bucket.budget
        budget.advance(now)
        self._expire(now)
        refused = budget.refusal(now)
        if refused is not None:
            # The server dictated a wait past max_server_wait: nobody waits for it.
            while bucket.live:
                waiter = self._pop(bucket)
                if waiter is None:
                    break
                self._counts.rejected += 1
                waiter.fut.set_exception(self._refused_error(refused))
        while bucket.heap:
            waiter = self._peek(bucket)
            if waiter is None:
                break  # only callers who already gave up were waiting
            when = budget.next_time(now, waiter.priority, raised=waiter.raised)
            if when is None or when > now:
                break
            self._pop(bucket)
            waited = now - waiter.enqueued_at
            waiter.fut.set_result(self._grant(bucket, waiter.priority, now, waited=waited))
            self._note_wait(waiter, waited)
        self._schedule(bucket, now)
        self._arm(self._timer_due(now))

    def _peek(self, bucket: _Bucket) -> _Waiter | None:
        """The next waiter of ``bucket`` a slot can be handed to (left in the heap)."""
        while bucket.heap:
            waiter = bucket.heap[0][2]
            if not waiter.alive:
                heapq.heappop(bucket.heap)
            elif not self._gone(waiter):
                return waiter
        return None

    def _pop(self, bucket: _Bucket) -> _Waiter | None:
        """Take the next waiter of ``bucket`` out of its line, or None."""
        while bucket.heap:
            _, _, waiter = heapq.heappop(bucket.heap)
            if not waiter.alive:
                continue
            self._kill(waiter)
            if self._gone(waiter):
                continue
            return waiter
        return None

    def _gone(self, waiter: _Waiter) -> bool:
        """Whether a live waiter's caller already gave up (its future is done): a task
        cancelled (``task.cancel()``, ``wait_for``) runs its ``except`` clause only on a later
        loop iteration; a dispatch in between must neither grant it a slot nobody will use
        (in probe mode: every request stopped for good) nor fail it twice. Counted here."""
        if not waiter.fut.done():
            return False
        if waiter.alive:
            self._kill(waiter)
        self._counts.cancelled += 1
        return True

    def _schedule(self, bucket: _Bucket, now: float) -> None:
        """Put the bucket's next due time (its first waiter's turn) in the timer's heap."""
        due: float | None = None
        waiter = self._peek(bucket)
        if waiter is not None:
            due = bucket.budget.next_time(now, waiter.priority, raised=waiter.raised)
        if due is not None and due != bucket.due:
            heapq.heappush(self._due, (due, next(self._seq), bucket))
        bucket.due = due

    def _note_wait(self, waiter: _Waiter, waited: float) -> None:
        self._counts.waits.note(waiter.priority, waited, waiter.reason, self._clock.monotonic())

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if not waiter.alive:
                continue
            bucket = waiter.bucket
            position = bucket.ahead(waiter.priority, raised=waiter.raised)
            self._kill(waiter)
            if self._gone(waiter):
                continue
            self._counts.expired += 1
            estimate = bucket.budget.estimate(now, position, waiter.priority)
            waiter.fut.set_exception(RateLimitedError(estimate, self._clock.time() + estimate))

    def _timer_due(self, now: float) -> float | None:
        """When the timer must next run, or None when only an event can make progress."""
        if not self._live:
            return None
        due: float | None = None
        while self._due:
            when, _, bucket = self._due[0]
            if bucket.due == when and bucket.live:
                due = when
                break
            heapq.heappop(self._due)  # stale: the bucket's due time moved or nobody waits
        return first_deadline(self._deadlines, due)

    def _tick(self) -> None:
        """The timer's turn: dispatch every bucket that is due, expire waiters."""
        now = self._clock.monotonic()
        ready: list[_Bucket] = []
        while self._due and self._due[0][0] <= now:
            when, _, bucket = heapq.heappop(self._due)
            if bucket.due == when:
                bucket.due = None
                ready.append(bucket)
        if not ready:
            self._expire(now)
            self._arm(self._timer_due(now))
        for bucket in ready:
            self._dispatch(bucket)

    # ------------------------------------------------------------------ the timer

    def _arm(self, due: float | None) -> None:
        self._timer_target = due
        task = self._timer
        if task is not None and task.done():
            task = self._timer = None
        if task is None:
            if due is not None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop, so nobody can be waiting
                    return
                self._timer = loop.create_task(self._run_timer(), name="zapier_async.limiter")
            return
        sleeping = self._timer_sleeping
        if sleeping is not None and (due is None or due < sleeping):
            self._wake_timer(task)

    def _wake_timer(self, task: asyncio.Task[None]) -> None:
        # The timer sleeps on the injected clock, which has no "wake early", so an earlier
        # deadline interrupts the sleep with a cancellation that the loop absorbs.
        if task is asyncio.current_task() or self._wake_pending:
            return
        self._wake_pending = True
        task.cancel()

    async def _run_timer(self) -> None:
        me = asyncio.current_task()
        try:
            while not self._closed:
                due = self._timer_target
                if due is None:
                    return
                delay = due - self._clock.monotonic()
                if delay > 0:
                    self._timer_sleeping = due
                    try:
                        await self._clock.sleep(delay)
                    except asyncio.CancelledError:
                        if not self._wake_pending or self._closed:
                            raise
                        self._wake_pending = False
                        if me is not None and hasattr(me, "uncancel"):
                            me.uncancel()
                        continue
                    finally:
                        self._timer_sleeping = None
                self._tick()
        finally:
            self._wake_pending = False
            if self._timer is me:
                self._timer = None

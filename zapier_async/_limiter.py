"""The shared rate limiter: one bucket, one timer, a heap of waiters.

Theory of operation
===================

Every request the client sends (a create, a poll, a discovery call) first takes a *slot*
and hands the response back::

    async with limiter.slot(Priority.POLL) as slot:
        response = await transport.send(request)
        slot.record(response.status, response.headers)

**Waiting.** Waiters sit in one heap keyed by ``(priority, arrival)``: INTERACTIVE before
POLL before BULK, FIFO within each, so a bulk fan-out cannot starve the polls of runs in
flight or a web request. Grants are decided by one synchronous ``_dispatch()``, run on every
event (a slot asked for, a response recorded, a slot released, a waiter cancelled) and by
one timer task when the next grant is due. The timer exists only while someone waits for
time to pass, and an earlier deadline wakes it by a cancellation it absorbs (the injected
clock's ``sleep`` cannot be woken otherwise). So each waiter costs O(log n), nothing is
done per tick, and nothing is left running when nobody waits. A waiter cancelled while
waiting leaves the heap; a grant that races with the cancellation is given back; and one
whose future is already done when its turn comes (cancelled, or timed out by ``wait_for``, in
the loop iteration of the dispatch, before its task could run) is skipped, not granted: a
slot nobody will use is never counted, and in probe mode the probe goes to the next in line.

**Modes.** *probe*: nothing is known (at start, after a freeze, after a window ran out):
one request at a time, so that a burst of 1,000 creates at start-up does not collect 999
429s; its answer decides the next mode. *open*: answers carry no ``X-RateLimit-Remaining``,
so the API is not limiting us: no restriction (an a-priori ``rate`` still applies, and a
429 still freezes). *window*: answers report the budget: pace within the window.

**Budget.** The server's ``Remaining`` does not count requests still on the wire. For an
answer to request *j*, every request granted and not yet answered when *j* was sent may be
counted after it, so::

    available = Remaining_j + (answers received before j was sent) + 1 - (grants so far)

Each such estimate is a lower bound, whatever the order answers arrive in. The freshest
answer wins (another client spending the same budget only shows in fresh answers), except
that among answers sent within two round trips of each other the highest estimate wins.

**Where a window ends.** Each answer bounds the end of its window to ``[sent + Reset - p,
received + Reset + p]``, ``p`` being the precision of the value: a whole number of seconds
may be rounded either way by the server, so ``p = 1``; epoch, delta and ISO forms alike.
Intersected over the window's answers: ``lo <= end <= hi``. A new window is recognised
without waiting for ``hi``: within one window ``Remaining`` only falls, so an answer to a
request sent after another answer arrived that reports a *higher* ``Remaining`` comes from a
later window. At ``hi`` a window that did not visibly turn is over for sure: back to probe;
the budget is never refilled blind.

**Pacing.** Within a window the available budget is spread evenly until the boundary
(``pace_interval``), with a burst allowance of a tenth of it, so pacing slows as
``Remaining`` falls rather than bursting to zero and stalling. When ``hi - lo`` is worth more
than a few requests (whole-second ``Reset`` against a 2 s window is a whole half of it), a
*reserve* of tokens (2, or 1 for a limit under 40) is held back and sent as *boundary
probes* inside ``[lo, hi]``. A probe that lands in the old window spends a token that was
really there (no 429); the first that lands in the new one starts it at once.

**Learning the boundary.** Each turn of a window says when it really ended: after the last
request seen landing in it was sent, and before the first answer from the next arrived.
That is recorded relative to two reference points: the send time of the window's first
request (a window that starts with its first request lasts a fixed time, however coarse
``Reset`` is) and ``hi`` (right for clock-aligned windows and consistently rounded deltas).
Each keeps a learnt interval and a score (how often the window had ended by the end of its
interval), and the probes go where the better one says: bisecting while it is wide, at its
two ends once it is a few round trips narrow. Before anything is learnt, whole-unit
``Reset`` steps pin the end to ``lo``, the middle or ``hi`` (rounding up, to nearest, down),
which is where the first probes go. Against a server allowing 50 requests per 2 s with
whole-second ``Reset`` values, a long job runs within about 5% of the theoretical rate, with
no 429 after the first answer.

**Freezes.** A 429 freezes the whole bucket (not only the request that got it) until
``Retry-After``, else ``Reset``, else 60 s; `Limiter.freeze` does the same for the client. A
503 with ``Retry-After`` freezes it only when it says ``X-RateLimit-Remaining: 0`` or is the
third 503 in a row (`_ratelimit.UNAVAILABLE_STREAK`): one transient 503 is not a rate signal,
and the client waits its ``Retry-After`` for that request alone (``Slot.record`` returns
whether the answer froze the bucket). When a freeze ends, one probe goes first, then pacing
resumes.

**Server-dictated waits are capped** (``max_server_wait``, 900 s by default). A freeze and
the horizon a window is paced to are clamped to it. When the server dictates a longer wait
(a ``Retry-After`` of 1e12 s or a date in 9999, or a ``Reset`` that far with no budget left),
nobody waits for it: every request that would, of any priority, fails at once with
`RateLimitedError` whose ``retry_at`` is the time the server named, and so do the waiters
already in line. Once ``max_server_wait`` has passed, one request probes again.

**Failing fast.** ``max_wait``: when the estimated wait is longer, `slot` raises
`RateLimitedError` at once, its ``retry_at`` saying when to come back; when the estimate was
too hopeful, the waiter fails when ``max_wait`` runs out. Waits over a second are logged at
INFO, with the reason (frozen, probe, paced).

Time comes only from the injected `Clock`: tests drive all of this on a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import enum
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs

from ._clock import Clock, SystemClock
from ._closing import AsyncCloseable
from ._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    RateLimitState,
    ServerWait,
    cap_server_wait,
    check_max_server_wait,
    pace_interval,
    server_wait,
)
from .errors import InvalidRequestError, LimiterClosedError, RateLimitedError

__all__ = ["Limiter", "LimiterLike", "LimiterStats", "Priority", "Slot", "SlotLike"]

logger = logging.getLogger("zapier_async")

LOG_WAIT_OVER: Final = 1.0
"""Waits longer than this many seconds are logged at INFO (background ones summarised)."""

LOG_SUMMARY_EVERY: Final = 60.0
"""Background (POLL, BULK) waits over `LOG_WAIT_OVER` are logged one by one at DEBUG, and at
INFO only the first one and then one summary line at most this often (seconds): a bulk job
paced by the budget waits on almost every request, and a line each would drown the log."""

_BURST_FRACTION: Final = 0.1
"""Share of the available budget that may be sent at once instead of paced."""

_RESERVE: Final = 2
"""Tokens held back for boundary probes when the end of a window is uncertain (1 for a
limit under 40; more, up to a tenth of the limit, while the end is poorly known)."""

_NARROW_RTTS: Final = 3
"""A learnt boundary narrower than this many round trips (or one token's time) is probed at
both ends rather than bisected further."""

_REFERENCES: Final = ("first", "hi")
_SCORE_WEIGHT: Final = 0.5
_SCORE_MARGIN: Final = 0.2

_CALIBRATION_DRIFT: Final = 0.01
"""Per window, the learnt boundary offset is widened by this share of the window length."""


class Priority(enum.IntEnum):
    """Who is waiting for a request: lower values are served first."""

    INTERACTIVE = 0
    """Someone awaits this request now: a create from ``client.run()``, a poll of a handle
    being awaited, a discovery call."""
    POLL = 1
    """A background poll of a run in flight."""
    BULK = 2
    """A new submission from a bulk fan-out (``run_many``)."""


class _Default(enum.Enum):
    TOKEN = enum.auto()


USE_DEFAULT: Final = _Default.TOKEN
"""Sentinel for `Limiter.slot`'s ``max_wait``: use the limiter's default."""


@attrs.frozen(kw_only=True)
class LimiterStats:
    """A snapshot of a limiter's counters and its current view of the rate budget.

    Attributes:
        mode: ``"probe"``, ``"open"`` or ``"window"`` (see the module docs).
        grants: Slots granted.
        immediate: Slots granted without waiting.
        waits: Slots that had to wait.
        wait_total: Seconds waited, summed over those slots.
        wait_max: The longest wait, in seconds.
        rejected: `RateLimitedError` raised at once, the estimated wait exceeding
            ``max_wait``, or the server having dictated a wait past ``max_server_wait``
            (then waiters already in line are counted here too).
        expired: `RateLimitedError` raised when ``max_wait`` ran out while waiting.
        cancelled: Waiters cancelled before their turn.
        responses: Responses recorded.
        rate_limited: 429 responses seen.
        freezes: Times the bucket was frozen (or a freeze extended).
        windows: Rate-limit windows seen start.
        in_flight: Slots granted and not yet answered.
        waiting: Waiters now.
        limit: The server's limit per window, if known.
        remaining: Requests that may be sent now in the current window, if known.
        reset_in: Seconds until the current window certainly ends, if known.
        frozen_for: Seconds left of a freeze, if frozen.
    """

    mode: str
    grants: int
    immediate: int
    waits: int
    wait_total: float
    wait_max: float
    rejected: int
    expired: int
    cancelled: int
    responses: int
    rate_limited: int
    freezes: int
    windows: int
    in_flight: int
    waiting: int
    limit: int | None
    remaining: int | None
    reset_in: float | None
    frozen_for: float | None


class _SlotOwner(Protocol):
    def _complete(self, slot: Any, status: int | None, headers: Mapping[str, str]) -> None: ...

    def _ungrant(self, slot: Any) -> None: ...


class _OneShotSlot:
    """The contract every limiter's slot keeps: its outcome is reported exactly once.

    `record()` with the response, else `_release()` at the end of the ``async with`` block
    (no response), else `_undo()` when the grant raced with a cancellation (nothing sent).
    Whichever comes first wins; the others are ignored.
    """

    __slots__ = ("_done", "_limiter", "froze", "granted_at", "priority", "probe", "waited")

    def __init__(
        self,
        limiter: _SlotOwner,
        priority: Priority,
        granted_at: float,
        *,
        probe: bool,
        waited: float,
    ) -> None:
        self._limiter = limiter
        self._done = False
        self.priority = priority
        """The priority the slot was asked for."""
        self.granted_at = granted_at
        """Monotonic time of the grant."""
        self.probe = probe
        """Whether this request probes the budget (the only one in flight until answered)."""
        self.waited = waited
        """Seconds the slot waited to be granted."""
        self.froze = False
        """Whether the response recorded froze the whole bucket (set by the limiter)."""

    def record(self, status: int | None, headers: Mapping[str, str]) -> bool:
        """Report the response to the request sent with this slot.

        Call it once, as soon as the status and headers are in. Later calls are ignored,
        and so is a call after the slot's ``async with`` block ended.

        Args:
            status: The HTTP status, or None if there was no HTTP response.
            headers: The response headers (case-insensitive names).

        Returns:
            Whether this response froze the whole bucket (a 429; a 503 with ``Retry-After``
            that says the budget is spent or ends a streak of 503s): then the next `slot`
            waits for the freeze, or fails past ``max_server_wait``. False for a lone 503:
            its ``Retry-After`` is for the caller to honour, for that request alone.
        """
        if not self._done:
            self._done = True
            self._limiter._complete(self, status, headers)
        return self.froze

    def _release(self) -> None:
        """End of the ``async with`` block: without a response, the slot is just returned."""
        if not self._done:
            self._done = True
            self._limiter._complete(self, None, {})

    def _undo(self) -> None:
        """The grant raced with a cancellation: nothing was sent, give the token back."""
        if not self._done:
            self._done = True
            self._limiter._ungrant(self)


class Slot(_OneShotSlot):
    """Permission to send one request; hand its response back with `record`."""

    __slots__ = ("_completions_at_grant",)

    def __init__(
        self,
        limiter: Limiter,
        priority: Priority,
        granted_at: float,
        completions_at_grant: int,
        *,
        probe: bool,
        waited: float,
    ) -> None:
        super().__init__(limiter, priority, granted_at, probe=probe, waited=waited)
        self._completions_at_grant = completions_at_grant

    def __repr__(self) -> str:
        return (
            f"Slot(priority={self.priority.name}, granted_at={self.granted_at:.3f}, "
            f"probe={self.probe})"
        )


_S = TypeVar("_S")


class _BaseWaiter(Generic[_S]):
    """A caller waiting for a slot: what every limiter's waiting line keeps of it."""

    __slots__ = ("alive", "deadline", "enqueued_at", "fut", "priority")

    def __init__(
        self,
        priority: Priority,
        fut: asyncio.Future[_S],
        enqueued_at: float,
        deadline: float | None,
    ) -> None:
        self.priority = priority
        self.fut = fut
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.alive = True


class _Waiter(_BaseWaiter[Slot]):
    __slots__ = ("reason", "seq")

    def __init__(
        self,
        priority: Priority,
        seq: int,
        fut: asyncio.Future[Slot],
        enqueued_at: float,
        deadline: float | None,
        reason: str,
    ) -> None:
        super().__init__(priority, fut, enqueued_at, deadline)
        self.seq = seq
        self.reason = reason


class _Window:
    """What the responses of one server-side rate-limit window said."""

    __slots__ = (
        "anchor",
        "anchor_sent",
        "arrived",
        "arrived_min",
        "beyond_at",
        "first_sent",
        "hi",
        "last_member_sent",
        "limit",
        "lo",
        "opened_at",
        "precision",
    )

    def __init__(
        self,
        *,
        limit: int | None,
        anchor: int,
        sent: float,
        received: float,
        remaining: int,
        lo: float,
        hi: float,
        precision: float,
        beyond_at: float | None,
    ) -> None:
        self.limit = limit
        self.precision = precision  # coarsest Reset step seen in the window
        # available = anchor - grants (see "Budget" in the module docs)
        self.anchor = anchor
        self.anchor_sent = sent
        self.lo = lo  # the window ends no earlier than this (monotonic)
        self.hi = hi  # ... and no later than this
        # A response to a request sent after `opened_at` comes from this window or a later one.
        self.opened_at = received
        # Arrival times and the running minimum of Remaining, to recognise a later window.
        self.arrived = [received]
        self.arrived_min = [remaining]
        # Latest send time of a request known to have landed in this window: its end is later.
        self.last_member_sent = sent
        # When the window's first request was sent, if the opening answer was that request
        # (Remaining = Limit - 1): the reference for the learnt window length.
        self.first_sent = sent if limit is not None and remaining == limit - 1 else None
        # Wall-clock reset the server named when every answer put it past max_server_wait
        # (``hi`` is then capped): with no budget left, requests fail instead of waiting.
        self.beyond_at = beyond_at

    def min_remaining_before(self, t: float) -> int | None:
        """The lowest Remaining among answers that arrived before ``t``."""
        i = bisect.bisect_left(self.arrived, t) - 1
        return self.arrived_min[i] if i >= 0 else None


class _SlotRequest:
    """The async context manager returned by `Limiter.slot`."""

    __slots__ = ("_limiter", "_max_wait", "_priority", "_slot")

    def __init__(
        self, limiter: Limiter, priority: Priority, max_wait: float | _Default | None
    ) -> None:
        self._limiter = limiter
        self._priority = priority
        self._max_wait = max_wait
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._limiter._acquire(self._priority, self._max_wait)
        return self._slot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot is not None:
            self._slot._release()


class SlotLike(Protocol):
    """Permission to send one request, as a client uses it."""

    def record(self, status: int | None, headers: Mapping[str, str]) -> bool | None:
        """Report the response (status None: no HTTP response).

        Returns True when the response froze the whole bucket (the next slot waits for it),
        False when it did not (a lone 503: its ``Retry-After`` is the request's own to
        honour), None when the limiter does not say.
        """
        ...


class LimiterLike(Protocol):
    """What a `ZapierClient` needs of a rate limiter.

    `Limiter` (in-memory) and `zapier_async.redis.RedisLimiter` (a budget shared across
    processes) both provide it; so can your own.
    """

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | _Default | None = USE_DEFAULT,
    ) -> contextlib.AbstractAsyncContextManager[SlotLike]:
        """Wait for permission to send one request."""
        ...

    def freeze(self, seconds: float) -> None:
        """Hold every request back for `seconds`."""
        ...

    def snapshot(self) -> LimiterStats:
        """Counters and the current view of the budget."""
        ...

    async def aclose(self) -> None:
        """Stop granting slots."""
        ...


class Limiter(AsyncCloseable):
    """One shared rate budget for every request of one or more clients.

    See the module docstring for how it works. Share one limiter between clients that spend
    the same budget (same IP, same partner) by passing the same object to each; it belongs to
    the event loop that first uses it.

    Args:
        clock: Source of time; the real clock by default.
        max_wait: Default longest wait for a slot, in seconds; None waits as long as needed.
            Over it, `slot` raises `RateLimitedError` instead of waiting.
        rate: A budget known beforehand, ``(requests, per_seconds)``, enforced as a sliding
            window on top of what the server reports (e.g. ``(60, 60.0)`` for the Partner
            API's per-IP limit). With it, the first requests are not sent one by one.
        on_wait: Called as ``on_wait(seconds, priority)`` after each slot that had to wait.
        default_cooldown: Freeze after a 429 that says neither ``Retry-After`` nor
            ``X-RateLimit-Reset``; also the assumed window length when ``Reset`` is missing.
        max_server_wait: The longest wait a server may dictate, in seconds (900 by default;
            above 0, at most a day). Freezes (``Retry-After``, ``Reset``, `freeze`) and pacing
            horizons are capped to it; a request whose wait the server dictates past it fails
            at once with `RateLimitedError`, whatever its priority, ``retry_at`` saying the
            time the server named. Unlike ``max_wait``, it applies to background requests too.

    Raises:
        InvalidRequestError: An argument is out of range.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_wait: float | None = None,
        rate: tuple[int, float] | None = None,
        on_wait: Callable[[float, Priority], None] | None = None,
        default_cooldown: float = DEFAULT_COOLDOWN,
        max_server_wait: float = DEFAULT_MAX_SERVER_WAIT,
    ) -> None:
        if max_wait is not None and not max_wait >= 0:
            raise InvalidRequestError(f"must be >= 0 or None, got {max_wait!r}", "max_wait")
        if rate is not None:
            count, per = rate
            if int(count) != count or count < 1 or not (math.isfinite(per) and per > 0):
                raise InvalidRequestError(
                    f"must be (requests >= 1, seconds > 0), got {rate!r}", "rate"
                )
            rate = (int(count), float(per))
        if not (math.isfinite(default_cooldown) and default_cooldown > 0):
            raise InvalidRequestError(f"must be > 0, got {default_cooldown!r}", "default_cooldown")
        self._max_server_wait = check_max_server_wait(max_server_wait)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_wait = max_wait
        self._rate = rate
        self._rate_log: collections.deque[float] = collections.deque()
        self._on_wait = on_wait
        self._cooldown = default_cooldown
        self._closed = False

        # Waiters: a heap keyed by (priority, arrival), dead entries skipped lazily.
        self._heap: list[tuple[int, int, _Waiter]] = []
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._live_by_priority = [0, 0, 0]
        self._live = 0

        # Counters behind the budget arithmetic.
        self._granted = 0  # grants still standing (an undone grant is taken back)
        self._completed = 0  # slots finished (answered, or released without an answer)
        self._in_flight = 0

        # What we believe about the server.
        self._mode = "open" if rate is not None else "probe"
        self._probe_out = False
        self._probe_since = -math.inf
        self._window: _Window | None = None
        self._prev_window: _Window | None = None
        self._period: float | None = None  # longest window seen (the largest Reset)
        # Learnt position of a window's end relative to two reference points (see _calibrate).
        self._offsets: dict[str, tuple[float, float]] = {}
        self._scores: dict[str, float] = dict.fromkeys(_REFERENCES, 0.0)
        self._frozen_until: float | None = None
        # Wall-clock time the server named when the current freeze is past max_server_wait.
        self._refused_at: float | None = None
        self._unavailable_streak = 0  # 503 answers in a row
        self._tat = -math.inf  # pacing: theoretical time of the next grant
        self._last_grant = -math.inf
        self._rtt = 0.0  # smoothed time from grant to answer

        # The one timer.
        self._timer: asyncio.Task[None] | None = None
        self._timer_target: float | None = None
        self._timer_sleeping: float | None = None
        self._wake_pending = False
        self._dispatching = False
        self._redispatch = False

        # Statistics.
        self._n_grants = 0
        self._n_immediate = 0
        self._n_waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        # Background waits over LOG_WAIT_OVER not logged at INFO yet: count, longest, since.
        self._quiet_waits = 0
        self._quiet_max = 0.0
        self._quiet_since: float | None = None
        self._n_rejected = 0
        self._n_expired = 0
        self._n_cancelled = 0
        self._n_responses = 0
        self._n_429 = 0
        self._n_freezes = 0
        self._n_windows = 0

    # ------------------------------------------------------------------ public surface

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | _Default | None = USE_DEFAULT,
    ) -> contextlib.AbstractAsyncContextManager[Slot]:
        """Wait for permission to send one request.

        Use as ``async with limiter.slot(priority) as slot:``; call ``slot.record(status,
        headers)`` with the response. Leaving the block without recording means there was no
        response (connect error, cancellation mid-request).

        Args:
            priority: Who is waiting (see `Priority`).
            max_wait: The longest acceptable wait in seconds; None waits as long as needed;
                by default the limiter's ``max_wait``.

        Returns:
            An async context manager yielding the `Slot`.

        Raises:
            RateLimitedError: (on entering) The estimated wait is longer than ``max_wait``
                (raised at once, without waiting), or ``max_wait`` ran out while waiting.
            LimiterClosedError: (on entering) The limiter is or was closed while waiting.
        """
        return _SlotRequest(self, Priority(priority), max_wait)

    def freeze(self, seconds: float) -> None:
        """Stop granting slots to anybody for ``seconds`` (e.g. a ``Retry-After`` seen elsewhere).

        A freeze never shortens an earlier one. When it ends, one request probes the budget
        before pacing resumes. Longer than ``max_server_wait``, it holds requests back for
        ``max_server_wait`` only, and meanwhile every request fails at once with
        `RateLimitedError` (``retry_at`` = now + ``seconds``) instead of waiting.

        Args:
            seconds: How long to hold every request back.
        """
        self._freeze(seconds, "freeze() called")
        self._dispatch()

    @property
    def max_server_wait(self) -> float:
        """The cap on any server-dictated wait, in seconds."""
        return self._max_server_wait

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
        """Monotonic time at which the current freeze ends, or None when not frozen."""
        if self._frozen_until is not None and self._frozen_until <= self._clock.monotonic():
            return None
        return self._frozen_until

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def snapshot(self) -> LimiterStats:
        """The counters and the current view of the budget.

        Returns:
            A frozen `LimiterStats`.
        """
        now = self._clock.monotonic()
        w = self._window
        frozen = self.frozen_until
        return LimiterStats(
            mode=self._mode,
            grants=self._n_grants,
            immediate=self._n_immediate,
            waits=self._n_waits,
            wait_total=self._wait_total,
            wait_max=self._wait_max,
            rejected=self._n_rejected,
            expired=self._n_expired,
            cancelled=self._n_cancelled,
            responses=self._n_responses,
            rate_limited=self._n_429,
            freezes=self._n_freezes,
            windows=self._n_windows,
            in_flight=self._in_flight,
            waiting=self._live,
            limit=w.limit if w is not None else None,
            remaining=max(self._available(w), 0) if w is not None else None,
            reset_in=max(w.hi - now, 0.0) if w is not None else None,
            frozen_for=None if frozen is None else frozen - now,
        )

    async def aclose(self) -> None:
        """Close the limiter: stop the timer and fail every waiter with `LimiterClosedError`.

        Slots already granted may still record their responses. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if waiter.alive:
                self._kill(waiter)
                if not waiter.fut.done():
                    waiter.fut.set_exception(
                        LimiterClosedError("the rate limiter was closed while this request waited")
                    )
        self._deadlines.clear()
        task = self._timer
        self._timer = None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    def __repr__(self) -> str:
        return (
            f"Limiter(mode={self._mode!r}, in_flight={self._in_flight}, "
            f"waiting={self._live}, frozen_until={self.frozen_until!r})"
        )

    # ------------------------------------------------------------------ acquiring

    async def _acquire(self, priority: Priority, max_wait: float | _Default | None) -> Slot:
        if self._closed:
            raise LimiterClosedError("the rate limiter is closed")
        limit = self._max_wait if isinstance(max_wait, _Default) else max_wait
        now = self._clock.monotonic()
        self._advance(now)
        refused = self._refusal(now)
        if refused is not None:
            self._n_rejected += 1
            raise self._refused_error(refused)
        ahead = sum(self._live_by_priority[: priority + 1])
        if ahead == 0 and self._may_grant(now):
            self._n_immediate += 1
            return self._grant(priority, now, waited=0.0)

        estimate = self._estimate_wait(now, ahead + 1)
        if limit is not None and estimate > limit:
            self._n_rejected += 1
            raise RateLimitedError(estimate, self._clock.time() + estimate)

        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            priority,
            next(self._seq),
            loop.create_future(),
            now,
            None if limit is None else now + limit,
            self._reason(now),
        )
        heapq.heappush(self._heap, (priority, waiter.seq, waiter))
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, waiter.seq, waiter))
        self._live_by_priority[priority] += 1
        self._live += 1
        self._dispatch()
        try:
            return await waiter.fut
        except BaseException:
            fut = waiter.fut
            if fut.done() and not fut.cancelled():
                if fut.exception() is None:  # granted, but we were cancelled meanwhile
                    fut.result()._undo()
            elif waiter.alive:
                self._kill(waiter)
                self._n_cancelled += 1
            self._dispatch()
            raise

    def _reason(self, now: float) -> str:
        if self._frozen_until is not None and now < self._frozen_until:
            return "frozen"
        if self._mode == "probe":
            return "probe"
        return "paced"

    def _kill(self, waiter: _Waiter) -> None:
        waiter.alive = False
        self._live_by_priority[waiter.priority] -= 1
        self._live -= 1
        if len(self._heap) > 1024 and len(self._heap) > 2 * self._live:
            self._heap = [entry for entry in self._heap if entry[2].alive]
            heapq.heapify(self._heap)
            self._deadlines = [entry for entry in self._deadlines if entry[2].alive]
            heapq.heapify(self._deadlines)

    def _grant(self, priority: Priority, now: float, *, waited: float) -> Slot:
        probe = self._mode == "probe"
        if probe:
            self._probe_out = True
        elif self._mode == "window" and self._window is not None:
            # Pacing clock: the next grant is one gap later (GCRA, see _next_time).
            self._tat = max(self._tat, now) + self._gap(self._window, now)
        self._last_grant = now
        if self._rate is not None:
            self._rate_log.append(now)
            while len(self._rate_log) > self._rate[0]:
                self._rate_log.popleft()
        self._granted += 1
        self._in_flight += 1
        self._n_grants += 1
        return Slot(self, priority, now, self._completed, probe=probe, waited=waited)

    def _ungrant(self, slot: Slot) -> None:
        self._granted -= 1
        self._in_flight -= 1
        self._n_grants -= 1
        if slot.probe:
            self._probe_out = False
        if self._rate is not None:
            with contextlib.suppress(ValueError):  # it may have slid out of the window
                self._rate_log.remove(slot.granted_at)
        self._dispatch()

    # ------------------------------------------------------------------ responses

    def _complete(self, slot: Slot, status: int | None, headers: Mapping[str, str]) -> None:
        self._completed += 1
        self._in_flight -= 1
        if slot.probe:
            self._probe_out = False
        if status is not None and not self._closed:
            self._n_responses += 1
            self._on_response(slot, status, headers)
        self._dispatch()

    def _on_response(self, slot: Slot, status: int, headers: Mapping[str, str]) -> None:
        now = self._clock.monotonic()
        wall = self._clock.time()
        state = RateLimitState.from_headers(headers, now=wall)
        if status == 429:
            self._n_429 += 1
        self._unavailable_streak = self._unavailable_streak + 1 if status == 503 else 0
        wait = server_wait(
            status,
            state,
            now=wall,
            max_server_wait=self._max_server_wait,
            default_cooldown=self._cooldown,
            unavailable_streak=self._unavailable_streak,
        )
        if wait is not None:
            slot.froze = True
            self._hold(wait, f"HTTP {status}")
            return
        if state.remaining is None:
            # No budget headers: this API is not limiting us. Trust that only for answers to
            # requests sent since probing began, not for stragglers from before a freeze, and
            # not for a server error (a proxy's 503 page says nothing about the budget).
            if self._mode == "probe" and slot.granted_at >= self._probe_since and status < 500:
                self._mode = "open"
                logger.debug("no rate-limit headers in responses: not pacing")
            return
        self._observe(slot, state, now)

    def _observe(self, slot: Slot, state: RateLimitState, now: float) -> None:
        assert state.remaining is not None
        sent, remaining = slot.granted_at, state.remaining
        self._rtt += 0.2 * ((now - sent) - self._rtt)
        anchor = remaining + slot._completions_at_grant + 1
        precision = state.reset_precision
        reset_after = state.reset_after
        beyond_at: float | None = None
        if reset_after is not None and reset_after > self._max_server_wait:
            # A Reset past the cap: pace to the cap, and with nothing left fail, not wait.
            wall = self._clock.time()
            beyond_at = (state.reset_at or wall + reset_after) + state.reset_precision
            reset_after = self._max_server_wait
        if reset_after is not None:
            slack = max(state.reset_precision, 0.005)
            if self._period is not None:
                slack = max(slack, min(0.01 * self._period, 1.0))
            # A capped Reset bounds nothing from below: the end is only known to be later.
            lo = sent + reset_after - slack if beyond_at is None else sent
            hi = now + reset_after + slack
            self._period = max(self._period or 0.0, reset_after + state.reset_precision)
        else:
            # No Reset: assume the window lasts at most the default cool-down.
            lo, hi = sent, now + self._cooldown

        w = self._window
        if w is None:
            if hi <= now:
                return  # describes a window that has already ended
            prev = self._prev_window
            if prev is not None and self._is_newer(prev, sent, remaining, lo):
                self._calibrate(prev, now)
            elif prev is not None and sent < self._probe_since:
                return  # a straggler, likely from the window that just ended
            self._open(state.limit, anchor, sent, now, remaining, lo, hi, precision, beyond_at)
            return
        if self._is_newer(w, sent, remaining, lo):
            self._calibrate(w, now)
            limit = state.limit or w.limit
            self._open(limit, anchor, sent, now, remaining, lo, hi, precision, beyond_at)
            return
        if sent <= w.opened_at:
            return  # sent before this window was known: it may belong to the previous one
        # A member of the current window. Every anchor is a lower bound on the budget as far
        # as our own requests go, so the highest is the best; but another client spending the
        # same budget shows only in fresher answers, so only near-simultaneous ones compete.
        if sent > w.anchor_sent:
            if anchor > w.anchor or sent - w.anchor_sent > self._fresh_for():
                w.anchor = anchor
            w.anchor_sent = sent
        elif anchor > w.anchor and w.anchor_sent - sent <= self._fresh_for():
            w.anchor = anchor
        if state.limit is not None:
            w.limit = state.limit
        w.precision = max(w.precision, precision)
        w.lo = max(w.lo, lo)
        w.hi = max(min(w.hi, hi), w.lo)  # inconsistent bounds: keep the later end
        if w.beyond_at is not None:  # past the cap only while every answer says so
            w.beyond_at = None if beyond_at is None else min(w.beyond_at, beyond_at)
        w.arrived.append(now)
        w.arrived_min.append(min(w.arrived_min[-1], remaining))
        w.last_member_sent = max(w.last_member_sent, sent)

    def _fresh_for(self) -> float:
        """Answers sent this close together describe the same moment of the budget."""
        return 2 * self._rtt

    def _is_newer(self, w: _Window, sent: float, remaining: int, lo: float) -> bool:
        """Whether an answer provably comes from a window after ``w``."""
        if lo > w.hi:
            return True  # it says its window ends after ``w`` certainly ended
        # Sent after an answer from ``w`` arrived, so processed after it; within one window
        # Remaining only falls, so a higher one means the window turned.
        before = w.min_remaining_before(sent)
        return before is not None and remaining > before

    def _open(
        self,
        limit: int | None,
        anchor: int,
        sent: float,
        now: float,
        remaining: int,
        lo: float,
        hi: float,
        precision: float,
        beyond_at: float | None,
    ) -> None:
        self._window = _Window(
            limit=limit,
            anchor=anchor,
            sent=sent,
            received=now,
            remaining=remaining,
            lo=lo,
            hi=hi,
            precision=precision,
            beyond_at=beyond_at,
        )
        self._prev_window = None
        self._mode = "window"
        self._tat = now
        self._n_windows += 1

    @staticmethod
    def _reference(w: _Window, name: str) -> float | None:
        return w.first_sent if name == "first" else w.hi

    def _predict(self, w: _Window, name: str) -> tuple[float, float] | None:
        """Where reference ``name`` puts the end of ``w``, within its sound bounds."""
        ref = self._reference(w, name)
        offset = self._offsets.get(name)
        if ref is None or offset is None:
            return None
        start, end = max(ref + offset[0], w.lo), min(ref + offset[1], w.hi)
        return (start, end) if start <= end else None  # contradicts the bounds: not this one

    def _calibrate(self, old: _Window, turned_by: float) -> None:
        """Learn where windows end, from how ``old`` ended.

        ``old`` ended after the last request known to have landed in it was sent, and no
        later than ``turned_by``, when an answer from the next window arrived. That span is
        recorded relative to two reference points, each right for one kind of server:

        - ``first``: the send time of the window's first request. A window that starts with
          its first request (the common "count, expire after P" design) ends a fixed time
          after it, however coarsely ``Reset`` is written;
        - ``hi``: the latest end the ``Reset`` values allow. Right for clock-aligned windows
          and for ``Reset`` deltas rounded the same way every time.

        Each reference keeps a learnt interval that only shrinks, except that its early side
        slides a little earlier every window so that an earlier end is found again; a
        contradiction restarts it. Each also keeps a score: how often the window had ended by
        the end of its interval. `_ladder` trusts the better one.
        """
        low = old.last_member_sent
        high = max(turned_by, low)
        drift = _CALIBRATION_DRIFT * (self._period or 0.0)
        for name in _REFERENCES:
            ref = self._reference(old, name)
            if ref is None:
                continue
            predicted = self._predict(old, name)
            if predicted is not None:
                # The costly miss: a request sent at or after the predicted end still landed
                # in the old window, so every boundary probe would have been too early.
                hit = low < predicted[1]
                self._scores[name] += _SCORE_WEIGHT * (float(hit) - self._scores[name])
            seen = (low - ref, high - ref)
            learnt = self._offsets.get(name)
            if learnt is not None:
                merged = (max(learnt[0] - drift, seen[0]), min(learnt[1], seen[1]))
                if merged[0] <= merged[1]:
                    seen = merged
            self._offsets[name] = seen

    # ------------------------------------------------------------------ decisions

    def _freeze(self, seconds: float, why: str) -> None:
        wall = self._clock.time()
        self._hold(cap_server_wait(seconds, max_server_wait=self._max_server_wait, now=wall), why)

    def _hold(self, wait: ServerWait, why: str) -> None:
        """Freeze the bucket for ``wait.hold`` (already capped); never shorten a freeze."""
        until = self._clock.monotonic() + wait.hold
        if self._frozen_until is None or until > self._frozen_until:
            self._frozen_until = until
            self._refused_at = wait.retry_at if wait.over_cap else None
            self._n_freezes += 1
            if not wait.over_cap:
                logger.info("rate limit: holding all requests for %.1fs (%s)", wait.hold, why)
        elif wait.over_cap:
            self._refused_at = max(self._refused_at or wait.retry_at, wait.retry_at)
        if wait.over_cap:
            logger.warning(
                "rate limit: the server asked for a wait of %.0fs (%s), longer than "
                "max_server_wait (%.0fs): requests fail with RateLimitedError for %.0fs, "
                "then one probes again",
                wait.retry_at - self._clock.time(),
                why,
                self._max_server_wait,
                wait.hold,
            )

    def _refusal(self, now: float) -> float | None:
        """The time the server named, when a request now would wait past max_server_wait.

        Call after `_advance`. Returns wall-clock epoch seconds, or None: may wait.
        """
        if self._frozen_until is not None and now < self._frozen_until:
            return self._refused_at
        w = self._window
        if w is not None and w.beyond_at is not None and self._available(w) <= 0:
            return w.beyond_at
        return None

    def _refused_error(self, retry_at: float) -> RateLimitedError:
        return RateLimitedError(
            max(retry_at - self._clock.time(), 0.0), retry_at, reason="max_server_wait"
        )

    def _enter_probe(self, now: float) -> None:
        if self._window is not None:
            self._prev_window = self._window
        self._window = None
        self._mode = "probe"
        self._probe_since = now

    def _advance(self, now: float) -> None:
        """Apply what the passing of time changes: a freeze ends, a window runs out."""
        if self._frozen_until is not None and now >= self._frozen_until:
            self._frozen_until = None
            self._refused_at = None
            self._enter_probe(now)
        w = self._window
        if w is not None and now >= w.hi:
            self._enter_probe(now)

    def _available(self, w: _Window) -> int:
        available = w.anchor - self._granted
        return min(available, w.limit) if w.limit is not None else available

    def _ladder(self, w: _Window) -> tuple[float, float, bool]:
        """Where the window's end is expected: ``lo <= start <= end <= hi``.

        Returns:
            ``(start, end, learnt)``; ``learnt`` is False when nothing is known beyond the
            sound bounds ``(lo, hi)``.
        """
        first, hi = self._predict(w, "first"), self._predict(w, "hi")
        lead = self._scores["first"] - self._scores["hi"]
        if first is None or hi is None:
            if first is None and hi is None:
                return w.lo, w.hi, False
            start, end = first or hi or (w.lo, w.hi)
        elif lead > _SCORE_MARGIN:
            start, end = first
        elif lead < -_SCORE_MARGIN:
            start, end = hi
        else:  # no clear winner: cover both
            start, end = min(first[0], hi[0]), max(first[1], hi[1])
        # Probes all sent at one instant would learn nothing: keep the ladder a little open.
        end = min(max(end, start + max(self._token_time(w), 2 * self._rtt)), w.hi)
        return start, end, True

    def _token_time(self, w: _Window) -> float:
        """Seconds of window per request of the limit."""
        return (self._period or 0.0) / (w.limit or 1)

    def _plan(self, w: _Window) -> tuple[float, tuple[float, ...]]:
        """When regular pacing stops, and when the boundary probes go.

        Probes are only planned when the end of the window is uncertain by more than the
        tokens they hold back are worth. Three cases:

        - nothing learnt yet, and ``Reset`` steps in whole units (``hi - lo`` about one
          unit): the steps of the reported value pin the end to ``lo`` (the server rounds
          up), the middle (to nearest) or ``hi`` (down), so probe just after the first two;
          ``hi`` is the fall-back anyway;
        - a learnt interval narrower than a few round trips: probe at both of its ends;
        - otherwise: split the interval evenly (bisection), the last probe at its end. A wide
          interval is worth more probes: R probes cost about R/2 tokens and leave a delay of
          about width / 2R, which is smallest at R = sqrt(width / token time).

        Returns:
            ``(start, probes)``: pacing spreads the budget until ``start``; the probe times
            are increasing, and ``hi`` follows them.
        """
        start, end, learnt = self._ladder(w)
        if w.limit is None or w.limit < 2 or not self._period:
            return start, ()
        base = _RESERVE if w.limit >= 40 else 1
        token_time = self._token_time(w)
        if w.hi - w.lo <= 2 * base * token_time:
            return start, ()
        width = end - start
        if not learnt and w.hi - w.lo <= 1.5 * w.precision:
            margin = 2 * (token_time + self._rtt)
            return start, (w.lo + margin, (w.lo + w.hi) / 2 + margin)[:base]
        if learnt and width <= max(token_time, _NARROW_RTTS * self._rtt):
            return start, (start, end) if base > 1 else (end,)
        count = max(base, min(round(math.sqrt(width / token_time)), w.limit // 10))
        return start, tuple(start + width * (i + 1) / count for i in range(count))

    def _gap(self, w: _Window, now: float) -> float:
        """The pacing gap now: what is left before the boundary, spread until it."""
        start, probes = self._plan(w)
        spendable = self._available(w) - len(probes)
        if now >= start or spendable <= 0:
            return 0.0
        return pace_interval(spendable, start - now)

    def _next_time(self, now: float) -> float | None:
        """When the next grant may happen (<= now: at once), or None: after an event."""
        if self._frozen_until is not None:
            return self._frozen_until
        earliest = now
        if self._rate is not None and len(self._rate_log) >= self._rate[0]:
            earliest = max(earliest, self._rate_log[0] + self._rate[1])
        if self._mode == "open":
            return earliest
        if self._mode == "probe":
            return None if self._probe_out else earliest
        w = self._window
        assert w is not None
        available = self._available(w)
        if available <= 0:
            return max(earliest, w.hi)
        start, probes = self._plan(w)
        spendable = available - len(probes)
        if spendable > 0:
            if now < start:
                # Spread the spendable budget until the boundary; allow a small burst.
                gap = pace_interval(spendable, start - now)
                burst = max(1, int(spendable * _BURST_FRACTION))
                return max(earliest, self._tat - (burst - 1) * gap)
            # Past the earliest possible end with budget to spare: spend it until the end.
            end = probes[-1] if probes else w.hi
            return max(earliest, self._last_grant + max(end - now, 0.0) / available)
        # Only the reserve is left: it goes out as boundary probes, then comes ``hi``. Short
        # of tokens, the last probes are kept: they are the likeliest to find the new window.
        for probe in probes[-available:]:
            if probe > self._last_grant:
                return max(earliest, probe)
        return max(earliest, w.hi)

    def _may_grant(self, now: float) -> bool:
        when = self._next_time(now)
        return when is not None and when <= now

    def _estimate_wait(self, now: float, position: int) -> float:
        """Rough seconds until the ``position``-th next grant (1 = the next one)."""
        start = now
        if self._frozen_until is not None and self._frozen_until > now:
            start = self._frozen_until
        t = start
        w = self._window if start == now else None  # after a freeze comes a probe
        limit = w.limit if w is not None else None
        if w is None:
            # Probing: one request at a time; the last window known says how fast it may go.
            known = self._window or self._prev_window
            if known is not None and known.limit:
                t += (position - 1) * self._token_time(known)
        else:
            available = max(self._available(w), 0)
            if position <= available:
                t = max(t, now + position * self._gap(w, now))
            else:
                extra = position - available
                per_window = limit or max(available, 1)
                period = self._period or self._cooldown
                t = max(t, w.hi + (extra - 1) // per_window * period)
        if self._rate is not None:
            count, per = self._rate
            log = list(self._rate_log)
            free = count - len(log)
            if position > free:
                j = position - free  # j-th grant that must wait for the log to slide
                virtual = log + [now] * max(free, 0)
                t = max(t, virtual[(j - 1) % count] + ((j - 1) // count + 1) * per)
        return max(t - now, 0.0)

    # ------------------------------------------------------------------ dispatching

    def _dispatch(self) -> None:
        """Grant every waiter that may go now, then arm the timer for the next one."""
        if self._dispatching:
            self._redispatch = True  # e.g. an on_wait hook called freeze()
            return
        if self._closed:
            return
        if not self._live and self._timer is None:
            return  # nobody waits and no timer to disarm: nothing to do (the common case)
        self._dispatching = True
        try:
            again = True
            while again:
                self._redispatch = False
                self._dispatch_once()
                again = self._redispatch
        finally:
            self._dispatching = False

    def _dispatch_once(self) -> None:
        now = self._clock.monotonic()
        self._advance(now)
        self._expire(now)
        refused = self._refusal(now)
        if refused is not None:
            # The server dictated a wait past max_server_wait: nobody waits for it.
            while self._live:
                waiter = self._pop()
                if waiter is None:
                    break
                self._n_rejected += 1
                waiter.fut.set_exception(self._refused_error(refused))
        while self._live:
            when = self._next_time(now)
            if when is None or when > now:
                break
            waiter = self._pop()
            if waiter is None:
                break  # only callers who already gave up were waiting
            waited = now - waiter.enqueued_at
            slot = self._grant(waiter.priority, now, waited=waited)
            waiter.fut.set_result(slot)
            self._note_wait(waiter, waited)
        self._arm(self._timer_due(now))

    def _pop(self) -> _Waiter | None:
        """The next waiter a slot can be handed to, or None when nobody can take one."""
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if not waiter.alive:
                continue
            self._kill(waiter)
            if self._gone(waiter):
                continue
            return waiter
        return None

    def _gone(self, waiter: _Waiter) -> bool:
        """Whether a live waiter's caller already gave up (its future is done).

        A task cancelled (by ``task.cancel()`` or ``wait_for``'s timeout) has its future
        cancelled at once but runs its ``except`` clause only on a later loop iteration; a
        dispatch in between must neither grant it a slot nobody will use or release (in probe
        mode that would stop every request for good) nor fail it a second time. The caller
        has been removed from the line by ``_kill``; it is counted as cancelled here, since
        its own clause finds it already dead.
        """
        if not waiter.fut.done():
            return False
        self._n_cancelled += 1
        return True

    def _note_wait(self, waiter: _Waiter, waited: float) -> None:
        self._n_waits += 1
        self._wait_total += waited
        self._wait_max = max(self._wait_max, waited)
        if waited > LOG_WAIT_OVER:
            self._log_wait(waiter, waited)
        if self._on_wait is not None:
            try:
                self._on_wait(waited, waiter.priority)
            except Exception:
                logger.exception("on_wait hook failed")

    def _log_wait(self, waiter: _Waiter, waited: float) -> None:
        """Log a long wait: interactive ones at INFO, background ones summarised."""
        args = (waiter.priority.name.lower(), waited, waiter.reason)
        if waiter.priority is Priority.INTERACTIVE:
            logger.info("rate limit: a %s request waited %.1fs (%s)", *args)
            return
        now = self._clock.monotonic()
        since = self._quiet_since
        if since is None:
            self._quiet_since = now
            logger.info(
                "rate limit: a %s request waited %.1fs (%s); further background waits are "
                "summarised every %.0fs",
                *args,
                LOG_SUMMARY_EVERY,
            )
            return
        logger.debug("rate limit: a %s request waited %.1fs (%s)", *args)
        self._quiet_waits += 1
        self._quiet_max = max(self._quiet_max, waited)
        if now - since >= LOG_SUMMARY_EVERY:
            logger.info(
                "rate limit: %d more background requests waited over %.0fs in the last %.0fs "
                "(longest %.1fs)",
                self._quiet_waits,
                LOG_WAIT_OVER,
                now - since,
                self._quiet_max,
            )
            self._quiet_waits, self._quiet_max, self._quiet_since = 0, 0.0, now

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if not waiter.alive:
                continue
            position = sum(self._live_by_priority[: waiter.priority + 1])
            self._kill(waiter)
            if self._gone(waiter):
                continue
            self._n_expired += 1
            estimate = self._estimate_wait(now, position)
            waiter.fut.set_exception(RateLimitedError(estimate, self._clock.time() + estimate))

    def _timer_due(self, now: float) -> float | None:
        """When the timer must next run, or None when only an event can make progress."""
        if not self._live:
            return None
        due = self._next_time(now)
        while self._deadlines and not self._deadlines[0][2].alive:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            deadline = self._deadlines[0][0]
            due = deadline if due is None else min(due, deadline)
        return due

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
                self._dispatch()
        finally:
            self._wake_pending = False
            if self._timer is me:
                self._timer = None

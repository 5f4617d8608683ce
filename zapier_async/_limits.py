"""What every limiter shares: the protocols a client needs, the stats and pressure values,
the one-shot slot contract, the waiter record and its wait, lanes (`Lane`) and forgetting
idle buckets (the in-memory `Limiter` and the Redis one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import heapq
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs

from ._budget import BudgetView, Priority
from ._ratelimit import ServerWait
from .errors import InvalidRequestError

__all__ = [
    "USE_DEFAULT",
    "Lane",
    "LimiterLike",
    "LimiterStats",
    "Pressure",
    "SlotLike",
    "estimate_wait_of",
    "pressure_of",
    "slot_for",
    "spare_of",
]

logger = logging.getLogger("zapier_async")

DEFAULT_MAX_BUCKETS: Final = 10_000
"""Buckets a limiter keeps at most (least recently used idle ones are forgotten past it)."""

DEFAULT_BUCKET_IDLE: Final = 900.0
"""Seconds after which an idle bucket is forgotten (three Actions API windows)."""

FIRST: Final = 1 << 62
"""Subtracted from the sequence number of a ``first`` waiter (see `Limiter.slot`): a line is
ordered by ``(priority, seq)``, so it goes before every other one of its priority."""

RAISED: Final = 2 * FIRST
"""Added to the sequence number of a waiter whose priority a `Lane` raised (waiting when the
lane was raised, or asked later by the raised lane): it goes after every waiter natively at
that priority (a ``first`` one too), those arriving later included, and FIFO among the raised
ones. A web request arriving while a drained bulk job has a window's worth of requests queued
at INTERACTIVE goes before them, not a window later."""

LOG_WAIT_OVER: Final = 1.0
"""Waits longer than this many seconds are logged at INFO (background ones summarised)."""

LOG_SUMMARY_EVERY: Final = 60.0
"""Background (POLL, BULK) waits over `LOG_WAIT_OVER` are logged one by one at DEBUG, and at
INFO only the first one and then one summary line at most this often (seconds): a bulk job
paced by the budget waits on almost every request, and a line each would drown the log."""


class DefaultMarker(enum.Enum):
    TOKEN = enum.auto()


USE_DEFAULT: Final = DefaultMarker.TOKEN
"""Sentinel for `Limiter.slot`'s ``max_wait``: use the limiter's default."""


@attrs.frozen(kw_only=True)
class LimiterStats:
    """A snapshot of a limiter's counters and its current view of the rate budget.

    Attributes:
        mode: ``"probe"``, ``"open"`` or ``"window"`` (of the default bucket, ``key=None``).
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
        freezes: Times a bucket was frozen (or a freeze extended).
        windows: Rate-limit windows seen start.
        in_flight: Slots granted and not yet answered.
        waiting: Waiters now.
        limit: The server's limit per window, if known (default bucket).
        remaining: Requests that may be sent now in the current window, if known (default
            bucket).
        reset_in: Seconds until the current window certainly ends, if known (default bucket).
        frozen_for: Seconds left of a freeze, if frozen (default bucket).
        buckets: Buckets (keys) kept now.
        evictions: Idle buckets forgotten.
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
    buckets: int = 1
    evictions: int = 0


@attrs.frozen(kw_only=True)
class Pressure:
    """One key's live budget and line, for a planner to price a request (times monotonic,
    on the limiter's clock).

    Attributes:
        waiting_by_priority: Waiters per priority: ``(INTERACTIVE, POLL, BULK)``.
        in_flight: Slots granted and not yet answered.
        remaining_estimate: Requests that may still be sent in the current window, if known.
        window_ends_at: When the current window certainly ends, if known.
        next_free_at: When one more request of the asked priority could be sent, behind
            those waiting at that priority or above.
        frozen_until: When the bucket's freeze ends, if frozen.
        mode: ``"probe"``, ``"open"`` or ``"window"``.
        limit: Requests per window, if known.
        period: The window's length in seconds, if learnt.
        now: The limiter clock's monotonic time when this was read (the time base of
            ``window_ends_at``, ``next_free_at`` and ``frozen_until``).
    """

    waiting_by_priority: tuple[int, int, int]
    in_flight: int
    remaining_estimate: int | None
    window_ends_at: float | None
    next_free_at: float
    frozen_until: float | None
    mode: str
    limit: int | None
    period: float | None = None
    now: float | None = None


class _SlotOwner(Protocol):
    def _complete(self, slot: Any, status: int | None, headers: Mapping[str, str]) -> None: ...

    def _ungrant(self, slot: Any) -> None: ...


class OneShotSlot:
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


_S = TypeVar("_S")


class BaseWaiter(Generic[_S]):
    """A caller waiting for a slot: what every limiter's waiting line keeps of it.

    Its line orders waiters by ``(priority, seq)``; ``seq`` counts arrivals, less `FIRST`
    for a ``first`` waiter, plus `RAISED` for one whose priority a lane raised (``raised``).
    """

    __slots__ = ("alive", "deadline", "enqueued_at", "fut", "priority", "raised", "seq")

    def __init__(
        self,
        priority: Priority,
        seq: int,
        fut: asyncio.Future[_S],
        enqueued_at: float,
        deadline: float | None,
        *,
        raised: bool = False,
    ) -> None:
        self.priority = priority
        self.raised = raised
        self.seq = seq + RAISED if raised else seq
        self.fut = fut
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.alive = True


_W = TypeVar("_W", bound=BaseWaiter[Any])


class Lane:
    """Requests whose priority is raised together, those already waiting for a slot included:
    a bulk job's creates, which go at INTERACTIVE once the job's input is exhausted.

    Ask each of their slots with it (`slot_for`'s ``lane``). Once `raise_to` raised it, its
    requests asked later go at the raised priority on any limiter, and a limiter that
    declares ``supports_lanes`` moves those waiting up its line (their counts per priority,
    `Pressure` and estimates with them): they may spend what the limiter keeps for that
    priority, such as ``spend_window``'s interactive reserve. There they go after the
    requests natively at that priority, those arriving later included (`RAISED`): a raised
    lane passes everything below its new priority, never a caller who asked for it.
    """

    __slots__ = ("_waiting", "priority")

    def __init__(self) -> None:
        self.priority: Priority | None = None
        """The priority the lane was raised to; None: its requests go at their own."""
        # For limiters: waiter -> (its line, the limiter's ``promote(line, waiters, to)``).
        self._waiting: dict[BaseWaiter[Any], tuple[object, Callable[..., None]]] = {}

    def of(self, priority: Priority) -> Priority:
        """The priority a request of the lane asked at ``priority`` goes at now."""
        raised = self.priority
        return priority if raised is None or raised >= priority else raised

    def raise_to(self, priority: Priority) -> None:
        """Raise the lane's requests, waiting or to come, to ``priority`` (never lowers it)."""
        priority = Priority(priority)
        if self.priority is not None and self.priority <= priority:
            return
        self.priority = priority
        lines: dict[tuple[object, Callable[..., None]], list[BaseWaiter[Any]]] = {}
        for waiter, owner in self._waiting.items():
            lines.setdefault(owner, []).append(waiter)
        for (line, promote), waiters in lines.items():
            promote(line, waiters, priority)

    def join(self, waiter: BaseWaiter[Any], line: object, promote: Callable[..., None]) -> None:
        """For limiters: ``waiter``, in ``line``, waits; when the lane is raised,
        ``promote(line, waiters, priority)`` is called with the lane's waiters in it."""
        self._waiting[waiter] = (line, promote)

    def leave(self, waiter: BaseWaiter[Any]) -> None:
        """For limiters: ``waiter`` waits no more (granted, refused, cancelled)."""
        self._waiting.pop(waiter, None)


_G = TypeVar("_G", bound="OneShotSlot | None")


async def granted(
    waiter: BaseWaiter[_G],
    give_up: Callable[[], None],
    lane: Lane | None = None,
    line: object = None,
    promote: Callable[..., None] | None = None,
) -> _G:
    """Wait for ``waiter``'s grant (the slot, or what its future holds), in ``lane``
    meanwhile (joined with ``line`` and ``promote``: see `Lane.join`). When its caller
    leaves first (cancelled), a grant that raced with it is given back (`OneShotSlot._undo`),
    and a waiter still in line is taken out by ``give_up()``; then the exception goes on."""
    if lane is not None and promote is not None:
        lane.join(waiter, line, promote)
    try:
        return await waiter.fut
    except BaseException:
        fut = waiter.fut
        if fut.done() and not fut.cancelled():
            if fut.exception() is None and (slot := fut.result()) is not None:
                slot._undo()  # granted, but its caller was cancelled meanwhile
        elif waiter.alive:
            give_up()
        raise
    finally:
        if lane is not None:
            lane.leave(waiter)


def in_lane(priority: Priority, lane: Lane | None) -> tuple[Priority, bool]:
    """The priority a request asked at ``priority`` in ``lane`` (None: in none) goes at now,
    and whether the lane raised it (it then goes after those natively at it: `RAISED`)."""
    if lane is None:
        return priority, False
    now = lane.of(priority)
    return now, now != priority


def raise_in_line(
    heap: list[tuple[int, int, _W]],
    live: list[int],
    raised: list[int],
    waiters: Iterable[_W],
    to: Priority,
) -> bool:
    """Raise a line's live ``waiters`` to priority ``to`` (`Lane.raise_to`): each moves from
    its count per priority in ``live`` (and ``raised``: the raised ones among them) to
    ``to``'s, goes after the waiters natively at ``to`` (`RAISED`, FIFO among the raised
    ones kept), and the line's ``heap`` of ``(priority, seq, waiter)`` is sorted again, dead
    entries dropped (O(n), once per raise of a lane). A waiter alive but out of the heap (a
    grant being written) just changes priority and ``seq``, which its return to the heap
    uses. Returns whether any moved."""
    moved = False
    for waiter in waiters:
        if waiter.alive and waiter.priority > to:
            live[waiter.priority] -= 1
            live[to] += 1
            if waiter.raised:
                raised[waiter.priority] -= 1
            else:
                waiter.raised = True
                waiter.seq += RAISED
            raised[to] += 1
            waiter.priority = to
            moved = True
    if moved:
        heap[:] = [
            (int(waiter.priority), waiter.seq, waiter) for *_, waiter in heap if waiter.alive
        ]
        heapq.heapify(heap)
    return moved


def ahead_in_line(
    live: Sequence[int] | None, raised: Sequence[int] | None, priority: int, *, last: bool
) -> int:
    """Waiters of a line (``live`` per priority, ``raised`` of them raised by a lane; None:
    no line) served before a new one of ``priority``: those of its priority or above, less
    the raised ones of its priority unless it is raised too (``last``: it goes after them)."""
    if live is None:
        return 0
    ahead = sum(live[: priority + 1])
    return ahead if last or raised is None else ahead - raised[priority]


EVICT_SCAN: Final = 8
"""Buckets looked at per new or used bucket when forgetting idle ones (amortised O(1))."""


class _Kept(Protocol):
    key: Hashable
    used_at: float


_K = TypeVar("_K", bound=_Kept)


def forget_idle(
    buckets: collections.OrderedDict[Hashable, _K],
    now: float,
    max_buckets: int,
    idle_after: float,
    idle: Callable[[_K], bool],
    keep: _K | None = None,
) -> list[_K]:
    """Forget a few of a limiter's ``buckets``, least recently used first (`EVICT_SCAN` at
    most are looked at): while there are more than ``max_buckets``, or one was unused for
    ``idle_after`` seconds, the oldest goes if ``idle`` says it holds nothing, else it is
    looked at again after the others. Stops at ``keep``. Returns the buckets forgotten."""
    gone: list[_K] = []
    for _ in range(min(EVICT_SCAN, len(buckets))):
        oldest = next(iter(buckets.values()))
        if oldest is keep:
            break
        if len(buckets) <= max_buckets and now - oldest.used_at < idle_after:
            break
        if idle(oldest):
            del buckets[oldest.key]
            gone.append(oldest)
        else:  # busy: look at it again after the others
            buckets.move_to_end(oldest.key)
    return gone


def first_deadline(deadlines: list[tuple[float, int, _W]], due: float | None) -> float | None:
    """The earlier of ``due`` and the first deadline of a live waiter in the heap
    ``deadlines`` (the dead ones on top leave it)."""
    while deadlines and not deadlines[0][2].alive:
        heapq.heappop(deadlines)
    if deadlines:
        deadline = deadlines[0][0]
        due = deadline if due is None else min(due, deadline)
    return due


def check_limiter_args(max_wait: float | None, max_buckets: int, **positive: float) -> None:
    """Check the arguments every limiter takes.

    Raises:
        InvalidRequestError: ``max_wait`` is under 0, ``max_buckets`` is not an int >= 1, or
            a value of ``positive`` is not a finite number > 0.
    """
    if max_wait is not None and not max_wait >= 0:
        raise InvalidRequestError(f"must be >= 0 or None, got {max_wait!r}", "max_wait")
    if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 1:
        raise InvalidRequestError(f"must be an int >= 1, got {max_buckets!r}", "max_buckets")
    for field, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise InvalidRequestError(f"must be > 0, got {value!r}", field)


def pressure_from(
    view: BudgetView,
    live: Sequence[int] | None,
    *,
    in_flight: int,
    next_free_at: float,
    now: float,
    shift: float = 0.0,
) -> Pressure:
    """A key's `Pressure` from its budget's view and its line's live waiters per priority
    (None: no line); the view's times less ``shift`` (the Redis limiter's shared clock is
    ahead of the local one by it)."""
    first, poll, bulk = live if live is not None else (0, 0, 0)
    ends, frozen = view.window_ends_at, view.frozen_until
    return Pressure(
        waiting_by_priority=(first, poll, bulk),
        in_flight=in_flight,
        remaining_estimate=view.remaining,
        window_ends_at=None if ends is None else ends - shift,
        next_free_at=next_free_at,
        frozen_until=None if frozen is None else frozen - shift,
        mode=view.mode,
        limit=view.limit,
        period=view.period,
        now=now,
    )


class LimiterCounts:
    """A limiter's counters (each is described in `LimiterStats`) and its waits: what every
    limiter counts, its `LimiterStats` and the log lines of its freezes."""

    __slots__ = (
        "cancelled",
        "evictions",
        "expired",
        "freezes",
        "grants",
        "immediate",
        "rate_limited",
        "rejected",
        "responses",
        "waits",
        "windows",
    )

    def __init__(self, on_wait: Callable[[float, Priority], None] | None) -> None:
        self.waits = WaitLog(on_wait)
        self.grants = self.immediate = self.rejected = self.expired = self.cancelled = 0
        self.responses = self.rate_limited = self.freezes = self.windows = self.evictions = 0

    def stats(
        self,
        view: BudgetView,
        now: float,
        *,
        in_flight: int,
        waiting: int,
        buckets: int,
        mode: str | None = None,
    ) -> LimiterStats:
        """The counters beside a bucket's view at ``now`` (the view's time base)."""
        ends, frozen, waits = view.window_ends_at, view.frozen_until, self.waits
        return LimiterStats(
            mode=mode or view.mode,
            grants=self.grants,
            immediate=self.immediate,
            waits=waits.count,
            wait_total=waits.total,
            wait_max=waits.longest,
            rejected=self.rejected,
            expired=self.expired,
            cancelled=self.cancelled,
            responses=self.responses,
            rate_limited=self.rate_limited,
            freezes=self.freezes,
            windows=self.windows,
            in_flight=in_flight,
            waiting=waiting,
            limit=view.limit,
            remaining=view.remaining,
            reset_in=None if ends is None else max(ends - now, 0),
            frozen_for=None if frozen is None else frozen - now,
            buckets=buckets,
            evictions=self.evictions,
        )

    def freeze(
        self, wait: ServerWait | None, extended: bool, why: str, *, cap: float, wall: float
    ) -> None:
        """Count and log the freeze an answer or `freeze` asked for (None: it asked for
        none); ``cap`` is ``max_server_wait``, ``wall`` the time now on the wall clock."""
        if wait is None:
            return
        if extended:
            self.freezes += 1
            if not wait.over_cap:
                logger.info("rate limit: holding all requests for %.1fs (%s)", wait.hold, why)
        if wait.over_cap:
            logger.warning(
                "rate limit: the server asked for a wait of %.0fs (%s), longer than "
                "max_server_wait (%.0fs): requests fail with RateLimitedError for %.0fs, "
                "then one probes again",
                wait.retry_at - wall,
                why,
                cap,
                wait.hold,
            )


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
    processes) both provide it; so can your own. A limiter without keys (its ``slot`` takes
    no ``key``), `pressure` or `estimate_wait` still works: use `slot_for`, `pressure_of`
    and `estimate_wait_of`, which fall back to one bucket and "unknown".
    """

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | DefaultMarker | None = USE_DEFAULT,
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


def slot_for(
    limiter: LimiterLike,
    priority: Priority,
    *,
    max_wait: float | DefaultMarker | None = USE_DEFAULT,
    key: Hashable = None,
    first: bool = False,
    lane: Lane | None = None,
) -> contextlib.AbstractAsyncContextManager[SlotLike]:
    """A slot of ``key``'s bucket from any limiter: one that does not declare
    ``supports_keys`` has a single bucket, which every key shares; one that does not declare
    ``supports_first`` serves a ``first`` request in its priority's order; one that does
    not declare ``supports_lanes`` serves a request of a ``lane`` at the lane's priority
    when it is asked (`Lane`), and does not raise it while it waits; one that does is
    asked at the request's own priority, and raises it (it orders raised ones after the
    requests natively at their new priority)."""
    extra: dict[str, Any] = {}
    if lane is not None:
        if getattr(limiter, "supports_lanes", False):
            extra["lane"] = lane
        else:
            priority = lane.of(priority)
    if first and getattr(limiter, "supports_first", False):
        extra["first"] = True
    if key is not None and getattr(limiter, "supports_keys", False):
        extra["key"] = key
    return limiter.slot(priority, max_wait=max_wait, **extra)


def pressure_of(
    limiter: LimiterLike, key: Hashable = None, *, priority: Priority = Priority.POLL
) -> Pressure | None:
    """``limiter.pressure(key)``, or None for a limiter that cannot tell."""
    method = getattr(limiter, "pressure", None)
    return None if method is None else method(key, priority=priority)


def spare_of(limiter: LimiterLike, key: Hashable = None) -> tuple[int, float, int] | None:
    """``limiter.spare(key)``, or None for a limiter that cannot tell (nothing is spare)."""
    method = getattr(limiter, "spare", None)
    return None if method is None else method(key)


def estimate_wait_of(
    limiter: LimiterLike, priority: Priority, n: int = 1, key: Hashable = None
) -> float | None:
    """``limiter.estimate_wait(priority, n, key)``, or None for a limiter that cannot tell."""
    method = getattr(limiter, "estimate_wait", None)
    return None if method is None else method(priority, n, key)


class WaitLog:
    """Counts the waits of a limiter, calls its ``on_wait`` hook, and logs long waits:
    interactive ones at INFO, background ones summarised (see `LOG_SUMMARY_EVERY`)."""

    def __init__(self, on_wait: Callable[[float, Priority], None] | None) -> None:
        self.on_wait = on_wait
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        # Background waits over LOG_WAIT_OVER not logged at INFO yet: count, longest, since.
        self._quiet = 0
        self._quiet_max = 0.0
        self._since: float | None = None

    def note(self, priority: Priority, waited: float, reason: str, now: float) -> None:
        self.count += 1
        self.total += waited
        self.longest = max(self.longest, waited)
        if waited > LOG_WAIT_OVER:
            self._log(priority, waited, reason, now)
        if self.on_wait is not None:
            try:
                self.on_wait(waited, priority)
            except Exception:
                logger.exception("on_wait hook failed")

    def _log(self, priority: Priority, waited: float, reason: str, now: float) -> None:
        # "an interactive request", "a poll request", "a bulk request".
        name = priority.name.lower()
        args = (f"{'an' if name[0] in 'aeiou' else 'a'} {name}", waited, reason)
        if priority is Priority.INTERACTIVE:
            logger.info("rate limit: %s request waited %.1fs (%s)", *args)
            return
        since = self._since
        if since is None:
            self._since = now
            logger.info(
                "rate limit: %s request waited %.1fs (%s); further background waits are "
                "summarised every %.0fs",
                *args,
                LOG_SUMMARY_EVERY,
            )
            return
        logger.debug("rate limit: %s request waited %.1fs (%s)", *args)
        self._quiet += 1
        self._quiet_max = max(self._quiet_max, waited)
        if now - since >= LOG_SUMMARY_EVERY:
            logger.info(
                "rate limit: %d more background requests waited over %.0fs in the last %.0fs "
                "(longest %.1fs)",
                self._quiet,
                LOG_WAIT_OVER,
                now - since,
                self._quiet_max,
            )
            self._quiet, self._quiet_max, self._since = 0, 0.0, now

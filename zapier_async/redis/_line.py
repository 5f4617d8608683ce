"""The local side of `RedisLimiter`: slots, waiters, each bucket's copy of its state in
Redis and line of waiters, and the clock every process shares (see `_limiter`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import math
from collections.abc import Hashable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Protocol

from zapier_async._budget import Budget, Priority
from zapier_async._clock import Clock
from zapier_async._limiter import Limiter
from zapier_async._limiter import Slot as _LocalSlot
from zapier_async._limits import BaseWaiter, DefaultMarker, Lane, OneShotSlot, ahead_in_line

from ._codec import InFlight
from ._scripts import text

__all__ = ["Bucket", "Op", "RedisSlot", "SharedClock", "SlotRequest", "Waiter"]


class RedisLimiter(Protocol):
    """What slots need of the limiter that granted them (`_limiter.RedisLimiter` is one)."""

    _max_wait: float | None

    async def _acquire(
        self,
        priority: Priority,
        max_wait: float | None,
        key: Hashable,
        first: bool = False,
        lane: Lane | None = None,
    ) -> RedisSlot | None: ...

    def _fallback_limiter(self) -> Limiter: ...

    def _complete(
        self, slot: RedisSlot, status: int | None, headers: Mapping[str, str]
    ) -> None: ...

    def _ungrant(self, slot: RedisSlot) -> None: ...


_OFFSET_REFRESH: Final = 30.0
"""Seconds after which a slower round trip's clock offset is taken anyway (drift)."""


class SharedClock:
    """Now on the clock every process shares: the Redis server's ``TIME`` (measured from
    each reply against this process's monotonic clock, on the fastest round trips), or an
    injected clock's ``time()`` (``shared=True``: tests, one `FakeClock` for all)."""

    __slots__ = ("_at", "_clock", "_offset", "_rtt", "_shared")

    def __init__(self, clock: Clock, *, shared: bool) -> None:
        self._clock = clock
        self._shared = shared
        self._offset: float | None = None  # shared - local monotonic
        self._rtt = math.inf
        self._at = -math.inf

    def now(self) -> float:
        if self._shared or self._offset is None:
            return self._clock.time()  # before Redis told its time: close enough for a view
        return self._clock.monotonic() + self._offset

    def of_local(self, local: float) -> float:
        """A time of this process's monotonic clock on the shared one."""
        return local + (self.now() - self._clock.monotonic())

    def to_local(self, shared: float) -> float:
        return shared - (self.now() - self._clock.monotonic())

    def note(self, reply: Any, sent: float, received: float) -> None:
        """Measure the offset from a reply whose last two items are Redis's TIME."""
        if self._shared:
            return
        server = int(text(reply[-2])) + int(text(reply[-1])) / 1e6
        rtt = received - sent
        if (
            self._offset is None
            or rtt <= self._rtt * 1.5 + 0.0005
            or received - self._at > _OFFSET_REFRESH
        ):
            self._offset = server - (sent + received) / 2
            self._rtt, self._at = rtt, received


class RedisSlot(OneShotSlot):
    """Permission to send one request; hand its response back with `record`.

    The same contract as `zapier_async.Slot`: call ``record(status, headers)`` once, as soon
    as the status and headers are in.
    """

    __slots__ = ("_bucket", "_epoch", "_id")

    def __init__(
        self,
        limiter: RedisLimiter,
        bucket: Bucket,
        slot_id: str,
        epoch: str,
        priority: Priority,
        *,
        granted_at: float,
        probe: bool,
        waited: float,
    ) -> None:
        super().__init__(limiter, priority, granted_at, probe=probe, waited=waited)
        self._bucket = bucket
        self._id = slot_id
        self._epoch = epoch  # which budget granted it (a new one after Redis lost its state)

    @property
    def key(self) -> Hashable:
        """The key of the bucket the slot was granted from."""
        return self._bucket.key

    def __repr__(self) -> str:
        return f"RedisSlot(priority={self.priority.name}, probe={self.probe})"


class Waiter(BaseWaiter[RedisSlot | None]):
    """A local caller waiting for a grant (None: Redis was lost, go local)."""

    __slots__ = ("bucket",)

    def __init__(
        self,
        bucket: Bucket,
        priority: Priority,
        seq: int,
        fut: asyncio.Future[RedisSlot | None],
        enqueued_at: float,
        deadline: float | None,
        *,
        raised: bool = False,
    ) -> None:
        super().__init__(priority, seq, fut, enqueued_at, deadline, raised=raised)
        self.bucket = bucket


# A change waiting to be committed: (kind, slot id, epoch, status, headers, local time).
Op = tuple[str, str, str, int | None, dict[str, str], float]


class Bucket:
    """One key: its Redis hash, the state last seen there, and the local line."""

    __slots__ = (
        "budget",
        "due",
        "epoch",
        "heap",
        "in_flight",
        "key",
        "line",
        "live",
        "mine",
        "name",
        "ops",
        "others",
        "processes",
        "published",
        "published_at",
        "raised",
        "seen_at",
        "state",
        "streak",
        "used_at",
        "version",
    )

    def __init__(self, key: Hashable, name: str, line: str, now: float) -> None:
        self.key = key
        self.name = name  # the Redis key of its hash
        self.line = line  # the Redis key of every process's line (`_scripts._LINE`)
        self.state: str | None = None  # the text last read or written; None: never read
        self.epoch = ""
        self.version = "0"
        self.budget: Budget | None = None  # `state` decoded (a copy: never written back)
        self.in_flight: InFlight = {}
        self.seen_at = -math.inf  # local time the state was last known fresh
        self.heap: list[tuple[int, int, Waiter]] = []
        self.live = [0, 0, 0]
        self.raised = [0, 0, 0]  # of them, those a lane raised (`zapier_async._limits.RAISED`)
        self.ops: collections.deque[Op] = collections.deque()
        self.mine = 0  # this process's slots in flight
        self.due: float | None = None
        self.used_at = now
        self.streak = 0  # 503s in a row this process saw (for `record`'s answer)
        # The other processes' waiters per priority and their number, as last seen; this
        # process's line as last written there (local time).
        self.others = (0, 0, 0)
        self.processes = 0
        self.published: tuple[int, int, int] | None = None
        self.published_at = -math.inf

    def waiting(self) -> int:
        return sum(self.live)

    def ahead(self, priority: int, *, raised: bool = False) -> int:
        """This process's waiters served before a new one of ``priority`` (``raised`` by a
        lane: after those natively at it)."""
        return ahead_in_line(self.live, self.raised, priority, last=raised)

    def ahead_of(self, waiter: Waiter) -> int:
        """Waiters served before ``waiter`` (or, out of line, before one like it)."""
        return self.ahead(waiter.priority, raised=waiter.raised)

    def enter(self, waiter: Waiter) -> None:
        """``waiter`` joins the line, ordered by ``(priority, seq)`` (see `BaseWaiter`)."""
        heapq.heappush(self.heap, (int(waiter.priority), waiter.seq, waiter))
        self.live[waiter.priority] += 1
        self.raised[waiter.priority] += waiter.raised

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` leaves the line (its heap entry is dropped when it comes up)."""
        waiter.alive = False
        self.live[waiter.priority] -= 1
        self.raised[waiter.priority] -= waiter.raised

    def counts(self, leaving: Iterable[Waiter] = ()) -> tuple[int, int, int]:
        """Waiters per priority, less those ``leaving`` (granted by the commit going out)."""
        line = list(self.live)
        for waiter in leaving:
            line[waiter.priority] -= 1
        return line[0], line[1], line[2]

    def shared(self, now: float, fresh_for: float) -> tuple[list[int], int]:
        """Waiters per priority of every process sharing the bucket and their number, as
        last seen (this process's own alone when that was over ``fresh_for`` seconds ago:
        older lines are dropped in Redis)."""
        if now - self.seen_at > fresh_for:
            return self.live, 1
        line = [n + others for n, others in zip(self.live, self.others, strict=True)]
        return line, 1 + self.processes

    def line_due(self, poll: float, refresh: float) -> float | None:
        """When this process's line must be written again (local time; None: not until
        something changes): soon after its count changed (a round trip per ``poll`` at
        most), and every ``refresh`` seconds while it has waiters (older lines are dropped
        as left behind by a process that stopped)."""
        if self.counts() != self.published:
            return self.seen_at + poll
        return self.published_at + refresh if self.waiting() else None

    def idle(self) -> bool:
        return not self.waiting() and not self.ops and not self.mine


class SlotRequest:
    """The async context manager returned by `RedisLimiter.slot`."""

    __slots__ = (
        "_fallback_cm",
        "_first",
        "_key",
        "_lane",
        "_limiter",
        "_max_wait",
        "_priority",
        "_slot",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        priority: Priority,
        max_wait: float | DefaultMarker | None,
        key: Hashable,
        first: bool,
        lane: Lane | None = None,
    ) -> None:
        self._first = first
        self._lane = lane
        self._limiter = limiter
        self._priority = priority
        self._max_wait = max_wait
        self._key = key
        self._slot: RedisSlot | None = None
        self._fallback_cm: contextlib.AbstractAsyncContextManager[_LocalSlot] | None = None

    async def __aenter__(self) -> RedisSlot | _LocalSlot:
        limiter = self._limiter
        max_wait = (
            limiter._max_wait if isinstance(self._max_wait, DefaultMarker) else self._max_wait
        )
        lane = self._lane
        slot = await limiter._acquire(self._priority, max_wait, self._key, self._first, lane)
        if slot is not None:
            self._slot = slot
            return slot
        # Redis is unreachable: this request goes through the local fallback limiter.
        priority = self._priority if lane is None else lane.of(self._priority)
        cm = limiter._fallback_limiter().slot(
            priority, max_wait=max_wait, key=self._key, first=self._first
        )
        local = await cm.__aenter__()
        self._fallback_cm = cm
        return local

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot is not None:
            self._slot._release()
        if self._fallback_cm is not None:
            await self._fallback_cm.__aexit__(exc_type, exc, tb)

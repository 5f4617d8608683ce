"""The rate budgets shared through Redis: `RedisLimiter`.

Theory of operation: the shared limiter
=======================================

Zapier's limits are per account, partner or user, not per process: N workers pacing
themselves as if alone together spend N times the budget. `RedisLimiter` has the public
surface of `zapier_async.Limiter` (``slot``, ``freeze``, ``pressure``, ``estimate_wait``,
``spare``, ``waiting``, ``in_flight``, ``frozen_until``, ``snapshot``, ``aclose``; budgets per key),
so ``ZapierClient(limiter=RedisLimiter(redis))`` shares each budget between every process
pointed at the same Redis and ``name``.

**One set of rules.** Every budget decision is made by the same pure state machine as in
memory, `zapier_async._budget.Budget` (its docstring is the theory of the rules; the
scenario table in ``tests/limiter_scenarios.py`` runs against both limiters). Redis only
keeps each bucket's state and makes its changes atomic: one hash per bucket holding the
serialised budget and its slots in flight (`_codec`), an ``epoch`` and a ``version``. A
change (grants for the local waiters whose turn it is, the answers recorded since the last
one, expired leases, a freeze) is computed in Python on the state last seen and written
with one compare-and-set script (`BUCKET_COMMIT`): if another process wrote first, the
script answers with the state it found, and the change is computed again from it. So
every process's requests count in one budget, exactly as if one process sent them all
(requests in flight included: that is what makes N processes 429-free).

Why this and not a Lua port of the rules, what it costs, and how the state survives
retries, losses and dead processes: `_buckets`.

**Time.** Processes share no monotonic clock: the state is kept on the Redis server's clock
(``TIME``, epoch seconds: the budget's ``now`` and ``wall``), whose offset from each
process's monotonic clock every reply measures. Given a ``clock`` (tests: one `FakeClock`
for every simulated process), its ``time()`` is the shared clock, and waits are on it.

**Keys.** ``slot(key=...)``/``freeze(key=...)`` name the bucket (a credential, an endpoint
family); ``key=None`` is the default one. Each key is its own hash in Redis,
``{prefix}:{name}:bucket:{digest}`` (a SHA-256 of ``repr(key)``: a credential used as a key
never appears in Redis, and keys must have the same ``repr`` in every process: strings,
numbers, tuples of those), expiring after ``bucket_idle`` seconds without a write (longer
while a freeze or a lease runs). Locally, idle buckets are forgotten past ``max_buckets``
or after ``bucket_idle``; a forgotten one is read again from Redis on next use.

**Freezes and the cap.** A 429, a 503 per the lone-503 rule (counted in the shared budget:
503s in a row from any process) or `freeze` freeze the bucket for every process, for at
most ``max_server_wait``; while the server-named wait is past the cap, every request of the
bucket, whatever its priority, fails at once with ``RateLimitedError(reason=
"max_server_wait")``, waiters included. ``record`` answers "froze" at once, from this
process's view (its own 503 streak).

**Local waiting.** Each process keeps a heap of waiters per bucket and ONE task that does
every round trip (commit, grant, sleep until a budget's time, a deadline or an event; while
another process has slots in flight, at most ``poll_interval``). A waiter cancelled locally
leaves the heap; a grant that raced with its cancellation is given back (``ungrant``). Its
`pressure` shows every process's waiters (each writes its own with its round trips: `_peers`).

**Losing Redis.** A Redis error logs a warning and moves the process, waiters included, to
an in-memory `Limiter` at a conservative ``fallback_rate`` (never unlimited); every
``reconnect_interval`` a ``PING`` is tried, and on success requests use Redis again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import heapq
import itertools
import logging
import math
import uuid
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from typing import Final

import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from zapier_async._budget import Budget, BudgetConfig, Grant, Priority
from zapier_async._clock import Clock, SystemClock
from zapier_async._closing import AsyncCloseable
from zapier_async._limiter import Limiter
from zapier_async._limiter import Slot as _LocalSlot
from zapier_async._limits import (
    DEFAULT_BUCKET_IDLE,
    DEFAULT_MAX_BUCKETS,
    FIRST,
    USE_DEFAULT,
    DefaultMarker,
    Lane,
    LimiterCounts,
    LimiterStats,
    Pressure,
    check_limiter_args,
    first_deadline,
    forget_idle,
    granted,
    in_lane,
    pressure_from,
    raise_in_line,
)
from zapier_async._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    RateLimitState,
    server_wait,
)
from zapier_async.errors import InvalidRequestError, LimiterClosedError, RateLimitedError

from ._buckets import BucketStore, apply, expire_leases
from ._codec import InFlight
from ._line import Bucket, Op, RedisSlot, SharedClock, SlotRequest, Waiter
from ._peers import Peers, SharedPressure

__all__ = ["RedisLimiter", "RedisLimiterBackend", "RedisSlot"]

logger = logging.getLogger("zapier_async")

_TASK_NAME: Final = "zapier_async.redis_limiter"

_EARLY: Final = 1e-6
"""A grant due this close is due now (epoch-second floats are ~0.2 us apart)."""

_MAX_ATTEMPTS: Final = 100
"""Commits tried in a row before the task lets other buckets go first."""

_HEADER_PREFIXES: Final = ("x-ratelimit", "ratelimit", "retry-after")


class RedisLimiter(AsyncCloseable):
    """Rate budgets shared through Redis by every process using the same ``name``, per key.

    See the module docstring for how it works. The Redis client is the caller's: the limiter
    never closes it. Give it a ``socket_timeout`` so that a partitioned Redis is noticed.

    Args:
        redis: A ``redis.asyncio.Redis`` client.
        name: The budgets' name: processes spending the same Zapier budgets use the same one.
        prefix: Key prefix in Redis.
        lease: Seconds after which a slot never answered (its process died) is done.
        max_wait: Default longest wait for a slot in seconds; None waits as long as needed.
        fallback_rate: ``(requests, per_seconds)`` for this process while Redis is
            unreachable: well under the limit divided by the number of processes.
        poll_interval: Longest sleep while another process has slots in flight.
        reconnect_interval: Seconds between reconnection attempts while degraded.
        default_period: The window assumed when an answer has ``Remaining`` but no ``Reset``;
            also the freeze after a 429 without ``Retry-After`` or ``Reset``.
        max_server_wait, spend_window, interactive_reserve, window_length: `zapier_async.Limiter`'s.
        max_buckets: Buckets this process keeps a copy of at most.
        bucket_idle: Seconds after which an idle bucket expires (in Redis and locally).
        clock: The shared clock: its ``time()`` is every process's ``now`` and every wait is
            on it (tests: one `FakeClock`). By default the Redis server's ``TIME``, waits on
            the system clock.
        on_wait: Called as ``on_wait(seconds, priority)`` after each slot that had to wait.

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
        redis: aioredis.Redis,
        *,
        name: str = "default",
        prefix: str = "zapier_async:ratelimit",
        lease: float = 30.0,
        max_wait: float | None = None,
        fallback_rate: tuple[int, float] = (1, 1.0),
        poll_interval: float = 0.02,
        reconnect_interval: float = 5.0,
        default_period: float = DEFAULT_COOLDOWN,
        max_server_wait: float = DEFAULT_MAX_SERVER_WAIT,
        spend_window: bool = False,
        interactive_reserve: float = 0.1,
        window_length: float | None = None,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        bucket_idle: float = DEFAULT_BUCKET_IDLE,
        clock: Clock | None = None,
        on_wait: Callable[[float, Priority], None] | None = None,
    ) -> None:
        check_limiter_args(
            max_wait, max_buckets, lease=lease, poll_interval=poll_interval, bucket_idle=bucket_idle
        )
        if not reconnect_interval > 0:
            raise InvalidRequestError(
                f"must be > 0, got {reconnect_interval!r}", "reconnect_interval"
            )
        self._config = BudgetConfig.checked(
            rate=None,
            default_cooldown=default_period,
            max_server_wait=max_server_wait,
            spend_window=spend_window,
            interactive_reserve=interactive_reserve,
            window_length=window_length,
        )
        self._redis = redis
        self._base = f"{prefix}:{name}"
        self._lease = float(lease)
        self._max_wait = max_wait
        self._fallback_rate = fallback_rate
        self._poll = float(poll_interval)
        self._reconnect = float(reconnect_interval)
        self._max_buckets = max_buckets
        self._bucket_idle = float(bucket_idle)
        self._owner = uuid.uuid4().hex[:12]
        self._ids = itertools.count()

        # Time: the shared clock is `clock.time()` when one is given, else Redis's TIME.
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._time = SharedClock(self._clock, shared=clock is not None)
        self._store = BucketStore(
            redis,
            self._config,
            self._clock,
            self._time,
            base=self._base,
            owner=self._owner,
            lease=self._lease,
            bucket_idle=self._bucket_idle,
        )
        self._commit_script = self._store.commit_script  # tests stall it by its SHA

        self._default = Bucket(
            None, f"{self._base}:bucket", f"{self._base}:line", self._clock.monotonic()
        )
        self._buckets: collections.OrderedDict[Hashable, Bucket] = collections.OrderedDict()
        self._dirty: dict[Bucket, None] = {}  # buckets with something to do now
        self._due: list[tuple[float, int, Bucket]] = []
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self._live = 0
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._fallback: Limiter | None = None
        self._degraded = False
        # The other processes seen spending each bucket (with spend_window: when, by id).
        self._peers = Peers(self._owner, track=spend_window)

        self._counts = LimiterCounts(on_wait)

    # ------------------------------------------------------------------ public surface

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | DefaultMarker | None = USE_DEFAULT,
        key: Hashable = None,
        first: bool = False,
        lane: Lane | None = None,
    ) -> contextlib.AbstractAsyncContextManager[RedisSlot | _LocalSlot]:
        """Wait for permission to send one request (see `zapier_async.Limiter.slot`).

        Args:
            priority: Who is waiting (see `Priority`); honoured within this process.
            max_wait: The longest acceptable wait in seconds; None waits as long as needed;
                by default the limiter's ``max_wait``.
            key: The bucket (what the server limits); None for the default one.
            first: Served before this process's other waiters of its priority (FIFO among
                such), as `zapier_async.Limiter.slot`'s.
            lane: Requests raised together, as `zapier_async.Limiter.slot`'s (this
                process's waiters; not while Redis is unreachable).

        Returns:
            An async context manager yielding the slot (a `RedisSlot`, or a local `Slot`
            while Redis is unreachable).

        Raises:
            RateLimitedError: (on entering) The wait is longer than ``max_wait``, or the
                server dictated one past ``max_server_wait`` (``reason="max_server_wait"``).
            LimiterClosedError: (on entering) The limiter is or was closed while waiting.
        """
        return SlotRequest(self, Priority(priority), max_wait, key, first, lane)

    def freeze(self, seconds: float, *, key: Hashable = None) -> None:
        """Stop every process sharing the bucket for ``seconds`` (never shortens a freeze;
        past ``max_server_wait`` requests fail instead, as `zapier_async.Limiter.freeze`).

        Args:
            seconds: How long to hold every request back.
            key: The bucket; None for the default one.
        """
        seconds = 0.0 if math.isnan(seconds) else max(float(seconds), 0.0)
        if self._fallback is not None:
            self._fallback.freeze(min(seconds, self._config.max_server_wait), key=key)
        bucket = self._bucket(key)
        self._post(bucket, ("freeze", "", "", None, {"s": repr(seconds)}, self._local()))

    def pressure(self, key: Hashable = None, *, priority: Priority = Priority.POLL) -> Pressure:
        """A key's budget and line as this process last saw them in Redis (read-only; times
        on this process's monotonic clock): waiters of every process sharing the bucket,
        and their number (a `zapier_async.redis._peers.SharedPressure`).

        Args:
            key: The bucket; None for the default one.
            priority: The priority ``next_free_at`` is for.
        """
        bucket = self._find(key)
        budget = self._store.view(bucket)
        now, local = self._shared(), self._local()
        line, processes = (None, 1) if bucket is None else bucket.shared(local, self._lease)
        view = pressure_from(
            budget.view(now),
            line,
            in_flight=budget.in_flight,
            next_free_at=local + self.estimate_wait(priority, 1, key),
            now=local,
            shift=now - local,
        )
        return SharedPressure(processes=processes, **attrs.asdict(view, recurse=False))

    def estimate_wait(self, priority: Priority, n: int = 1, key: Hashable = None) -> float:
        """Seconds until ``n`` more requests of ``priority`` could be sent, behind this
        process's waiters served before them (rough; from the state last seen).

        Args:
            priority: Their priority.
            n: How many (at least 1).
            key: The bucket; None for the default one.
        """
        bucket = self._find(key)
        budget = self._store.view(bucket)
        now = self._shared()
        budget.advance(now)
        refused = budget.refusal(now)
        if refused is not None:
            return max(refused - now, 0.0)
        ahead = bucket.ahead(priority) if bucket is not None else 0
        return budget.estimate(now, ahead + max(n, 1), Priority(priority))

    def spare(self, key: Hashable = None) -> tuple[int, float, int] | None:
        """This process's share of the requests of a key's window that nobody waits for and
        that background work may spend from ``at`` on (monotonic), and the window's identity:
        ``(count, at, window)``, or None (see `zapier_async.Limiter.spare`, whose contract
        this keeps: read-only, from the state last seen in Redis; ``spend_window`` only).

        The leftover is split evenly between this process and the others seen spending the
        bucket within the last two window lengths, less this one's own waiters (why:
        `zapier_async.redis._peers`). Alone, a process gets what
        `zapier_async.Limiter.spare` would give it.
        """
        bucket = self._find(key)
        if bucket is None or not bucket.state or self._degraded:
            return None
        now = self._shared()
        budget = self._store.view(bucket)
        budget.advance(now)
        found = budget.spare(now)
        if found is None:
            return None
        count, at, window = found
        count = self._peers.share(bucket, count, self._peer_horizon(budget, now))
        return (count, at - now + self._local(), window) if count > 0 else None

    @property
    def max_server_wait(self) -> float:
        """The cap on any server-dictated wait, in seconds."""
        return self._config.max_server_wait

    @property
    def waiting(self) -> int:
        """Requests of this process waiting for a slot."""
        return self._live + (self._fallback.waiting if self._fallback is not None else 0)

    @property
    def in_flight(self) -> int:
        """Slots of this process granted and not yet answered."""
        return self._in_flight + (self._fallback.in_flight if self._fallback is not None else 0)

    @property
    def frozen_until(self) -> float | None:
        """Monotonic time at which the default bucket's freeze (as last seen) ends, or None."""
        budget = self._store.view(self._default)
        return self._local_of(budget.view(self._shared()).frozen_until)

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable and the local fallback limiter is in use."""
        return self._degraded

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def snapshot(self) -> LimiterStats:
        """This process's counters and the default bucket as last seen in Redis.

        Returns:
            A frozen `LimiterStats`; ``mode`` is ``"degraded"`` while Redis is unreachable.
        """
        now = self._shared()
        return self._counts.stats(
            self._store.view(self._default).view(now),
            now,
            in_flight=self.in_flight,
            waiting=self.waiting,
            buckets=len(self._buckets) + 1,
            mode="degraded" if self._degraded else None,
        )

    async def aclose(self) -> None:
        """Write recorded answers, stop the background task and fail every waiter.

        The Redis client stays open (it is the caller's). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._fail_waiters(LimiterClosedError("the rate limiter was closed while this waited"))
        task, self._task = self._task, None
        if task is not None and not task.done():
            # Not task.cancel(): a Redis command cancelled half-way can leave its connection
            # in the pool out of step. The task sees `_closed` after its current command.
            self._wake.set()
            await asyncio.wait({task})
        if not self._degraded:
            with contextlib.suppress(RedisError, OSError):
                for bucket in self._all():
                    if bucket.ops:
                        await self._turn(bucket)
        if self._fallback is not None:
            await self._fallback.aclose()

    @property
    def round_trips(self) -> int:
        """Redis round trips made (reads and commits), for measurements."""
        return self._store.round_trips

    @property
    def conflicts(self) -> int:
        """Commits that found another process's write first and were computed again."""
        return self._store.conflicts

    @property
    def busy(self) -> bool:
        """Whether a Redis command is outstanding or work is pending (a test driving a
        `FakeClock` holds time still meanwhile: a round trip takes no simulated time)."""
        return bool(self._store.io or self._dirty)

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(name={self._base!r}, in_flight={self._in_flight}, "
            f"waiting={self._live}, degraded={self._degraded})"
        )

    # ------------------------------------------------------------------ time

    def _local(self) -> float:
        return self._clock.monotonic()

    def _shared(self) -> float:
        return self._time.now()

    def _shared_of(self, local: float) -> float:
        return self._time.of_local(local)

    def _local_of(self, shared: float | None) -> float | None:
        return None if shared is None else self._time.to_local(shared)

    # ------------------------------------------------------------------ buckets

    def _new_bucket(self, key: Hashable, now: float) -> Bucket:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return Bucket(key, f"{self._base}:bucket:{digest}", f"{self._base}:line:{digest}", now)

    def _find(self, key: Hashable) -> Bucket | None:
        return self._default if key is None else self._buckets.get(key)

    def _bucket(self, key: Hashable) -> Bucket:
        now = self._local()
        if key is None:
            self._default.used_at = now
            return self._default
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self._new_bucket(key, now)
            self._evict(now, bucket)
        else:
            self._buckets.move_to_end(key)
        bucket.used_at = now
        return bucket

    def _all(self) -> list[Bucket]:
        return [self._default, *self._buckets.values()]

    def _evict(self, now: float, keep: Bucket) -> None:
        """Forget a few idle local copies, never ``keep`` (the one just made for a caller):
        past ``max_buckets``, or unused for a while."""
        for gone in forget_idle(
            self._buckets, now, self._max_buckets, self._bucket_idle, Bucket.idle, keep
        ):
            self._dirty.pop(gone, None)
            self._peers.forget(gone)
            self._counts.evictions += 1

    # ------------------------------------------------------------------ acquiring

    async def _acquire(
        self,
        priority: Priority,
        max_wait: float | None,
        key: Hashable,
        first: bool = False,
        lane: Lane | None = None,
    ) -> RedisSlot | None:
        if self._closed:
            raise LimiterClosedError("the rate limiter is closed")
        if self._degraded:
            return None
        priority, raised = in_lane(priority, lane)
        bucket = self._bucket(key)
        if bucket.state:
            # Fail fast from the state last seen (the task decides on a fresh one).
            now = self._shared()
            budget = self._store.view(bucket)
            budget.advance(now)
            refused = budget.refusal(now)
            if refused is not None:
                self._counts.rejected += 1
                raise self._refused_error(refused)
            if max_wait is not None and bucket.state:
                ahead = bucket.ahead(priority, raised=raised)
                estimate = budget.estimate(now, ahead + 1, priority)
                if estimate > max_wait:
                    self._counts.rejected += 1
                    raise RateLimitedError(estimate, self._clock.time() + estimate)
        loop = asyncio.get_running_loop()
        local = self._local()
        deadline = None if max_wait is None else local + max_wait
        seq = next(self._seq) - (FIRST if first else 0)  # the line's order: see `BaseWaiter`
        waiter = Waiter(bucket, priority, seq, loop.create_future(), local, deadline, raised=raised)
        bucket.enter(waiter)
        self._live += 1
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, waiter.seq, waiter))
        self._mark(bucket)
        return await granted(waiter, partial(self._give_up, waiter), lane, bucket, self._promote)

    def _give_up(self, waiter: Waiter) -> None:
        """Its caller left while ``waiter`` was in line (cancelled)."""
        self._kill(waiter)
        self._counts.cancelled += 1
        if not self._closed:
            self._mark(waiter.bucket)  # its line changed

    def _promote(self, bucket: Bucket, waiters: list[Waiter], to: Priority) -> None:
        """A `Lane` was raised: its ``waiters`` in ``bucket`` move up (see `raise_in_line`)."""
        if raise_in_line(bucket.heap, bucket.live, bucket.raised, waiters, to):
            self._mark(bucket)

    def _kill(self, waiter: Waiter) -> None:
        waiter.bucket.leave(waiter)
        self._live -= 1

    def _mark(self, bucket: Bucket) -> None:
        """Something changed in ``bucket``: the task looks at it soon."""
        self._dirty[bucket] = None
        self._wake.set()
        with contextlib.suppress(RuntimeError):  # no running loop: done by the next slot()
            self._ensure_task()

    def _post(self, bucket: Bucket, op: Op) -> None:
        if self._closed and self._task is None and not bucket.ops:
            return
        bucket.ops.append(op)
        self._mark(bucket)

    def _fallback_limiter(self) -> Limiter:
        if self._fallback is None:
            self._fallback = Limiter(
                clock=self._clock,
                rate=self._fallback_rate,
                max_wait=self._max_wait,
                max_server_wait=self._config.max_server_wait,
                default_cooldown=self._config.default_cooldown,
            )
        return self._fallback

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=_TASK_NAME)

    # ------------------------------------------------------------------ answers

    def _complete(self, slot: RedisSlot, status: int | None, headers: Mapping[str, str]) -> None:
        self._in_flight -= 1
        bucket = slot._bucket
        bucket.mine -= 1
        kept: dict[str, str] = {}
        if status is not None:
            self._counts.responses += 1
            self._counts.rate_limited += status == 429
            kept = {k: v for k, v in headers.items() if k.lower().startswith(_HEADER_PREFIXES)}
            wall = self._clock.time()
            bucket.streak = bucket.streak + 1 if status == 503 else 0
            wait = server_wait(
                status,
                RateLimitState.from_headers(kept, now=wall),
                now=wall,
                max_server_wait=self._config.max_server_wait,
                default_cooldown=self._config.default_cooldown,
                unavailable_streak=bucket.streak,
            )
            slot.froze = wait is not None
        self._post(bucket, ("answer", slot._id, slot._epoch, status, kept, self._local()))

    def _ungrant(self, slot: RedisSlot) -> None:
        self._in_flight -= 1
        self._counts.grants -= 1
        slot._bucket.mine -= 1
        self._post(slot._bucket, ("undo", slot._id, slot._epoch, None, {}, self._local()))

    def _apply(self, budget: Budget, in_flight: InFlight, epoch: str, op: Op) -> None:
        """Apply one recorded change to a copy of the state."""
        now = self._shared_of(op[5])
        answer = apply(budget, in_flight, epoch, op, now, self._config.default_cooldown)
        if answer is not None:
            self._counts.windows += answer.opened
            why = "freeze() called" if op[0] == "freeze" else f"HTTP {op[3]}"
            cap = self._config.max_server_wait
            self._counts.freeze(answer.wait, answer.extended, f"{why}, shared", cap=cap, wall=now)

    def _refused_error(self, retry_at: float) -> RateLimitedError:
        retry_in = max(retry_at - self._shared(), 0.0)
        return RateLimitedError(retry_in, self._clock.time() + retry_in, reason="max_server_wait")

    # ------------------------------------------------------------------ one change

    async def _turn(self, bucket: Bucket) -> None:
        """Bring the bucket's recorded changes to Redis, grant whoever may go, and decide
        when to look again."""
        fresh = False
        for _ in range(_MAX_ATTEMPTS):
            if bucket.state is None:
                await self._store.read(bucket)
                fresh = True
            budget, in_flight = self._store.decode(bucket)
            epoch = bucket.epoch
            ops = list(bucket.ops)
            for op in ops:
                self._apply(budget, in_flight, epoch, op)
            now = self._shared()
            changed = expire_leases(budget, in_flight, now) or bool(ops)
            budget.advance(now)
            refused = budget.refusal(now)
            grants: list[tuple[Waiter, str, Grant]] = []
            if refused is not None:
                self._refuse(bucket, refused)
            else:
                while (waiter := self._peek(bucket)) is not None:
                    when = budget.next_time(now, waiter.priority, raised=waiter.raised)
                    if when is None or when > now + _EARLY:
                        break
                    heapq.heappop(bucket.heap)
                    grant = budget.grant(now)
                    slot_id = f"{self._owner}:{next(self._ids)}"
                    lease_end = now + self._lease
                    in_flight[slot_id] = [grant.sent, grant.completions, grant.probe, lease_end]
                    grants.append((waiter, slot_id, grant))
            if not grants and not changed and bucket.state is not None:
                local = self._local()
                if not fresh and (
                    (bucket.waiting() and local - bucket.seen_at > self._poll)
                    or (
                        bucket.counts() != bucket.published and local >= bucket.seen_at + self._poll
                    )
                ):
                    # A decision to wait is taken on a fresh state (another process may have
                    # opened a window); a grant needs none: its commit fails if stale. A
                    # changed line is written (`_peers`).
                    await self._store.read(bucket)
                    fresh = True
                    continue
                bucket.budget, bucket.in_flight = budget, in_flight  # nothing to write
                break
            try:
                line = bucket.counts(waiter for waiter, _, _ in grants)
                written = await self._store.commit(bucket, budget, in_flight, line)
            except BaseException:
                self._requeue(bucket, grants)  # back in line: Redis lost, or closing
                raise
            fresh = True
            if written is None:
                self._requeue(bucket, grants)
                continue
            for _ in ops:
                bucket.ops.popleft()
            self._deliver(bucket, written, grants)
            if not grants:
                break
        else:
            self._dirty[bucket] = None  # a long run of conflicts: come back after others
        self._schedule(bucket)

    def _requeue(self, bucket: Bucket, grants: list[tuple[Waiter, str, Grant]]) -> None:
        """Grants not written: their waiters are in line again."""
        for waiter, _, _ in grants:
            if waiter.alive:
                heapq.heappush(bucket.heap, (int(waiter.priority), waiter.seq, waiter))

    def _peek(self, bucket: Bucket) -> Waiter | None:
        while bucket.heap:
            waiter = bucket.heap[0][2]
            if not waiter.alive:
                heapq.heappop(bucket.heap)
            elif waiter.fut.done():  # its caller gave up; its handler has not run yet
                heapq.heappop(bucket.heap)
                self._kill(waiter)
                self._counts.cancelled += 1
            else:
                return waiter
        return None

    def _deliver(self, bucket: Bucket, epoch: str, grants: list[tuple[Waiter, str, Grant]]) -> None:
        now = self._local()
        for waiter, slot_id, grant in grants:
            slot = RedisSlot(
                self,
                bucket,
                slot_id,
                epoch,
                waiter.priority,
                granted_at=now,
                probe=grant.probe,
                waited=now - waiter.enqueued_at,
            )
            self._in_flight += 1
            bucket.mine += 1
            self._counts.grants += 1
            if not waiter.alive or waiter.fut.done():
                slot._undo()  # its caller left during the round trip: give it back
                continue
            self._kill(waiter)
            if slot.waited > 0.001:
                self._counts.waits.note(waiter.priority, slot.waited, "shared", now)
            else:
                self._counts.immediate += 1
            waiter.fut.set_result(slot)

    def _refuse(self, bucket: Bucket, retry_at: float) -> None:
        """The server dictated a wait past max_server_wait: nobody waits for it."""
        while (waiter := self._peek(bucket)) is not None:
            heapq.heappop(bucket.heap)
            self._kill(waiter)
            self._counts.rejected += 1
            waiter.fut.set_exception(self._refused_error(retry_at))

    def _schedule(self, bucket: Bucket) -> None:
        """When the task must look at the bucket again (local time), from the state seen."""
        due: float | None = None
        waiter = self._peek(bucket)
        budget = self._store.view(bucket) if bucket.state else None
        others = budget is not None and self._peers.note(
            bucket, self._local(), partial(self._peer_horizon, budget, self._shared())
        )
        if waiter is not None and budget is not None:
            now = self._shared()
            when = budget.next_time(now, waiter.priority, raised=waiter.raised)
            local = self._local()
            if when is not None:
                due = local + max(when - now, 0.0)
            if others or budget.in_flight > bucket.mine:
                due = local + self._poll if due is None else min(due, local + self._poll)
            if bucket.in_flight:  # a lease may run out
                lease_end = min(float(r[3]) for r in bucket.in_flight.values()) - now + local
                due = lease_end if due is None else min(due, lease_end)
        if bucket.state is not None:
            again = bucket.line_due(self._poll, self._lease / 3)
            if again is not None:
                due = again if due is None else min(due, again)
        bucket.due = due
        if due is not None:
            heapq.heappush(self._due, (due, next(self._seq), bucket))

    def _peer_horizon(self, budget: Budget, now: float) -> float:
        """Local time before which a process last seen spending a bucket is gone from it:
        two window lengths ago (`spare` shares a window's leftover among the others)."""
        return self._local() - 2 * (budget.view(now).period or self._config.default_cooldown)

    # ------------------------------------------------------------------ the one task

    async def _run(self) -> None:
        while not self._closed:
            try:
                if self._degraded:
                    await self._sleep(self._local() + self._reconnect)
                    if self._closed:
                        break
                    self._store.io += 1
                    try:
                        await self._redis.ping()
                    finally:
                        self._store.io -= 1
                    self._degraded = False
                    logger.warning("Redis is reachable again; sharing the budget")
                    continue
                now = self._local()
                while self._due and self._due[0][0] <= now:
                    when, _, bucket = heapq.heappop(self._due)
                    if bucket.due == when:
                        bucket.due = None
                        self._dirty[bucket] = None
                if self._dirty:
                    bucket = next(iter(self._dirty))
                    del self._dirty[bucket]
                    await self._turn(bucket)
                    self._expire(self._local())
                    continue
                self._expire(now)
                await self._sleep(self._next_due())
            except (RedisError, OSError) as exc:
                if not self._degraded:
                    self._degrade(exc)

    def _next_due(self) -> float | None:
        due: float | None = None
        while self._due:
            when, _, bucket = self._due[0]
            if bucket.due == when:
                due = when
                break
            heapq.heappop(self._due)
        return first_deadline(self._deadlines, due)

    async def _sleep(self, until: float | None) -> None:
        """Sleep until ``until`` (local time; None: until woken) or a local event."""
        self._wake.clear()
        if self._closed or self._dirty:
            return
        handle = None
        if until is not None:
            handle = self._clock.call_later(until - self._local(), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if handle is not None:
                handle.cancel()

    def _expire(self, now: float) -> None:
        """Fail the waiters whose ``max_wait`` ran out (checked after a decision, so
        ``max_wait=0`` still tries once); their buckets' lines are written next."""
        changed: dict[Bucket, None] = {}
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if not waiter.alive or waiter.fut.done():
                continue
            bucket = waiter.bucket
            if bucket in self._dirty or bucket.state is None:
                heapq.heappush(self._deadlines, (now, waiter.seq, waiter))
                break  # decide on what Redis says first
            self._kill(waiter)
            changed[bucket] = None
            self._counts.expired += 1
            budget = self._store.view(bucket)
            shared = self._shared()
            estimate = budget.estimate(shared, 1 + bucket.ahead_of(waiter))
            waiter.fut.set_exception(RateLimitedError(estimate, self._clock.time() + estimate))
        self._dirty.update(changed)

    def _degrade(self, exc: BaseException) -> None:
        self._degraded = True
        for bucket in self._all():
            bucket.ops.clear()  # their leases expire in Redis
            bucket.state = None
            bucket.budget = None
        self._dirty.clear()
        logger.warning(
            "Redis unreachable (%s); pacing locally at %d requests per %.1fs",
            exc,
            *self._fallback_rate,
        )
        self._fallback_limiter()
        self._fail_waiters(None)

    def _fail_waiters(self, exc: BaseException | None) -> None:
        """Every waiter leaves: with ``exc``, or (None) to the fallback limiter."""
        for bucket in self._all():
            while bucket.heap:
                _, _, waiter = heapq.heappop(bucket.heap)
                if waiter.alive and not waiter.fut.done():
                    self._kill(waiter)
                    if exc is None:
                        waiter.fut.set_result(None)
                    else:
                        waiter.fut.set_exception(exc)
        self._deadlines.clear()


RedisLimiterBackend = RedisLimiter
"""The name issue #9 gives the Redis-backed limiter: the same class as `RedisLimiter`."""

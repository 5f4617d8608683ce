"""The rate budget shared through Redis: `RedisLimiter`.

Theory of operation: the shared limiter
=======================================

Zapier's limits are per account (or partner), not per process: N workers pacing themselves
as if alone together spend N times the budget. `RedisLimiter` has the public surface of
`zapier_async.Limiter` (``slot``, ``freeze``, ``waiting``, ``in_flight``, ``frozen_until``,
``snapshot``, ``aclose``), so ``ZapierClient(limiter=RedisLimiter(...))`` shares one budget
between every process pointed at the same Redis and ``name``.

**Shared state.** Three keys under ``{prefix}:{name}``, changed only by two Lua scripts
(``ACQUIRE`` and ``RECORD``), so every decision is atomic across processes. Times in Redis
are the Redis server's own clock (``TIME``): processes do not share a monotonic clock and
machines' wall clocks drift, so clients only ever send durations ("this answer arrived
0.3 ms ago, its window resets in 2 s").

- ``:state`` (hash): ``mode`` (``probe``: nothing known, one request at a time; ``window``:
  the budget is known; ``open``: answers carry no budget headers), ``granted`` and
  ``answered`` (counters over all processes), ``anchor`` (the budget: ``available = anchor -
  granted``), ``reset_at`` (when the window surely ended), ``next_at`` (pacing),
  ``frozen_until``, ``limit`` and what was learnt about the window length (below).
- ``:inflight`` (sorted set): every granted slot's id, scored by its lease expiry. A slot is
  removed when its answer (or its release) is recorded; a process that dies holding slots
  loses them when their lease ends, and each expired lease counts as an answer, so the
  budget arithmetic does not stay pessimistic forever.
- ``:probe`` (string with a TTL): who holds the one probe; it expires with the lease.

**Budget.** As in the in-memory limiter, the server's ``Remaining`` does not count requests
still on the wire. For the answer to request *j*::

    available = Remaining_j + (answers recorded before j was granted) + 1 - (grants so far)

is a lower bound whatever order answers arrive in (every request granted before *j* and not
answered may still be counted after it). ``anchor`` keeps the highest such bound until the
window surely ended (``reset_at``, from ``X-RateLimit-Reset`` rounded up, so never early);
then the bucket goes back to *probe*: the budget is never refilled blind.

**Pacing.** In a window the available budget is spread evenly (GCRA: ``next_at`` advances by
one gap per grant, a burst of a tenth allowed) until the window's expected end, so N
processes together never burst.

**Boundary probe.** ``X-RateLimit-Reset`` in whole seconds leaves the end of a window up to a
second uncertain; waiting for the latest possible end wastes a quarter of a 2 s window. So one
token is held back as a *boundary probe*, sent alone (holding ``:probe``) at ``probe_at``.
If it lands in the old window it spends a token that was really there (no 429) and the
bucket waits for ``reset_at``; if it lands in a new window it opens it at once. Where
``probe_at`` goes is learnt: the window's opener (the answer with ``Remaining = Limit - 1``)
was received by the server between its send and receive times, and each window bounds the
window length ``P`` (its reset, a probe that landed early or late, the next opener), so
``[p_lo, p_hi]`` narrows by bisection to a few round trips, then probes go at
``opener + p_hi``. A contradiction (windows that do not start at their first request, e.g.
clock-aligned ones) restarts the learning; pacing stays sound either way, since only the
held-back token is ever risked.

**Losing the state.** Redis may lose the keys (``FLUSHALL``, a restart without
persistence, an eviction). The state carries an ``epoch``, created by the first ``ACQUIRE``
that finds none, which also drops what is left of the in-flight set and the probe lock. Each
slot carries the epoch that granted it: the answer to a slot of a lost epoch counts for
nothing (its answers-at-grant count answers of a budget nobody knows: a stale anchor) except
a 429's freeze, so the new epoch starts in probe mode, as the in-memory limiter does. For the
same reason an answer to a slot granted before the bucket last went back to probing
(``probe_from``) does not open a window. The available budget is also capped at ``Limit``.

**Scripts that run once.** redis-py re-sends a command that timed out (``Redis(host=...)``
does so up to 10 times by default), and after a stall Redis runs both copies. Every script
whose second run would change the outcome (a grant, a recorded answer, a journal write, a
claim, a forget) takes a request id and keeps its reply under it for `ONCE_TTL`: a re-run
answers with the first run's reply and changes nothing.

**Freezes.** A 429 (or a 503 with ``Retry-After`` that says ``Remaining: 0`` or is the
third 503 in a row this process saw: one transient 503 is not a rate signal) seen by any
process, or `freeze`, sets ``frozen_until`` for all, for at most ``max_server_wait``; then
one probe goes first.

**Local waiting.** Each process keeps one heap of waiters keyed by ``(priority, arrival)``
(`Priority` as in the in-memory limiter) and ONE background task that asks Redis for a grant
on behalf of the head of the heap, flushes recorded answers, and sleeps until the time
Redis named (at most ``poll_interval`` while another process holds the probe, since other
processes' answers cannot wake it). Priorities hold within a process; across processes the
grants go to whichever asks first once pacing allows, so no process is starved. A waiter
cancelled locally is removed from the heap; a grant that raced with its cancellation is
handed to the next waiter, or given back (``granted`` is decremented).

**Losing Redis.** A Redis error (connection refused, timeout) logs a warning and switches
the process to an in-memory `Limiter` with a conservative a-priori ``fallback_rate`` (it also
learns from the response headers): never to unlimited sending. Waiters are moved to it. Every
``reconnect_interval`` seconds a ``PING`` is tried; on success new requests go through Redis
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from zapier_async._closing import AsyncCloseable
from zapier_async._limiter import (
    USE_DEFAULT,
    Limiter,
    LimiterStats,
    Priority,
    _BaseWaiter,
    _Default,
    _OneShotSlot,
)
from zapier_async._limiter import Slot as _LocalSlot
from zapier_async._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    RateLimitState,
    cap_server_wait,
    check_max_server_wait,
    pause_after,
)
from zapier_async.errors import LimiterClosedError, RateLimitedError

from ._scripts import ACQUIRE, ONCE_TTL, RECORD, text

__all__ = ["RedisLimiter", "RedisLimiterBackend", "RedisSlot"]

logger = logging.getLogger("zapier_async")

_TASK_NAME: Final = "zapier_async.redis_limiter"


class RedisSlot(_OneShotSlot):
    """Permission to send one request; hand its response back with `record`.

    The same contract as `zapier_async.Slot`: call ``record(status, headers)`` once, as soon
    as the status and headers are in.
    """

    __slots__ = ("_answered_at_grant", "_epoch", "_id", "_opener_seq", "_seq")

    def __init__(
        self,
        limiter: RedisLimiter,
        slot_id: str,
        priority: Priority,
        *,
        granted_at: float,
        probe: bool,
        answered_at_grant: int,
        opener_seq: str,
        epoch: str,
        seq: str,
        waited: float,
    ) -> None:
        super().__init__(limiter, priority, granted_at, probe=probe, waited=waited)
        self._id = slot_id
        self._answered_at_grant = answered_at_grant
        self._opener_seq = opener_seq
        self._epoch = epoch  # which budget granted it (a new one after Redis lost its state)
        self._seq = seq  # its place among that budget's grants

    def __repr__(self) -> str:
        return f"RedisSlot(priority={self.priority.name}, probe={self.probe})"


class _Waiter(_BaseWaiter[RedisSlot | None]):
    """A local caller waiting for a grant from Redis (None: Redis was lost, go local)."""

    __slots__ = ()


class _SlotRequest:
    """The async context manager returned by `RedisLimiter.slot`."""

    __slots__ = ("_fallback_cm", "_limiter", "_max_wait", "_priority", "_slot")

    def __init__(
        self, limiter: RedisLimiter, priority: Priority, max_wait: float | _Default | None
    ) -> None:
        self._limiter = limiter
        self._priority = priority
        self._max_wait = max_wait
        self._slot: RedisSlot | None = None
        self._fallback_cm: contextlib.AbstractAsyncContextManager[_LocalSlot] | None = None

    async def __aenter__(self) -> RedisSlot | _LocalSlot:
        max_wait = self._limiter._max_wait if self._max_wait is USE_DEFAULT else self._max_wait
        assert not isinstance(max_wait, _Default)
        slot = await self._limiter._acquire(self._priority, max_wait)
        if slot is not None:
            self._slot = slot
            return slot
        # Redis is unreachable: this request goes through the local fallback limiter.
        cm = self._limiter._fallback_limiter().slot(self._priority, max_wait=max_wait)
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


class RedisLimiter(AsyncCloseable):
    """A rate budget shared through Redis by every process using the same ``name``.

    See the module docstring for how it works. The Redis client is the caller's: the limiter
    never closes it. Give it a ``socket_timeout`` so that a partitioned Redis is noticed.

    Args:
        redis: A ``redis.asyncio.Redis`` client.
        name: The budget's name: processes spending the same Zapier budget use the same one.
        prefix: Key prefix in Redis.
        lease: Seconds after which a granted slot whose answer was never recorded (its
            process died) stops counting as in flight. Keep it above the request timeout.
        max_wait: Default longest wait for a slot in seconds; None waits as long as needed.
        fallback_rate: ``(requests, per_seconds)`` for this process alone while Redis is
            unreachable; keep it well under the account's limit divided by the number of
            processes.
        poll_interval: Longest sleep while another process holds the probe.
        reconnect_interval: Seconds between reconnection attempts while degraded.
        default_period: The window assumed when an answer has ``Remaining`` but no ``Reset``;
            also the freeze after a 429 without ``Retry-After`` or ``Reset``.
        boundary_precision: The learnt window length is bisected until it is this narrow.
        max_server_wait: The longest freeze a server answer (``Retry-After``, ``Reset``) or
            `freeze` may impose, in seconds (as `zapier_async.Limiter`'s).
    """

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
        boundary_precision: float = 0.03,
        max_server_wait: float = DEFAULT_MAX_SERVER_WAIT,
    ) -> None:
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError(f"lease must be > 0, got {lease!r}")
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 or None, got {max_wait!r}")
        if not poll_interval > 0 or not reconnect_interval > 0:
            raise ValueError("poll_interval and reconnect_interval must be > 0")
        self._max_server_wait = check_max_server_wait(max_server_wait)
        self._redis = redis
        base = f"{prefix}:{name}"
        self._keys = [f"{base}:state", f"{base}:inflight", f"{base}:probe"]
        self._once_prefix = f"{base}:once:"
        self._once_ms = str(math.ceil(ONCE_TTL * 1000))
        self._lease = lease
        self._max_wait = max_wait
        self._fallback_rate = fallback_rate
        self._poll = poll_interval
        self._reconnect = reconnect_interval
        self._period = default_period
        self._narrow = boundary_precision
        self._acquire_script = redis.register_script(ACQUIRE)
        self._record_script = redis.register_script(RECORD)
        self._owner = uuid.uuid4().hex[:12]
        self._ids = itertools.count()

        self._heap: list[tuple[int, int, _Waiter]] = []
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._live = 0
        # Recorded answers not yet written: (arguments, sent at, received at, request id).
        self._ops: deque[tuple[tuple[str, ...], float, float, str]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._fallback: Limiter | None = None
        self._degraded = False
        self._in_flight = 0
        self._frozen_until: float | None = None
        self._unavailable_streak = 0  # 503s in a row seen by this process

        # Statistics and the last view of the shared state.
        self._n_grants = 0
        self._n_immediate = 0
        self._n_waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._n_expired = 0
        self._n_cancelled = 0
        self._n_responses = 0
        self._n_429 = 0
        self._n_freezes = 0
        self._n_degraded = 0
        self._last_reason = "probe"

    # ------------------------------------------------------------------ public surface

    def slot(
        self,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_wait: float | _Default | None = USE_DEFAULT,
    ) -> contextlib.AbstractAsyncContextManager[RedisSlot | _LocalSlot]:
        """Wait for permission to send one request (see `zapier_async.Limiter.slot`).

        Args:
            priority: Who is waiting (see `Priority`); honoured within this process.
            max_wait: The longest acceptable wait in seconds; None waits as long as needed;
                by default the limiter's ``max_wait``.

        Returns:
            An async context manager yielding the slot (a `RedisSlot`, or a local `Slot`
            while Redis is unreachable).

        Raises:
            RateLimitedError: (on entering) ``max_wait`` ran out while waiting.
            LimiterClosedError: (on entering) The limiter is or was closed while waiting.
        """
        return _SlotRequest(self, Priority(priority), max_wait)

    def freeze(self, seconds: float) -> None:
        """Stop every process sharing the budget for ``seconds`` (never shortens a freeze).

        Args:
            seconds: How long to hold every request back.
        """
        seconds = 0.0 if math.isnan(seconds) else min(max(seconds, 0.0), self._max_server_wait)
        self._freeze_locally(seconds)
        if self._fallback is not None:
            self._fallback.freeze(seconds)
        self._enqueue(
            ("", "0", "0", "0", "freeze", "", "", "", "1", "", "", repr(seconds), "", "", "")
        )

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
        """Monotonic time at which the freeze known to this process ends, or None."""
        if self._frozen_until is not None and self._frozen_until <= time.monotonic():
            return None
        return self._frozen_until

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable and the local fallback limiter is in use."""
        return self._degraded

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def snapshot(self) -> LimiterStats:
        """This process's counters (the shared budget itself lives in Redis).

        Returns:
            A frozen `LimiterStats`; ``mode`` is the last reason Redis gave for waiting, or
            ``"degraded"``.
        """
        frozen = self.frozen_until
        return LimiterStats(
            mode="degraded" if self._degraded else self._last_reason,
            grants=self._n_grants,
            immediate=self._n_immediate,
            waits=self._n_waits,
            wait_total=self._wait_total,
            wait_max=self._wait_max,
            rejected=0,
            expired=self._n_expired,
            cancelled=self._n_cancelled,
            responses=self._n_responses,
            rate_limited=self._n_429,
            freezes=self._n_freezes,
            windows=0,
            in_flight=self.in_flight,
            waiting=self.waiting,
            limit=None,
            remaining=None,
            reset_in=None,
            frozen_for=None if frozen is None else frozen - time.monotonic(),
        )

    async def aclose(self) -> None:
        """Flush recorded answers, stop the background task and fail every waiter.

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
        if self._ops and not self._degraded:
            with contextlib.suppress(RedisError, OSError):
                await self._flush()
        if self._fallback is not None:
            await self._fallback.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(key={self._keys[0]!r}, in_flight={self._in_flight}, "
            f"waiting={self._live}, degraded={self._degraded})"
        )

    # ------------------------------------------------------------------ acquiring

    async def _acquire(self, priority: Priority, max_wait: float | None) -> RedisSlot | None:
        if self._closed:
            raise LimiterClosedError("the rate limiter is closed")
        if self._degraded:
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = None if max_wait is None else now + max_wait
        waiter = _Waiter(priority, loop.create_future(), now, deadline)
        seq = next(self._seq)
        heapq.heappush(self._heap, (int(priority), seq, waiter))
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq, waiter))
        self._live += 1
        self._ensure_task()
        self._wake.set()
        try:
            return await waiter.fut
        except asyncio.CancelledError:
            if waiter.alive:
                waiter.alive = False
                self._live -= 1
                self._n_cancelled += 1
            elif waiter.fut.done() and not waiter.fut.cancelled():
                # The grant raced with the cancellation: nothing was sent, give it back.
                slot = waiter.fut.result() if waiter.fut.exception() is None else None
                if slot is not None:
                    slot._undo()
            raise

    def _fallback_limiter(self) -> Limiter:
        if self._fallback is None:
            self._fallback = Limiter(
                rate=self._fallback_rate,
                max_wait=self._max_wait,
                max_server_wait=self._max_server_wait,
            )
        return self._fallback

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=_TASK_NAME)

    def _enqueue(self, args: tuple[str, ...], sent_at: float = 0.0, recv_at: float = 0.0) -> None:
        if self._closed and self._task is None:
            return
        self._ops.append((args, sent_at, recv_at, f"{self._owner}:r{next(self._ids)}"))
        self._wake.set()
        with contextlib.suppress(RuntimeError):  # no running loop: flushed by the next slot()
            self._ensure_task()

    def _complete(self, slot: RedisSlot, status: int | None, headers: Mapping[str, str]) -> None:
        self._in_flight -= 1
        now = time.monotonic()
        kind, remaining, limit, reset_after, precision, freeze, ok = (
            "release",
            "",
            "",
            "",
            "1",
            "",
            "",
        )
        if status is not None:
            kind = "answer"
            self._n_responses += 1
            state = RateLimitState.from_headers(headers, now=time.time())
            self._unavailable_streak = self._unavailable_streak + 1 if status == 503 else 0
            pause = pause_after(
                status,
                state,
                default_cooldown=self._period,
                unavailable_streak=self._unavailable_streak,
            )
            if status == 429:
                self._n_429 += 1
            if pause is not None:
                # Any server-dictated wait is capped (a Retry-After of 10**12 would freeze
                # every process for a day otherwise).
                pause = cap_server_wait(
                    pause, max_server_wait=self._max_server_wait, now=time.time()
                ).hold
                freeze = repr(pause)
                self._freeze_locally(pause)
            remaining = "" if state.remaining is None else str(state.remaining)
            limit = "" if state.limit is None else str(state.limit)
            reset_after = "" if state.reset_after is None else repr(state.reset_after)
            precision = repr(state.reset_precision)
            ok = "1" if 200 <= status < 300 and not state.present else ""
        args = (
            slot._id,
            str(slot._answered_at_grant),
            slot._opener_seq,
            "1" if slot.probe else "0",
            kind,
            remaining,
            limit,
            reset_after,
            precision,
            "",
            "",
            freeze,
            ok,
            slot._epoch,
            slot._seq,
        )
        self._enqueue(args, slot.granted_at, now)

    def _ungrant(self, slot: RedisSlot) -> None:
        self._in_flight -= 1
        self._enqueue(
            (slot._id, "0", "0", "0", "undo", "", "", "", "1", "", "", "", "", slot._epoch, "")
        )

    def _once_key(self, request_id: str) -> str:
        return self._once_prefix + request_id

    def _freeze_locally(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if self._frozen_until is None or until > self._frozen_until:
            self._frozen_until = until
            self._n_freezes += 1
            logger.info("rate limit: holding all requests for %.1fs (shared)", seconds)

    # ------------------------------------------------------------------ the one task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                if self._degraded:
                    await self._sleep(loop, self._reconnect)
                    if self._closed:
                        break
                    await self._redis.ping()
                    self._degraded = False
                    logger.warning("zapier_async: Redis is reachable again; sharing the budget")
                    continue
                await self._flush()
                waiter = self._head()
                if waiter is None:
                    if self._ops:
                        continue
                    self._wake.clear()
                    if not self._closed:
                        await self._wake.wait()
                    continue
                delay = await self._try_grant(loop)
                if delay is None:
                    continue
                # Deadlines are checked after Redis said no, so max_wait=0 still tries once.
                self._expire(loop.time())
                while self._deadlines and not self._deadlines[0][2].alive:
                    heapq.heappop(self._deadlines)
                if self._deadlines:
                    delay = min(delay, max(self._deadlines[0][0] - loop.time(), 0.0))
                if not self._ops and self._head() is not None:
                    await self._sleep(loop, delay)
            except (RedisError, OSError) as exc:
                if not self._degraded:
                    self._degrade(exc)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Sleep ``delay`` seconds or until woken by a local event; no task is created."""
        self._wake.clear()
        if self._closed:
            return
        handle = loop.call_later(max(delay, 0.0), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()

    def _head(self) -> _Waiter | None:
        # A waiter whose future is done was cancelled and has not run its handler yet.
        while self._heap and (not self._heap[0][2].alive or self._heap[0][2].fut.done()):
            heapq.heappop(self._heap)
        return self._heap[0][2] if self._heap else None

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if waiter.alive and not waiter.fut.done():
                waiter.alive = False
                self._live -= 1
                self._n_expired += 1
                retry_in = max((self.frozen_until or 0.0) - time.monotonic(), 0.0)
                waiter.fut.set_exception(RateLimitedError(retry_in, time.time() + retry_in))

    async def _try_grant(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """Ask Redis for one grant; None: granted (or nobody to give it to), else the wait."""
        slot_id = f"{self._owner}:{next(self._ids)}"
        reply = await self._acquire_script(
            keys=[*self._keys, self._once_key(slot_id)],
            args=[slot_id, repr(self._lease), self._once_ms],
        )
        if int(reply[0]) == 0:
            wait = float(reply[1])
            reason = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
            self._last_reason = reason
            if reason == "frozen":
                self._freeze_locally(wait)
            if wait < 0 or reason in ("probe", "boundary", "exhausted"):
                return self._poll if wait < 0 else min(wait, self._poll)
            return wait
        self._last_reason = "granted"
        now = loop.time()
        waiter = self._head()
        slot = RedisSlot(
            self,
            slot_id,
            waiter.priority if waiter is not None else Priority.BULK,
            granted_at=time.monotonic(),
            probe=int(reply[1]) == 1,
            answered_at_grant=int(reply[2]),
            opener_seq=text(reply[3]),
            epoch=text(reply[4]),
            seq=text(reply[5]),
            waited=0.0 if waiter is None else now - waiter.enqueued_at,
        )
        self._in_flight += 1
        if waiter is None:  # everybody left while Redis answered
            slot._undo()
            return None
        heapq.heappop(self._heap)
        waiter.alive = False
        self._live -= 1
        self._n_grants += 1
        if slot.waited > 0.001:
            self._n_waits += 1
            self._wait_total += slot.waited
            self._wait_max = max(self._wait_max, slot.waited)
        else:
            self._n_immediate += 1
        waiter.fut.set_result(slot)
        return None

    async def _flush(self) -> None:
        while self._ops:
            args, sent_at, recv_at, request_id = self._ops[0]
            now = time.monotonic()
            full = list(args)
            if full[4] == "answer":
                full[9] = repr(max(now - sent_at, 0.0))
                full[10] = repr(max(now - recv_at, 0.0))
            # ARGV: ..., freeze, default_period, narrow, open-ok, epoch, seq, once TTL
            argv = [*full[:12], repr(self._period), repr(self._narrow), *full[12:], self._once_ms]
            await self._record_script(keys=[*self._keys, self._once_key(request_id)], args=argv)
            self._ops.popleft()

    def _degrade(self, exc: BaseException) -> None:
        self._degraded = True
        self._n_degraded += 1
        self._ops.clear()  # their leases expire in Redis
        logger.warning(
            "zapier_async: Redis unreachable (%s); pacing locally at %d requests per %.1fs",
            exc,
            *self._fallback_rate,
        )
        self._fallback_limiter()
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if waiter.alive and not waiter.fut.done():
                waiter.alive = False
                self._live -= 1
                waiter.fut.set_result(None)  # go through the fallback limiter

    def _fail_waiters(self, exc: BaseException) -> None:
        while self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if waiter.alive and not waiter.fut.done():
                waiter.alive = False
                self._live -= 1
                waiter.fut.set_exception(exc)
        self._deadlines.clear()


RedisLimiterBackend = RedisLimiter
"""The name issue #9 gives the Redis-backed limiter: the same class as `RedisLimiter`."""

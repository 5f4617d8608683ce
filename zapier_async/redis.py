"""State shared by many worker processes and machines, through Redis.

`RedisLimiter` is one rate budget for every process; `RunJournal` records which runs each
worker has in flight, so that another worker can resume them when their owner dies.

Install with ``pip install 'zapier-async[redis]'``; this module imports ``redis`` and is
not imported by ``import zapier_async``.

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

Theory of operation: the run journal
====================================

A worker that dies (OOM kill, lost machine, deploy) leaves runs that Zapier accepted and
nobody follows, and creates whose answer it never saw. `RunJournal` writes each item's
progress to Redis, so that another worker can tell the two apart:

1. ``sending(key)`` before the create may go on the wire: the item *may* exist at Zapier
   from now on (an entry without a run id: "maybe sent");
2. ``record(key, handle)`` as soon as Zapier accepted the run: the entry gains the run id
   and its continuation token ("submitted");
3. ``forget(key)`` once the caller stored the run's outcome: the entry is deleted.

**Shared state.** Under ``{prefix}:{name}``, every worker (``worker``, by default
``hostname-pid-random``) owns:

- ``:runs:{worker}`` (hash): field = the caller's key, value = compact JSON (run id,
  continuation token, when recorded, which worker wrote it). Its whole-key TTL (``ttl``,
  6 days by default, always under Zapier's 7-day retention of run data: past it a run id is
  a 404) is refreshed on every write, so an abandoned journal does not live forever. Redis
  7.0 has no per-field TTL; one live entry keeps its siblings alive, which is harmless.
- ``:alive:{worker}`` (string with a TTL of ``heartbeat_ttl``): the heartbeat, written when
  the journal opens and every ``heartbeat_interval`` by one background task; deleted by
  `RunJournal.aclose`, so a clean shutdown hands its leftover entries over at once.

and all workers share ``:workers`` (set): the workers that have entries, and ``:owners``
(hash): which worker journals each key. Writes are Lua scripts, so an entry, the set and the
index never disagree.

**One key, one worker.** ``sending(key)`` refuses a key that another worker's journal holds
(`KeyInFlightError`, naming that worker), whether that worker is alive or dead: its run may be
in flight, and a second create could run the item twice. Queues that deliver at least once
hand an item out again when its first delivery takes long; the second delivery is refused
until the first one's outcome is stored and forgotten (or its journal expired). A claim
moves the ownership with the entries. Outcomes must still be stored idempotently: after
``forget`` the key is free, so a delivery that arrives later is sent again unless the caller
checks its outcome store first.

**Timeouts.** Writes and claims are idempotent under redis-py's own retries (see "Scripts
that run once" above): a ``sending`` that timed out once and succeeded on a retry journals
the key, a ``claim`` returns the entries it moved. When every retry failed the outcome is
unknown: a failed ``claim`` may still have moved the entries into this journal (`entries`
lists them), a failed ``sending`` may still have journalled the key.

**Taking over.** `RunJournal.orphans` lists workers that have entries and no heartbeat.
`RunJournal.claim` moves all of one orphan's entries into the claimer's own hash in ONE Lua
script, after checking that the orphan's heartbeat is still absent: two claimers racing
cannot both get an entry (the second finds an empty hash), and a worker whose heartbeat came
back is refused (`WorkerAliveError`). The claimer then owns the entries as if it had written
them (if it dies in turn, a third worker claims them from it):

- an entry with a run id is resumed with ``client.resume(entry.token)``: never re-sent;
- an entry without one ("maybe sent") is NEVER re-sent automatically: the create may have
  reached Zapier, and a second one is a second email to a real person. Report it as outcome
  unknown (`zapier_async.OutcomeUnknownError`), or check the target system first.

`RunJournal.resume_orphans` does both for every orphan.

**Bulk jobs.** ``run_many``'s ``on_sending``/``on_submitted`` hooks are synchronous and cannot
await Redis, so `RunJournal.run_many` journals each item as ``run_many`` reads it from the
input (before it can be sent; an item read and not yet sent when the worker dies is then
"maybe sent", which is conservative), refuses in ``on_sending`` any item it could not
journal, and writes the run id from ``on_submitted`` in the background (only if the entry
still exists, so a late write never revives a forgotten or claimed entry).

**Liveness.** A heartbeat that lapses while its worker lives (an event loop blocked longer
than ``heartbeat_ttl``, Redis unreachable for that long) lets another worker claim runs that
are still followed: nothing is re-sent, but both workers may compute the same outcome, so
store outcomes idempotently (e.g. ``HSETNX``). Keep ``heartbeat_ttl`` well above the longest
stall. A Redis error in the heartbeat is logged and retried; in ``sending``/``record``/
``forget`` it is raised to the caller (who must not send an item it could not journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import _protocol as proto
from ._bulk import Outcome, RunMany, RunRequest
from ._closing import AsyncCloseable
from ._handle import RunHandle
from ._limiter import (
    USE_DEFAULT,
    Limiter,
    LimiterStats,
    Priority,
    _BaseWaiter,
    _Default,
    _OneShotSlot,
)
from ._limiter import Slot as _LocalSlot
from ._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    RateLimitState,
    cap_server_wait,
    check_max_server_wait,
    pause_after,
)
from .errors import InvalidRequestError, LimiterClosedError, RateLimitedError, ZapierError

if TYPE_CHECKING:
    from ._client import ZapierClient

__all__ = [
    "ONCE_TTL",
    "RETENTION",
    "JournalClosedError",
    "JournalEntry",
    "KeyInFlightError",
    "NotJournalledError",
    "RecoveredRuns",
    "RedisLimiter",
    "RedisLimiterBackend",
    "RedisSlot",
    "RunJournal",
    "WorkerAliveError",
]

logger = logging.getLogger("zapier_async")

_TASK_NAME: Final = "zapier_async.redis_limiter"

ONCE_TTL: Final = 600.0
"""Seconds Redis keeps the reply of a script that must run once, under its request id.

A command that timed out is re-sent by redis-py's own retries (``Redis(host=...)`` retries
a timed-out command up to 10 times), and Redis may then run it twice: the first copy was
only late. Each such script takes a request id (the last key) and the TTL (the last
argument); a run that finds the id answers with the first run's reply and changes nothing.
Ten minutes is far above any client's whole retry span."""


def _once(body: str, *, store_if: str = "true") -> str:
    """Wrap a Lua script body so that re-runs with the same request id change nothing.

    The body reads its own ``KEYS``/``ARGV`` by position (never ``#KEYS``/``#ARGV``); the
    request key is appended after its keys and the TTL (ms) after its arguments. Replies
    are kept as JSON (numbers, strings, nested arrays: what these scripts return), and only
    when ``store_if`` (a Lua expression on ``reply``) holds: a "not yet" of the limiter
    changed nothing, so a re-run may answer afresh.
    """
    return f"""
local once_key, once_ttl = KEYS[#KEYS], tonumber(ARGV[#ARGV])
local once_done = redis.call('GET', once_key)
if once_done then return cjson.decode(once_done) end
local function body()
{body}
end
local reply = body()
if {store_if} then redis.call('SET', once_key, cjson.encode(reply), 'PX', once_ttl) end
return reply
"""


_ACQUIRE: Final = _once(
    """
local st, zs, pk = KEYS[1], KEYS[2], KEYS[3]
local slot, lease = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function num(f)
  local v = redis.call('HGET', st, f)
  if v then return tonumber(v) end
  return nil
end
local epoch = redis.call('HGET', st, 'epoch')
if not epoch then
  -- No budget here: first use, or Redis lost it (FLUSHALL, a restart without persistence,
  -- an eviction). A new epoch starts in probe mode; slots granted before it belong to a
  -- budget nobody knows any more (RECORD ignores their answers' budget), and whatever is
  -- left of its in-flight set and probe lock goes with it.
  epoch = t[1] .. '.' .. t[2] .. '/' .. slot
  redis.call('DEL', zs, pk)
  redis.call('HSET', st, 'epoch', epoch, 'probe_from', redis.call('HGET', st, 'granted') or '0')
end
local expired = redis.call('ZRANGEBYSCORE', zs, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', zs, '-inf', now)
  redis.call('HINCRBY', st, 'answered', #expired)
end
local function to_probe()
  redis.call('HSET', st, 'mode', 'probe', 'probe_from', redis.call('HGET', st, 'granted') or '0')
  redis.call('HDEL', st, 'anchor', 'reset_at', 'next_at', 'probe_at')
  return 'probe'
end
local mode = redis.call('HGET', st, 'mode') or 'probe'
local frozen = num('frozen_until')
if frozen then
  if now < frozen then return {0, tostring(frozen - now), 'frozen'} end
  redis.call('HDEL', st, 'frozen_until')
  mode = to_probe()
end
local granted = tonumber(redis.call('HGET', st, 'granted') or '0')
if mode == 'window' and now >= num('reset_at') then mode = to_probe() end
local probe = 0
local function take_probe()
  return redis.call('SET', pk, slot, 'NX', 'PX', math.max(1, math.floor(lease * 1000)))
end
local function paced(avail, until_)
  local gap = math.max(until_ - now, 0) / avail
  local burst = math.max(1, math.floor(avail * 0.1))
  local next_at = num('next_at') or now
  local allowed = next_at - (burst - 1) * gap
  if allowed > now then return allowed - now end
  redis.call('HSET', st, 'next_at', tostring(math.max(next_at, now) + gap))
  return nil
end
if mode == 'probe' then
  if not take_probe() then return {0, '-1', 'probe'} end
  probe = 1
elseif mode == 'window' then
  local reset_at = num('reset_at')
  local avail = num('anchor') - granted
  local limit = num('limit')
  if limit and avail > limit then avail = limit end
  if avail <= 0 then return {0, tostring(reset_at - now), 'exhausted'} end
  local probe_at = num('probe_at')
  if probe_at and probe_at >= reset_at then probe_at = nil end
  if probe_at and now < probe_at then
    if avail <= 1 then return {0, tostring(probe_at - now), 'boundary'} end
    local wait = paced(avail - 1, probe_at)
    if wait then return {0, tostring(wait), 'paced'} end
  elseif probe_at then
    if not take_probe() then return {0, '-1', 'boundary'} end
    probe = 1
  else
    local wait = paced(avail, reset_at)
    if wait then return {0, tostring(wait), 'paced'} end
  end
end
local seq = redis.call('HINCRBY', st, 'granted', 1)
redis.call('ZADD', zs, tostring(now + lease), slot)
return {1, tostring(probe), redis.call('HGET', st, 'answered') or '0',
        redis.call('HGET', st, 'opener_seq') or '0', epoch, tostring(seq)}
""",
    store_if="reply[1] == 1",
)

_RECORD: Final = _once(
    """
local st, zs, pk = KEYS[1], KEYS[2], KEYS[3]
local slot = ARGV[1]
local answered_at_grant = tonumber(ARGV[2])
local opener_seq_at_grant = ARGV[3]
local probe = ARGV[4] == '1'
local kind = ARGV[5]
local remaining, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local reset_after, prec = tonumber(ARGV[8]), tonumber(ARGV[9])
local sent_ago, recv_ago = tonumber(ARGV[10]), tonumber(ARGV[11])
local freeze, default_period, narrow = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local seq = tonumber(ARGV[17])
-- Whether the slot was granted from the budget Redis holds now (not one Redis lost since).
local ours = ARGV[16] ~= '' and redis.call('HGET', st, 'epoch') == ARGV[16]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function num(f)
  local v = redis.call('HGET', st, f)
  if v then return tonumber(v) end
  return nil
end
if slot ~= '' then
  local held = redis.call('ZREM', zs, slot) == 1
  if held and ours then
    if kind == 'undo' then
      redis.call('HINCRBY', st, 'granted', -1)
    else
      redis.call('HINCRBY', st, 'answered', 1)
    end
  end
  if redis.call('GET', pk) == slot then redis.call('DEL', pk) end
end
if freeze then
  local until_ = now + freeze
  local cur = num('frozen_until')
  if not cur or until_ > cur then redis.call('HSET', st, 'frozen_until', tostring(until_)) end
  redis.call('HSET', st, 'mode', 'probe', 'probe_from', redis.call('HGET', st, 'granted') or '0')
  redis.call('HDEL', st, 'anchor', 'reset_at', 'next_at', 'probe_at')
  return 1
end
-- A straggler tells nothing of the budget now: granted from a budget Redis lost (its
-- answers-at-grant count answers of that budget: a stale anchor), or granted before the
-- bucket went back to probing (its Remaining may predate the 429 or the window's end).
if kind ~= 'answer' or not ours then return 0 end
local mode = redis.call('HGET', st, 'mode') or 'probe'
if mode == 'probe' and seq and seq <= (num('probe_from') or 0) then return 0 end
if not remaining then
  if mode == 'probe' and ARGV[15] == '1' then redis.call('HSET', st, 'mode', 'open') end
  return 0
end
local recv, sent = now - recv_ago, now - sent_ago
local hi = recv + (reset_after or default_period)
if hi <= now then return 0 end
local est = remaining + answered_at_grant + 1
if mode ~= 'window' then
  redis.call('HSET', st, 'mode', 'window', 'anchor', tostring(est), 'reset_at', tostring(hi))
  redis.call('HDEL', st, 'next_at')
else
  if est > num('anchor') then redis.call('HSET', st, 'anchor', tostring(est)) end
  if hi > num('reset_at') then redis.call('HSET', st, 'reset_at', tostring(hi)) end
end
if not limit then return 1 end
redis.call('HSET', st, 'limit', tostring(limit))
local p_lo, p_hi = num('p_lo'), num('p_hi')
local opener_r = num('opener_r')
if reset_after and remaining == limit - 1 then
  local prev_s = num('opener_s')
  if prev_s and sent <= prev_s then return 1 end
  local lo_c, hi_c = hi - prec - recv, hi - sent
  local new_lo, new_hi = math.max(p_lo or lo_c, lo_c), math.min(p_hi or hi_c, hi_c)
  if prev_s then new_hi = math.min(new_hi, recv - prev_s) end
  if new_lo > new_hi then new_lo, new_hi = lo_c, hi_c end
  p_lo, p_hi, opener_r = new_lo, new_hi, recv
  redis.call('HSET', st, 'opener_s', tostring(sent), 'opener_r', tostring(recv),
             'p_lo', tostring(p_lo), 'p_hi', tostring(p_hi))
  redis.call('HINCRBY', st, 'opener_seq', 1)
elseif probe and opener_r and p_lo
    and opener_seq_at_grant == (redis.call('HGET', st, 'opener_seq') or '0') then
  p_lo = math.max(p_lo, sent - opener_r)
  if p_lo > p_hi then
    redis.call('HDEL', st, 'p_lo', 'p_hi', 'probe_at')
    return 1
  end
  redis.call('HSET', st, 'p_lo', tostring(p_lo))
end
if opener_r and p_lo and p_hi then
  local p = p_hi
  if p_hi - p_lo > narrow then p = (p_lo + p_hi) / 2 end
  redis.call('HSET', st, 'probe_at', tostring(opener_r + p))
end
return 1
"""
)


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
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._record_script = redis.register_script(_RECORD)
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
            opener_seq=_text(reply[3]),
            epoch=_text(reply[4]),
            seq=_text(reply[5]),
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


# ====================================================================== the run journal

RETENTION: Final = 7 * 86_400.0
"""Seconds Zapier keeps a run's data; a journal entry must expire before its run does."""

_JOURNAL_TASK_NAME: Final = "zapier_async.run_journal"
_MAX_KEY_LENGTH: Final = 1024

# KEYS: runs hash, workers set, owners hash. ARGV: field, value, ttl (ms), mode, worker,
# the runs-hash key prefix. mode "new": refuse if the field exists here (return the old
# value) or in another worker's journal (return {owner}), else own it; "set": write;
# "update": write only if the field exists (a late write after `forget` is a no-op).
# (The other owner's runs hash is named from ARGV, so this journal needs a standalone Redis,
# as the limiter does: keys of a cluster would have to share a hash slot.)
_J_WRITE: Final = _once(
    """
local h, ws, owners = KEYS[1], KEYS[2], KEYS[3]
local field, value, ttl, mode, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if mode == 'new' then
  local old = redis.call('HGET', h, field)
  if old then return old end
  local owner = redis.call('HGET', owners, field)
  if owner and owner ~= me and redis.call('HEXISTS', ARGV[6] .. owner, field) == 1 then
    return {owner}
  end
  redis.call('HSET', owners, field, me)
  redis.call('PEXPIRE', owners, ttl)
elseif mode == 'update' and redis.call('HEXISTS', h, field) == 0 then
  return 0
end
redis.call('HSET', h, field, value)
redis.call('PEXPIRE', h, ttl)
redis.call('SADD', ws, me)
redis.call('PEXPIRE', ws, ttl)
return 1
"""
)

# KEYS: runs hash, workers set, owners hash. ARGV: field, ttl (ms), worker. Redis deletes an
# emptied hash.
_J_FORGET: Final = _once(
    """
local h, ws, owners = KEYS[1], KEYS[2], KEYS[3]
local n = redis.call('HDEL', h, ARGV[1])
if redis.call('HGET', owners, ARGV[1]) == ARGV[3] then redis.call('HDEL', owners, ARGV[1]) end
if redis.call('EXISTS', h) == 0 then
  redis.call('SREM', ws, ARGV[3])
elseif n > 0 then
  redis.call('PEXPIRE', h, ARGV[2])
end
return n
"""
)

# KEYS: workers set, the dead worker's runs hash and heartbeat, the claimer's runs hash, the
# owners hash. ARGV: dead worker, claimer, ttl (ms). Returns {0} (alive: refused) or
# {1, {field, value...}}.
_J_CLAIM: Final = _once(
    """
local ws, dead_h, dead_alive, mine, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', dead_alive) == 1 then return {0} end
local flat = redis.call('HGETALL', dead_h)
if #flat > 0 then
  for i = 1, #flat, 2 do
    redis.call('HSETNX', mine, flat[i], flat[i + 1])
    redis.call('HSET', owners, flat[i], ARGV[2])
  end
  redis.call('PEXPIRE', owners, ARGV[3])
  redis.call('DEL', dead_h)
  redis.call('PEXPIRE', mine, ARGV[3])
  redis.call('SADD', ws, ARGV[2])
  redis.call('PEXPIRE', ws, ARGV[3])
end
redis.call('SREM', ws, ARGV[1])
return {1, flat}
"""
)

# KEYS: workers set, a worker's runs hash. ARGV: the worker. Drops a member without entries
# (its hash expired); atomic, so it never races with that worker's next write.
_J_PRUNE: Final = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('SREM', KEYS[1], ARGV[1]) end
return 0
"""


@attrs.define(auto_exc=True, eq=False)
class JournalClosedError(ZapierError, RuntimeError):
    """The run journal is not open (never opened, or closed): nothing was written.

    A worker journals and claims only while its heartbeat is kept (``async with journal:``);
    otherwise other workers would take its entries for a dead worker's.

    Attributes:
        message: What was refused.
    """

    message: str = "the run journal is not open"

    def __str__(self) -> str:
        return self.message


@attrs.define(auto_exc=True, eq=False)
class WorkerAliveError(ZapierError):
    """`RunJournal.claim` refused: the worker's heartbeat is fresh, so its runs are its own.

    Attributes:
        worker: The worker id.
    """

    worker: str

    def __str__(self) -> str:
        return f"worker {self.worker!r} is alive (its heartbeat is fresh): nothing was claimed"


@attrs.define(auto_exc=True, eq=False)
class KeyInFlightError(InvalidRequestError):
    """`RunJournal.sending` refused: another worker journals the same key, in flight there.

    Sending it too could run the item twice. A queue with at-least-once delivery hands an
    item out again when its first delivery takes long; skip (or requeue) it instead.

    Attributes:
        key: The item's key.
        worker: The worker whose journal holds it.
    """

    key: str = ""
    worker: str = ""


@attrs.define(auto_exc=True, eq=False)
class NotJournalledError(InvalidRequestError):
    """`RunJournal.run_many` did not send an item because it could not journal it.

    Its key is missing, not a non-empty string, or already journalled (by another item in
    flight): the entry under that key is not this item's, so `RunJournal.forget_outcome`
    leaves it alone.
    """


@attrs.frozen(kw_only=True)
class JournalEntry:
    """One item a worker journalled as in flight.

    Attributes:
        key: The caller's key for the item.
        run_id: The run Zapier accepted, or None: the create may or may not have reached
            Zapier ("maybe sent"). Never re-send such an item automatically.
        token: The run's continuation token for `ZapierClient.resume` (None with `run_id`).
        recorded_at: Wall-clock time of the last write, in epoch seconds.
        worker: The worker that wrote the entry (kept when another worker claims it).
    """

    key: str
    run_id: str | None = None
    token: str | None = None
    recorded_at: float
    worker: str

    @property
    def maybe_sent(self) -> bool:
        """True when the outcome is unknown: journalled as sending, no run id recorded."""
        return self.run_id is None


@attrs.frozen(kw_only=True)
class RecoveredRuns:
    """What `RunJournal.resume_orphans` took over from dead workers.

    Every entry is now in this worker's journal: store each item's outcome, then
    `RunJournal.forget` its key.

    Attributes:
        entries: Every entry claimed, in the order claimed.
        handles: Key to the handle of each run Zapier had accepted, followed again by the
            client (`ZapierClient.resume`); nothing was re-sent.
        unknown: The "maybe sent" entries (no run id): report each as outcome unknown, or
            check the target system; they were not re-sent, and must not be blindly.
        workers: The dead workers whose entries were claimed.
    """

    entries: tuple[JournalEntry, ...] = ()
    handles: Mapping[str, RunHandle] = attrs.field(factory=dict)
    unknown: tuple[JournalEntry, ...] = ()
    workers: tuple[str, ...] = ()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError("must be a non-empty string", field)
    if len(value) > _MAX_KEY_LENGTH:
        raise InvalidRequestError(f"must be at most {_MAX_KEY_LENGTH} characters", field)
    return value


def _check_seconds(value: object, field: str, *, below: float, below_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"must be a number of seconds, not {type(value).__name__}", field)
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 < seconds < below):
        raise InvalidRequestError(f"must be > 0 and < {below_name}, got {value!r}", field)
    return seconds


def _locate(run: object) -> tuple[str, str]:
    """The run id and continuation token of a handle, a run id or a token."""
    if isinstance(run, RunHandle):
        return run.id, run.continuation_token()
    if isinstance(run, str):
        locator = proto.decode_continuation_token(run)
        return locator.run_id, proto.encode_continuation_token(locator)
    raise InvalidRequestError(
        f"must be a RunHandle, a run id or a continuation token, not {type(run).__name__}", "run"
    )


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RunJournal(AsyncCloseable):
    """Which runs this worker has in flight, in Redis, for other workers to take over.

    See the module docstring for how it works. Typical use, one item at a time::

        async with RunJournal(redis, name="emails") as journal:
            for dead in await journal.orphans():          # or: resume_orphans(client)
                for entry in await journal.claim(dead):
                    ...                                   # resume by token, or unknown
            await journal.sending(key)                    # before the create may be sent
            handle = await client.run(action, authentication=auth, inputs=inputs)
            await journal.record(key, handle)             # Zapier accepted it
            store(key, await handle)                      # your outcome store
            await journal.forget(key)                     # the outcome is safe

    or `RunJournal.run_many` for a bulk job. The Redis client is the caller's: the journal
    never closes it. Give it a ``socket_timeout`` so that a partitioned Redis is noticed.

    Args:
        redis: A ``redis.asyncio.Redis`` client.
        name: The journal's name: workers that may take over each other's runs use the same.
        prefix: Key prefix in Redis.
        worker: This worker's id, unique among live workers (default
            ``hostname-pid-random``). A worker restarted with the same id finds its own
            leftover entries in `entries`.
        ttl: Seconds an entry is kept after its worker's last write; must be under Zapier's
            7-day retention of runs (`RETENTION`).
        heartbeat_ttl: Seconds without a heartbeat after which the worker counts as dead;
            keep it well above the longest event-loop stall.
        heartbeat_interval: Seconds between heartbeats (default a third of
            ``heartbeat_ttl``); must be under ``heartbeat_ttl``.

    Raises:
        InvalidRequestError: A bad argument (checked before any Redis call).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        name: str = "default",
        prefix: str = "zapier_async:journal",
        worker: str | None = None,
        ttl: float = 6 * 86_400.0,
        heartbeat_ttl: float = 15.0,
        heartbeat_interval: float | None = None,
    ) -> None:
        name = _check_name(name, "name")
        prefix = _check_name(prefix, "prefix")
        self._worker = _default_worker() if worker is None else _check_name(worker, "worker")
        ttl = _check_seconds(ttl, "ttl", below=RETENTION, below_name="7 days (Zapier's retention)")
        heartbeat_ttl = _check_seconds(heartbeat_ttl, "heartbeat_ttl", below=ttl, below_name="ttl")
        if heartbeat_interval is None:
            heartbeat_interval = heartbeat_ttl / 3
        self._interval = _check_seconds(
            heartbeat_interval,
            "heartbeat_interval",
            below=heartbeat_ttl,
            below_name="heartbeat_ttl",
        )
        self._redis = redis
        self._base = f"{prefix}:{name}"
        self._workers_key = f"{self._base}:workers"
        self._owners_key = f"{self._base}:owners"
        self._hash = self._runs_key(self._worker)
        self._alive = self._alive_key(self._worker)
        self._ttl_ms = max(1, math.ceil(ttl * 1000))
        self._heartbeat_ms = max(1, math.ceil(heartbeat_ttl * 1000))
        self._once_ms = str(math.ceil(ONCE_TTL * 1000))
        self._write_script = redis.register_script(_J_WRITE)
        self._forget_script = redis.register_script(_J_FORGET)
        self._claim_script = redis.register_script(_J_CLAIM)
        self._prune_script = redis.register_script(_J_PRUNE)
        self._state = "new"  # "open", "closed"
        self._wake = asyncio.Event()
        self._open_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._beat_failing = False
        # run_many items this journal refused, by id (the object is kept, so the id is not
        # reused) until `forget_outcome` sees their outcome.
        self._refused: dict[int, tuple[object, str]] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def worker(self) -> str:
        """This worker's id."""
        return self._worker

    @property
    def is_open(self) -> bool:
        """Whether the journal is open (its heartbeat is being kept)."""
        return self._state == "open"

    async def open(self) -> None:
        """Write the first heartbeat and start the heartbeat task. Idempotent.

        Raises:
            JournalClosedError: The journal was closed (create a new one).
            RedisError: Redis failed; the journal stays unopened.
        """
        async with self._open_lock:  # two concurrent open() calls start one task
            if self._state == "closed":
                raise JournalClosedError("the run journal was closed; create a new RunJournal")
            if self._state == "open":
                return
            await self._beat()
            self._state = "open"
            self._task = asyncio.get_running_loop().create_task(
                self._heartbeat(), name=_JOURNAL_TASK_NAME
            )

    async def aclose(self) -> None:
        """Finish pending writes, stop the heartbeat and delete it. Idempotent.

        Entries still journalled become orphans at once, for another worker to take over:
        close the journal only once this worker stopped following its runs (or to hand
        them over). The Redis client stays open (it is the caller's).
        """
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        if self._pending:
            await asyncio.wait(set(self._pending))
        task, self._task = self._task, None
        if task is not None and not task.done():
            # Not task.cancel(): a Redis command cancelled half-way can leave its connection
            # out of step. The task sees the state after its current command.
            self._wake.set()
            await asyncio.wait({task})
        if was_open:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._alive)

    async def __aenter__(self) -> RunJournal:
        await self.open()
        return self

    def __repr__(self) -> str:
        return f"RunJournal(worker={self._worker!r}, key={self._hash!r}, state={self._state!r})"

    # ------------------------------------------------------------------ journalling

    async def sending(self, key: str) -> None:
        """Journal that `key`'s create may reach Zapier from now on ("maybe sent").

        Await it right before creating the run; if it raises, do not send the item.

        Args:
            key: The item's key: unique among the items in flight, stable across workers
                (a row id, a message id).

        Raises:
            InvalidRequestError: `key` is not a non-empty string, or is already journalled
                by this worker (store its outcome and `forget` it first: sending it again
                could run it twice). Nothing was written.
            KeyInFlightError: Another worker's journal holds `key` (its run may be in
                flight); `.worker` names it. Nothing was written.
            JournalClosedError: The journal is not open.
            RedisError: Redis failed; the entry may not exist, so do not send.
        """
        await self._sending(key)

    async def _sending(self, key: object) -> None:
        key = _check_name(key, "key")
        self._require_open("sending")
        old = await self._run_once(
            self._write_script,
            keys=[self._hash, self._workers_key, self._owners_key],
            args=[
                key,
                self._value(None, None),
                self._ttl_ms,
                "new",
                self._worker,
                self._runs_key(""),
            ],
        )
        if isinstance(old, list):
            owner = _text(old[0])
            raise KeyInFlightError(
                f"{key!r} is in flight in worker {owner!r}'s journal: a second create could "
                "run it twice (a queue that delivers an item again, while the first delivery "
                "is still being worked on, is the usual cause)",
                "key",
                key,
                owner,
            )
        if isinstance(old, (bytes, str)):
            entry = self._entry(key, old)
            state = "maybe sent" if entry.run_id is None else f"run {entry.run_id}"
            raise InvalidRequestError(
                f"{key!r} is already journalled ({state}); store its outcome and forget() it "
                "before sending it again",
                "key",
            )

    async def record(self, key: str, run: RunHandle | str) -> None:
        """Journal the run Zapier accepted for `key`: its id and continuation token.

        Await it as soon as the create returned (``handle = await client.run(...)``).

        Args:
            key: The item's key, as given to `sending`.
            run: The `RunHandle` (from `client.run`, `run_action`, a stored action's run),
                or a run id or continuation token.

        Raises:
            InvalidRequestError: `key` or `run` is invalid; nothing was written.
            JournalClosedError: The journal is not open.
            RedisError: Redis failed; the entry may still be "maybe sent".
        """
        key = _check_name(key, "key")
        run_id, token = _locate(run)
        self._require_open("record")
        await self._run_once(
            self._write_script,
            keys=[self._hash, self._workers_key, self._owners_key],
            args=[key, self._value(run_id, token), self._ttl_ms, "set", self._worker, ""],
        )

    async def forget(self, key: str) -> bool:
        """Delete `key`'s entry, once its outcome is stored. Allowed after `aclose`.

        Args:
            key: The item's key.

        Returns:
            True if an entry was deleted.

        Raises:
            InvalidRequestError: `key` is not a non-empty string.
            RedisError: Redis failed; the entry may remain (forget it again later).
        """
        key = _check_name(key, "key")
        deleted = await self._run_once(
            self._forget_script,
            keys=[self._hash, self._workers_key, self._owners_key],
            args=[key, self._ttl_ms, self._worker],
        )
        return int(deleted) > 0

    async def entries(self, worker: str | None = None) -> list[JournalEntry]:
        """The entries in a worker's journal, oldest first.

        Args:
            worker: Whose entries; by default this worker's.

        Raises:
            InvalidRequestError: `worker` is not a non-empty string.
        """
        worker = self._worker if worker is None else _check_name(worker, "worker")
        raw = await self._redis.hgetall(self._runs_key(worker))
        return _sorted(self._entry(_text(k), v) for k, v in raw.items())

    # ------------------------------------------------------------------ taking over

    async def orphans(self) -> list[str]:
        """Workers that have entries but no heartbeat: presumed dead. Sorted; never this one.

        Members of the workers set whose journal expired are removed on the way.
        """
        members = sorted(_text(m) for m in await self._redis.smembers(self._workers_key))
        others = [m for m in members if m != self._worker]
        if not others:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in others:
                pipe.exists(self._alive_key(worker))
                pipe.hlen(self._runs_key(worker))
            replies = await pipe.execute()
        found = []
        for i, worker in enumerate(others):
            alive, size = int(replies[2 * i]), int(replies[2 * i + 1])
            if size == 0:
                await self._prune_script(
                    keys=[self._workers_key, self._runs_key(worker)], args=[worker]
                )
            elif not alive:
                found.append(worker)
        return found

    async def claim(self, worker: str) -> list[JournalEntry]:
        """Move every entry of a dead `worker` into this journal, atomically.

        One Lua script checks that `worker` has no heartbeat and moves its entries: of two
        workers claiming the same orphan, one gets every entry and the other an empty list.
        Resume the entries that have a run id (``client.resume(entry.token)``); report the
        "maybe sent" ones (no run id) as outcome unknown; NEVER re-send them automatically.
        Then `forget` each key once its outcome is stored. If this journal already holds
        the same key, its own entry is kept.

        Args:
            worker: The dead worker's id (from `orphans`).

        Returns:
            The claimed entries, oldest first (empty if there were none, or another worker
            claimed them first).

        Raises:
            InvalidRequestError: `worker` is empty or this journal's own worker.
            WorkerAliveError: `worker`'s heartbeat is fresh: nothing was claimed.
            JournalClosedError: The journal is not open.
        """
        worker = _check_name(worker, "worker")
        if worker == self._worker:
            raise InvalidRequestError("is this journal's own worker", "worker")
        self._require_open("claim")
        reply = await self._run_once(
            self._claim_script,
            keys=[
                self._workers_key,
                self._runs_key(worker),
                self._alive_key(worker),
                self._hash,
                self._owners_key,
            ],
            args=[worker, self._worker, self._ttl_ms],
        )
        if int(reply[0]) == 0:
            raise WorkerAliveError(worker)
        flat = reply[1]
        claimed = _sorted(self._entry(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2))
        if claimed:
            logger.warning(
                "zapier_async: took over %d journalled run(s) of dead worker %s (%d maybe sent)",
                len(claimed),
                worker,
                sum(1 for e in claimed if e.maybe_sent),
            )
        return claimed

    async def resume_orphans(self, client: ZapierClient) -> RecoveredRuns:
        """Claim every orphan's entries and follow their runs again with `client`.

        Runs with a run id are resumed by their continuation token (never re-sent); the
        "maybe sent" entries are returned in `RecoveredRuns.unknown`. A worker whose
        heartbeat came back in the meantime is skipped.

        Args:
            client: The client that follows the resumed runs.

        Returns:
            A `RecoveredRuns`: await each handle, store each outcome (outcome unknown for
            the `unknown` entries), then `forget` each key.
        """
        entries: list[JournalEntry] = []
        handles: dict[str, RunHandle] = {}
        unknown: list[JournalEntry] = []
        workers: list[str] = []
        for dead in await self.orphans():
            try:
                claimed = await self.claim(dead)
            except WorkerAliveError:
                continue
            if claimed:
                workers.append(dead)
            for entry in claimed:
                entries.append(entry)
                if entry.token is None:
                    unknown.append(entry)
                    continue
                try:
                    handles[entry.key] = client.resume(entry.token)
                except InvalidRequestError:
                    logger.warning("zapier_async: journal entry %r has a bad token", entry.key)
                    unknown.append(entry)
        return RecoveredRuns(
            entries=tuple(entries),
            handles=handles,
            unknown=tuple(unknown),
            workers=tuple(workers),
        )

    # ------------------------------------------------------------------ bulk

    def run_many(
        self,
        client: ZapierClient,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
    ) -> RunMany:
        """``client.run_many`` with every item journalled under its ``key``.

        Each item needs a unique, non-empty string ``key`` (`RunRequest.key` or the mapping's
        ``"key"``). The input is still read lazily; each item is journalled with `sending` as
        it is read, before ``run_many`` may send it (so an item read but not yet sent when
        the worker dies counts as "maybe sent": conservative, never a duplicate), and its run
        id is recorded as soon as Zapier accepted it (``run_many``'s ``on_submitted`` hook is
        synchronous, so that write runs in the background; `aclose` waits for it). An item
        without a usable key, or whose key is already journalled, is not sent: its outcome
        carries `NotJournalledError`.

        Store each outcome, then ``await journal.forget_outcome(outcome)``, whatever the
        outcome (also for `RunMany.unfinished` ones).

        Args:
            client: The client that runs the items.
            requests: As for `ZapierClient.run_many`.
            concurrency: As for `ZapierClient.run_many`.
            progress: As for `ZapierClient.run_many`.

        Returns:
            The `RunMany` iterator of outcomes. If journalling fails (Redis, a closed
            journal), no further item is sent and iterating raises that error at the end.

        Raises:
            InvalidRequestError: `requests` is not an iterable of requests.
            JournalClosedError: The journal is not open.
        """
        if not isinstance(requests, (Iterable, AsyncIterable)) or isinstance(
            requests, (str, bytes, Mapping)
        ):
            raise InvalidRequestError(
                "must be an iterable or async iterable of RunRequest or mappings", "requests"
            )
        self._require_open("run_many")

        def on_sending(index: int, request: RunRequest) -> None:
            refused = self._refused.get(id(request))
            if refused is not None and refused[0] is request:
                raise NotJournalledError(f"not journalled, so not sent: {refused[1]}", "key")

        def on_submitted(index: int, request: RunRequest, run_id: str) -> None:
            self._spawn(self._record_if_journalled(request.key, run_id))

        return client.run_many(
            self._journalled(requests),
            concurrency=concurrency,
            progress=progress,
            on_sending=on_sending,
            on_submitted=on_submitted,
        )

    async def forget_outcome(self, outcome: Outcome) -> bool:
        """`forget` the entry of an outcome of `run_many`, once the outcome is stored.

        An item that `run_many` did not journal (`NotJournalledError`, or an invalid
        request) owns no entry: nothing is deleted, even if another item has its key.

        Args:
            outcome: An `Outcome` from `RunJournal.run_many` (or its `unfinished`).

        Returns:
            True if an entry was deleted.

        Raises:
            RedisError: Redis failed; the entry may remain.
        """
        refused = self._refused.pop(id(outcome.request), None)
        if refused is not None and refused[0] is outcome.request:
            return False
        return await self.forget(outcome.key)

    async def _journalled(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
    ) -> AsyncIterator[Any]:
        # Items are converted here, so that `run_many` hands the same object back to the
        # hooks and on the outcome: refused items are known by identity (see `_refused`).
        async for item in _each(requests):
            try:
                request = item if isinstance(item, RunRequest) else RunRequest.from_mapping(item)
            except InvalidRequestError:  # run_many refuses it too (nothing is sent)
                self._refused[id(item)] = (item, "invalid request")
                yield item
                continue
            try:
                await self._sending(request.key)
            except InvalidRequestError as exc:
                self._refused[id(request)] = (request, str(exc))
            yield request

    async def _record_if_journalled(self, key: str, run_id: str) -> None:
        run_id, token = _locate(run_id)
        await self._run_once(
            self._write_script,
            keys=[self._hash, self._workers_key, self._owners_key],
            args=[key, self._value(run_id, token), self._ttl_ms, "update", self._worker, ""],
        )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"{_JOURNAL_TASK_NAME}.record"
        )
        self._pending.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "zapier_async: journalling a run id failed; its entry stays 'maybe sent'",
                exc_info=task.exception(),
            )

    # ------------------------------------------------------------------ internals

    async def _run_once(self, script: Any, *, keys: list[str], args: list[Any]) -> Any:
        """Run a journal script under a fresh request id: redis-py re-sends a command that
        timed out, and Redis then runs the script twice; the second run answers as the first
        did (see `ONCE_TTL`)."""
        once_key = f"{self._base}:once:{uuid.uuid4().hex}"
        return await script(keys=[*keys, once_key], args=[*args, self._once_ms])

    def _runs_key(self, worker: str) -> str:
        return f"{self._base}:runs:{worker}"

    def _alive_key(self, worker: str) -> str:
        return f"{self._base}:alive:{worker}"

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise JournalClosedError(
                f"the run journal is not open ({action} refused): use 'async with journal:'"
            )

    def _value(self, run_id: str | None, token: str | None) -> str:
        fields = {"r": run_id, "t": token, "at": round(time.time(), 3), "w": self._worker}
        return json.dumps(fields, separators=(",", ":"))

    def _entry(self, key: str, raw: object) -> JournalEntry:
        try:
            data = json.loads(_text(raw))
            run_id, token = data["r"], data["t"]
            if not (isinstance(run_id, str) and isinstance(token, str)):
                run_id = token = None
            return JournalEntry(
                key=key,
                run_id=run_id,
                token=token,
                recorded_at=float(data["at"]),
                worker=str(data["w"]),
            )
        except (ValueError, TypeError, KeyError):
            # Unreadable: the create may have been sent, so it can only be "maybe sent".
            logger.warning("zapier_async: journal entry %r is unreadable", key)
            return JournalEntry(key=key, recorded_at=0.0, worker="")

    async def _beat(self) -> None:
        await self._redis.set(self._alive, "1", px=self._heartbeat_ms)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while self._state == "open":
            self._wake.clear()
            handle = loop.call_later(self._interval, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()
            if self._state != "open":
                return
            try:
                await self._beat()
            except Exception as exc:  # keep beating: a dead heartbeat orphans live runs
                if not self._beat_failing:
                    logger.warning("zapier_async: journal heartbeat failed (%s); retrying", exc)
                self._beat_failing = True
            else:
                if self._beat_failing:
                    logger.warning("zapier_async: journal heartbeat restored")
                self._beat_failing = False


def _sorted(entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    return sorted(entries, key=lambda e: (e.recorded_at, e.key))


async def _each(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item

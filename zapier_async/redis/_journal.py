"""The run journal: which runs each worker has in flight, in Redis.

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
import json
import logging
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from zapier_async import _protocol as proto
from zapier_async._bulk import Outcome, RunMany, RunRequest
from zapier_async._closing import AsyncCloseable
from zapier_async._handle import RunHandle
from zapier_async.errors import InvalidRequestError, ZapierError

from ._scripts import ONCE_TTL, once, text

if TYPE_CHECKING:
    from zapier_async._client import ZapierClient

__all__ = [
    "RETENTION",
    "JournalClosedError",
    "JournalEntry",
    "KeyInFlightError",
    "NotJournalledError",
    "RecoveredRuns",
    "RunJournal",
    "WorkerAliveError",
]

logger = logging.getLogger("zapier_async")

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
_J_WRITE: Final = once(
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
_J_FORGET: Final = once(
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
_J_CLAIM: Final = once(
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
            owner = text(old[0])
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
        return _sorted(self._entry(text(k), v) for k, v in raw.items())

    # ------------------------------------------------------------------ taking over

    async def orphans(self) -> list[str]:
        """Workers that have entries but no heartbeat: presumed dead. Sorted; never this one.

        Members of the workers set whose journal expired are removed on the way.
        """
        members = sorted(text(m) for m in await self._redis.smembers(self._workers_key))
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
        claimed = _sorted(self._entry(text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2))
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
            data = json.loads(text(raw))
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

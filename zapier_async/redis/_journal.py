"""The run journal: a thin layer over a run store, for jobs that must never send twice.

`RunJournal` journals items by key in a `zapier_async.RunStore` (a `RedisRunStore` by
default, shared by every worker pointed at the same Redis): ``sending(key)`` before the
create may go on the wire (`RunStore.begin`), ``record(key, handle)`` once Zapier accepted it
(`RunStore.record`), ``forget(key)`` once its outcome is stored. `RunJournal.run_many`
journals a whole bulk job through ``run_many``'s hooks.

Why no heartbeats and no claims any more
========================================
Earlier releases kept a per-worker hash, a heartbeat per worker and a Lua "claim" of a dead
worker's entries: a home-made job-ownership system. A queue that users already run (Celery,
SQS, a Redis list with an ack) redelivers a dead worker's items, and the idempotency key
makes redelivery safe: the worker that gets the item again calls `RunStore.begin` with the
same key and is told to send (the dead worker never started it), to resume the recorded run
by its continuation token (``client.resume(token)``: never a second create), or that the
create was on the wire when its worker died (``"unknown"``: reported, never re-sent). That
covers everything the claims did, without a liveness guess: a stalled worker whose heartbeat
lapsed no longer has its live runs taken over, and no ``heartbeat_ttl`` has to be tuned
against the longest event-loop stall. So the heartbeat and claim machinery is gone; what
users still need (a journalled `run_many`, the per-item calls) is kept on the store.

**Bulk jobs.** ``run_many``'s ``on_sending``/``on_submitted`` hooks are synchronous and
cannot await Redis, so `RunJournal.run_many` begins each item's key as ``run_many`` reads it
from the input (before it can be sent; an item read and not yet sent when the worker dies is
then "unknown", which is conservative), refuses in ``on_sending`` any item it could not
begin (its outcome carries the reason: `KeyInFlightError` with the store's `Claim` when the
key already has a run or a create in flight), and records the run id from ``on_submitted`` in
the background (`aclose` waits for those writes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import redis.asyncio as aioredis

from zapier_async import _protocol as proto
from zapier_async._bulk import Outcome, RunMany, RunRequest
from zapier_async._closing import AsyncCloseable
from zapier_async._handle import RunHandle
from zapier_async._runstore import (
    DEFAULT_RUN_STORE_TTL,
    RETENTION,
    Claim,
    RunStore,
    check_key,
    check_ttl,
)
from zapier_async.errors import InvalidRequestError, ZapierError

from ._store import RedisRunStore

if TYPE_CHECKING:
    from zapier_async._client import ZapierClient

__all__ = [
    "RETENTION",
    "JournalClosedError",
    "KeyInFlightError",
    "NotJournalledError",
    "RunJournal",
]

logger = logging.getLogger("zapier_async")

_JOURNAL_TASK_NAME: Final = "zapier_async.run_journal"


@attrs.define(auto_exc=True, eq=False)
class JournalClosedError(ZapierError, RuntimeError):
    """The run journal was closed: nothing was written.

    Attributes:
        message: What was refused.
    """

    message: str = "the run journal is closed"

    def __str__(self) -> str:
        return self.message


@attrs.define(auto_exc=True, eq=False)
class KeyInFlightError(InvalidRequestError):
    """`RunJournal.sending` refused: the key already has a run, or a create in flight.

    Sending it too could run the item twice. ``claim.state`` says which: ``"resume"`` (a run
    was recorded: follow it with ``client.resume(claim.continuation_token)``) or
    ``"unknown"`` (a create was started, by ``worker``, and its run never recorded: it may
    be on the wire, or lost with a worker that died; report it as outcome unknown).

    Attributes:
        key: The item's key.
        worker: The owner of the record (who began it).
        claim: What the run store holds for the key.
    """

    key: str = ""
    worker: str = ""
    claim: Claim | None = None


@attrs.define(auto_exc=True, eq=False)
class NotJournalledError(InvalidRequestError):
    """`RunJournal.run_many` did not send an item because it could not journal it.

    Its key is missing or not a non-empty string, or the store failed: nothing was sent, and
    `RunJournal.forget_outcome` leaves the key's record alone.
    """


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


def _in_flight(claim: Claim) -> KeyInFlightError:
    if claim.state == "resume":
        what = f"has run {claim.run_id} (resume it with its continuation token)"
    else:
        what = (
            f"was being sent by {claim.owner!r} and its run never recorded: it may have "
            "reached Zapier (outcome unknown)"
        )
    return KeyInFlightError(
        f"{claim.key!r} {what}; a second create could run it twice",
        "key",
        claim.key,
        claim.owner or "",
        claim,
    )


class RunJournal(AsyncCloseable):
    """Journals items by key in a run store, so that no item is ever sent twice.

    See the module docstring for how it works. Typical use, one item at a time (a queue
    redelivers an item whose worker died; the same key makes that safe)::

        journal = RunJournal(redis, name="emails")
        try:
            await journal.sending(key)                # before the create may be sent
        except KeyInFlightError as exc:               # redelivered
            if exc.claim.state == "resume":
                handle = client.resume(exc.claim.continuation_token)
            else:
                ...                                   # outcome unknown: never re-send
        else:
            handle = await client.run(action, authentication=auth, inputs=inputs)
            await journal.record(key, handle)         # Zapier accepted it
        store(key, await handle)                      # your outcome store

    or `RunJournal.run_many` for a bulk job. (``ZapierClient(run_store=...)`` with
    ``run(..., idempotency_key=key)`` does the per-item calls for you.) The Redis client is
    the caller's: the journal never closes it.

    Args:
        redis: A ``redis.asyncio.Redis`` client, or any `zapier_async.RunStore` (e.g. a
            `zapier_async.MemoryRunStore`; then ``name``, ``prefix`` and ``ttl`` are unused).
        name: The journal's name: workers that may receive each other's items use the same.
        prefix: Key prefix in Redis (records live under ``{prefix}:{name}``).
        ttl: Seconds a record is kept after its last write; must be under Zapier's 7-day
            retention of runs (`RETENTION`). Default 6 days.

    Raises:
        InvalidRequestError: A bad argument (checked before any Redis call).
    """

    def __init__(
        self,
        redis: aioredis.Redis | RunStore,
        *,
        name: str = "default",
        prefix: str = "zapier_async:journal",
        ttl: float = DEFAULT_RUN_STORE_TTL,
    ) -> None:
        name = check_key(name, "name")
        prefix = check_key(prefix, "prefix")
        ttl = check_ttl(ttl)
        if isinstance(redis, aioredis.Redis):
            self._store: RunStore = RedisRunStore(redis, prefix=f"{prefix}:{name}", ttl=ttl)
        elif isinstance(redis, RunStore):
            self._store = redis
        else:
            raise InvalidRequestError(
                f"must be a redis.asyncio.Redis or a RunStore, not {type(redis).__name__}",
                "redis",
            )
        self._closed = False
        self._pending: set[asyncio.Task[None]] = set()
        # run_many items this journal refused, by id (the object is kept, so the id is not
        # reused) until `forget_outcome` sees their outcome.
        self._refused: dict[int, tuple[object, str | KeyInFlightError]] = {}

    @property
    def store(self) -> RunStore:
        """The run store the journal writes to."""
        return self._store

    @property
    def is_open(self) -> bool:
        """Whether the journal accepts writes (until `aclose`)."""
        return not self._closed

    async def open(self) -> None:
        """Nothing to start (no heartbeat any more); kept for ``async with journal:``.

        Raises:
            JournalClosedError: The journal was closed.
        """
        self._require_open("open")

    async def aclose(self) -> None:
        """Finish the background writes of `run_many`'s run ids. Idempotent.

        The records stay in the store (until `forget` or their TTL).
        """
        self._closed = True
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def __aenter__(self) -> RunJournal:
        await self.open()
        return self

    def __repr__(self) -> str:
        return f"RunJournal(store={self._store!r}, closed={self._closed})"

    # ------------------------------------------------------------------ one item

    async def sending(self, key: str) -> None:
        """Journal that `key`'s create may reach Zapier from now on (`RunStore.begin`).

        Await it right before creating the run; if it raises, do not send the item.

        Raises:
            InvalidRequestError: `key` is not a non-empty string (nothing was written).
            KeyInFlightError: The key already has a run (``claim.state == "resume"``) or a
                create in flight or lost (``"unknown"``): do not send it.
            JournalClosedError: The journal was closed.
            RedisError: Redis failed; the key may be journalled, so do not send.
        """
        key = check_key(key)
        self._require_open("sending")
        claim = await self._store.begin(key)
        if not claim.may_send:
            raise _in_flight(claim)

    async def record(self, key: str, run: RunHandle | str) -> bool:
        """Journal the run Zapier accepted for `key`: its id and continuation token.

        Args:
            key: The item's key, as given to `sending`.
            run: The `RunHandle`, or a run id or continuation token.

        Returns:
            True if recorded; False if the key already holds another run (kept).

        Raises:
            InvalidRequestError: `key` or `run` is invalid; nothing was written.
            RedisError: Redis failed; the key may still be "sending" (outcome unknown).
        """
        key = check_key(key)
        run_id, token = _locate(run)
        return await self._store.record(key, run_id, token)

    async def fail(self, key: str) -> bool:
        """Free `key` after a create that provably never reached Zapier (`RunStore.fail`)."""
        return await self._store.fail(check_key(key))

    async def forget(self, key: str) -> bool:
        """Delete `key`'s record (`RunStore.forget`). Allowed after `aclose`.

        Keep the record (let its TTL end it) while the queue may still deliver the item
        again: a delivery after `forget` is sent again.
        """
        return await self._store.forget(check_key(key))

    async def get(self, key: str) -> Claim | None:
        """What the store holds for `key` (`RunStore.get`); None if nothing."""
        return await self._store.get(check_key(key))

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

        Each item needs a non-empty string ``key`` (`RunRequest.key` or the mapping's
        ``"key"``). The input is still read lazily; each key is begun as it is read, before
        ``run_many`` may send it, and its run is recorded as soon as Zapier accepted it. An
        item that is not sent gets an outcome with the reason: `KeyInFlightError` (its key
        already has a run, ``error.claim.state == "resume"``: follow it with
        ``client.resume(error.claim.continuation_token)``; or a create in flight or lost,
        ``"unknown"``) or `NotJournalledError` (no usable key, or the store failed).

        Store each outcome, then ``await journal.forget_outcome(outcome)`` (or keep the
        records until their TTL if the job may run again).

        Raises:
            InvalidRequestError: `requests` is not an iterable of requests.
            JournalClosedError: The journal was closed.
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
                reason = refused[1]
                if isinstance(reason, KeyInFlightError):
                    raise reason
                raise NotJournalledError(f"not journalled, so not sent: {reason}", "key")

        def on_submitted(index: int, request: RunRequest, run_id: str) -> None:
            self._spawn(self._record_quietly(request.key, run_id))

        return client.run_many(
            self._journalled(requests),
            concurrency=concurrency,
            progress=progress,
            on_sending=on_sending,
            on_submitted=on_submitted,
        )

    async def forget_outcome(self, outcome: Outcome) -> bool:
        """`forget` the record of an outcome of `run_many`, once the outcome is stored.

        An item that `run_many` refused owns no record: nothing is deleted.

        Returns:
            True if a record was deleted.
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
                await self.sending(request.key)
            except KeyInFlightError as exc:
                self._refused[id(request)] = (request, exc)
            except InvalidRequestError as exc:
                self._refused[id(request)] = (request, str(exc))
            yield request

    async def _record_quietly(self, key: str, run_id: str) -> None:
        if not await self.record(key, run_id):
            logger.error("key %r already holds another run than %s", key, run_id)

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
                "journalling a run id failed; its key stays 'sending' "
                "(outcome unknown if delivered again)",
                exc_info=task.exception(),
            )

    def _require_open(self, action: str) -> None:
        if self._closed:
            raise JournalClosedError(f"the run journal is closed ({action} refused)")


async def _each(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item

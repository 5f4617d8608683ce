"""Creates under an idempotency key: at most one run per key, whoever calls (issue #18).

The `RunStore` decides, and only at the last moment: a key already recorded is resumed by
its continuation token and a key left ``sending`` raises `OutcomeUnknownError` (the create
may have reached Zapier: it is never re-sent), both read (`RunStore.get`) before any wait.
A fresh key is claimed (`RunStore.begin`, ``sending``) only once the limiter granted the
create its slot, right before it goes on the wire (`CreateHooks.claim`): a create waiting for
the budget, cancelled, refused with `RateLimitedError` or killed meanwhile leaves the key
absent, so the next execution (a redelivery) sends. A claim that finds the key taken by
another process (recorded: resume it; held: outcome unknown) gives the slot back unspent.
Between attempts of a create that provably made no run (a 429) the key is freed again.

The run id is recorded by a task the engine owns, so a caller cancelled after the answer
still leaves it recorded; a create that provably made no run frees the key (`RunStore.fail`).
Concurrent calls with one key in this process share the first one's outcome; across
processes the store's atomic `begin` decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _protocol as proto
from . import errors
from ._limiter import Priority
from ._pipeline import CreateHooks, Credential

if TYPE_CHECKING:
    from ._handle import RunHandle
    from ._runstore import Claim, RunStore


class _Sender(Protocol):
    """What a keyed create needs of the engine (`_engine.Engine` is one)."""

    @property
    def run_store(self) -> RunStore | None: ...

    @property
    def metrics(self) -> Any: ...

    def resume(self, token: str, *, auth: Credential | None = None) -> RunHandle: ...

    async def send(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        auth: Credential | None = None,
        orphan: CreateHooks | None = None,
    ) -> proto.Response: ...


__all__ = ["KeyedCreates", "not_sent"]

logger = logging.getLogger("zapier_async")

# A create that failed with one of these provably made no run (see `not_sent`).
_NOT_SENT_STATUSES: Final = frozenset({400, 401, 403, 404, 409, 422, 429, 503})


class KeyedCreates:
    """An engine's creates under idempotency keys, and the store writes they leave behind."""

    def __init__(self, engine: _Sender) -> None:
        self._engine = engine
        # Run-store writes that must happen whoever waits for them (see `_record`); the
        # engine's `aclose()` waits for them.
        self.background: set[asyncio.Task[object]] = set()
        # Creates in progress per idempotency key, in this process.
        self._running: dict[str, asyncio.Future[RunHandle]] = {}

    async def create_once(
        self,
        key: str,
        request: proto.Request,
        created: Callable[..., RunHandle],
        priority: Priority,
        max_wait: float | None,
        auth: Credential | None,
        before_send: Callable[[], object] | None = None,
    ) -> RunHandle:
        """A create under an idempotency key: at most one per key, whoever calls.

        Concurrent calls with one key in this process share the first one's outcome; across
        processes the store's atomic `begin`, made once the slot is granted, decides. The
        run is recorded by a task the engine owns, so a caller cancelled after the answer
        still leaves it recorded; a create that provably made no run frees the key.
        """
        store = self._engine.run_store
        if store is None:
            raise errors.InvalidRequestError(
                "needs a run store: ZapierClient(run_store=MemoryRunStore()) or RedisRunStore",
                "idempotency_key",
            )
        while True:
            running = self._running.get(key)
            if running is None:
                break
            try:
                return await asyncio.shield(running)
            except errors.OutcomeUnknownError:
                raise
            except Exception:
                continue  # it made no run: the key is free again, claim it ourselves
        done: asyncio.Future[RunHandle] = asyncio.get_running_loop().create_future()
        self._running[key] = done
        try:
            handle = await self._claim_and_create(
                store, key, request, created, priority, max_wait, auth, before_send
            )
        except BaseException as exc:
            if not isinstance(exc, Exception):
                exc = errors.InvalidRequestError("the caller that held the key was cancelled")
            done.set_exception(exc)
            raise
        else:
            done.set_result(handle)
            return handle
        finally:
            done.exception() if done.done() and not done.cancelled() else None
            if self._running.get(key) is done:
                del self._running[key]

    async def _claim_and_create(
        self,
        store: RunStore,
        key: str,
        request: proto.Request,
        created: Callable[..., RunHandle],
        priority: Priority,
        max_wait: float | None,
        auth: Credential | None,
        before_send: Callable[[], object] | None,
    ) -> RunHandle:
        found = await store.get(key)  # read only: a recorded or held key needs no slot
        if found is not None:
            return self._answer(found, request, auth)
        hold = _Hold(self, store, key)

        def accepted(response: proto.Response) -> RunHandle:
            handle = created(response, orphaned=True)
            self._record(store, key, handle)
            return handle

        # The key is claimed by `hold.take`, in the exchange's task once the limiter granted
        # the slot; a claim that finds the key taken gives the slot back unspent.
        hooks = CreateHooks(accepted, hold.free, before_send, claim=hold.take)
        try:
            response = await self._engine.send(
                request, priority=priority, max_wait=max_wait, auth=auth, orphan=hooks
            )
            handle = created(response)
        except _Taken as taken:
            return self._answer(taken.claim, request, auth)
        except errors.ZapierError as exc:
            self._engine.metrics.error(exc)
            freed = hold.free() if not_sent(exc) else None
            if freed is not None:
                await asyncio.shield(freed)
            raise
        await asyncio.shield(self._record(store, key, handle))
        return handle

    def _answer(self, claim: Claim, request: proto.Request, auth: Credential | None) -> RunHandle:
        """The run another create recorded under the key, or `OutcomeUnknownError`."""
        if claim.state == "resume":
            assert claim.continuation_token is not None
            return self._engine.resume(claim.continuation_token, auth=auth)
        raise errors.OutcomeUnknownError(
            f"idempotency key {claim.key!r} is held by a create of"
            f" {claim.owner or 'unknown owner'} that never recorded its run (it may still be"
            " sending, or its process died)",
            request.describe(),
            "not sent again under this key",
        )

    def _record(self, store: RunStore, key: str, handle: RunHandle) -> asyncio.Task[object]:
        return self.spawn(store.record(key, handle.id, handle.continuation_token()))

    def spawn(self, write: object) -> asyncio.Task[object]:
        """Run a store write in a task the engine owns (finished even if its caller leaves)."""
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(write)  # type: ignore[arg-type]
        self.background.add(task)
        task.add_done_callback(self._written)
        return task

    def _written(self, task: asyncio.Task[object]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "the run store could not be written: %r; the key stays 'sending'",
                task.exception(),
            )


class _Taken(Exception):  # not a ZapierError: the pipeline passes it through untouched
    """`_Hold.take` found the key recorded or held: the create is not sent."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.state)
        self.claim = claim


class _Hold:
    """One keyed create's hold on its key: claimed at the slot, freed if no run was made."""

    __slots__ = ("_freeing", "_owner", "held", "key", "store")

    def __init__(self, owner: KeyedCreates, store: RunStore, key: str) -> None:
        self._owner = owner
        self.store = store
        self.key = key
        self.held = False
        self._freeing: asyncio.Task[object] | None = None

    async def take(self) -> None:
        """Claim the key (`RunStore.begin`) right before the send; raise `_Taken` if taken."""
        if self.held:
            return
        if self._freeing is not None:
            await asyncio.wait({self._freeing})  # an earlier attempt's release goes first
        claim = await self.store.begin(self.key)
        if claim.state != "send":
            raise _Taken(claim)
        self.held = True

    def free(self) -> asyncio.Task[object] | None:
        """No run was made: give the key back (`RunStore.fail`), if this create holds it."""
        if not self.held:
            return None
        self.held = False
        self._freeing = self._owner.spawn(self.store.fail(self.key))
        return self._freeing


def not_sent(exc: errors.ZapierError) -> bool:
    """Whether a create that failed with `exc` provably made no run (its key may be freed)."""
    if isinstance(exc, errors.OutcomeUnknownError):
        return False
    if isinstance(exc, errors.TransportError):
        return exc.sent is False or exc.kind == "connect"
    if isinstance(exc, errors.APIError):
        return exc.status in _NOT_SENT_STATUSES
    # Refused before the wire: RateLimitedError, InvalidRequestError, an auth failure.
    return isinstance(
        exc, (errors.RateLimitedError, errors.InvalidRequestError, errors.UnexpectedError)
    )

"""Bulk fan-out: `ZapierClient.run_many` and its values, `RunRequest` and `Outcome`.

Theory of operation
-------------------
A job is `concurrency` worker tasks and one queue of finished outcomes, nothing per run.
Each worker loops: take a *room* token (at most ``2 * concurrency`` items are taken from the
input and not yet handed to the consumer), pull the next item from the shared input
iterator, submit it at `Priority.BULK` (waiting for the rate budget, never raising
`RateLimitedError`), await its handle, and put the `Outcome` on the queue. The consumer's
``__anext__`` takes outcomes off the queue and gives a room token back, so a slow consumer
slows the job down instead of growing memory, and a million-item generator is never
materialised: memory is bounded by ``concurrency``.

Every failure of one item (bad input, an API error, a failed run, a hook that raised)
becomes that item's `Outcome`; nothing cancels the other items. Cancellation goes the other
way: `RunMany.aclose()`, leaving ``async with``, cancelling the consumer inside
``__anext__``, or dropping the iterator (breaking out of ``async for``) cancels the workers,
so no task outlives the job. Whatever had been taken from the input but not yet reported is
then available from `RunMany.unfinished()`: accepted runs by id (still followed by the
client, `client.resume(run_id)` returns their handle), and creates that were on the wire as
outcome-unknown, so nothing Zapier accepted is lost and nothing is sent twice.

A create on the wire when the job stops is not cut off: it finishes in the client's own task
and, if Zapier accepted it, the client follows the run and lists it in
`ZapierClient.orphaned_runs`. The engine hands that run to the job (``on_orphan``): the
item's entry in `unfinished()` turns from outcome-unknown into that run id, and
``on_submitted`` and the journal's ``submitted`` are called for it as for any accepted run,
late as it is. A caller
who persists `unfinished()` should wait for `ZapierClient.orphaned_runs` (or close the
client, which waits for creates on the wire) if it wants ids rather than outcome-unknown.

Its creates (`Priority.BULK`) and its runs' reads (`Priority.POLL`) are background work:
they leave the rate budget's interactive reserve to the client's awaited calls. Both wait in
the job's `Lane`. Once the input is exhausted the job takes nothing new, and what its caller
waits for is its last creates and runs: the lane is raised, so the creates and reads waiting
for a slot, and any sent after (a retry, a next read), go at interactive priority. The
reserve does not hold a job's last requests until their window ends (five minutes on
Zapier's per-user budget; a whole window on a job whose requests fill its last window
exactly).

For journaling, ``on_sending`` runs right before a create goes on the wire, after the limiter
granted its slot, and ``on_submitted`` as soon as Zapier returned the run id. A `Journal`
(``journal=``, e.g. `zapier_async.journal.FileJournal`) uses the same two moments plus the
hand-over of each outcome, and makes the job resumable: see `zapier_async.journal`.

A request with a ``callback_url`` gets its own callback token (`bind_callback_url`), as with
`ZapierClient.run`: the callback that carries it resolves the run.

Refusals that would say the same for every item
-----------------------------------------------
Some refusals are about the caller, not the item: a wrong or revoked token (401,
`AuthenticationError`, including `TokenRequestError` when the token endpoint refuses the
credentials), a token without the scope or access to create runs (403,
`PermissionDeniedError`), a rate limiter that was closed (`LimiterClosedError`). Sending the
next thousand items would get the same answer a thousand times (and spend the rate budget on
it), so after the first such refusal of a create the job *stops sending creates*: every item
not yet on the wire gets an `Outcome` whose error is a copy of that refusal (nothing was
sent for it; `run_id` is None), creates already on the wire get their own answers, and runs
Zapier already accepted are still followed to their end. It is logged once at ERROR, and
`RunMany.refusal` holds it. The check is made twice per item: before it is submitted, and
again right before its create goes on the wire (after the limiter wait), so items that were
waiting for a slot when the refusal came are not sent either.

Everything else is per item and does not stop the job: 400 (this item's input), 404 (this
item's action), 409, 429 and 5xx (transient), an outcome unknown, a failed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sized,
)
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

import attrs

from . import _protocol as proto
from . import errors
from ._closing import AsyncCloseable
from ._guards import bind_callback_url
from ._limiter import Priority
from ._limits import Lane
from .journal import Journal, JournalKey, JournalState
from .models import Run

if TYPE_CHECKING:
    from ._engine import Engine
    from ._handle import RunHandle
    from ._pipeline import Credential

__all__ = ["Outcome", "RunMany", "RunRequest"]

logger = logging.getLogger("zapier_async")

WORKER_TASK_NAME: Final = "zapier_async-bulk"
_REQUEST_KEYS: Final = frozenset({"action", "authentication", "inputs", "callback_url", "key"})
_DONE: Final = object()

# Refusals that would be the same for every item of a job (see "Refusals that would say the
# same for every item" above).
_JOB_WIDE_REFUSALS: Final = (
    errors.AuthenticationError,
    errors.PermissionDeniedError,
    errors.LimiterClosedError,
)


async def _resolved(outcome: Outcome) -> Outcome:
    return outcome


class _Refused(Exception):
    """Raised by the before-send hook: the job stopped sending; this create never left."""


def _check_action(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise errors.InvalidRequestError("must be a non-empty string", "action")


def _check_optional_str(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise errors.InvalidRequestError(
            f"must be a string or None, not {type(value).__name__}", attribute.name
        )


def _check_inputs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise errors.InvalidRequestError(
            f"must be a mapping of input ids to values, not {type(value).__name__}", "inputs"
        )


@attrs.frozen(kw_only=True)
class RunRequest:
    """One action run to start, as a value (the unit of `ZapierClient.run_many`).

    Attributes:
        action: The action id from Get Actions (e.g. ``"core:abc123"``).
        authentication: The authentication (connection) id, or None for apps that need none.
        inputs: Input field id to value; must be JSON-serialisable.
        callback_url: An https URL Zapier POSTs the outcome to, or None.
        key: Any tag of yours (a row id, a line number), handed back on the `Outcome`; it
            is never sent to Zapier.

    Raises:
        InvalidRequestError: A field has the wrong type (checked at construction).
    """

    action: str = attrs.field(validator=_check_action)
    authentication: str | None = attrs.field(validator=_check_optional_str)
    inputs: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_inputs)
    callback_url: str | None = attrs.field(default=None, validator=_check_optional_str)
    key: Any = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RunRequest:
        """Build a request from a mapping with the same keys (e.g. a decoded JSON line).

        ``action`` and ``authentication`` are required (``authentication`` may be null);
        ``inputs``, ``callback_url`` and ``key`` are optional; any other key is refused.

        Raises:
            InvalidRequestError: A key is missing, unknown, or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise errors.InvalidRequestError(
                f"expected a RunRequest or a mapping, got {type(data).__name__}", "request"
            )
        unknown = sorted(str(k) for k in data if k not in _REQUEST_KEYS)
        if unknown:
            raise errors.InvalidRequestError(
                f"unknown keys {unknown}; allowed: {sorted(_REQUEST_KEYS)}", "request"
            )
        for required in ("action", "authentication"):
            if required not in data:
                raise errors.InvalidRequestError(
                    "is required (use null for apps without authentication)"
                    if required == "authentication"
                    else "is required",
                    required,
                )
        inputs = data.get("inputs")
        return cls(
            action=data["action"],
            authentication=data["authentication"],
            inputs={} if inputs is None else inputs,
            callback_url=data.get("callback_url"),
            key=data.get("key"),
        )


@attrs.frozen(kw_only=True, eq=False)
class Outcome:
    """What became of one input item of `ZapierClient.run_many`.

    Exactly one of these holds: `error` is None and `run` is the successful `Run`; or
    `error` says what went wrong (`RunFailedError` when the run ended with status error,
    in which case `run` is that final `Run` too).

    Attributes:
        index: The item's position in the input, from 0.
        request: The `RunRequest` (a mapping item is converted), or the item as given when
            it could not be turned into one.
        run: The final `Run`, when the run ended.
        error: Why the item did not succeed, or None.
        run_id: The run id whenever Zapier accepted the run (also on failures after that,
            e.g. a run that could not be read any more), else None.
    """

    index: int
    request: Any
    run: Run | None = None
    error: BaseException | None = None
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        """True when the run ended with status ``success``."""
        return self.error is None

    @property
    def key(self) -> Any:
        """The request's caller `key`, if it has one."""
        request = self.request
        if isinstance(request, RunRequest):
            return request.key
        if isinstance(request, Mapping):
            return request.get("key")
        return None


class _Live:
    """An item taken from the input whose outcome was not handed to the consumer yet."""

    __slots__ = ("item", "key", "request", "run_id", "sent")

    def __init__(self, item: object) -> None:
        self.item = item
        self.request: RunRequest | None = None
        self.run_id: str | None = None
        self.sent = False  # the create may have reached Zapier
        self.key: JournalKey | None = None  # journaled under this key (journal= only)


class _Job:
    """The state shared by the workers and the consumer (the workers never hold `RunMany`,
    so dropping the iterator lets it be collected and cancel them)."""

    def __init__(
        self,
        engine: Engine,
        credential: Credential | None,
        requests: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int,
        on_sending: Callable[[int, RunRequest], object] | None,
        on_submitted: Callable[[int, RunRequest, str], object] | None,
        journal: Journal | None,
    ) -> None:
        self.engine = engine
        self.credential = credential  # None: the client's own
        self.concurrency = concurrency
        self.on_sending = on_sending
        self.on_submitted = on_submitted
        self.journal = journal
        self.journal_state = JournalState()
        self.journal_live: set[JournalKey] = set()  # keys of items in flight in this job
        self.sync_source: Iterator[Any] | None = None
        self.async_source: AsyncIterator[Any] | None = None
        self.size: int | None = None
        if isinstance(requests, AsyncIterable):
            self.async_source = aiter(requests)
        elif isinstance(requests, Iterable) and not isinstance(requests, (str, bytes, Mapping)):
            self.sync_source = iter(requests)
            # A sized input (a list) is known to be done when its last item is taken, before
            # a worker asks for one more (which waits for a run to end).
            self.size = len(requests) if isinstance(requests, Sized) else None
        else:
            raise errors.InvalidRequestError(
                "must be an iterable or async iterable of RunRequest or mappings", "requests"
            )
        self.source_lock = asyncio.Lock()
        self.exhausted = False
        self.input_error: BaseException | None = None
        self.next_index = 0
        self.live: dict[int, _Live] = {}
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.room = asyncio.Semaphore(2 * concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.workers_left = 0
        self.started = False
        self.closed = False
        self.finished = False
        self.refusal: BaseException | None = None  # stops new creates (job-wide refusal)
        self.lane = Lane()  # the job's creates: raised to INTERACTIVE once it is drained

    def start(self) -> None:
        self.started = True
        if self.journal is not None:
            self.journal_state = self.journal.load()  # raises before anything is sent
        loop = asyncio.get_running_loop()
        self.workers_left = self.concurrency
        for _ in range(self.concurrency):
            task = loop.create_task(self._worker(), name=WORKER_TASK_NAME)
            self.tasks.add(task)
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a run_many worker crashed", exc_info=task.exception())

    async def _take(self) -> tuple[int, Any] | None:
        if self.exhausted:
            return None
        try:
            if self.sync_source is not None:
                item = next(self.sync_source)
            else:
                assert self.async_source is not None
                async with self.source_lock:  # an async generator cannot be entered twice
                    if self.exhausted:
                        return None
                    item = await anext(self.async_source)
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            self._drain()
            return None
        except Exception as exc:  # the caller's iterator failed: stop taking, report it
            self.input_error = exc
            self.exhausted = True
            self._drain()
            return None
        index = self.next_index
        self.next_index += 1
        if self.size is not None and self.next_index >= self.size:
            self._drain()  # the last item of a list: nothing new is likely to come
        return index, item

    async def _worker(self) -> None:
        try:
            while not self.closed:
                await self.room.acquire()
                taken = await self._take()
                if taken is None:
                    self.room.release()
                    break
                index, item = taken
                live = _Live(item)
                self.live[index] = live
                outcome = await self._one(index, item, live)
                if outcome is None:  # journaled as done by an earlier invocation: skipped
                    del self.live[index]
                    self.room.release()
                    continue
                self.queue.put_nowait(outcome)
        finally:
            self.workers_left -= 1
            if self.workers_left == 0:
                self.queue.put_nowait(_DONE)

    async def _one(self, index: int, item: object, live: _Live) -> Outcome | None:
        try:
            request = (
                item
                if isinstance(item, RunRequest)
                else RunRequest.from_mapping(cast("Mapping[str, Any]", item))
            )
            live.request = request
            if self.journal is not None:
                resumed = self._journaled(index, request, live)
                if resumed == "skip":
                    return None
                if resumed != "send":
                    return await resumed
            bound_url, callback_token = bind_callback_url(request.callback_url)
            wire = proto.create_action_run(
                action=request.action,
                authentication=request.authentication,
                inputs=request.inputs,
                callback_url=bound_url,
                allow_loopback_callback=self.engine.allow_loopback_callback,
            )
        except errors.InvalidRequestError as exc:
            return Outcome(index=index, request=live.request or item, error=exc)
        if self.refusal is not None:
            return Outcome(index=index, request=request, error=copy.copy(self.refusal))

        def sending() -> None:
            if self.refusal is not None:
                raise _Refused  # nothing was sent; the limiter's slot is released unused
            if live.sent:
                return  # a re-send (after a connect error or a 429): journaled already
            if self.on_sending is not None:
                self.on_sending(index, request)
            if live.key is not None:
                assert self.journal is not None
                self.journal.sending(live.key)
            live.sent = True

        try:
            handle = await self.engine.create(
                wire,
                priority=Priority.BULK,
                max_wait=None,
                auth=self.credential,
                callback_token=callback_token,
                before_send=sending,
                on_orphan=partial(self._orphan_accepted, index, request, live),
                lane=self.lane,
            )
        except _Refused:
            live.sent = False
            assert self.refusal is not None
            return Outcome(index=index, request=request, error=copy.copy(self.refusal))
        except Exception as exc:
            if isinstance(exc, _JOB_WIDE_REFUSALS):
                self._stop_sending(exc)
            return Outcome(index=index, request=request, error=exc)
        self._submitted(index, request, live, handle)
        return await self._follow(index, request, handle)

    def _drain(self) -> None:
        """Nothing is left to take: the job's creates and runs are what its caller waits
        for now (its lane is raised: creates and reads, those waiting included)."""
        self.lane.raise_to(Priority.INTERACTIVE)  # never lowers; once is enough

    def _submitted(self, index: int, request: RunRequest, live: _Live, handle: RunHandle) -> None:
        """Zapier accepted the item's run: remember its id, tell the hook and the journal."""
        live.run_id = run_id = handle.id
        if self.on_submitted is not None:
            try:
                self.on_submitted(index, request, run_id)
            except Exception:
                logger.exception("on_submitted hook failed for run %s", run_id)
        if live.key is not None:
            assert self.journal is not None
            try:
                self.journal.submitted(live.key, run_id, handle.continuation_token())
            except Exception:
                logger.exception("the journal could not record run %s", run_id)

    def _orphan_accepted(
        self, index: int, request: RunRequest, live: _Live, handle: RunHandle
    ) -> None:
        """Zapier accepted the create of an item whose worker was cancelled while it was on
        the wire (see "A create on the wire" above): the item is reported by its run id."""
        if live.run_id is None:
            self._submitted(index, request, live, handle)

    async def _follow(self, index: int, request: RunRequest, handle: RunHandle) -> Outcome:
        run_id = handle.id
        try:
            run = await handle
        except errors.RunFailedError as exc:
            return Outcome(index=index, request=request, run=exc.run, error=exc, run_id=run_id)
        except Exception as exc:
            return Outcome(index=index, request=request, error=exc, run_id=run_id)
        return Outcome(index=index, request=request, run=run, run_id=run_id)

    def _journaled(
        self, index: int, request: RunRequest, live: _Live
    ) -> Literal["skip", "send"] | Awaitable[Outcome]:
        """What the journal says of an item: skip it, its outcome (to await), or send it."""
        key = request.key
        if not (isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))):
            raise errors.InvalidRequestError(
                "a journaled job needs a str or int key per item, naming it across runs",
                "key",
            )
        if key in self.journal_live:
            raise errors.InvalidRequestError(
                f"{key!r} is the key of another item in flight: keys must be unique", "key"
            )
        state = self.journal_state
        if key in state.done:
            return "skip"
        self.journal_live.add(key)
        live.key = key
        if key in state.maybe_sent:
            live.sent = True
            return _resolved(
                Outcome(
                    index=index,
                    request=request,
                    error=errors.OutcomeUnknownError(
                        "an earlier invocation stopped while this create was on the wire",
                        "POST /v2/action-runs",
                        "not re-sent on resume: the run may exist",
                    ),
                )
            )
        follow = state.in_flight.get(key)
        if follow is not None:
            live.sent = True
            # InvalidRequestError: the item's outcome
            handle = self.engine.resume(follow, auth=self.credential)
            live.run_id = handle.id
            return self._follow(index, request, handle)
        return "send"

    def journal_outcome(self, outcome: Outcome, live: _Live | None) -> None:
        """The outcome is handed over: journal it (not an item never sent: sent again later)."""
        if live is None or live.key is None:
            return
        assert self.journal is not None
        self.journal_live.discard(live.key)
        if not live.sent and outcome.run_id is None:
            return
        try:
            self.journal.finished(
                live.key,
                ok=outcome.ok,
                run_id=outcome.run_id,
                error=None if outcome.error is None else type(outcome.error).__name__,
            )
        except Exception:
            logger.exception("the journal could not record the outcome of %r", live.key)

    def _stop_sending(self, exc: BaseException) -> None:
        """A job-wide refusal: no further create is sent (logged once)."""
        if self.refusal is not None:
            return
        self.refusal = exc
        logger.error(
            "run_many stopped sending: a create was refused with %s (%s), which "
            "would be the same for every item; the items not yet sent fail with it, runs "
            "already accepted are still followed",
            type(exc).__name__,
            exc,
            extra={"zapier_async_event": "run_many_stopped"},
        )

    def cancel(self) -> None:
        """Stop the job now, without waiting (safe from `__del__`)."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.cancel()
        tasks = list(self.tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        source = self.async_source
        if source is not None and inspect.isasyncgen(source):
            try:
                await source.aclose()
            except Exception:
                logger.exception("closing the run_many input failed")

    def unfinished(self) -> list[Outcome]:
        queued: list[Outcome] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, Outcome):
                queued.append(item)
        for outcome in queued:  # keep them for a second call
            self.queue.put_nowait(outcome)
        reported = {o.index for o in queued}
        out = list(queued)
        for index, live in sorted(self.live.items()):
            if index in reported:
                continue
            request = live.request if live.request is not None else live.item
            error: BaseException
            if live.run_id is not None:
                error = errors.RunDetachedError(live.run_id, "run_many stopped before it ended")
            elif live.sent:
                error = errors.OutcomeUnknownError(
                    "run_many stopped while the create was on the wire",
                    "POST /v2/action-runs",
                    "cancelled",
                )
            else:
                error = errors.InvalidRequestError(
                    "not submitted: run_many stopped first (nothing was sent)", "requests"
                )
            out.append(Outcome(index=index, request=request, error=error, run_id=live.run_id))
        out.sort(key=lambda o: o.index)
        return out


class RunsView(Protocol):
    """What a job needs of the client or view it runs for (`_views.RunsView` is one)."""

    _engine: Engine
    _credential: Credential | None


def _target(view: RunsView) -> tuple[Engine, Credential | None]:
    """The engine and credential a job sends with: those of `view` (a `ZapierClient` or an
    `AuthView`), read from the package-internal attributes every `RunsView` declares."""
    try:
        return view._engine, view._credential
    except AttributeError:
        raise errors.InvalidRequestError(
            f"needs a ZapierClient or a view of one (client.with_auth(...)), "
            f"not {type(view).__name__}",
            "client",
        ) from None


class RunMany(AsyncCloseable):
    """The async iterator of `Outcome` returned by `ZapierClient.run_many`.

    Iterate it (``async for outcome in client.run_many(...)``), or use it as an async context
    manager for deterministic cleanup::

        async with client.run_many(requests, concurrency=20) as outcomes:
            async for outcome in outcomes:
                ...

    Nothing starts until the first ``__anext__``.
    """

    __slots__ = ("_job", "_progress")

    def __init__(
        self,
        client: RunsView,
        requests: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        on_sending: Callable[[int, RunRequest], object] | None = None,
        on_submitted: Callable[[int, RunRequest, str], object] | None = None,
        journal: Journal | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.InvalidRequestError("must be an integer >= 1", "concurrency")
        engine, credential = _target(client)
        self._progress = progress
        self._job = _Job(
            engine,
            credential,
            requests,
            concurrency=concurrency,
            on_sending=on_sending,
            on_submitted=on_submitted,
            journal=journal,
        )

    def __aiter__(self) -> RunMany:
        return self

    async def __anext__(self) -> Outcome:
        job = self._job
        if job.closed or job.finished:
            raise StopAsyncIteration
        if not job.started:
            job.start()
        try:
            item = await job.queue.get()
        except asyncio.CancelledError:
            job.cancel()  # the consumer was cancelled: so is the job
            raise
        if item is _DONE:
            job.finished = True
            error, job.input_error = job.input_error, None
            if error is not None:
                raise error
            raise StopAsyncIteration
        assert isinstance(item, Outcome)
        live = job.live.pop(item.index, None)
        job.room.release()
        if job.journal is not None:
            job.journal_outcome(item, live)
        if self._progress is not None:
            try:
                self._progress(item)
            except Exception:
                logger.exception("run_many progress callback failed")
        return item

    async def aclose(self) -> None:
        """Stop submitting and end every task of the job; waits for them to finish. Idempotent.

        Runs already accepted go on at Zapier and are still followed by the client; see
        `unfinished()`.
        """
        await self._job.aclose()

    def unfinished(self) -> list[Outcome]:
        """Items taken from the input whose outcome was not yielded, in input order.

        Meaningful after the job stopped early (closed, cancelled, broken out of): an
        outcome that was ready but not consumed is returned as is; a run Zapier accepted
        has its `run_id` (error `RunDetachedError`: ``client.resume(run_id)`` follows it);
        a create that was on the wire has `OutcomeUnknownError` (do not re-send blindly);
        an item never sent has `InvalidRequestError` ("not submitted"), safe to send again.

        A create on the wire when the job stopped finishes in the client's task: once
        Zapier's answer names the run (it is then in `ZapierClient.orphaned_runs`), the item
        is reported by that `run_id` instead of outcome unknown, and ``on_submitted`` (and
        the journal) learn it. Call this again after the client was closed (its ``aclose()``
        waits for creates on the wire) to get every id there is.

        Returns:
            A list of `Outcome`.
        """
        return self._job.unfinished()

    @property
    def refusal(self) -> BaseException | None:
        """The refusal that stopped new creates, or None.

        Set after the first create refused with an error that would be the same for every
        item (`AuthenticationError`, `PermissionDeniedError`, `LimiterClosedError`); from then
        on every item not yet sent gets an `Outcome` with a copy of it, without being sent.
        """
        return self._job.refusal

    @property
    def taken(self) -> int:
        """Items read from the input so far."""
        return self._job.next_index

    def __del__(self) -> None:
        # Breaking out of `async for` drops the iterator without calling anything: cancel the
        # workers then, so no task outlives the job.
        job = getattr(self, "_job", None)
        if job is not None and job.tasks:
            with contextlib.suppress(RuntimeError):  # the event loop is already closed
                job.cancel()

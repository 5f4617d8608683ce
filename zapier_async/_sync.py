"""SyncZapierClient: the blocking twin of `ZapierClient`, for threads and synchronous code.

Theory of operation
-------------------
A process has at most one background event-loop thread for every `SyncZapierClient` in it
(``zapier_async-loop``, an anyio blocking portal). Each sync client leases it when it opens and
releases it when it closes; the last release stops the loop and joins the thread. Each sync
client owns one `ZapierClient`, built inside that loop (a client refuses use from any other
loop), so every thread that calls it shares one connection pool, one rate budget and one
poller task.

A blocking method submits one coroutine to the loop and waits for its result in the calling
thread. If that wait is interrupted (KeyboardInterrupt, any exception raised in the waiting
thread), only the submitted coroutine is cancelled, which for the async client is an ordinary
cancellation: the loop thread, the poller and the other threads' calls go on.

Forks: a child process inherits the parent's objects but not its threads, so the inherited
loop is dead (and its locks may be held forever). An ``os.register_at_fork`` hook marks all of
it dead in the child, without touching it (its sockets are the parent's); the first call in
the child then starts a fresh loop thread and a fresh `ZapierClient` from the same options.
Handles from before the fork are detached in the child (resume them by continuation token).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import enum
import inspect
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypedDict, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import errors
from ._client import ZapierClient
from ._handle import RunHandle
from .models import Run, RunStatus

if TYPE_CHECKING:
    import random
    from collections.abc import Hashable
    from contextlib import AbstractContextManager

    from typing_extensions import Unpack

    from ._actions import CallbackPolling, LongPoll
    from ._auth import AuthProvider
    from ._backoff import PollPolicy, RetryPolicy
    from ._bulk import Outcome, RunMany, RunRequest
    from ._clock import Clock
    from ._discovery import InputItem
    from ._limiter import LimiterLike, Priority
    from ._metrics import EventListener, Metrics
    from ._runstore import RunStore
    from ._transport import Transport
    from .models import Action, ChoicePage, Connection, OutputField, StoredAction

__all__ = ["LOOP_THREAD_NAME", "SyncClientOptions", "SyncIterator", "SyncRunHandle",
           "SyncRunMany", "SyncStoredActions", "SyncZapierClient"]  # fmt: skip

T = TypeVar("T")

LOOP_THREAD_NAME: Final = "zapier_async-loop"
"""The name of the background event-loop thread (one per process at most)."""


class SyncClientOptions(TypedDict, total=False):
    """`ZapierClient`'s keyword arguments that `SyncZapierClient` passes through unchanged.

    See `ZapierClient` for what each one means. ``session`` is not among them: an aiohttp
    session belongs to the event loop it was created in, and the sync client runs its own.
    Callables among them (``on_event``, ``on_rate_limited``) are called on the loop thread.
    """

    base_url: str
    transport: Transport | None
    limiter: LimiterLike | None
    clock: Clock | None
    poll_policy: PollPolicy | None
    retry_policy: RetryPolicy | None
    request_timeout: float
    max_rate_limit_wait: float | None
    max_concurrent_polls: int
    max_poll_failures: int
    max_server_wait: float
    rng: random.Random | None
    rate_limit: tuple[int, float] | None
    on_rate_limited: Callable[[float, Priority], None] | None
    on_event: EventListener | None
    long_poll: LongPoll | None
    callback_polling: CallbackPolling | None
    allow_insecure_callback_url_for_testing: bool
    bucket_key: Callable[[Hashable, str], Hashable] | None
    run_store: RunStore | None


class _Default(enum.Enum):
    DEFAULT = "<default>"

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default.DEFAULT
Wait = float | None | _Default


# --- the process's loop thread --------------------------------------------------------------


class _LoopThread:
    """The process's one event-loop thread, leased by every open sync client."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases = 0
        self.cm: AbstractContextManager[BlockingPortal] | None = None
        self.portal: BlockingPortal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def acquire(self) -> tuple[BlockingPortal, asyncio.AbstractEventLoop]:
        with self.lock:
            if self.cm is None:
                cm = start_blocking_portal(name=LOOP_THREAD_NAME)
                portal = cm.__enter__()
                self.loop = portal.call(asyncio.get_running_loop)
                self.cm, self.portal = cm, portal
            self.leases += 1
            assert self.portal is not None
            assert self.loop is not None
            return self.portal, self.loop

    def release(self) -> None:
        # The last release stops the loop and joins its thread under the lock, so a client
        # opened meanwhile waits and then starts a fresh thread: never two at once.
        with self.lock:
            self.leases -= 1
            if self.leases or self.cm is None:
                return
            cm, self.cm, self.portal, self.loop = self.cm, None, None, None
            cm.__exit__(None, None, None)


_LOOP = _LoopThread()
_CLIENTS: weakref.WeakSet[SyncZapierClient] = weakref.WeakSet()
# Objects inherited from the parent by a forked child: kept alive, never closed (their
# sockets and loop are the parent's), so no finaliser in the child touches them.
_INHERITED: list[object] = []


def _after_fork_in_child() -> None:
    global _LOOP
    _INHERITED.append(_LOOP)
    _LOOP = _LoopThread()
    for client in list(_CLIENTS):
        client._forget_after_fork()


def _close_all_at_exit() -> None:
    for client in list(_CLIENTS):
        try:
            client.close()
        except Exception:  # one failing close must not stop the others at exit
            logging.getLogger("zapier_async").exception("closing %r at exit failed", client)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


def _refuse_in_event_loop(what: str) -> None:
    """A blocking call from a running event loop would stall it (or deadlock): refuse it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    where = (
        "on its own event-loop thread (e.g. in an on_event listener)"
        if threading.current_thread().name == LOOP_THREAD_NAME
        else "from a running event loop"
    )
    raise errors.InvalidRequestError(
        f"SyncZapierClient.{what} blocks and cannot be called {where}; "
        "in async code use zapier_async.ZapierClient and await it",
        what,
    )


_CLOSED_MESSAGE: Final = "the client is closed"


class _Session:
    """One live generation of a sync client: the leased loop and the client built in it."""

    __slots__ = ("background", "client", "futures", "loop", "pid", "portal")

    def __init__(
        self, portal: BlockingPortal, loop: asyncio.AbstractEventLoop, client: ZapierClient
    ) -> None:
        self.portal = portal
        self.loop = loop
        self.client = client
        self.pid = os.getpid()
        self.futures: set[concurrent.futures.Future[Any]] = set()
        self.background: set[asyncio.Task[Any]] = set()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` on the loop; block the calling thread until it is done."""
        try:
            future = self.portal.start_task_soon(fn)
        except RuntimeError:  # the portal stopped: the client was closed meanwhile
            raise errors.InvalidRequestError(_CLOSED_MESSAGE) from None
        return self._wait(future)

    def call_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the loop (it touches loop-owned state); block until it is done."""
        try:
            future = self.portal.start_task_soon(_plain, fn)
        except RuntimeError:
            raise errors.InvalidRequestError(_CLOSED_MESSAGE) from None
        return self._wait(future)

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        self.futures.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # Only close() cancels a future that the caller still waits on.
            raise errors.InvalidRequestError(
                "the client was closed while this call was in progress"
            ) from None
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt, ...): cancel only this call, on
            # the loop, as an ordinary cancellation; the loop thread goes on.
            if not future.done():
                future.cancel()
            raise
        finally:
            self.futures.discard(future)

    def close_soon(self, closeable: Any) -> None:
        """From any thread, without waiting: schedule ``await closeable.aclose()`` on the loop."""

        def spawn() -> None:
            task = asyncio.get_running_loop().create_task(closeable.aclose())
            self.background.add(task)
            task.add_done_callback(self.background.discard)

        if self.pid == os.getpid():
            with contextlib.suppress(RuntimeError):  # a closed loop holds nothing to release
                self.loop.call_soon_threadsafe(spawn)


async def _plain(fn: Callable[[], T]) -> T:
    # Returned as is: the portal would await an awaitable result (a RunHandle is one).
    return fn()


# --- iterators and handles ----------------------------------------------------------------


class _Done:
    pass


_END: Final = _Done()


async def _next_or_end(iterator: AsyncIterator[T]) -> T | _Done:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


class SyncIterator(Generic[T]):
    """A blocking iterator over an async iterator that lives on the client's loop.

    Each `next()` waits for one item. `close()` (or leaving ``with``) closes the underlying
    async iterator on the loop; one that is dropped unclosed is closed there in the
    background.
    """

    __slots__ = ("_closed", "_iterator", "_owner", "_session")

    def __init__(self, owner: SyncZapierClient, session: _Session, iterator: Any) -> None:
        self._owner = owner
        self._session = session
        self._iterator: Any = iterator
        self._closed = False

    def __iter__(self) -> SyncIterator[T]:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        _refuse_in_event_loop("__next__")
        session = self._owner._check_session(self._session)
        item: T | _Done = session.call(lambda: _next_or_end(self._iterator))
        if isinstance(item, _Done):
            self._closed = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop iterating and release what the iterator holds on the loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is None or not self._owner._is_live(self._session):
            return
        _refuse_in_event_loop("close")
        self._session.call(aclose)

    def __enter__(self) -> SyncIterator[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self._iterator, "aclose"):
            # Dropped mid-iteration in whatever thread the GC runs: hand it to the loop.
            self._session.close_soon(self._iterator)


class SyncRunMany(SyncIterator["Outcome"]):
    """`SyncZapierClient.run_many`: a blocking iterator of `Outcome`, in completion order.

    Breaking out of the loop and dropping it (or `close()`) stops submitting, as
    `RunMany.aclose()` does.
    """

    __slots__ = ()

    def unfinished(self) -> list[Outcome]:
        """Runs accepted but not yet reported (see `RunMany.unfinished`)."""
        job: RunMany = self._iterator
        return self._owner._call_sync(lambda _: job.unfinished(), self._session)

    @property
    def refusal(self) -> BaseException | None:
        """The job-wide refusal that stopped new creates, if any (see `RunMany.refusal`)."""
        job: RunMany = self._iterator
        return job.refusal


class SyncRunHandle:
    """The blocking handle of one action run (`SyncZapierClient.run`, `resume`, ...).

    Wraps a `RunHandle` that lives on the client's loop: `status` stays live without any
    thread waiting; `result()` blocks only the calling thread.
    """

    __slots__ = ("_handle", "_owner", "_session")

    def __init__(self, owner: SyncZapierClient, session: _Session, handle: RunHandle) -> None:
        self._owner = owner
        self._session = session
        self._handle = handle

    @property
    def id(self) -> str:
        """The run id Zapier returned."""
        return self._handle.id

    @property
    def status(self) -> RunStatus:
        """The latest status seen; updated by the client's poller in the background."""
        return self._handle.status

    @property
    def run(self) -> Run | None:
        """The latest `Run` read (None before the first read)."""
        return self._handle.run

    @property
    def callback_token(self) -> str | None:
        """The secret this run's `callback_url` carries (see `RunHandle.callback_token`)."""
        return self._handle.callback_token

    @property
    def async_handle(self) -> RunHandle:
        """The underlying `RunHandle` (use it only on the client's loop)."""
        return self._handle

    def done(self) -> bool:
        """True once the run ended, failed to be followed, or the handle was cancelled."""
        return self._handle.done()

    def continuation_token(self) -> str:
        """A versioned string that `resume()` accepts, in any process; it holds no secret."""
        return self._handle.continuation_token()

    def result(self, timeout: float | None = None) -> Run:
        """Block until the run ends; return the final `Run` when it succeeded.

        Args:
            timeout: Seconds to wait at most (on the client's clock). None waits as long as
                it takes.

        Raises:
            RunFailedError: The run ended with status ``error``; `.run` has its errors.
            RunTimeoutError: `timeout` ran out. Nothing is cancelled at Zapier and the run is
                still polled: call `result()` again later.
            RunDetachedError: Polling stopped (handle cancelled, client closed, or the handle
                was inherited across a fork: resume it by continuation token).
            InvalidRequestError: Called from a running event loop.
        """
        if self._handle.done():
            return _settled(self._handle)
        _refuse_in_event_loop("result")
        session = self._live_session()
        return session.call(lambda: self._handle.result(timeout))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends or `timeout` runs out; never raises the run's outcome.

        Returns:
            `done()`: True if the handle is done (call `result()` for the outcome).
        """
        if self._handle.done():
            return True
        _refuse_in_event_loop("wait")
        session = self._live_session()
        return session.call(lambda: _wait_done(self._handle, timeout))

    def updates(self) -> SyncIterator[RunStatus]:
        """A blocking iterator of the current status, then each change (see `RunHandle.updates`)."""
        _refuse_in_event_loop("updates")
        session = self._live_session()
        return SyncIterator(self._owner, session, self._handle.updates())

    def cancel(self) -> bool:
        """Stop following this run locally (nothing is cancelled at Zapier); see `RunHandle`."""
        if self._handle.done():
            return False
        _refuse_in_event_loop("cancel")
        return self._live_session().call_sync(self._handle.cancel)

    def _live_session(self) -> _Session:
        if not self._owner._is_live(self._session):
            reason = (
                "the process forked; this handle belongs to the parent's event loop"
                if self._session.pid != os.getpid()
                else "client closed"
            )
            raise errors.RunDetachedError(self.id, reason)
        return self._session

    def __repr__(self) -> str:
        state = "done" if self._handle.done() else "pending"
        return f"<SyncRunHandle id={self.id!r} status={self.status.value!r} {state}>"


def _settled(handle: RunHandle) -> Run:
    """The outcome of a done handle, without a loop: its `result()` returns at once."""
    coroutine = handle.result()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        run: Run = stop.value
        return run
    coroutine.close()  # pragma: no cover (a done handle never waits)
    raise AssertionError("a done RunHandle waited")  # pragma: no cover


async def _wait_done(handle: RunHandle, seconds: float | None) -> bool:
    with contextlib.suppress(errors.ZapierError):
        await handle.result(seconds)
    return handle.done()


class SyncStoredActions:
    """`client.stored_actions` of a `SyncZapierClient`: the blocking `StoredActions`."""

    __slots__ = ("_owner",)

    def __init__(self, owner: SyncZapierClient) -> None:
        self._owner = owner

    def create(
        self,
        *,
        connection_id: str | None = None,
        selected_api: str,
        action_key: str,
        action_type: str,
        inputs: Mapping[str, Any] | None = None,
    ) -> StoredAction:
        """Save a stored action; see `StoredActions.create`."""
        return self._owner._call(
            lambda c: c.stored_actions.create(
                connection_id=connection_id,
                selected_api=selected_api,
                action_key=action_key,
                action_type=action_type,
                inputs=inputs,
            )
        )

    def get(self, stored_action_id: str) -> StoredAction:
        """Read one stored action; see `StoredActions.get`."""
        return self._owner._call(lambda c: c.stored_actions.get(stored_action_id))

    def update(
        self,
        stored_action_id: str,
        *,
        action_key: str | None = None,
        action_type: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> StoredAction:
        """Change a stored action; see `StoredActions.update`."""
        return self._owner._call(
            lambda c: c.stored_actions.update(
                stored_action_id, action_key=action_key, action_type=action_type, inputs=inputs
            )
        )

    def delete(self, stored_action_id: str) -> None:
        """Delete a stored action; see `StoredActions.delete`."""
        self._owner._call(lambda c: c.stored_actions.delete(stored_action_id))

    def list(self) -> list[StoredAction]:
        """Every stored action of the caller; see `StoredActions.list`."""
        return self._owner._call(lambda c: c.stored_actions.list())

    def run(
        self,
        stored_action_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        page: str | int | None = None,
        callback_url: str | None = None,
    ) -> SyncRunHandle:
        """Run a stored action and return its handle; see `StoredActions.run`."""
        return self._owner._call_handle(
            lambda c: c.stored_actions.run(
                stored_action_id, inputs=inputs, page=page, callback_url=callback_url
            )
        )

    def pages(
        self,
        stored_action_id: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        page: str | int | None = None,
    ) -> SyncIterator[Run]:
        """Every page of a bulk read, as a blocking iterator; see `StoredActions.pages`."""
        return self._owner._iterate(
            lambda c: c.stored_actions.pages(stored_action_id, inputs=inputs, page=page)
        )

    def __repr__(self) -> str:
        return f"<SyncStoredActions of {self._owner!r}>"


def _accepts(function: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(function).parameters


class SyncZapierClient:
    """The blocking twin of `ZapierClient`: the same methods and errors, for synchronous code.

    Share one per process (a module global in a Django app or a Celery worker): every thread
    may call it at once, and all of them share one event-loop thread, one connection pool,
    one rate budget and one poller. Use it as a context manager or call `close()`; clients
    still open at interpreter exit are closed then. After a fork (Celery's prefork pool,
    gunicorn), the child starts its own loop thread and client on first use.

    Blocking methods refuse to run from a running event loop (`InvalidRequestError`): in
    async code, use `ZapierClient`.

    Args:
        auth: Where access tokens come from, e.g. `BearerToken("...")`.
        **options: Any other keyword argument of `ZapierClient` (see `SyncClientOptions`),
            passed through unchanged; they are used again to build the child's client after
            a fork. ``session`` is refused: an aiohttp session belongs to the loop it was
            created in. Callbacks among them run on the loop thread: keep them quick.

    Raises:
        InvalidRequestError: An option is invalid (as `ZapierClient` says), or ``session``.
        TypeError: An unknown keyword argument.
    """

    def __init__(self, *, auth: AuthProvider, **options: Unpack[SyncClientOptions]) -> None:
        if "session" in options:
            raise errors.InvalidRequestError(
                "an aiohttp session belongs to the event loop it was created in, and "
                "SyncZapierClient runs its own: leave it out (the client makes its own pool) "
                "or pass transport=",
                "session",
            )
        # Unknown names fail here, in the caller's thread, as for any call.
        inspect.signature(ZapierClient).bind(auth=auth, **options)
        self._options: dict[str, Any] = {"auth": auth, **options}
        self._lock = threading.Lock()
        self._closed = False
        self._state: _Session | None = None
        self.stored_actions: SyncStoredActions = SyncStoredActions(self)
        """Stored actions of the Actions API, blocking (see `StoredActions`)."""
        _refuse_in_event_loop("__init__")
        self._state = self._open()
        _CLIENTS.add(self)

    # --- lifecycle ------------------------------------------------------------------------

    def _open(self) -> _Session:
        portal, loop = _LOOP.acquire()
        options = self._options

        async def build() -> ZapierClient:
            client = ZapierClient(**options)
            await client.__aenter__()  # binds it to this loop
            return client

        try:
            client = portal.call(build)
        except BaseException:
            _LOOP.release()
            raise
        return _Session(portal, loop, client)

    def _forget_after_fork(self) -> None:
        # In a forked child: the parent's loop thread does not exist here. Drop (never use,
        # never close) everything bound to it; the next call opens a fresh session.
        self._lock = threading.Lock()
        if self._state is not None:
            _INHERITED.append(self._state)
            self._state = None

    def _session(self) -> _Session:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._closed:
                raise errors.InvalidRequestError(_CLOSED_MESSAGE)
            if self._state is None:
                self._state = self._open()
            return self._state

    def _is_live(self, session: _Session) -> bool:
        return session is self._state and session.pid == os.getpid()

    def _check_session(self, session: _Session) -> _Session:
        if not self._is_live(session):
            if session.pid != os.getpid():
                raise errors.InvalidRequestError(
                    "this object belongs to the parent process's event loop (the process forked)"
                )
            raise errors.InvalidRequestError(_CLOSED_MESSAGE)
        return session

    def close(self) -> None:
        """Close the client on its loop, then release the loop thread. Idempotent.

        Waiters of runs still in flight get `RunDetachedError` (the runs go on at Zapier;
        resume them by id or continuation token); calls still in progress in other threads
        end with `InvalidRequestError`. When no other sync client uses the loop thread, it
        stops and is joined before this returns.
        """
        if self._closed:
            return
        _refuse_in_event_loop("close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._state = self._state, None
        _CLIENTS.discard(self)
        if session is None or session.pid != os.getpid():
            return
        try:
            session.call(session.client.aclose)
        finally:
            for future in list(session.futures):
                future.cancel()
            _LOOP.release()

    def __enter__(self) -> SyncZapierClient:
        self._session()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True after `close()`."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Runs this client is following now."""
        return self._call_sync(lambda c: c.in_flight)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        base_url = self._options.get("base_url", "https://api.zapier.com")
        return f"<SyncZapierClient {base_url} {state}>"

    # --- the bridge -------------------------------------------------------------------------

    def _call(self, fn: Callable[[ZapierClient], Awaitable[T]]) -> T:
        _refuse_in_event_loop(getattr(fn, "__name__", "call"))
        session = self._session()
        client = session.client
        return session.call(lambda: fn(client))

    def _call_sync(self, fn: Callable[[ZapierClient], T], session: _Session | None = None) -> T:
        _refuse_in_event_loop("call")
        session = self._session() if session is None else self._check_session(session)
        client = session.client
        return session.call_sync(lambda: fn(client))

    def _call_handle(self, fn: Callable[[ZapierClient], Awaitable[RunHandle]]) -> SyncRunHandle:
        _refuse_in_event_loop("run")
        session = self._session()
        client = session.client
        return SyncRunHandle(self, session, session.call(lambda: fn(client)))

    def _iterate(self, fn: Callable[[ZapierClient], AsyncIterator[T]]) -> SyncIterator[T]:
        _refuse_in_event_loop("iterate")
        session = self._session()
        client = session.client
        return SyncIterator(self, session, session.call_sync(lambda: fn(client)))

    # --- runs -------------------------------------------------------------------------------

    def run(
        self,
        action: str | None = None,
        *,
        app: str | None = None,
        action_key: str | None = None,
        action_type: str = "WRITE",
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: Wait = _DEFAULT,
        idempotency_key: str | None = None,
    ) -> SyncRunHandle:
        """Start an action run and return its handle once Zapier accepted it.

        The same arguments, rules and errors as `ZapierClient.run`.

        Args:
            idempotency_key: Passed to `ZapierClient.run` (needs a ``run_store``): a second
                call with the same key resumes the first run instead of creating one.

        Raises:
            InvalidRequestError: Bad input (nothing was sent), or `idempotency_key` with a
                `ZapierClient` that has no run store.
        """
        kwargs: dict[str, Any] = {
            "app": app,
            "action_key": action_key,
            "action_type": action_type,
            "authentication": authentication,
            "inputs": inputs,
            "callback_url": callback_url,
        }
        _put_wait(kwargs, max_rate_limit_wait)
        if idempotency_key is not None:
            if not _accepts(ZapierClient.run, "idempotency_key"):
                raise errors.InvalidRequestError(
                    "idempotency_key needs a run_store (ZapierClient(run_store=...)), which "
                    "this version of ZapierClient does not support; nothing was sent",
                    "idempotency_key",
                )
            kwargs["idempotency_key"] = idempotency_key
        return self._call_handle(lambda c: c.run(action, **kwargs))

    def run_action(
        self,
        *,
        selected_api: str,
        action_key: str,
        action_type: str,
        inputs: Mapping[str, Any] | None = None,
        connection_id: str | None = None,
        page: str | int | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> SyncRunHandle:
        """Start a one-off Actions API run; see `ZapierClient.run_action`."""
        kwargs: dict[str, Any] = {
            "selected_api": selected_api,
            "action_key": action_key,
            "action_type": action_type,
            "inputs": inputs,
            "connection_id": connection_id,
            "page": page,
            "callback_url": callback_url,
        }
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call_handle(lambda c: c.run_action(**kwargs))

    def resume(
        self,
        token_or_run_id: str,
        *,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> SyncRunHandle:
        """Follow a run again from its id or continuation token; see `ZapierClient.resume`."""
        _refuse_in_event_loop("resume")
        session = self._session()
        client = session.client
        handle = session.call_sync(
            lambda: client.resume(token_or_run_id, callback=callback, callback_token=callback_token)
        )
        return SyncRunHandle(self, session, handle)

    def get_run(self, run_id: str, *, max_rate_limit_wait: Wait = _DEFAULT) -> Run:
        """Read a run's current state once; see `ZapierClient.get_run`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.get_run(run_id, **kwargs))

    def deliver_callback(self, run: Run, *, token: str | None = None) -> bool:
        """Resolve a run's handle from a completion callback; see `ZapierClient.deliver_callback`.

        Thread-safe: call it from your (synchronous) callback view.
        """
        return self._call_sync(lambda c: c.deliver_callback(run, token=token))

    # --- bulk -------------------------------------------------------------------------------

    def run_many(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        on_sending: Callable[[int, RunRequest], object] | None = None,
        on_submitted: Callable[[int, RunRequest, str], object] | None = None,
    ) -> SyncRunMany:
        """Fan runs out; a blocking iterator of `Outcome` as they end. See `ZapierClient.run_many`.

        `requests` is read lazily on the loop thread (keep its ``next()`` quick), and the
        hooks are called there too.
        """
        _refuse_in_event_loop("run_many")
        session = self._session()
        client = session.client
        job = session.call_sync(
            lambda: client.run_many(
                requests,
                concurrency=concurrency,
                progress=progress,
                on_sending=on_sending,
                on_submitted=on_submitted,
            )
        )
        return SyncRunMany(self, session, job)

    def gather(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
    ) -> list[Outcome]:
        """Run them all and return every outcome in input order; see `ZapierClient.gather`."""
        return self._call(lambda c: c.gather(requests, concurrency=concurrency, progress=progress))

    # --- metrics ----------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        """A snapshot of the client's counters; see `ZapierClient.metrics`."""
        return self._call_sync(lambda c: c.metrics())

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every event, on the loop thread (keep it quick)."""
        self._call_sync(lambda c: c.add_listener(listener))

    def remove_listener(self, listener: EventListener) -> bool:
        """Stop calling `listener`; returns whether it was registered."""
        return self._call_sync(lambda c: c.remove_listener(listener))

    # --- discovery --------------------------------------------------------------------------

    def list_actions(
        self, app: str, action_type: str | None = None, *, max_rate_limit_wait: Wait = _DEFAULT
    ) -> list[Action]:
        """An app's actions, each with a fresh id; see `ZapierClient.list_actions`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.list_actions(app, action_type, **kwargs))

    def find_action(
        self,
        app: str,
        action_key: str,
        *,
        action_type: str | None = "WRITE",
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> Action:
        """Look up an action by its stable key; see `ZapierClient.find_action`."""
        kwargs: dict[str, Any] = {"action_type": action_type}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.find_action(app, action_key, **kwargs))

    def action_inputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> list[InputItem]:
        """An action's input fields; see `ZapierClient.action_inputs`."""
        kwargs: dict[str, Any] = {"authentication": authentication, "inputs": inputs}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.action_inputs(action_id, **kwargs))

    def action_choices(
        self,
        action_id: str,
        input_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        page: int | None = None,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> ChoicePage:
        """One page of a SELECT field's values; see `ZapierClient.action_choices`."""
        kwargs: dict[str, Any] = {"authentication": authentication, "inputs": inputs, "page": page}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.action_choices(action_id, input_id, **kwargs))

    def action_outputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        fetch_live_samples: bool = False,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> list[OutputField]:
        """The fields an action's results have; see `ZapierClient.action_outputs`."""
        kwargs: dict[str, Any] = {
            "authentication": authentication,
            "inputs": inputs,
            "fetch_live_samples": fetch_live_samples,
        }
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.action_outputs(action_id, **kwargs))

    def list_connections(
        self, app: str, *, page_size: int = 100, max_rate_limit_wait: Wait = _DEFAULT
    ) -> SyncIterator[Connection]:
        """Every connection the user owns for `app`, as a blocking iterator (page by page)."""
        kwargs: dict[str, Any] = {"page_size": page_size}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._iterate(lambda c: c.list_connections(app, **kwargs))

    def find_connection(self, app: str, *, max_rate_limit_wait: Wait = _DEFAULT) -> Connection:
        """The user's first usable connection to `app`; see `ZapierClient.find_connection`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.find_connection(app, **kwargs))


def _put_wait(kwargs: dict[str, Any], max_rate_limit_wait: Wait) -> None:
    if max_rate_limit_wait is not _DEFAULT:
        kwargs["max_rate_limit_wait"] = max_rate_limit_wait

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

import atexit
import enum
import inspect
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar

from . import errors
from ._auth import AuthProvider
from ._client import ZapierClient
from ._handle import RunHandle
from ._sync_handles import SyncIterator, SyncRunHandle, SyncRunMany
from ._sync_loop import CLOSED_MESSAGE, LOOP_THREAD_NAME, LoopThread, Session, refuse_in_event_loop
from .models import Run

if TYPE_CHECKING:
    import random
    from collections.abc import Hashable, Sequence

    from typing_extensions import Unpack

    from ._actions import CallbackPolling, LongPoll
    from ._backoff import PollPolicy, RetryPolicy
    from ._bulk import Outcome, RunRequest
    from ._clock import Clock
    from ._discovery import InputItem
    from ._limiter import LimiterLike, Priority
    from ._metrics import EventListener, Metrics
    from ._runstore import RunStore
    from ._transport import Transport
    from ._views import RunsView
    from .journal import Journal
    from .models import Action, App, ChoicePage, Connection, OutputField, StoredAction

__all__ = ["LOOP_THREAD_NAME", "SyncAuthView", "SyncClientOptions", "SyncIterator",
           "SyncRunHandle", "SyncRunMany", "SyncStoredActions", "SyncZapierClient"]  # fmt: skip

T = TypeVar("T")


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
    rate_window: float | None
    on_rate_limited: Callable[[float, Priority], None] | None
    on_event: EventListener | None
    long_poll: LongPoll | None
    callback_polling: CallbackPolling | None
    allow_insecure_callback_url_for_testing: bool
    bucket_key: Callable[[Hashable, str], Hashable] | None
    run_store: RunStore | None
    track_credentials: int


class _Default(enum.Enum):
    DEFAULT = "<default>"

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default.DEFAULT
Wait = float | None | _Default


# --- the process's loop thread --------------------------------------------------------------


_LOOP = LoopThread()
_CLIENTS: weakref.WeakSet[SyncZapierClient] = weakref.WeakSet()
# Objects inherited from the parent by a forked child: kept alive, never closed (their
# sockets and loop are the parent's), so no finaliser in the child touches them.
_INHERITED: list[object] = []


def _after_fork_in_child() -> None:
    global _LOOP
    _INHERITED.append(_LOOP)
    _LOOP = LoopThread()
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


class SyncStoredActions:
    """`client.stored_actions` of a `SyncZapierClient`: the blocking `StoredActions`."""

    __slots__ = ("_owner",)

    def __init__(self, owner: _SyncRuns) -> None:
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


class _SyncRuns:
    """The blocking methods a `SyncZapierClient` and its views (`SyncAuthView`) share: runs,
    resumes, bulk runs, stored actions and discovery, each call made on `_view(client)`."""

    __slots__ = ()

    stored_actions: SyncStoredActions
    """Stored actions of the Actions API, blocking (see `StoredActions`)."""

    # --- the bridge -------------------------------------------------------------------------

    def _session(self) -> Session:
        raise NotImplementedError

    def _view(self, client: ZapierClient) -> RunsView:
        """What this object's calls are made on: the client itself, or a view of it."""
        return client

    def _call(self, fn: Callable[[RunsView], Awaitable[T]]) -> T:
        refuse_in_event_loop(getattr(fn, "__name__", "call"))
        session = self._session()
        view = self._view(session.client)
        return session.call(lambda: fn(view))

    def _call_sync(self, fn: Callable[[ZapierClient], T], session: Session | None = None) -> T:
        refuse_in_event_loop("call")
        session = self._session() if session is None else session.check()
        client = session.client
        return session.call_sync(lambda: fn(client))

    def _call_handle(self, fn: Callable[[RunsView], Awaitable[RunHandle]]) -> SyncRunHandle:
        refuse_in_event_loop("run")
        session = self._session()
        view = self._view(session.client)
        return SyncRunHandle(session, session.call(lambda: fn(view)))

    def _iterate(self, fn: Callable[[RunsView], AsyncIterator[T]]) -> SyncIterator[T]:
        refuse_in_event_loop("iterate")
        session = self._session()
        view = self._view(session.client)
        return SyncIterator(session, session.call_sync(lambda: fn(view)))

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
        timeout: float | None = None,
        validate_inputs: bool = False,
    ) -> SyncRunHandle:
        """Start an action run and return its handle once Zapier accepted it.

        The same arguments, rules and errors as `ZapierClient.run`.

        Args:
            idempotency_key: Passed to `ZapierClient.run` (needs a ``run_store``): a second
                call with the same key resumes the first run instead of creating one.
            timeout: One deadline for the whole run (budget wait, create and result); the
                handle's `result()` without a timeout waits until it.
            validate_inputs: Check `inputs` against the action's fields first.

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
            "timeout": timeout,
            "validate_inputs": validate_inputs,
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
        idempotency_key: str | None = None,
        timeout: float | None = None,
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
            "idempotency_key": idempotency_key,
            "timeout": timeout,
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
        refuse_in_event_loop("resume")
        session = self._session()
        view = self._view(session.client)
        handle = session.call_sync(
            lambda: view.resume(token_or_run_id, callback=callback, callback_token=callback_token)
        )
        return SyncRunHandle(session, handle)

    def get_run(self, run_id: str, *, max_rate_limit_wait: Wait = _DEFAULT) -> Run:
        """Read a run's current state once; see `ZapierClient.get_run`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.get_run(run_id, **kwargs))

    # --- bulk -------------------------------------------------------------------------------

    def run_many(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        on_sending: Callable[[int, RunRequest], object] | None = None,
        on_submitted: Callable[[int, RunRequest, str], object] | None = None,
        journal: Journal | None = None,
    ) -> SyncRunMany:
        """Fan runs out; a blocking iterator of `Outcome` as they end. See `ZapierClient.run_many`.

        `requests` is read lazily on the loop thread (keep its ``next()`` quick), and the
        hooks (and the `journal`'s writes) are called there too.
        """
        refuse_in_event_loop("run_many")
        session = self._session()
        view = self._view(session.client)
        job = session.call_sync(
            lambda: view.run_many(
                requests,
                concurrency=concurrency,
                progress=progress,
                on_sending=on_sending,
                on_submitted=on_submitted,
                journal=journal,
            )
        )
        return SyncRunMany(session, job)

    def gather(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        journal: Journal | None = None,
    ) -> list[Outcome]:
        """Run them all and return every outcome in input order; see `ZapierClient.gather`."""
        return self._call(
            lambda c: c.gather(
                requests, concurrency=concurrency, progress=progress, journal=journal
            )
        )

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

    def list_apps(
        self,
        query: str | None = None,
        *,
        category: str | None = None,
        ids: Sequence[str] | None = None,
        page_size: int = 100,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> SyncIterator[App]:
        """Apps in Zapier's catalogue, as a blocking iterator; see `ZapierClient.list_apps`."""
        kwargs: dict[str, Any] = {"category": category, "ids": ids, "page_size": page_size}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._iterate(lambda c: c.list_apps(query, **kwargs))

    def find_app(self, name: str, *, max_rate_limit_wait: Wait = _DEFAULT) -> App:
        """The app whose title or slug is `name`; see `ZapierClient.find_app`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.find_app(name, **kwargs))

    def list_connections(
        self,
        app: str,
        *,
        page_size: int = 100,
        expired: bool | None = None,
        max_rate_limit_wait: Wait = _DEFAULT,
    ) -> SyncIterator[Connection]:
        """Every connection the user owns for `app`, as a blocking iterator (page by page)."""
        kwargs: dict[str, Any] = {"page_size": page_size, "expired": expired}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._iterate(lambda c: c.list_connections(app, **kwargs))

    def find_connection(self, app: str, *, max_rate_limit_wait: Wait = _DEFAULT) -> Connection:
        """The user's first usable connection to `app`; see `ZapierClient.find_connection`."""
        kwargs: dict[str, Any] = {}
        _put_wait(kwargs, max_rate_limit_wait)
        return self._call(lambda c: c.find_connection(app, **kwargs))


class SyncZapierClient(_SyncRuns):
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
        self._state: Session | None = None
        self.stored_actions: SyncStoredActions = SyncStoredActions(self)
        """Stored actions of the Actions API, blocking (see `StoredActions`)."""
        refuse_in_event_loop("__init__")
        self._state = self._open()
        _CLIENTS.add(self)

    # --- lifecycle ------------------------------------------------------------------------

    def _open(self) -> Session:
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
        return Session(portal, loop, client)

    def _forget_after_fork(self) -> None:
        # In a forked child: the parent's loop thread does not exist here. Drop (never use,
        # never close) everything bound to it; the next call opens a fresh session.
        self._lock = threading.Lock()
        if self._state is not None:
            self._state.closed = True
            _INHERITED.append(self._state)
            self._state = None

    def _session(self) -> Session:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._closed:
                raise errors.InvalidRequestError(CLOSED_MESSAGE)
            if self._state is None:
                self._state = self._open()
            return self._state

    def close(self) -> None:
        """Close the client on its loop, then release the loop thread. Idempotent.

        Waiters of runs still in flight get `RunDetachedError` (the runs go on at Zapier;
        resume them by id or continuation token); calls still in progress in other threads
        end with `InvalidRequestError`. When no other sync client uses the loop thread, it
        stops and is joined before this returns.
        """
        if self._closed:
            return
        refuse_in_event_loop("close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._state = self._state, None
        _CLIENTS.discard(self)
        if session is None or session.pid != os.getpid():
            return
        session.closed = True  # handles and iterators refuse new calls from now on
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

    # --- the client's own ---------------------------------------------------------------------

    def with_auth(self, auth: AuthProvider) -> SyncAuthView:
        """A blocking view of this client that sends with another credential.

        See `ZapierClient.with_auth`: the view shares this client's loop thread, pool,
        poller, metrics and lifecycle; each request carries the view's token and is paced
        by its own budget. No thread, no task, no I/O; no closing.

        Raises:
            InvalidRequestError: `auth` is not an auth provider.
        """
        return SyncAuthView(self, auth)

    def deliver_callback(self, run: Run, *, token: str | None = None) -> bool:
        """Resolve a run's handle from a completion callback; see `ZapierClient.deliver_callback`.

        Thread-safe: call it from your (synchronous) callback view.
        """
        return self._call_sync(lambda c: c.deliver_callback(run, token=token))

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


class SyncAuthView(_SyncRuns):
    """A `SyncZapierClient`'s methods sent with another credential (`with_auth`).

    The blocking twin of `AuthView`: it shares its client's loop thread, transport, poller,
    metrics, limiter and lifecycle; its requests carry its own token and spend its own budget.
    It costs no thread, no task and no I/O, needs no closing, and ends with its client (and,
    after a fork, follows the child's fresh client).
    """

    __slots__ = ("_auth", "_cached", "_client", "stored_actions")

    def __init__(self, client: SyncZapierClient, auth: AuthProvider) -> None:
        if not isinstance(auth, AuthProvider):
            raise errors.InvalidRequestError(
                "must be an auth provider such as zapier_async.BearerToken('...')", "auth"
            )
        self._client = client
        self._auth = auth
        self._cached: tuple[ZapierClient, RunsView] | None = None
        self.stored_actions = SyncStoredActions(self)

    def _session(self) -> Session:
        return self._client._session()

    def _view(self, client: ZapierClient) -> RunsView:
        cached = self._cached
        if cached is None or cached[0] is not client:  # a new client after a fork
            cached = self._cached = (client, client.with_auth(self._auth))
        return cached[1]

    @property
    def auth(self) -> AuthProvider:
        """The auth provider this view sends with."""
        return self._auth

    @property
    def closed(self) -> bool:
        """True once its client is closed."""
        return self._client.closed

    def with_auth(self, auth: AuthProvider) -> SyncAuthView:
        """A view of the same client with yet another credential."""
        return SyncAuthView(self._client, auth)

    def __repr__(self) -> str:
        return f"<SyncAuthView of {self._client!r} auth={self._auth!r}>"


def _put_wait(kwargs: dict[str, Any], max_rate_limit_wait: Wait) -> None:
    if max_rate_limit_wait is not _DEFAULT:
        kwargs["max_rate_limit_wait"] = max_rate_limit_wait

"""ZapierClient: composes auth, transport, limiter and poller behind the public methods.

Requests go out through `_pipeline.SendPipeline` (token, limiter slot, transport, retries).
Cancellation is ordinary: a caller cancelled while it waits (for a token, a slot, a handle)
just leaves, and nothing stays counted; a caller cancelled while its create is on the wire
gets `CancelledError` at once, but the POST is the client's from the moment the limiter let
it go: it completes, and a run it created is followed, announced (a ``"started"``
`RunEvent`), logged and listed in `ZapierClient.orphaned_runs`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import random
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs

from . import _actions as actions
from . import _discovery as disco
from . import _protocol as proto
from . import errors
from ._auth import AuthContext, AuthProvider
from ._backoff import PollPolicy, RetryPolicy, cap_hint
from ._clock import Clock, SystemClock
from ._closing import AsyncCloseable
from ._guards import GuardedTransport, bind_callback_url, check_base_url
from ._handle import RunHandle
from ._limiter import Limiter, LimiterLike, Priority
from ._metrics import EventListener, MeteredTransport, Metrics, _Recorder
from ._pipeline import Orphan, SendPipeline
from ._polling import AdaptivePolling
from ._ratelimit import DEFAULT_MAX_SERVER_WAIT, check_max_server_wait, parse_retry_after
from ._scheduler import Poller
from ._stored import StoredActions
from ._transport import AiohttpTransport, Transport
from .models import Action, ChoicePage, Connection, OutputField, Run, RunStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable

    import aiohttp  # noqa: TID251 (only for the type of a caller-owned session)

    from ._bulk import Outcome, RunMany, RunRequest

__all__ = ["ZapierClient"]

logger = logging.getLogger("zapier_async")

DEFAULT_BASE_URL: Final = "https://api.zapier.com"

MAX_ORPHANS: Final = 1000
"""Handles `ZapierClient.orphaned_runs` keeps (the most recent)."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Final = _Unset()

# Poll failures that retrying later cannot fix: the handle fails at once.
_FATAL_POLL_ERRORS = (
    errors.NotFoundError,
    errors.AuthenticationError,
    errors.PermissionDeniedError,
    errors.BadRequestError,
    errors.InvalidRequestError,
)


class ZapierClient(AsyncCloseable):
    """An asyncio client for Zapier's action-run APIs.

    Use it as an async context manager (or call `aclose()`), and share one client per
    process: it owns the connection pool, the rate budget and the background poller.

    Args:
        auth: Where access tokens come from, e.g. `BearerToken("...")`.
        base_url: Zapier's API root: scheme and host (and port) only. ``http://`` is refused
            except for loopback hosts; so are user info, a path, a query and a fragment.
        session: An `aiohttp.ClientSession` you own; used as is and never closed by the client.
        transport: A custom `Transport` (instead of `session`).
        limiter: A `Limiter` to share the rate budget with other clients; by default each
            client has its own.
        clock: Source of time (tests pass `zapier_async.testing.FakeClock`).
        poll_policy: Polling cadence of runs.
        retry_policy: Per-request retries.
        request_timeout: Seconds one HTTP request may take.
        max_rate_limit_wait: Longest a caller-facing request may wait for the rate budget
            before `RateLimitedError` is raised instead. None waits as long as needed.
            Background polls always wait.
        max_concurrent_polls: Poll requests in flight at most. 8 by default: far above any
            Zapier budget (8 polls at 100-300 ms each is 27-80 requests/s, the budgets are
            60-1000 per minute or per 5 minutes), and keeping few polls alive at once keeps
            the event loop responsive with thousands of runs in flight (fewer objects
            promoted into CPython's oldest GC generation; see `benchmarks/results.md`).
            Parked long-polls count against it: raise it to long-poll many runs at once.
        max_poll_failures: Consecutive failed polls (after retries) before a handle fails with
            the last error. A poll that fails in a way the client did not foresee (the auth
            provider raised `OSError`, a caller-owned session was closed) counts as a failed
            poll, with `UnexpectedError`: every handle ends or keeps being polled.
        max_server_wait: The longest wait any server answer may impose, in seconds: a
            ``Retry-After`` or ``X-RateLimit-Reset`` on a 429/503, and a throttled run's
            ``delay``. A request told to wait longer fails with `RateLimitedError` (its
            ``retry_at`` says when the server asked to come back); a throttled run is read
            again after this long. 900 s by default, at most a day. Also the cap of the
            client's own limiter (a shared limiter has its own ``max_server_wait``).
        rng: Random source for jitter (seed it for reproducible tests).
        rate_limit: A budget known beforehand, ``(requests, per_seconds)``, e.g.
            ``(60, 60.0)`` for the Partner API's per-IP limit; without it the limiter learns
            the budget from `X-RateLimit-*` headers. Only for the client's own limiter.
        on_rate_limited: Called as ``on_rate_limited(seconds, priority)`` whenever a request
            had to wait for the rate budget (waits over a second are also logged: at INFO
            for interactive requests, as a summary a minute for background ones).
            Only for the client's own limiter.
        on_event: Receives every `RequestEvent`, `RetryEvent`, `RateLimitEvent` and
            `RunEvent` (more with `add_listener`); exceptions it raises are logged, never
            propagated.
        long_poll: Read Actions API one-off runs with server-side waiting
            (`GET /actions/v2/runs/{id}?wait_seconds=N`, see `LongPoll`); runs with a
            callback are not long-polled. None (default) polls as usual.
        callback_polling: The safety-net polling cadence of runs created with a
            `callback_url` (see `CallbackPolling`, and `deliver_callback`).
        allow_insecure_callback_url_for_testing: Accept ``http://`` loopback callback URLs
            (e.g. a receiver next to `FakeZapier`). Zapier itself refuses them; never set it
            against the real API.
    """

    def __init__(
        self,
        *,
        auth: AuthProvider,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        limiter: LimiterLike | None = None,
        clock: Clock | None = None,
        poll_policy: PollPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        max_rate_limit_wait: float | None = 10.0,
        max_concurrent_polls: int = 8,
        max_poll_failures: int = 5,
        max_server_wait: float = DEFAULT_MAX_SERVER_WAIT,
        rng: random.Random | None = None,
        rate_limit: tuple[int, float] | None = None,
        on_rate_limited: Callable[[float, Priority], None] | None = None,
        on_event: EventListener | None = None,
        long_poll: actions.LongPoll | None = None,
        callback_polling: actions.CallbackPolling | None = None,
        allow_insecure_callback_url_for_testing: bool = False,
    ) -> None:
        if not isinstance(auth, AuthProvider):
            raise errors.InvalidRequestError(
                "must be an auth provider such as zapier_async.BearerToken('...')", "auth"
            )
        if session is not None and transport is not None:
            raise errors.InvalidRequestError("pass either session or transport, not both")
        if request_timeout <= 0:
            raise errors.InvalidRequestError("must be positive", "request_timeout")
        if max_rate_limit_wait is not None and max_rate_limit_wait < 0:
            raise errors.InvalidRequestError("must be >= 0 or None", "max_rate_limit_wait")
        if max_poll_failures < 1:
            raise errors.InvalidRequestError("must be at least 1", "max_poll_failures")
        max_server_wait = check_max_server_wait(max_server_wait)
        self._auth = auth
        self._base_url = check_base_url(base_url)
        self._clock: Clock = clock if clock is not None else SystemClock()
        raw: Transport = transport if transport is not None else AiohttpTransport(session)
        self._metrics = _Recorder(self._clock)
        if on_event is not None:
            self._metrics.listeners.append(on_event)
        # Guarded inside the meter: a journal hook the meter calls may raise its own error.
        self._transport: Transport = MeteredTransport(
            GuardedTransport(raw), self._metrics, self._clock
        )
        self._max_server_wait = float(max_server_wait)
        if limiter is not None and (rate_limit is not None or on_rate_limited is not None):
            raise errors.InvalidRequestError(
                "rate_limit and on_rate_limited configure the client's own limiter; "
                "pass them to the shared Limiter instead"
            )
        self._owns_limiter = limiter is None
        self._limiter: LimiterLike = (
            limiter
            if limiter is not None
            else Limiter(
                clock=self._clock,
                rate=rate_limit,
                on_wait=on_rate_limited,
                max_server_wait=self._max_server_wait,
            )
        )
        self._poll_policy = poll_policy if poll_policy is not None else PollPolicy()
        self._polling = AdaptivePolling(policy=self._poll_policy)
        self._retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._request_timeout = float(request_timeout)
        self._max_wait = max_rate_limit_wait
        self._max_poll_failures = max_poll_failures
        self._rng = rng if rng is not None else random.Random()
        self._poller = Poller(
            clock=self._clock, poll=self._poll, max_concurrent_polls=max_concurrent_polls
        )
        self._handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._long_poll = long_poll
        self._callback_polling = (
            callback_polling if callback_polling is not None else actions.CallbackPolling()
        )
        self._allow_loopback_callback = bool(allow_insecure_callback_url_for_testing)
        self.stored_actions: StoredActions = StoredActions(self)
        """Stored actions of the Actions API: create, get, update, delete, list, run, pages."""
        self._closed = False
        # The event loop of the first use: the pool, the poller and the limiter belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Runs Zapier created for callers cancelled while their create was on the wire.
        self._orphans: collections.deque[RunHandle] = collections.deque(maxlen=MAX_ORPHANS)
        self._pipeline = SendPipeline(
            auth=auth,
            transport=self._transport,
            limiter=self._limiter,
            clock=self._clock,
            base_url=self._base_url,
            request_timeout=self._request_timeout,
            retry_policy=self._retry_policy,
            rng=self._rng,
            metrics=self._metrics,
            max_server_wait=self._max_server_wait,
            is_closed=lambda: self._closed,
            check_loop=self._check_loop,
        )
        bind = getattr(auth, "bind", None)
        if callable(bind):
            # Providers that fetch tokens borrow our transport and clock (see `_auth`).
            bind(
                AuthContext(
                    clock=self._clock,
                    send=self._send_auth_request,
                    retry_policy=self._retry_policy,
                    rng=self._rng,
                )
            )

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ZapierClient:
        self._ensure_open()
        return self

    async def aclose(self) -> None:
        """Stop polling, detach every pending handle, release connections. Idempotent.

        Awaiters of runs still in flight get `RunDetachedError`; the runs go on at Zapier
        and can be resumed by id or continuation token from another client.

        A create already on the wire is waited for, up to `request_timeout` seconds, before
        the connections are closed: its caller gets a (detached) handle with the run's id
        instead of `OutcomeUnknownError` (a create whose caller was cancelled is announced
        as ever: see `orphaned_runs`). Creates not yet sent are refused with
        `InvalidRequestError` (nothing sent). Cancelling `aclose()` stops that wait; the
        client is closed all the same.

        Raises:
            WrongEventLoopError: Called from another event loop than the one the client was
                used in (its connections cannot be closed from there).
        """
        if self._closed:
            return
        self._check_loop()
        self._closed = True
        try:
            await self._pipeline.drain()
        finally:
            await self._poller.aclose()
            for handle in list(self._handles.values()):
                if not handle.done():
                    handle._finish(errors.RunDetachedError(handle.id, "client closed"))
            self._handles.clear()
            if self._owns_limiter:
                await self._limiter.aclose()
            # A create still on the wire past the drain fails with its connection (or its
            # own timeout): its caller gets OutcomeUnknownError.
            await self._transport.aclose()

    @property
    def closed(self) -> bool:
        """True after `aclose()`."""
        return self._closed

    @property
    def limiter(self) -> LimiterLike:
        """The rate limiter this client spends its budget through."""
        return self._limiter

    @property
    def orphaned_runs(self) -> tuple[RunHandle, ...]:
        """Runs Zapier created for callers that were cancelled while their create was on the wire.

        Once the rate limiter let a create go, cancelling its caller (``task.cancel()``,
        ``asyncio.wait_for``, an anyio cancel scope, a web handler whose client went away)
        does not cut the POST off: the caller gets `CancelledError` at once and the client
        finishes the exchange. If Zapier created the run, the client follows it to its end
        like any other (its handle is here; metrics and ``on_event`` listeners see it, the
        first as a ``"started"`` `RunEvent`) and logs a WARNING with its id (``extra``
        ``run_id``). A client closed meanwhile keeps a detached handle here, with the id.

        The most recent last; the last 1,000 are kept.
        """
        return tuple(self._orphans)

    @property
    def in_flight(self) -> int:
        """Runs this client is following now."""
        return sum(1 for h in self._handles.values() if not h.done())

    def _ensure_open(self) -> None:
        if self._closed:
            raise errors.InvalidRequestError("the client is closed")
        self._check_loop()

    def _check_loop(self) -> None:
        """Remember the event loop of the first use; refuse any other one, before any I/O.

        A second ``asyncio.run`` would otherwise reach the pooled connections of the first,
        closed loop and fail with a bare ``RuntimeError: Event loop is closed``.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not in a coroutine: nothing loop-bound is touched by the caller
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise errors.WrongEventLoopError()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ZapierClient {self._base_url} {state} auth={self._auth!r}>"

    # --- public methods -------------------------------------------------------------------

    async def run(
        self,
        action: str | None = None,
        *,
        app: str | None = None,
        action_key: str | None = None,
        action_type: str = "WRITE",
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> RunHandle:
        """Start an action run (`POST /v2/action-runs`) and return its handle.

        The POST is awaited, so when this returns Zapier has accepted the run and
        `handle.id` is known. Awaiting the handle waits for the outcome.

        Cancelling the caller (``task.cancel()``, ``asyncio.wait_for``, an anyio cancel
        scope, a web handler whose visitor left) is safe at any point. While it waits for the
        rate budget, nothing was sent and nothing stays counted. Once the limiter let the
        POST go, it is not cut off (Zapier may already be creating the run): the caller gets
        `CancelledError` at once, the client finishes the exchange, and if Zapier created
        the run the client follows it to its end, announces its id to ``on_event``
        listeners (a ``"started"`` `RunEvent`), logs a WARNING with the id (``extra``
        ``run_id``) and lists its handle in `orphaned_runs`. The POST is never re-sent for
        a caller that left. `run_action` and `stored_actions.run` behave the same way.

        Name the action either by `action` (an id you looked up) or by `app` and
        `action_key`: then a fresh id is looked up with Get Actions right before the run, as
        Zapier asks (ids change between lookups; keys are stable). The lookup is one more
        request through the same rate limiter.

        Args:
            action: The action id from Get Actions (e.g. ``"core:abc123"``).
            app: The app id whose action to run (with `action_key`, instead of `action`).
            action_key: The action's stable key, e.g. ``"send_email"``.
            action_type: The action's type for the lookup (``"WRITE"``, ``"SEARCH"``, ...).
            authentication: The authentication (connection) id, or None for apps that need
                none.
            inputs: Input field id to value; must be JSON-serialisable.
            callback_url: An https URL Zapier POSTs the outcome to. The client appends a
                secret per-run token to it (query parameter ``zapier_async_token``), and
                `deliver_callback` accepts only callbacks that carry it.
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            RateLimitedError: The budget would not allow sending within the cap, or Zapier
                asked to wait longer than `max_server_wait`; nothing was created.
            OutcomeUnknownError: The POST failed after it may have reached Zapier (a timeout, a
                5xx, a redirect); it was not re-sent (that could run the action twice).
            ActionNotFoundError: The app has no action with `action_key` of `action_type`.
            APIError: Zapier refused the request.
            UnexpectedError: The auth provider failed in a way it did not type; nothing
                was sent.
        """
        self._ensure_open()
        if action is not None and (app is not None or action_key is not None):
            raise errors.InvalidRequestError(
                "pass either action (an id) or app and action_key, not both", "action"
            )
        if action is None:
            if app is None or action_key is None:
                raise errors.InvalidRequestError(
                    "name the action: pass action (an id), or app and action_key", "action"
                )
            # Validate everything else first: a bad input must not cost a lookup.
            proto.create_action_run(
                action="lookup",
                authentication=authentication,
                inputs=inputs,
                callback_url=callback_url,
                allow_loopback_callback=self._allow_loopback_callback,
            )
            found = await self.find_action(
                app, action_key, action_type=action_type, max_rate_limit_wait=max_rate_limit_wait
            )
            action = found.id
        bound_url, callback_token = bind_callback_url(callback_url)
        request = proto.create_action_run(
            action=action,
            authentication=authentication,
            inputs=inputs,
            callback_url=bound_url,
            allow_loopback_callback=self._allow_loopback_callback,
        )
        if app is not None:
            # Looked-up ids change per lookup; learn the action's durations under its key.
            request = attrs.evolve(request, poll_key=f"{app}/{action_key}/{action_type}")
        return await self._submit(
            request, Priority.INTERACTIVE, max_rate_limit_wait, callback_token=callback_token
        )

    async def run_action(
        self,
        *,
        selected_api: str,
        action_key: str,
        action_type: str,
        inputs: Mapping[str, Any] | None = None,
        connection_id: str | None = None,
        page: str | int | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> RunHandle:
        """Start a one-off Actions API run (`POST /actions/v1/runs`) and return its handle.

        The same never-duplicate rules as `run()` apply: the POST is re-sent only when it
        provably did not reach Zapier. The run is read at `GET /actions/v1/runs/{id}` (HTTP
        202 means still running), or with long-polls when the client has `long_poll`.

        Args:
            selected_api: The app implementation, e.g. ``"SlackCLIAPI@1.0.0"``.
            action_key: The action's stable key.
            action_type: ``"read"``, ``"write"`` or ``"search"`` (any case; sent lowercase).
            inputs: Input field id to value; must be JSON-serialisable.
            connection_id: The connection (authentication) id, or None.
            page: For bulk reads, the `next_page` of the previous run.
            callback_url: An https URL Zapier POSTs the outcome to (see `deliver_callback`).
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            RateLimitedError: The budget would not allow sending within the cap.
            OutcomeUnknownError: The POST may have reached Zapier; it was not re-sent.
            APIError: Zapier refused the request.
        """
        self._ensure_open()
        bound_url, callback_token = bind_callback_url(callback_url)
        request = actions.create_run(
            selected_api=selected_api,
            action_key=action_key,
            action_type=action_type,
            inputs=inputs,
            connection_id=connection_id,
            page=page,
            callback_url=bound_url,
            allow_loopback_callback=self._allow_loopback_callback,
        )
        return await self._submit(
            request,
            Priority.INTERACTIVE,
            max_rate_limit_wait,
            kind="actions_v1",
            callback_token=callback_token,
        )

    def deliver_callback(self, run: Run, *, token: str | None = None) -> bool:
        """Resolve the handle of `run` from a completion callback (see `zapier_async.callbacks`).

        Callbacks carry the run's final state, so the handle ends now instead of at its next
        poll, and its safety-net polling stops. Deliveries are idempotent: a run whose handle
        is already done, or that this client does not follow, is ignored.

        Zapier's signature only proves that Zapier sent *a* callback, not which run's body
        it is: a valid one could be replayed with a forged body for another run. So the
        body is believed only when `token` is the secret the client appended to this run's
        `callback_url` (``zapier_async_token``), compared in constant time. What remains
        trusted: whoever can read the callback URL (Zapier, your receiver's logs and proxies)
        can resolve that one run; keep such logs private.

        Args:
            run: The run parsed from the callback body (it carries its `id`).
            token: The ``zapier_async_token`` query parameter of the request that delivered it.

        Returns:
            True if a handle followed by this client took the update; False for an unknown
            or finished run, and for a missing or wrong token (logged at WARNING; the
            handle is left to its polling).
        """
        handle = self._handles.get(run.id)
        if handle is None or handle.done():
            return False
        expected = handle._callback_token
        if (
            expected is None
            or not isinstance(token, str)
            or not hmac.compare_digest(token.encode(), expected.encode())
        ):
            logger.warning(
                "callback for run %s refused: %s; the run is still polled",
                run.id,
                "it carries no token"
                if token is None
                else "its token does not match the one its callback_url was created with"
                if expected is not None
                else "the run was not created with a callback_url by this client",
                extra={"run_id": run.id, "action": handle.poll_key},
            )
            return False
        previous = handle.status
        handle._update(run)
        self._metrics.run_read(handle, previous, run)
        if handle.done():
            self._poller.forget(handle)
            self._observe(handle, self._clock.monotonic() - handle.created_at)
        return True

    def resume(
        self,
        token_or_run_id: str,
        *,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> RunHandle:
        """Follow a run again from its id or `continuation_token()`.

        Within one client, resuming a run that is still followed returns the same handle, so
        a run is never polled twice; a run whose handle is done (ended, cancelled) gets a
        fresh handle that reads it again. The run is read once at once.

        Args:
            token_or_run_id: A continuation token, or a `/v2/action-runs` run id.
            callback: The run was created with a `callback_url` whose callbacks reach this
                client. Only with its `callback_token` can they be accepted; without it,
                its callbacks are refused and the run is polled at the ordinary cadence.
            callback_token: The original handle's `RunHandle.callback_token` (a secret):
                callbacks carrying it resolve the handle (`deliver_callback`), and after the
                first read the run is polled only at the safety-net cadence
                (`CallbackPolling`), as it was before the resume. Implies `callback`.
        """
        self._ensure_open()
        locator = proto.decode_continuation_token(token_or_run_id)
        existing = self._handles.get(locator.run_id)
        if existing is not None and not existing.done() and existing.locator == locator:
            if callback_token is not None and existing._callback_token is None:
                existing._callback_token = callback_token
            return existing
        if callback_token is not None and not (isinstance(callback_token, str) and callback_token):
            raise errors.InvalidRequestError("must be a non-empty string", "callback_token")
        return self._track(locator, first_delay=0.0, callback_token=callback_token)

    async def get_run(
        self, run_id: str, *, max_rate_limit_wait: float | _Unset | None = _UNSET
    ) -> Run:
        """Read a run's current state once (`GET /v2/action-runs/{id}`), without following it."""
        self._ensure_open()
        request = proto.get_action_run(run_id)
        response = await self._send(
            request, priority=Priority.INTERACTIVE, max_wait=self._cap(max_rate_limit_wait)
        )
        return proto.parse_run(response, request, run_id=run_id)

    # --- bulk ---------------------------------------------------------------------------------

    def run_many(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
        on_sending: Callable[[int, RunRequest], object] | None = None,
        on_submitted: Callable[[int, RunRequest, str], object] | None = None,
    ) -> RunMany:
        """Fan runs out, at most `concurrency` live at once; iterate outcomes as they end.

        The input is read lazily (an iterable or async iterable of any length is never
        materialised), submissions share this client's rate limiter (at `Priority.BULK`,
        waiting for the budget instead of raising `RateLimitedError`) and retry budget, and
        one item's failure never stops the others: it becomes that item's `Outcome`.

        Breaking out of ``async for``, cancelling the consumer, `RunMany.aclose()` or leaving
        ``async with client.run_many(...) as outcomes:`` stops submitting and ends every task
        the job started. Runs accepted but not yet reported then stay reachable by id via
        `RunMany.unfinished()` (and `client.resume(run_id)`).

        Args:
            requests: `RunRequest` values, or mappings with the same keys (``action``,
                ``authentication``, ``inputs``, ``callback_url``, ``key``). An item that is
                neither, or is invalid, yields an `Outcome` with `InvalidRequestError` and is
                never sent.
            concurrency: Runs submitted and not yet ended, at most.
            progress: Called with each outcome as it is yielded (exceptions are logged).
            on_sending: Journal hook ``(index, request)``, called right before the create
                goes on the wire (after the rate limiter allowed it). If it raises, nothing
                is sent and the item's outcome carries the exception.
            on_submitted: Journal hook ``(index, request, run_id)``, called as soon as Zapier
                accepted the run (exceptions are logged).

        Returns:
            An async iterator (and async context manager) of `Outcome`, in completion order.
        """
        from ._bulk import RunMany

        self._ensure_open()
        return RunMany(
            self,
            requests,
            concurrency=concurrency,
            progress=progress,
            on_sending=on_sending,
            on_submitted=on_submitted,
        )

    async def gather(
        self,
        requests: Iterable[RunRequest | Mapping[str, Any]]
        | AsyncIterable[RunRequest | Mapping[str, Any]],
        *,
        concurrency: int = 50,
        progress: Callable[[Outcome], object] | None = None,
    ) -> list[Outcome]:
        """Like `run_many`, but wait for every outcome and return them in input order.

        The outcomes are kept in memory: for very large inputs iterate `run_many` instead.

        Args:
            requests: As for `run_many`.
            concurrency: Runs submitted and not yet ended, at most.
            progress: Called with each outcome as it arrives.

        Returns:
            One `Outcome` per input item, in input order.
        """
        async with self.run_many(requests, concurrency=concurrency, progress=progress) as outcomes:
            collected = [outcome async for outcome in outcomes]
        collected.sort(key=lambda outcome: outcome.index)
        return collected

    # --- metrics ------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        """A snapshot of this client's counters: runs, latency, requests, errors, waits.

        Returns:
            A frozen `Metrics` value (cheap to take; nothing is reset).
        """
        return self._metrics.snapshot(in_flight=self.in_flight, limiter=self._limiter.snapshot())

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every request, retry, rate-limit and run event.

        Listeners run synchronously on the event loop, so keep them quick (hand off to a
        queue for slow exporters). An exception a listener raises is logged and ignored.

        Args:
            listener: A callable taking one event value.
        """
        self._metrics.listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> bool:
        """Stop calling `listener`; returns whether it was registered."""
        try:
            self._metrics.listeners.remove(listener)
        except ValueError:
            return False
        return True

    # --- discovery ------------------------------------------------------------------------
    # https://docs.zapier.com/powered-by-zapier/api-reference/actions/get-actions and the
    # inputs/choices/outputs/authentications pages. Discovery requests go through `_send` at
    # INTERACTIVE priority, like any caller-facing request; the POSTs among them create
    # nothing, so they are marked idempotent and may be retried.

    async def _discover(
        self, request: proto.Request, max_rate_limit_wait: float | _Unset | None
    ) -> proto.Response:
        self._ensure_open()
        return await self._send(
            request, priority=Priority.INTERACTIVE, max_wait=self._cap(max_rate_limit_wait)
        )

    async def list_actions(
        self,
        app: str,
        action_type: str | None = None,
        *,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> list[Action]:
        """An app's actions (`GET /v2/actions`), each with a fresh id.

        Args:
            app: The app id (a uuid from `/v2/apps`).
            action_type: Only actions of this type (``"WRITE"``, ``"SEARCH"``, ...).
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.get_actions(app, action_type)
        return disco.parse_actions(await self._discover(request, max_rate_limit_wait), request)

    async def find_action(
        self,
        app: str,
        action_key: str,
        *,
        action_type: str | None = "WRITE",
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> Action:
        """Look up an action by its stable key, with a fresh id (one Get Actions request).

        Args:
            app: The app id.
            action_key: The action's key, e.g. ``"send_email"``.
            action_type: Its type; None matches any type.
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            ActionNotFoundError: The app lists no such action.
        """
        if not isinstance(action_key, str) or not action_key:
            raise errors.InvalidRequestError("must be a non-empty string", "action_key")
        kind = None if action_type is None else disco.check_action_type(action_type)
        actions = await self.list_actions(app, kind, max_rate_limit_wait=max_rate_limit_wait)
        return disco.pick_action(actions, app=app, action_key=action_key, action_type=kind)

    async def action_inputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> list[disco.InputItem]:
        """An action's input fields (`POST /v2/actions/{id}/inputs`).

        Args:
            action_id: The action id from Get Actions.
            authentication: The connection id, or None for apps that need none.
            inputs: Values given so far (dynamic fields depend on them).
            max_rate_limit_wait: Overrides the client's cap for this call.

        Returns:
            `InputField`, `InfoField` and `Fieldset` values, in Zapier's order.
        """
        request = disco.action_inputs(action_id, authentication=authentication, inputs=inputs)
        response = await self._discover(request, max_rate_limit_wait)
        return disco.parse_input_fields(response, request)

    async def action_choices(
        self,
        action_id: str,
        input_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        page: int | None = None,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> ChoicePage:
        """One page of the values a SELECT input field takes (`POST .../choices`).

        Args:
            action_id: The action id from Get Actions.
            input_id: The input field's id.
            authentication: The connection id, or None.
            inputs: Values given so far, or None.
            page: The page (1-based); None for the first. `ChoicePage.next_page` says
                what to ask for next.
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.action_choices(
            action_id, input_id, authentication=authentication, inputs=inputs, page=page
        )
        return disco.parse_choices(await self._discover(request, max_rate_limit_wait), request)

    async def action_outputs(
        self,
        action_id: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        fetch_live_samples: bool = False,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> list[OutputField]:
        """The fields an action's results have (`POST /v2/actions/{id}/outputs`).

        Args:
            action_id: The action id from Get Actions.
            authentication: The connection id, or None.
            inputs: Values given so far.
            fetch_live_samples: Ask the app for live samples (slower; not for WRITE actions).
            max_rate_limit_wait: Overrides the client's cap for this call.
        """
        request = disco.action_outputs(
            action_id,
            authentication=authentication,
            inputs=inputs,
            fetch_live_samples=fetch_live_samples,
        )
        response = await self._discover(request, max_rate_limit_wait)
        return disco.parse_output_fields(response, request)

    async def list_connections(
        self,
        app: str,
        *,
        page_size: int = 100,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> AsyncGenerator[Connection, None]:
        """Every connection (authentication) the user owns for `app`, page by page.

        Follows `GET /v2/authentications?app=&limit=&offset=` until `links.next` is empty.
        Expired connections are included (`Connection.is_expired`).

        Args:
            app: The app id.
            page_size: Connections asked for per request.
            max_rate_limit_wait: Overrides the client's cap for each request.

        Yields:
            `Connection` values, in Zapier's order.
        """
        offset: int | None = 0
        while offset is not None:
            request = disco.list_authentications(app, limit=page_size, offset=offset)
            response = await self._discover(request, max_rate_limit_wait)
            page = disco.parse_connections(response, request, offset=offset)
            for connection in page.connections:
                yield connection
            offset = page.next_offset

    async def find_connection(
        self, app: str, *, max_rate_limit_wait: float | _Unset | None = _UNSET
    ) -> Connection:
        """The user's first usable (not expired) connection to `app`.

        Args:
            app: The app id.
            max_rate_limit_wait: Overrides the client's cap for each request.

        Raises:
            NoConnectionError: None, or only expired ones (`expired` says how many); the user
                has to connect (or reconnect) the app.
        """
        expired = 0
        async with contextlib.aclosing(
            self.list_connections(app, max_rate_limit_wait=max_rate_limit_wait)
        ) as connections:
            async for connection in connections:
                if not connection.is_expired:
                    return connection
                expired += 1
        raise errors.NoConnectionError(app, expired)

    async def _send_auth_request(self, request: proto.Request, base_url: str) -> proto.Response:
        """Send an auth provider's token request (see `AuthContext.send`).

        Not through the limiter: the token endpoint is another host with another budget.
        """
        return await self._pipeline.send_unlimited(request, base_url)

    # --- internals ------------------------------------------------------------------------

    def _cap(self, value: float | _Unset | None) -> float | None:
        return self._max_wait if isinstance(value, _Unset) else value

    async def _submit(
        self,
        request: proto.Request,
        priority: Priority,
        max_rate_limit_wait: float | _Unset | None,
        *,
        kind: proto.RunKind = "action_run",
        stored_action_id: str | None = None,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> RunHandle:
        """Send a run-creating request and track the run it created.

        `callback_token` is the secret `bind_callback_url` put into the request's
        `callback_url`: callbacks must carry it (`deliver_callback`). A request built with a
        `callback_url` but without a token (`callback=True`) is tracked at the safety-net
        cadence but takes no callback.
        """
        submitted_at = self._clock.monotonic()
        created = partial(
            self._created,
            request,
            kind=kind,
            stored_action_id=stored_action_id,
            callback=callback,
            callback_token=callback_token,
            submitted_at=submitted_at,
        )
        try:
            response = await self._send(
                request,
                priority=priority,
                max_wait=self._cap(max_rate_limit_wait),
                orphan=partial(created, orphaned=True),
            )
            return created(response)
        except errors.ZapierError as exc:
            self._metrics.error(exc)
            raise

    def _created(
        self,
        request: proto.Request,
        response: proto.Response,
        *,
        kind: proto.RunKind,
        stored_action_id: str | None,
        callback: bool,
        callback_token: str | None,
        submitted_at: float,
        orphaned: bool = False,
    ) -> RunHandle:
        """Track the run a 2xx answer to a create names, and announce it ("started").

        `orphaned`: its caller was cancelled while the create was on the wire (see
        `orphaned_runs`); the run is followed all the same, and logged.

        Raises:
            OutcomeUnknownError: The answer names no usable run id.
        """
        try:
            run_id = proto.parse_created_run(response, request)
            locator = proto.RunLocator(
                kind=kind,
                run_id=proto.validate_id(run_id, field="id"),
                stored_action_id=stored_action_id,
            )
        except (errors.DecodeError, errors.InvalidRequestError) as exc:
            # Zapier said 2xx, so a run probably exists, but we cannot tell its id.
            raise errors.OutcomeUnknownError(
                "Zapier accepted the request but its answer names no usable run id",
                request.describe(),
                str(exc),
            ) from exc
        if self._closed:
            # The client was closed while the POST was in flight, but Zapier created the run:
            # hand its id back on a detached handle (as aclose() does for runs in flight)
            # instead of raising and losing the id of a run that exists.
            handle = RunHandle(locator, self._poller, created_at=self._clock.monotonic())
            handle._callback_token = callback_token
            handle._finish(errors.RunDetachedError(locator.run_id, "client closed"))
        else:
            handle = self._track(
                locator,
                first_delay=None,
                poll_key=request.poll_key,
                callback=callback,
                callback_token=callback_token,
            )
        # Announced even on a detached handle: a listener (a journal) learns the id.
        self._metrics.run_started(handle, submitted_at)
        if orphaned:
            self._orphans.append(handle)
            logger.warning(
                "run %s created for a caller that was cancelled; %s (client.orphaned_runs)",
                handle.id,
                "the client was closed" if self._closed else "it is followed to its end",
                extra={"run_id": handle.id, "action": request.poll_key},
            )
        return handle

    def _track(
        self,
        locator: proto.RunLocator,
        *,
        first_delay: float | None,
        poll_key: str | None = None,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> RunHandle:
        now = self._clock.monotonic()
        handle = RunHandle(locator, self._poller, created_at=now)
        self._handles[locator.run_id] = handle
        if callback_token is not None:
            handle._callback_token = callback_token
            callback = True
        if callback:
            # The callback resolves it; polls are only the safety net (`CallbackPolling`).
            handle.via_callback = True
            if first_delay is None:
                first_delay = self._callback_polling.delay(0, self._rng)
        if first_delay is None:
            first_delay = self._polling.first_delay(handle, poll_key, self._rng)
        self._poller.schedule(handle, first_delay)
        return handle

    def _observe(self, handle: RunHandle, elapsed: float) -> None:
        """Teach the poll planner how long `handle`'s run took; poll what it brings forward."""
        for other, delay in self._polling.observe(handle, elapsed):
            self._poller.schedule(other, delay)

    async def _poll(self, handle: RunHandle) -> None:
        """Read one handle's run once; update, finish or reschedule it. Never raises."""
        if handle.done():
            return
        locator = handle.locator
        long_poll = self._long_poll
        if long_poll is not None and locator.kind == "actions_v1" and not handle.via_callback:
            request = actions.poll_request(locator, long_poll=long_poll)
        else:
            request = proto.poll_request(locator)
        priority = Priority.INTERACTIVE if handle.awaited else Priority.POLL
        attempt = handle.poll_attempts
        handle.poll_attempts += 1
        sent_at = self._clock.monotonic()
        try:
            response = await self._send(request, priority=priority, max_wait=None)
            run = proto.parse_run(response, request, run_id=handle.id)
        except _FATAL_POLL_ERRORS as exc:
            self._metrics.error(exc)
            self._metrics.run_lost(handle, exc)
            handle._finish(exc)
            return
        except Exception as exc:
            # Anything else is a failed poll, typed or not (an auth provider's OSError, a
            # closed session, ...): retried up to max_poll_failures, then the handle fails
            # with it. Never dropped: an awaiter of a handle nobody polls would hang.
            error = exc
            if not isinstance(exc, errors.ZapierError):
                error = errors.UnexpectedError(
                    f"reading the run failed: {type(exc).__name__}", request.describe()
                )
                error.__cause__ = exc
            self._metrics.error(error)
            handle.poll_failures += 1
            if handle.poll_failures >= self._max_poll_failures:
                self._metrics.run_lost(handle, error)
                logger.warning(
                    "giving up on run %s after %d failed reads: %s",
                    handle.id,
                    handle.poll_failures,
                    error,
                    extra={"run_id": handle.id, "action": handle.poll_key},
                )
                handle._finish(error)
                return
            delay = self._retry_policy.delay(handle.poll_failures, self._rng)
            # Transient, and retried: not a WARNING (the give-up above is one).
            logger.info(
                "reading run %s failed (%s); trying again in %.1fs",
                handle.id,
                error,
                delay,
                extra={"run_id": handle.id, "action": handle.poll_key},
            )
            self._poller.schedule(handle, delay)
            return
        handle.poll_failures = 0
        self._polling.round_trip(self._clock.monotonic() - sent_at)
        previous = handle.status
        handle._update(run)
        self._metrics.run_read(handle, previous, run)
        elapsed = self._clock.monotonic() - handle.created_at
        if handle.done():
            self._observe(handle, elapsed)
            return
        # A server's hint is capped once, here, for every way of reading the run.
        hint = cap_hint(_throttle_hint(run), min(self._poll_policy.max_hint, self._max_server_wait))
        if handle.via_callback:
            delay = self._callback_polling.delay(attempt + 1, self._rng)
        elif request.long_poll is not None and long_poll is not None:
            delay = long_poll.next_delay(
                elapsed=self._clock.monotonic() - sent_at,
                retry_after=parse_retry_after(
                    response.header("retry-after"), now=self._clock.time()
                ),
            )
            if hint is not None:
                delay = max(delay, hint)
        else:
            delay = self._polling.next_delay(handle, attempt + 1, elapsed, self._rng, hint=hint)
        self._poller.schedule(handle, delay)

    async def _send(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        orphan: Orphan | None = None,
    ) -> proto.Response:
        """Send through the limiter with retries (see `SendPipeline.send`)."""
        return await self._pipeline.send(
            request, priority=priority, max_wait=max_wait, orphan=orphan
        )


def _throttle_hint(run: Run) -> float | None:
    """A throttled run error's `delay` (seconds), honoured before the next poll."""
    delays = [e.delay for e in run.errors if e.delay is not None and e.delay > 0]
    if not delays or run.status is RunStatus.SUCCESS:
        return None
    return max(delays)

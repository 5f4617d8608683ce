"""ZapierClient: composes auth, transport, limiter and poller behind the public methods.

The façade: requests, creates and tracking happen in `_engine.Engine` (token, limiter slot,
transport, retries, the poller); the run, resume, bulk and discovery methods live in
`_views.RunsView`, which `client.with_auth(auth)` views share.
Cancellation is ordinary: a caller cancelled while it waits (for a token, a slot, a handle)
just leaves, and nothing stays counted; a caller cancelled while its create is on the wire
gets `CancelledError` at once, but the POST is the client's from the moment the limiter let
it go: it completes, and a run it created is followed, announced (a ``"started"``
`RunEvent`), logged and listed in `ZapierClient.orphaned_runs`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _actions as actions
from . import errors
from ._auth import AuthProvider
from ._backoff import PollPolicy, RetryPolicy
from ._clock import Clock, SystemClock
from ._closing import AsyncCloseable
from ._engine import MAX_ORPHANS, UNSET, Engine, Unset
from ._guards import GuardedTransport, check_base_url
from ._handle import RunHandle
from ._limiter import Limiter, LimiterLike, Priority
from ._metrics import EventListener, MeteredTransport, Metrics, Recorder
from ._ratelimit import DEFAULT_MAX_SERVER_WAIT, check_max_server_wait, check_seconds
from ._runstore import RunStore
from ._transport import AiohttpTransport, Transport
from ._views import AuthView, RunsView
from .models import Run

if TYPE_CHECKING:
    import aiohttp  # noqa: TID251 (only for the type of a caller-owned session)

    from ._pipeline import SendPipeline
    from ._scheduler import Poller

__all__ = ["MAX_ORPHANS", "ZapierClient"]

DEFAULT_BASE_URL: Final = "https://api.zapier.com"

# Old private names, kept importable.
_Unset = Unset
_UNSET = UNSET


class ZapierClient(AsyncCloseable, RunsView):
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
            The cap is per credential (the client's own and each `with_auth` view's), under
            a total of 32 times it, so one user's polls waiting for that user's budget never
            hold back another user's.
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
            the budget from `X-RateLimit-*` headers, or, when answers do not say what is
            left, from the first 429 (a rate that later 429s tighten, forgotten after a
            quiet while). Only for the client's own limiter.
        rate_window: The length in seconds of the server's rate-limit windows, if known
            beforehand (Zapier documents 60 s for the Workflow API's budgets, 300 s for the
            Actions API's 200-per-5-minutes): each window's end is then known to the round
            trip instead of to the second a whole-second ``X-RateLimit-Reset`` leaves open,
            so no request is held back at a window's turn (see `Limiter`'s
            ``window_length``). A length an answer contradicts is dropped. None (default)
            learns the end from the headers. Only for the client's own limiter.
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
        bucket_key: ``bucket_key(credential_id, family) -> Hashable``: the limiter bucket a
            request spends. By default one per credential (`with_auth` views each have their
            own; the client's own credential, id None, spends the limiter's default bucket)
            and per endpoint family where Zapier counts separately (``"actions_api_results"``
            for Actions API reads of runs; ``"api"`` for the rest). Return a constant to
            declare one shared bucket (the Workflow API's per-partner and per-IP limits). A
            limiter without keys (no ``supports_keys``, e.g. ``RedisLimiter`` today) has one
            bucket for all; that is checked once, here.
        run_store: Where `run(..., idempotency_key=...)` records each key's run
            (`MemoryRunStore`, ``zapier_async.redis.RedisRunStore``): a second call with the
            same key resumes the run instead of creating another.
        track_credentials: Keep run figures per credential (`CredentialMetrics`, read with
            `AuthView.metrics()`) for this many most recently used credentials; 0 (default)
            keeps none, so nothing is labelled per end user.
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
        rate_window: float | None = None,
        on_rate_limited: Callable[[float, Priority], None] | None = None,
        on_event: EventListener | None = None,
        long_poll: actions.LongPoll | None = None,
        callback_polling: actions.CallbackPolling | None = None,
        allow_insecure_callback_url_for_testing: bool = False,
        bucket_key: Callable[[Hashable, str], Hashable] | None = None,
        run_store: RunStore | None = None,
        track_credentials: int = 0,
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
        if bucket_key is not None and not callable(bucket_key):
            raise errors.InvalidRequestError(
                "must be callable(credential_id, family)", "bucket_key"
            )
        if run_store is not None and not isinstance(run_store, RunStore):
            raise errors.InvalidRequestError(
                "must be a run store such as zapier_async.MemoryRunStore()", "run_store"
            )
        if (
            isinstance(track_credentials, bool)
            or not isinstance(track_credentials, int)
            or track_credentials < 0
        ):
            raise errors.InvalidRequestError("must be an integer >= 0", "track_credentials")
        max_server_wait = check_max_server_wait(max_server_wait)
        self._auth = auth
        self._base_url = check_base_url(base_url)
        clock = clock if clock is not None else SystemClock()
        raw: Transport = transport if transport is not None else AiohttpTransport(session)
        metrics = Recorder(clock)
        if on_event is not None:
            metrics.listeners.append(on_event)
        if track_credentials > 0:
            metrics.track_credentials(track_credentials)
        if limiter is not None and (
            rate_limit is not None or rate_window is not None or on_rate_limited is not None
        ):
            raise errors.InvalidRequestError(
                "rate_limit, rate_window and on_rate_limited configure the client's own "
                "limiter; pass them to the shared Limiter instead (rate_window is its "
                "window_length)"
            )
        own_limiter = limiter is None
        if rate_window is not None:
            rate_window = check_seconds(rate_window, "rate_window")
        if limiter is None:
            limiter = Limiter(
                clock=clock,
                rate=rate_limit,
                window_length=rate_window,
                on_wait=on_rate_limited,
                max_server_wait=float(max_server_wait),
                # Its own budget: spend each window as fast as the server allows, down to a
                # reserve for awaited (interactive) calls (issue #15, "Spend the window").
                spend_window=True,
            )
        self._engine = Engine(
            auth=auth,
            transport=MeteredTransport(GuardedTransport(raw), metrics, clock),
            limiter=limiter,
            owns_limiter=own_limiter,
            clock=clock,
            base_url=self._base_url,
            request_timeout=float(request_timeout),
            retry_policy=retry_policy if retry_policy is not None else RetryPolicy(),
            poll_policy=poll_policy if poll_policy is not None else PollPolicy(),
            rng=rng if rng is not None else random.Random(),
            metrics=metrics,
            max_server_wait=float(max_server_wait),
            max_wait=max_rate_limit_wait,
            max_concurrent_polls=max_concurrent_polls,
            max_poll_failures=max_poll_failures,
            long_poll=long_poll,
            callback_polling=callback_polling
            if callback_polling is not None
            else actions.CallbackPolling(),
            allow_loopback_callback=bool(allow_insecure_callback_url_for_testing),
            bucket_key=bucket_key,
            run_store=run_store,
        )
        self._attach(self._engine, None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ZapierClient:
        """A client configured from environment variables (see `zapier_async._config`).

        Reads the variables Zapier's own SDK uses where they exist (client credentials id
        and secret, base URL, retries) and ``ZAPIER_*`` ones otherwise.

        Args:
            environ: The variables; `os.environ` by default.
            overrides: Keyword arguments of `ZapierClient`, taking precedence.

        Raises:
            InvalidRequestError: A variable is malformed or missing (named in the message,
                its value never quoted).
        """
        from ._config import client_options_from_env

        options = client_options_from_env(os.environ if environ is None else environ)
        options.update(overrides)
        return cls(**options)

    def with_auth(self, auth: AuthProvider) -> AuthView:
        """A view of this client that sends with another credential (an end user's token).

        The view shares this client's transport, poller, metrics, limiter and lifecycle:
        `run`, `resume`, `run_many`, `run_action`, `stored_actions` and discovery, each
        request carrying its own token and paced by its own budget (the limiter bucket of
        its credential: ``auth.bucket_id`` if the provider has one, else an id assigned per
        provider object; never the token). A 429 for one user freezes only that user's
        bucket. Creating a view costs no task and no I/O; views need no closing; closing
        the client ends them all (a view's later call raises `InvalidRequestError`, its
        handles are detached).

        Args:
            auth: The end user's auth provider, e.g. ``BearerToken(user_token)``.

        Raises:
            InvalidRequestError: `auth` is not an auth provider.
        """
        if not isinstance(auth, AuthProvider):
            raise errors.InvalidRequestError(
                "must be an auth provider such as zapier_async.BearerToken('...')", "auth"
            )
        return AuthView(self, self._engine, self._engine.credential(auth))

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
        await self._engine.aclose()

    @property
    def closed(self) -> bool:
        """True after `aclose()`."""
        return self._engine.closed

    @property
    def limiter(self) -> LimiterLike:
        """The rate limiter this client spends its budget through."""
        return self._engine.limiter

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
        return tuple(self._engine.orphans)

    @property
    def in_flight(self) -> int:
        """Runs this client is following now."""
        return self._engine.in_flight

    def __repr__(self) -> str:
        state = "closed" if self._engine.closed else "open"
        return f"<ZapierClient {self._base_url} {state} auth={self._auth!r}>"

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
        return self._engine.deliver(run, token)

    # --- metrics ------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        """A snapshot of this client's counters: runs, latency, requests, errors, waits.

        Returns:
            A frozen `Metrics` value (cheap to take; nothing is reset).
        """
        return self._engine.metrics.snapshot(
            in_flight=self.in_flight, limiter=self._engine.limiter.snapshot()
        )

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every request, retry, rate-limit and run event.

        Listeners run synchronously on the event loop, so keep them quick (hand off to a
        queue for slow exporters). An exception a listener raises is logged and ignored.

        Args:
            listener: A callable taking one event value.
        """
        self._engine.metrics.listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> bool:
        """Stop calling `listener`; returns whether it was registered."""
        try:
            self._engine.metrics.listeners.remove(listener)
        except ValueError:
            return False
        return True

    # --- old private names ----------------------------------------------------------------
    # Kept as thin aliases of the engine until every caller (`_bulk`, `_sync`, tests) calls
    # `self._engine` (or a view's methods) instead. Not API.

    @property
    def _poller(self) -> Poller:
        return self._engine.poller

    @property
    def _limiter(self) -> LimiterLike:
        return self._engine.limiter

    @property
    def _pipeline(self) -> SendPipeline:
        return self._engine.pipeline

    @property
    def _metrics(self) -> Recorder:
        return self._engine.metrics

    @property
    def _clock(self) -> Clock:
        return self._engine.clock

    @property
    def _closed(self) -> bool:
        return self._engine.closed

    @property
    def _handles(self) -> Mapping[str, RunHandle]:
        return self._engine.handles

    def _check_loop(self) -> None:
        self._engine.check_loop()

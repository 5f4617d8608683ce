"""An emulator of Zapier's Partner API run endpoints, for tests and benchmarks.

`FakeZapier` is an aiohttp.web server on loopback that speaks the HTTP contract of
`POST /v2/action-runs` and `GET /v2/action-runs/{id}` as Zapier's published Partner OpenAPI
describes it (https://docs.zapier.com/powered-by-zapier/api-reference/actions/create-an-action-run,
https://docs.zapier.com/powered-by-zapier/api-reference/actions/retrieve-action-run). It has
knobs for run durations, failure rates, latency, rate limits and injected faults, and it keeps
the server-side truth a test or a benchmark needs: when each run ended, how often it was
polled, how many creates were duplicates.

Theory of operation
-------------------
A run costs nothing while it runs. It is a record with a creation time, a duration and a
final outcome, all decided when the run is created; its status is computed when somebody
asks (a GET, `FakeZapier.run`) from `clock.monotonic()`. There is no task, timer or callback
per run, so 10,000 runs in flight are 10,000 small records and every request is a handful of
dict look-ups. With a `FakeClock` a run's status depends only on that clock.

Every request, on every route and on no route at all, goes through one pipeline,
`FakeZapier._exchange`:

1. count it and record it (`FakeZapier.stats`, `FakeZapier.requests`);
2. rate limiting (fixed windows, shared or per bearer token; every request counts): a
   refused request gets 429 and goes no further (`_fake_limits`);
3. fault injection: the next fault queued by `FakeZapier.inject` that matches the endpoint,
   else one drawn at random with probability `fault_rate`. A fault *before* processing
   replaces the request (nothing happens on the server); a fault *after* processing, which
   only creates can get, lets the run be created and then loses or spoils the answer;
4. authentication (`Authorization: Bearer <token>`);
5. the endpoint's handler: request in, `_Reply` out;
6. latency, then the response, with the rate-limit headers.

A new surface (token endpoint, discovery, Actions API runs, ...) is one handler plus one row
in `FakeZapier._routes`; it gets steps 1-4 and 6 for free.

Where things live: this module holds the knobs, the lifecycle, the test API and the
pipeline; `_fake_wire` the exchange and reply values; `_fake_runs` the run table and the
`/v2/action-runs` endpoints; `_fake_limits` the rate limiter; `_fake_faults` fault kinds and
the draw; `_fake_stats` the counters; `_fake_knobs` the knob checks; `_fake_actions` and
`_fake_auth` the Actions API, callbacks, token endpoint and discovery. None of them imports
this module.
"""

from __future__ import annotations

import asyncio
import random
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import MatchInfoError

from zapier_async._clock import Clock, SystemClock
from zapier_async.testing._fake_actions import JWKS_PATH, FakeActions
from zapier_async.testing._fake_auth import TOKEN_PATHS, FakeAuthServer, FakeCatalog
from zapier_async.testing._fake_auth import Handler as AuthHandler
from zapier_async.testing._fake_auth import routes as auth_routes
from zapier_async.testing._fake_faults import (
    _GATEWAY_ERRORS,
    DEFAULT_FAULTS,
    FaultKind,
    _draw,
    _plan,
    _PlannedFault,
    _to_faults,
)
from zapier_async.testing._fake_knobs import (
    _check_bool,
    _check_callable,
    _check_clock,
    _check_durations,
    _check_host,
    _check_http_status,
    _check_latency,
    _check_one_of,
    _check_port,
    _check_probability,
    _check_retry_after,
    _check_seconds,
    _check_seed,
    _sample,
    _to_statuses,
    _to_tokens,
)
from zapier_async.testing._fake_limits import (
    Budget,
    RateLimitWindow,
    _Admission,
    _check_rate_limit,
    _format_reset,
    _format_retry_after,
    _RateLimiter,
    _throttled,
)
from zapier_async.testing._fake_runs import (
    _DEFAULT_RUN_ERROR,
    Durations,
    RunRecord,
    _create,
    _default_results,
    _poll,
    _Run,
    _RunStore,
)
from zapier_async.testing._fake_stats import FakeStats, _Counters
from zapier_async.testing._fake_wire import (
    _HTML,
    _NOT_JSON,
    _TERMINAL,
    RecordedRequest,
    _bearer,
    _decode_json,
    _dumps,
    _EndpointHandler,
    _error,
    _Exchange,
    _Reply,
)

__all__ = ["FakeStats", "FakeZapier", "RecordedRequest", "RunRecord"]

Latency = float | tuple[float, float]
"""A fixed delay in seconds or a `(low, high)` uniform range."""

_SHUTDOWN_TIMEOUT: Final = 5.0
# The platform's action input limit: https://docs.zapier.com/platform/build/operating-constraints
_MAX_BODY: Final = 6 * 1024 * 1024


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)
class FakeZapier:
    """An HTTP emulator of Zapier's `POST /v2/action-runs` and `GET /v2/action-runs/{id}`.

    Point a real client at `url`. Runs are created as the spec says (HTTP 200,
    `{"data": {"type": "run", "id": <uuid4>}}`) and become terminal after their duration;
    every knob below is optional, and the defaults are a well-behaved, fast Zapier.

    Example:
        async with FakeZapier(durations=0.5, error_rate=0.1, seed=7) as fake:
            async with ZapierClient(auth=BearerToken("t"), base_url=fake.url) as client:
                ...
            assert fake.stats.duplicate_submissions == 0

    Per-run control: a create whose `inputs` holds the reserved key `"__fake__"` (an object)
    overrides that run. All keys are optional:
    `{"status": "success" | "error", "duration": seconds, "results": [...], "errors": [...]}`.
    `results`/`errors` are answered verbatim once the run has ended; a run that ends with
    `"error"` and no `errors` gets one default entry with code `"user"`. A bad `__fake__`
    object is a 400 pointing at it. Tests can also end a run with `complete()`.

    Faults (`fault_rate`, `faults`, `inject()`), by kind:

    - `"500"`, `"502"`, `"503"`, `"504"`: that status with a JSON:API error body. A 503
      that refuses a request carries `Retry-After: fault_retry_after`; a 503 after a create
      was processed carries none, because `Retry-After` on 503 promises the request was not
      processed (the rule by which clients may retry a create).
    - `"reset"`: the connection is dropped without an HTTP response (the transport is
      aborted); an aiohttp client sees `ServerDisconnectedError`. Note that aiohttp's client
      silently retries an idempotent request (GET) once after such a disconnect, so a single
      reset on a poll is invisible to it; inject `count=2` to make it show.
    - `"non_json"`: HTTP `non_json_status` with an HTML body.
    - `"slow"`: the answer waits `slow_delay` seconds (real time), or until
      `release_delayed()`. Before processing, the request is processed after the delay only
      if the client is still connected; after processing, the run exists and the real
      answer is merely late.
    - `"rate_limited"`: HTTP 429 (`throttled`), as the rate limiter refuses a request, with
      `Retry-After: fault_retry_after` (none when that is None) and, when `rate_limit` is
      set, the `X-RateLimit-*` headers with `Remaining: 0`. The request is not processed
      and does not count in `stats.rate_limited` (only in `stats.faults`). It never comes
      after a create (a 429 promises the request was not processed): `inject` refuses
      `after_create=True` with it. Not in the default `faults`.

    On a create, a fault happens after the run was created with probability
    `fault_after_create` (or when injected with `after_create=True`): the run exists but
    its id is lost, which is what tests of "never duplicate a run" need. Faults on other
    endpoints always happen before processing.

    Rate limiting (`rate_limit=(limit, window)`): fixed windows, by default each starting at
    the first request after the previous one ended (`rate_limit_window`); every request on
    every path counts, refused ones included (the token endpoint and the JWKS excepted).
    Every response then carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    `X-RateLimit-Reset`; a refused request gets 429 with `Retry-After` and is not
    processed. With `cooldown_after_429`, the request that exceeds the limit starts a
    cool-down during which everything is refused (requests during it do not extend it).
    With `rate_limit_headers="on_429"` only the 429s carry the `X-RateLimit-*` headers, as
    Zapier's Partner OpenAPI declares them: a client then sees no budget until refused.
    By default one budget serves every request; with `rate_limit_per_token` each bearer
    token has its own (and the headers describe that token's), sized by `rate_limit_for`.

    Args:
        host: The interface to listen on.
        port: The TCP port; 0 picks a free one.
        seed: Seeds the emulator's `random.Random`, through which all randomness goes (run
            ids, durations, outcomes, faults, latency). Same seed and same request order,
            same behaviour.
        clock: Where run durations and rate-limit windows are measured: an object with
            `monotonic()` and `time()` (a `zapier_async.Clock`; `zapier_async.testing.
            FakeClock` makes run status and windows depend only on the test). Sleeps
            (`latency`, `slow`) always use real time. Default: the system clock.
        tokens: Accepted bearer tokens; None accepts any non-empty token. Anything else
            gets 401.
        durations: How long a run takes before it becomes terminal: seconds (`math.inf` =
            until `complete()`), a `(low, high)` uniform range, or a callable
            `rng -> seconds`. Default `(0.0, 0.05)`: runs end within 50 ms.
        error_rate: Probability that a run ends with status `"error"` (one `errors` entry,
            code `"user"`).
        pending_statuses: The status (or statuses, walked in order over a run's lifetime,
            e.g. `("queued", "running")`) a GET answers before the run has ended.
        pending_http_status: 200, or 202 to answer pending GETs with HTTP 202 and the same
            body, as the Actions API does.
        latency: Extra delay before every response: seconds or a `(low, high)` range.
        rate_limit: `(limit, window_seconds)`, or None for no limit and no rate-limit
            headers (per token: the budget of a token `rate_limit_for` does not size).
        rate_limit_window: Where a window starts. `"first_request"` (default): at the first
            request after the previous window ended. `"aligned"`: at a multiple of the
            window length in epoch seconds on the emulator's wall clock (`clock.time()`),
            so a client's first window is usually partial, as on a server whose counters
            are keyed by the current minute.
        rate_limit_per_token: True gives each bearer token its own bucket, as Zapier's
            Actions API gives each user's token its own budget; a 429 then freezes only
            that token, and `X-RateLimit-*` describe that token's bucket. Requests without
            a bearer token share one bucket. False (default): one bucket for everything.
        rate_limit_for: `token -> (limit, window_seconds)` or None, the budget of one
            token (like the partner JWT's `rate_limit` claim); None (or a None answer)
            means `rate_limit`. Asked when a token's bucket is created (again after an
            idle bucket was dropped); needs `rate_limit_per_token=True`. A bad answer
            raises ValueError in the request (the client sees a 500).
        cooldown_after_429: Seconds during which everything is refused after the limit was
            exceeded (the Partner API documents 60).
        rate_limit_headers: Which answers carry `X-RateLimit-Limit`, `-Remaining` and
            `-Reset` when `rate_limit` is set: `"always"` (default) or `"on_429"` (only the
            429s: Zapier's Partner OpenAPI declares them on 429 and 503 answers only, so a
            client sees no budget before it is refused; a 503 fault here carries none).
        reset_format: `X-RateLimit-Reset` as `"epoch"` (integer UTC epoch seconds, as
            documented), `"delta"` (integer seconds until the reset, as Zapier has been
            seen to send) or `"iso"` (ISO-8601 UTC, `2024-01-01T00:00:00Z`). All round up.
        retry_after_format: `Retry-After` as `"seconds"` (integer, rounded up) or
            `"http-date"`.
        fault_rate: Probability that a request is hit by a fault drawn from `faults`.
        faults: The kinds `fault_rate` draws from. Default: all but `"slow"` and
            `"rate_limited"` (429s come from `rate_limit`; add the kind to draw them too).
        fault_after_create: Probability that a fault drawn for a create happens after the
            run was created.
        fault_retry_after: `Retry-After` seconds on a 503 fault that refused a request and
            on a `"rate_limited"` fault, or None for no header.
        non_json_status: The HTTP status of a `"non_json"` fault.
        slow_delay: Seconds a `"slow"` fault delays the answer (`release_delayed()` ends
            the delay earlier).
        record_requests: Keep every request in `requests` (turn off for long benchmarks).
        auth_server: The token endpoint (`POST /oauth/token/`, see `FakeAuthServer`): accepted
            client credentials, partner JWT keys, `token_lifetime`. Issued tokens are accepted
            by every route until they lapse, then refused with 401.
        catalog: Apps, actions (fresh ids per Get Actions), input/choice/output fields and
            connections served by the discovery routes (see `FakeCatalog`).

    Raises:
        ValueError: A knob has a nonsensical value.
    """

    host: str = attrs.field(
        default="127.0.0.1", validator=_check_host, on_setattr=attrs.setters.frozen
    )
    port: int = attrs.field(default=0, validator=_check_port, on_setattr=attrs.setters.frozen)
    seed: int | None = attrs.field(
        default=None, validator=_check_seed, on_setattr=attrs.setters.frozen
    )
    clock: Clock = attrs.field(
        factory=SystemClock, validator=_check_clock, on_setattr=attrs.setters.frozen
    )
    tokens: frozenset[str] | None = attrs.field(default=None, converter=_to_tokens, repr=False)
    durations: Durations = attrs.field(default=(0.0, 0.05), validator=_check_durations)
    error_rate: float = attrs.field(default=0.0, validator=_check_probability)
    pending_statuses: tuple[str, ...] = attrs.field(default=("waiting",), converter=_to_statuses)
    pending_http_status: int = attrs.field(default=200, validator=_check_one_of(200, 202))
    latency: Latency = attrs.field(default=0.0, validator=_check_latency)
    rate_limit: tuple[int, float] | None = attrs.field(
        default=None, validator=_check_rate_limit, on_setattr=attrs.setters.frozen
    )
    rate_limit_window: RateLimitWindow = attrs.field(
        default="first_request",
        validator=_check_one_of("first_request", "aligned"),
        on_setattr=attrs.setters.frozen,
    )
    rate_limit_per_token: bool = attrs.field(
        default=False, validator=_check_bool, on_setattr=attrs.setters.frozen
    )
    rate_limit_for: Callable[[str], Budget | None] | None = attrs.field(
        default=None, validator=_check_callable, on_setattr=attrs.setters.frozen, repr=False
    )
    cooldown_after_429: float = attrs.field(
        default=0.0, validator=_check_seconds, on_setattr=attrs.setters.frozen
    )
    rate_limit_headers: Literal["always", "on_429"] = attrs.field(
        default="always", validator=_check_one_of("always", "on_429")
    )
    reset_format: Literal["epoch", "delta", "iso"] = attrs.field(
        default="epoch", validator=_check_one_of("epoch", "delta", "iso")
    )
    retry_after_format: Literal["seconds", "http-date"] = attrs.field(
        default="seconds", validator=_check_one_of("seconds", "http-date")
    )
    fault_rate: float = attrs.field(default=0.0, validator=_check_probability)
    faults: frozenset[str] = attrs.field(default=DEFAULT_FAULTS, converter=_to_faults)
    fault_after_create: float = attrs.field(default=0.5, validator=_check_probability)
    fault_retry_after: int | None = attrs.field(default=1, validator=_check_retry_after)
    non_json_status: int = attrs.field(default=200, validator=_check_http_status)
    slow_delay: float = attrs.field(default=30.0, validator=_check_seconds)
    record_requests: bool = attrs.field(default=True, validator=_check_bool)
    auth_server: FakeAuthServer = attrs.field(factory=FakeAuthServer, repr=False)
    """The token endpoint (`POST /oauth/token/`): credentials, partner keys, token lifetime."""
    catalog: FakeCatalog = attrs.field(factory=FakeCatalog, repr=False)
    """Apps, actions and connections served by the discovery routes."""
    actions: FakeActions = attrs.field(factory=FakeActions, repr=False)
    """The Actions API routes (v1 runs, stored actions, v2 long-poll) and signed callbacks;
    its knobs (`callback_loss_rate`, `long_poll_early_rate`, ...) are set on it."""

    requests: list[RecordedRequest] = attrs.field(init=False, factory=list, repr=False)
    """Every request received, oldest first (when `record_requests`); safe to clear."""

    _rng: random.Random = attrs.field(init=False, repr=False)
    _limiter: _RateLimiter | None = attrs.field(init=False, repr=False)
    _store: _RunStore = attrs.field(init=False, factory=_RunStore, repr=False)
    _counters: _Counters = attrs.field(init=False, factory=_Counters, repr=False)
    _injected: list[_PlannedFault] = attrs.field(init=False, factory=list, repr=False)
    _sleepers: set[asyncio.Future[bool]] = attrs.field(init=False, factory=set, repr=False)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None, repr=False)
    _url: str | None = attrs.field(init=False, default=None, repr=False)
    _closed: bool = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one kind in faults")
        self._rng = random.Random(self.seed)
        if self.rate_limit_for is not None and not self.rate_limit_per_token:
            raise ValueError("rate_limit_for needs rate_limit_per_token=True")
        self.actions._bind(self)
        self._store.on_created = self.actions.run_created  # schedules signed callbacks
        limited = self.rate_limit is not None or self.rate_limit_for is not None
        self._limiter = (
            _RateLimiter(
                self.rate_limit,
                float(self.cooldown_after_429),
                aligned=self.rate_limit_window == "aligned",
                per_token=self.rate_limit_per_token,
                budget_for=self.rate_limit_for,
            )
            if limited
            else None
        )

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: Already started, or closed.
            OSError: The address cannot be bound.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("FakeZapier can be started once")
        runner = web.AppRunner(
            self._build_app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening and close every connection; idempotent.

        Requests held by `latency` or a `slow` fault are released at once: a delayed answer
        is sent now, and a request not yet processed is dropped unprocessed. Records and
        stats stay readable after closing.
        """
        if self._closed:
            return
        self._closed = True
        for waiter in list(self._sleepers):
            _resolve(waiter, False)
        await self.actions.aclose()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeZapier:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:54321` (no trailing slash).

        Raises:
            RuntimeError: The emulator was never started.
        """
        if self._url is None:
            raise RuntimeError("FakeZapier is not started: use `async with` or start()")
        return self._url

    # ---------------------------------------------------------------------------- test API

    def run(self, run_id: str) -> RunRecord:
        """A snapshot of one run.

        Args:
            run_id: The id the create returned.

        Returns:
            The run's record, with `status` as a GET would answer it now.

        Raises:
            KeyError: No run has that id.
        """
        return self._get_run(run_id).snapshot(self.clock.monotonic(), self.pending_statuses)

    def runs(self) -> list[RunRecord]:
        """Snapshots of every run, in creation order."""
        now, pending = self.clock.monotonic(), self.pending_statuses
        return [run.snapshot(now, pending) for run in self._store.runs.values()]

    def complete(
        self,
        run_id: str,
        *,
        status: Literal["success", "error"] = "success",
        results: Sequence[Any] | None = None,
        errors: Sequence[Any] | None = None,
    ) -> RunRecord:
        """End a run that is still pending, now.

        Args:
            run_id: The id the create returned.
            status: The terminal status.
            results: The `results` to answer; default: what the run would have answered
                (an echo of its inputs on success, nothing on error).
            errors: The `errors` to answer; default: one `"user"` error when `status` is
                `"error"`, else none.

        Returns:
            The run's record after the change.

        Raises:
            KeyError: No run has that id.
            ValueError: `status` is not terminal, or the run has already ended.
        """
        if status not in _TERMINAL:
            raise ValueError(f'status must be "success" or "error", got {status!r}')
        run = self._get_run(run_id)
        now = self.clock.monotonic()
        if now >= run.ends_at:
            raise ValueError(f"run {run_id} has already ended ({run.final_status})")
        run.duration = max(0.0, now - run.created_at)
        run.final_status = status
        if results is not None:
            run.results = list(results)
        elif status == "error":
            run.results = []
        elif not run.results:
            run.results = _default_results(run.id, run.inputs)
        if errors is not None:
            run.errors = list(errors)
        else:
            run.errors = [dict(_DEFAULT_RUN_ERROR)] if status == "error" else []
        self.actions.run_changed(run)
        return run.snapshot(now, self.pending_statuses)

    def inject(
        self,
        kind: FaultKind,
        *,
        count: int = 1,
        endpoint: str | None = None,
        after_create: bool = False,
    ) -> None:
        """Queue a fault for the next matching requests, ahead of any random fault.

        Queued faults are matched in the order they were queued; rate-limited requests do
        not consume them.

        Args:
            kind: What happens; see the class docstring.
            count: How many matching requests it hits.
            endpoint: `"create"`, `"poll"` or `"other"`, or None for any request.
            after_create: Let the create be processed (the run exists) before the fault
                hits; needs `endpoint="create"`.

        Raises:
            ValueError: Unknown kind or endpoint, `count < 1`, or `after_create` without
                `endpoint="create"` or with `"rate_limited"`.
        """
        self._injected.append(_plan(kind, count, endpoint, after_create))

    def release_delayed(self) -> int:
        """End now every delay a request is held by (a `"slow"` fault, `latency`).

        Each held request goes on as if its delay had passed: one held before processing
        is processed if its client is still connected, and answered. With a long
        `slow_delay`, a test holds requests at the server and chooses when they go on.

        Returns:
            How many delays were ended.
        """
        waiters = [waiter for waiter in self._sleepers if not waiter.done()]
        for waiter in waiters:
            _resolve(waiter, True)
        return len(waiters)

    @property
    def stats(self) -> FakeStats:
        """A snapshot of the counters; see `FakeStats`."""
        c, store = self._counters, self._store
        return FakeStats(
            requests=c.requests,
            requests_by_endpoint=types.MappingProxyType(dict(c.by_endpoint)),
            responses_by_status=types.MappingProxyType(dict(c.by_status)),
            rate_limited=c.rate_limited,
            rate_limited_by_token=types.MappingProxyType(dict(c.rate_limited_by_token)),
            faults=types.MappingProxyType(dict(c.faults)),
            runs_created=store.created,
            duplicate_submissions=store.duplicates,
            polls=store.polls,
            token_requests=self.auth_server.token_requests,
            tokens_issued=self.auth_server.tokens_issued,
            token_refusals=self.auth_server.token_refusals,
            expired_token_refusals=self.auth_server.expired_token_refusals,
            action_lookups=self.catalog.action_lookups,
        )

    @property
    def token_url(self) -> str:
        """The emulated OAuth token endpoint, e.g. `http://127.0.0.1:54321/oauth/token/`."""
        return self.url + TOKEN_PATHS[0]

    @property
    def jwks_url(self) -> str:
        """The JWKS that verifies this emulator's callback signatures."""
        return self.url + JWKS_PATH

    # ---------------------------------------------------------------------------- routing

    def _routes(self) -> tuple[tuple[str, str, str, _EndpointHandler], ...]:
        """(method, path, endpoint name, handler) for every route."""
        return (
            # The OpenAPI path has no trailing slash; the guides write one. Accept both.
            ("POST", "/v2/action-runs", "create", self._hosted(_create)),
            ("POST", "/v2/action-runs/", "create", self._hosted(_create)),
            ("GET", "/v2/action-runs/{id}", "poll", self._hosted(_poll)),
            # Actions API, stored actions, long-poll reads, JWKS (testing/_fake_actions.py).
            *self.actions.routes(),
            # Token endpoint, discovery and connections (testing/_fake_auth.py).
            *(
                (method, path, endpoint, _answer(handler))
                for method, path, endpoint, handler in auth_routes(
                    self.auth_server, self.catalog, clock=self.clock, rng=self._rng
                )
            ),
        )

    def _build_app(self) -> web.Application:
        @web.middleware
        async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
            # Unknown paths and wrong methods never reach a route handler; give them the
            # same pipeline (counted, rate limited, JSON:API error body).
            match = request.match_info
            if isinstance(match, MatchInfoError):
                exc = match.http_exception

                async def answer(_: _Exchange) -> _Reply:
                    return self._unrouted(exc)

                return await self._exchange(request, "other", answer)
            return await handler(request)

        app = web.Application(middlewares=[unrouted], client_max_size=_MAX_BODY)
        for method, path, endpoint, endpoint_handler in self._routes():
            app.router.add_route(method, path, self._bind(endpoint, endpoint_handler))
        return app

    def _hosted(
        self, handler: Callable[[FakeZapier, _Exchange], Awaitable[_Reply]]
    ) -> _EndpointHandler:
        """A `_fake_runs` endpoint (which reads this emulator's run table) as a route handler."""

        async def endpoint(exchange: _Exchange) -> _Reply:
            return await handler(self, exchange)

        return endpoint

    def _bind(self, endpoint: str, handler: _EndpointHandler) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            return await self._exchange(request, endpoint, handler)

        return route

    # ---------------------------------------------------------------------------- pipeline

    async def _exchange(
        self, request: web.Request, endpoint: str, handler: _EndpointHandler
    ) -> web.StreamResponse:
        received_at = self.clock.monotonic()
        counters = self._counters
        counters.requests += 1
        counters.by_endpoint[endpoint] = counters.by_endpoint.get(endpoint, 0) + 1
        try:
            raw = await request.read() if request.body_exists else b""
        except web.HTTPRequestEntityTooLarge:
            too_large = _error(413, "request_too_large", "RequestTooLarge", "Body too large.")
            return self._respond(too_large, None)
        body = _decode_json(raw)
        if self.record_requests:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={
                        k: v for k, v in request.headers.items() if k.lower() != "authorization"
                    },
                    json=None if body is _NOT_JSON else body,
                    received_at=received_at,
                    endpoint=endpoint,
                )
            )
        exchange = _Exchange(request, endpoint, received_at, body, raw)
        admission = self._admit(exchange)
        reply: _Reply | None
        if admission is not None and not admission.allowed:
            reply = _throttled(admission, self.clock.monotonic())
        else:
            reply = await self._serve(exchange, handler)
            if reply is not None and reply.status == 429 and admission is not None:
                # A "rate_limited" fault: the budget headers agree with the refusal.
                admission = attrs.evolve(admission, remaining=0)
        if reply is None:
            return web.Response()  # the connection is gone; this is never sent
        delay = _sample(self._rng, self.latency)
        if delay > 0:
            await self._sleep(delay)
        return self._respond(reply, admission)

    async def _serve(self, exchange: _Exchange, handler: _EndpointHandler) -> _Reply | None:
        """Steps 3-5: fault, authentication, handler. None: the connection was dropped."""
        fault = _draw(
            self._injected,
            exchange.endpoint,
            rng=self._rng,
            fault_rate=self.fault_rate,
            faults=self.faults,
            fault_after_create=self.fault_after_create,
        )
        if fault is None:
            return await self._process(exchange, handler)
        kind, after = fault
        self._counters.faults[kind] += 1
        request = exchange.request
        if kind == "slow":
            if after:
                reply = await self._process(exchange, handler)
                await self._sleep(self.slow_delay)
                return reply
            if await self._sleep(self.slow_delay) and not _disconnected(request):
                return await self._process(exchange, handler)
            _drop(request)
            return None
        if after:
            await self._process(exchange, handler)  # the run is created; its answer is lost
        if kind == "reset":
            _drop(request)
            return None
        if kind == "rate_limited":
            retry_after = self.fault_retry_after
            retry_at = None if retry_after is None else self.clock.monotonic() + retry_after
            return _error(
                429,
                "throttled",
                "Throttled",
                f"Request was throttled. Expected available in {retry_after or 0} seconds.",
                retry_at=retry_at,
            )
        if kind == "non_json":
            status = self.non_json_status
            page = f"<html><body><h1>{status}</h1><p>upstream trouble</p></body></html>"
            return _Reply(status, page.encode(), _HTML)
        status, code, title, detail = _GATEWAY_ERRORS[kind]
        retry_at = None
        if status == 503 and not after and self.fault_retry_after is not None:
            retry_at = self.clock.monotonic() + self.fault_retry_after
        return _error(status, code, title, detail, retry_at=retry_at)

    async def _process(self, exchange: _Exchange, handler: _EndpointHandler) -> _Reply:
        if exchange.endpoint in _UNAUTHENTICATED:
            return await handler(exchange)
        refusal = self._authenticate(exchange.request)
        if refusal is not None:
            return refusal
        return await handler(exchange)

    def _authenticate(self, request: web.Request) -> _Reply | None:
        token = _bearer(request)
        if token is None:
            return _error(
                401,
                "not_authenticated",
                "NotAuthenticated",
                "Authentication credentials were not provided.",
            )
        state = self.auth_server.check(token, self.clock.monotonic())
        if state == "expired":
            self.auth_server.expired_token_refusals += 1
            return _error(401, "token_expired", "AuthenticationFailed", "Token has expired.")
        known = state == "valid" or (self.tokens is not None and token in self.tokens)
        if not known and (self.tokens is not None or self.auth_server.require_issued_tokens):
            return _error(401, "authentication_failed", "AuthenticationFailed", "Invalid token.")
        return None

    def _admit(self, exchange: _Exchange) -> _Admission | None:
        """Step 2: count the request against its bucket; None when it is not limited."""
        # The token endpoint is another host (zapier.com) with another budget, and the JWKS
        # is a static document: neither is limited.
        if self._limiter is None or exchange.endpoint in _UNAUTHENTICATED:
            return None
        token = _bearer(exchange.request)
        # The wall clock at arrival (the body has been read since), to place aligned windows.
        wall = self._wall_time() - (self.clock.monotonic() - exchange.received_at)
        admission = self._limiter.admit(token, exchange.received_at, wall)
        if admission is not None and not admission.allowed:
            counters = self._counters
            counters.rate_limited += 1
            key = token or ""
            counters.rate_limited_by_token[key] = counters.rate_limited_by_token.get(key, 0) + 1
        return admission

    def _unrouted(self, exc: web.HTTPException) -> _Reply:
        if exc.status == 405:
            allow = exc.headers.get("Allow", "")
            reply = _error(405, "method_not_allowed", "MethodNotAllowed", "Method not allowed.")
            return attrs.evolve(reply, headers=(("Allow", allow),))
        return _error(exc.status, "not_found", "NotFound", "Not found.")

    def _respond(self, reply: _Reply, admission: _Admission | None) -> web.Response:
        headers = {"Content-Type": reply.content_type}
        headers.update(reply.headers)
        if admission is not None or reply.retry_at is not None:
            now = self.clock.monotonic()
            if admission is not None and (
                self.rate_limit_headers == "always" or reply.status == 429
            ):
                headers["X-RateLimit-Limit"] = str(admission.limit)
                headers["X-RateLimit-Remaining"] = str(admission.remaining)
                headers["X-RateLimit-Reset"] = _format_reset(
                    admission.reset_at, now, self._wall_time(), self.reset_format
                )
            if reply.retry_at is not None:
                headers["Retry-After"] = _format_retry_after(
                    reply.retry_at, now, self._wall_time(), self.retry_after_format
                )
        counters = self._counters.by_status
        counters[reply.status] = counters.get(reply.status, 0) + 1
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _wall_time(self) -> float:
        wall = getattr(self.clock, "time", None)
        return float(wall()) if callable(wall) else time.time()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep in real time; False when woken early because the emulator is closing."""
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter, True)
        self._sleepers.add(waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._sleepers.discard(waiter)

    def _get_run(self, run_id: str) -> _Run:
        try:
            return self._store.runs[run_id]
        except KeyError:
            raise KeyError(f"no run with id {run_id!r}") from None


_UNAUTHENTICATED: Final = frozenset({"token", "jwks"})
"""Endpoints without bearer authentication and outside the API rate limit."""


def _answer(handler: AuthHandler) -> _EndpointHandler:
    """Adapt a `_fake_auth` handler (status, JSON body) to this pipeline's `_Reply`."""

    async def endpoint(exchange: _Exchange) -> _Reply:
        status, body = await handler(exchange)
        return _Reply(status, _dumps(body))

    return endpoint


def _disconnected(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _drop(request: web.Request) -> None:
    """Drop the connection without an answer (the client sees a disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()

"""ZapierClient: composes auth, transport, limiter and poller behind the public methods."""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from . import _protocol as proto
from . import errors
from ._auth import AuthProvider
from ._backoff import (
    Failure,
    PollPolicy,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    decide_retry,
    next_poll_delay,
)
from ._clock import Clock, SystemClock
from ._handle import RunHandle
from ._limiter import Limiter, Priority
from ._ratelimit import parse_retry_after
from ._scheduler import Poller
from ._transport import AiohttpTransport, Transport
from .models import Run, RunStatus

if TYPE_CHECKING:
    import aiohttp  # noqa: TID251 (only for the type of a caller-owned session)

__all__ = ["ZapierClient"]

logger = logging.getLogger("zapier_async")

DEFAULT_BASE_URL: Final = "https://api.zapier.com"


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


def _check_base_url(base_url: object) -> str:
    if not isinstance(base_url, str) or not base_url:
        raise errors.InvalidRequestError("must be a non-empty string", "base_url")
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
    except ValueError as exc:
        raise errors.InvalidRequestError(f"is not a valid URL: {exc}", "base_url") from None
    if parts.scheme not in ("https", "http") or not host:
        raise errors.InvalidRequestError(
            f"must be an absolute https:// URL, got {base_url!r}", "base_url"
        )
    if parts.scheme == "http" and not proto.is_loopback_host(host):
        # Tokens would cross the network in clear text. Loopback is allowed for the emulator.
        raise errors.InvalidRequestError(
            "http:// is only allowed for loopback hosts (127.0.0.1, ::1, localhost); use https://",
            "base_url",
        )
    if parts.query or parts.fragment:
        raise errors.InvalidRequestError("must not have a query or fragment", "base_url")
    return base_url.rstrip("/")


class ZapierClient:
    """An asyncio client for Zapier's action-run APIs.

    Use it as an async context manager (or call `aclose()`), and share one client per
    process: it owns the connection pool, the rate budget and the background poller.

    Args:
        auth: Where access tokens come from, e.g. `BearerToken("...")`.
        base_url: Zapier's API root. ``http://`` is refused except for loopback hosts.
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
        max_concurrent_polls: Poll requests in flight at most.
        max_poll_failures: Consecutive failed polls (after retries) before a handle fails with
            the last error.
        rng: Random source for jitter (seed it for reproducible tests).
        rate_limit: A budget known beforehand, ``(requests, per_seconds)``, e.g.
            ``(60, 60.0)`` for the Partner API's per-IP limit; without it the limiter learns
            the budget from `X-RateLimit-*` headers. Only for the client's own limiter.
        on_rate_limited: Called as ``on_rate_limited(seconds, priority)`` whenever a request
            had to wait for the rate budget (waits over a second are also logged at INFO).
            Only for the client's own limiter.
    """

    def __init__(
        self,
        *,
        auth: AuthProvider,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        limiter: Limiter | None = None,
        clock: Clock | None = None,
        poll_policy: PollPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        max_rate_limit_wait: float | None = 10.0,
        max_concurrent_polls: int = 64,
        max_poll_failures: int = 5,
        rng: random.Random | None = None,
        rate_limit: tuple[int, float] | None = None,
        on_rate_limited: Callable[[float, Priority], None] | None = None,
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
        self._auth = auth
        self._base_url = _check_base_url(base_url)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._transport: Transport = (
            transport if transport is not None else AiohttpTransport(session)
        )
        if limiter is not None and (rate_limit is not None or on_rate_limited is not None):
            raise errors.InvalidRequestError(
                "rate_limit and on_rate_limited configure the client's own limiter; "
                "pass them to the shared Limiter instead"
            )
        self._owns_limiter = limiter is None
        self._limiter = (
            limiter
            if limiter is not None
            else Limiter(clock=self._clock, rate=rate_limit, on_wait=on_rate_limited)
        )
        self._poll_policy = poll_policy if poll_policy is not None else PollPolicy()
        self._retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._retry_budget = RetryBudget()
        self._request_timeout = float(request_timeout)
        self._max_wait = max_rate_limit_wait
        self._max_poll_failures = max_poll_failures
        self._rng = rng if rng is not None else random.Random()
        self._poller = Poller(
            clock=self._clock, poll=self._poll, max_concurrent_polls=max_concurrent_polls
        )
        self._handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ZapierClient:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling, detach every pending handle, release connections. Idempotent.

        Awaiters of runs still in flight get `RunDetachedError`; the runs go on at Zapier
        and can be resumed by id or continuation token from another client.
        """
        if self._closed:
            return
        self._closed = True
        await self._poller.aclose()
        for handle in list(self._handles.values()):
            if not handle.done():
                handle._finish(errors.RunDetachedError(handle.id, "client closed"))
        self._handles.clear()
        if self._owns_limiter:
            await self._limiter.aclose()
        await self._transport.aclose()

    @property
    def closed(self) -> bool:
        """True after `aclose()`."""
        return self._closed

    @property
    def limiter(self) -> Limiter:
        """The rate limiter this client spends its budget through."""
        return self._limiter

    @property
    def in_flight(self) -> int:
        """Runs this client is following now."""
        return sum(1 for h in self._handles.values() if not h.done())

    def _ensure_open(self) -> None:
        if self._closed:
            raise errors.InvalidRequestError("the client is closed")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ZapierClient {self._base_url} {state} auth={self._auth!r}>"

    # --- public methods -------------------------------------------------------------------

    async def run(
        self,
        action: str,
        *,
        authentication: str | None,
        inputs: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        max_rate_limit_wait: float | _Unset | None = _UNSET,
    ) -> RunHandle:
        """Start an action run (`POST /v2/action-runs`) and return its handle.

        The POST is awaited, so when this returns Zapier has accepted the run and
        `handle.id` is known. Awaiting the handle waits for the outcome.

        Args:
            action: The action id from Get Actions (e.g. ``"core:abc123"``).
            authentication: The authentication (connection) id, or None for apps that need
                none.
            inputs: Input field id to value; must be JSON-serialisable.
            callback_url: An https URL Zapier POSTs the outcome to.
            max_rate_limit_wait: Overrides the client's cap for this call.

        Raises:
            InvalidRequestError: Bad input; nothing was sent.
            RateLimitedError: The budget would not allow sending within the cap; nothing
                was sent.
            OutcomeUnknownError: The POST failed after it may have reached Zapier; it was not
                re-sent (that could run the action twice).
            APIError: Zapier refused the request.
        """
        self._ensure_open()
        request = proto.create_action_run(
            action=action,
            authentication=authentication,
            inputs=inputs,
            callback_url=callback_url,
        )
        return await self._submit(request, Priority.INTERACTIVE, max_rate_limit_wait)

    def resume(self, token_or_run_id: str) -> RunHandle:
        """Follow a run again from its id or `continuation_token()`.

        Within one client, resuming a run that is still followed returns the same handle, so
        a run is never polled twice; a run whose handle is done (ended, cancelled) gets a
        fresh handle that reads it again.
        """
        self._ensure_open()
        locator = proto.decode_continuation_token(token_or_run_id)
        existing = self._handles.get(locator.run_id)
        if existing is not None and not existing.done() and existing.locator == locator:
            return existing
        return self._track(locator, first_delay=0.0)

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

    # --- internals ------------------------------------------------------------------------

    def _cap(self, value: float | _Unset | None) -> float | None:
        return self._max_wait if isinstance(value, _Unset) else value

    async def _submit(
        self,
        request: proto.Request,
        priority: Priority,
        max_rate_limit_wait: float | _Unset | None,
    ) -> RunHandle:
        response = await self._send(
            request, priority=priority, max_wait=self._cap(max_rate_limit_wait)
        )
        try:
            run_id = proto.parse_created_run(response, request)
            locator = proto.RunLocator(
                kind="action_run", run_id=proto.validate_id(run_id, field="id")
            )
        except (errors.DecodeError, errors.InvalidRequestError) as exc:
            # Zapier said 2xx, so a run probably exists, but we cannot tell its id.
            raise errors.OutcomeUnknownError(
                "Zapier accepted the request but its answer names no usable run id",
                request.describe(),
                str(exc),
            ) from exc
        self._ensure_open()
        return self._track(locator, first_delay=None)

    def _track(self, locator: proto.RunLocator, *, first_delay: float | None) -> RunHandle:
        now = self._clock.monotonic()
        handle = RunHandle(locator, self._poller, created_at=now)
        self._handles[locator.run_id] = handle
        if first_delay is None:
            first_delay = self._poll_policy.interval(0, elapsed=0.0, rng=self._rng)
        self._poller.schedule(handle, first_delay)
        return handle

    async def _poll(self, handle: RunHandle) -> None:
        """Read one handle's run once; update, finish or reschedule it. Never raises."""
        if handle.done():
            return
        request = proto.poll_request(handle.locator)
        priority = Priority.INTERACTIVE if handle.awaited else Priority.POLL
        attempt = handle.poll_attempts
        handle.poll_attempts += 1
        try:
            response = await self._send(request, priority=priority, max_wait=None)
            run = proto.parse_run(response, request, run_id=handle.id)
        except _FATAL_POLL_ERRORS as exc:
            handle._finish(exc)
            return
        except errors.ZapierError as exc:
            handle.poll_failures += 1
            if handle.poll_failures >= self._max_poll_failures:
                handle._finish(exc)
                return
            delay = self._retry_policy.delay(handle.poll_failures, self._rng)
            logger.warning(
                "zapier_async: reading run %s failed (%s); trying again in %.1fs",
                handle.id,
                exc,
                delay,
            )
            self._poller.schedule(handle, delay)
            return
        handle.poll_failures = 0
        handle._update(run)
        if handle.done():
            return
        elapsed = self._clock.monotonic() - handle.created_at
        hint = _throttle_hint(run)
        delay = next_poll_delay(self._poll_policy, attempt + 1, elapsed, self._rng, hint=hint)
        self._poller.schedule(handle, delay)

    async def _send(
        self, request: proto.Request, *, priority: Priority, max_wait: float | None
    ) -> proto.Response:
        """Send through the limiter with retries; returns a 2xx response or raises.

        The decision of what may be retried lives in `_backoff.decide_retry`; in short, a
        run-creating POST is re-sent only when it provably did not reach Zapier (connect
        error) or Zapier refused it with 429 or 503 + Retry-After.
        """
        attempt = 0
        reauthorised = False
        while True:
            attempt += 1
            response: proto.Response | None = None
            failure: errors.TransportError | None = None
            async with self._limiter.slot(priority, max_wait=max_wait) as slot:
                token = await self._auth.token()
                try:
                    response = await self._transport.send(
                        request,
                        base_url=self._base_url,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=self._request_timeout,
                    )
                except errors.TransportError as exc:
                    failure = exc
                    slot.record(None, {})
                else:
                    slot.record(response.status, response.headers)
            retry_after: float | None = None
            if response is not None:
                if 200 <= response.status < 300:
                    self._retry_budget.on_success()
                    return response
                if response.status == 401 and not reauthorised and self._auth.invalidate(token):
                    # A refused token was not a request Zapier acted on: safe to re-send once.
                    reauthorised = True
                    attempt -= 1
                    continue
                retry_after = parse_retry_after(
                    response.header("retry-after"), now=self._clock.time()
                )
                decision = decide_retry(
                    idempotent=request.idempotent,
                    status=response.status,
                    failure=None,
                    has_retry_after=retry_after is not None,
                )
            else:
                assert failure is not None
                if failure.sent is False and failure.kind != "connect":
                    raise failure  # TLS failure, closed transport: retrying will not help
                decision = decide_retry(
                    idempotent=request.idempotent,
                    status=None,
                    failure=_failure_kind(failure),
                    has_retry_after=False,
                )
            if decision is RetryDecision.UNKNOWN_OUTCOME:
                what = f"HTTP {response.status}" if response is not None else str(failure)
                raise errors.OutcomeUnknownError(
                    "the request may have reached Zapier before it failed",
                    request.describe(),
                    what,
                ) from failure
            # A 429 or a 503 with Retry-After is a refusal that paces us, not a failure: it
            # does not spend the retry budget (the limiter has frozen the bucket meanwhile).
            refused = retry_after is not None or (response is not None and response.status == 429)
            if (
                decision is RetryDecision.RETRY
                and attempt < self._retry_policy.max_attempts
                and (refused or self._retry_budget.try_spend())
            ):
                if not refused:
                    delay = self._retry_policy.delay(attempt, self._rng)
                    logger.debug(
                        "zapier_async: %s failed (%s); retry %d in %.2fs",
                        request.describe(),
                        response.status if response is not None else failure,
                        attempt,
                        delay,
                    )
                    await self._clock.sleep(delay)
                # After a refusal the limiter froze the whole bucket until the hinted time; the
                # next slot() waits for it (or raises RateLimitedError past the cap).
                continue
            if response is not None:
                error = proto.error_for_response(response, request, retry_after=retry_after)
                assert error is not None
                raise error
            assert failure is not None
            raise failure


def _failure_kind(exc: errors.TransportError) -> Failure:
    if exc.kind == "connect":
        return "connect"
    if exc.kind == "timeout":
        return "timeout"
    return "reset"  # anything else may have reached Zapier


def _throttle_hint(run: Run) -> float | None:
    """A throttled run error's `delay` (seconds), honoured before the next poll."""
    delays = [e.delay for e in run.errors if e.delay is not None and e.delay > 0]
    if not delays or run.status is RunStatus.SUCCESS:
        return None
    return max(delays)

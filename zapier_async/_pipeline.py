"""The send pipeline: one request through the auth provider, the limiter and the transport.

Theory of operation
-------------------
`SendPipeline.send` takes a `Request` value and returns a 2xx `Response` or raises a typed
error. Each attempt: a token from the auth provider (before the slot: a refresh must not hold
the API's budget), a slot from the limiter, one exchange on the transport, the response handed
back to the limiter (`slot.record`), then a decision (`_backoff.decide_retry`) on what an
answer that is not 2xx means. A run-creating POST is re-sent only when it provably did not
reach Zapier (a connect error) or Zapier refused it with 429, or 503 + ``Retry-After``.

Creates on the wire belong to the client, not to their caller
--------------------------------------------------------------
Cancellation is ordinary (a web request's visitor gives up, `asyncio.wait_for` times out, an
anyio cancel scope ends). Cancelling a POST mid-flight would not un-send it: Zapier may create
the run and answer with its id to nobody. So once the limiter granted a slot to a request that
is not idempotent, the exchange runs in a task the pipeline owns (named
``zapier_async-create``, in `wire_tasks`), and the caller awaits its outcome:

- a caller cancelled while waiting for its token or its slot just leaves: nothing was sent,
  and the limiter takes its waiter back;
- a caller cancelled once its slot was granted gets `CancelledError` at once, without waiting
  for the POST; the exchange completes, its answer still feeds the limiter, and its outcome
  goes to the ``orphan`` callback the caller passed (`ZapierClient` tracks the run, announces
  it with a ``"started"`` `RunEvent`, logs a WARNING with its id and lists it in
  `ZapierClient.orphaned_runs`). A create whose outcome is unknown (a timeout, a 5xx) is logged
  at WARNING too, and counted as ``outcome_unknown`` in the metrics. Nothing is re-sent for a
  caller that left: a refusal (429, 401) ends it;
- `ZapierClient.aclose` waits (bounded) for `wire_tasks`, so closing does not cut them off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from . import _protocol as proto
from . import errors
from ._auth import AuthProvider
from ._backoff import RetryBudget, RetryDecision, RetryPolicy, decide_retry, failure_kind
from ._clock import Clock
from ._guards import check_token
from ._limiter import LimiterLike, Priority, SlotLike
from ._ratelimit import (
    DEFAULT_COOLDOWN,
    RateLimitState,
    parse_retry_after,
    pause_after,
)

if TYPE_CHECKING:
    import random

    from ._metrics import _Recorder
    from ._transport import Transport

__all__ = ["CREATE_TASK_NAME", "Orphan", "SendPipeline"]

logger = logging.getLogger("zapier_async")

CREATE_TASK_NAME: Final = "zapier_async-create"

Orphan = Callable[[proto.Response], object]
"""Takes the 2xx answer to a create whose caller was cancelled; returns what it tracked.

It may raise a `ZapierError` (the answer names no usable run id): that is logged."""


class _Wire:
    """One create handed to its task: whether its caller left before it was sent."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class SendPipeline:
    """Sends requests for one client: auth, limiter, transport, retries, creates on the wire.

    Args:
        auth: The client's auth provider.
        transport: The client's (metered, guarded) transport.
        limiter: The limiter its budget is spent through.
        clock: The client's clock.
        base_url: The API root requests are sent to.
        request_timeout: Seconds one exchange may take.
        retry_policy: Per-request retries.
        rng: Random source for retry jitter.
        metrics: The client's recorder (retries, errors).
        max_server_wait: The longest wait a server answer may impose.
        is_closed: Whether the client is closed (a create not sent yet is then refused).
        check_loop: Raises `WrongEventLoopError` when called from another event loop.
    """

    def __init__(
        self,
        *,
        auth: AuthProvider,
        transport: Transport,
        limiter: LimiterLike,
        clock: Clock,
        base_url: str,
        request_timeout: float,
        retry_policy: RetryPolicy,
        rng: random.Random,
        metrics: _Recorder,
        max_server_wait: float,
        is_closed: Callable[[], bool],
        check_loop: Callable[[], None],
    ) -> None:
        self._auth = auth
        self._transport = transport
        self._limiter = limiter
        self._clock = clock
        self._base_url = base_url
        self._request_timeout = request_timeout
        self._retry_policy = retry_policy
        self._retry_budget = RetryBudget()
        self._rng = rng
        self._metrics = metrics
        self._max_server_wait = max_server_wait
        self._is_closed = is_closed
        self._check_loop = check_loop
        # The Authorization header of the latest token, built once per token, not per request.
        self._auth_header: tuple[str, Mapping[str, str]] | None = None
        self.wire_tasks: set[asyncio.Task[proto.Response | None]] = set()
        """Exchanges of non-idempotent requests granted a slot and not yet ended."""
        self._wire_drained: asyncio.Future[None] | None = None

    # --- creates on the wire ----------------------------------------------------------------

    async def drain(self) -> None:
        """Wait (up to `request_timeout`) until no create is on the wire."""
        if not self.wire_tasks:
            return
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wire_drained = drained
        timer = self._clock.call_later(self._request_timeout, partial(_resolve, drained))
        try:
            await drained
        finally:
            timer.cancel()
            self._wire_drained = None

    # --- sending ----------------------------------------------------------------------------

    async def send(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        orphan: Orphan | None = None,
    ) -> proto.Response:
        """Send through the limiter with retries; returns a 2xx response or raises.

        Every server-dictated wait (a 429/503's ``Retry-After``, or a 429's ``Reset``) is
        bounded by `max_server_wait`: past it the request fails with `RateLimitedError`
        instead of sleeping. The part of such a wait that the limiter does not enforce (a lone
        503 need not freeze the whole bucket) is slept here, for this request only.

        Only `ZapierError` leaves: an auth provider's or a transport's own exception becomes
        `UnexpectedError` (the original is its ``__cause__``), or `OutcomeUnknownError` for a
        create that may have been sent.

        Args:
            request: What to send.
            priority: The limiter priority.
            max_wait: Longest wait for a slot (None: as long as needed).
            orphan: For a request that is not idempotent: what to do with its answer if its
                caller is cancelled while it is on the wire (see the module docs).
        """
        self._check_loop()
        attempt = 0
        reauthorised = False
        while True:
            attempt += 1
            response: proto.Response | None = None
            failure: errors.TransportError | None = None
            # The token comes first: a refresh is a round trip to another host and must not
            # hold a slot of the API's budget (in probe mode the only one) meanwhile.
            token, headers = await self._authorise(request)
            if request.idempotent:
                async with self._limiter.slot(priority, max_wait=max_wait) as slot:
                    timeout = self._request_timeout
                    if request.long_poll is not None:
                        # A long-poll is parked at Zapier for up to N s: it counts against
                        # the budget (the slot was granted), but is "answered" for the
                        # limiter as it goes out, so it neither holds the probe nor stalls
                        # pacing meanwhile. See `_actions` ("Long-polls and the rate limiter").
                        slot.record(None, {})
                        timeout += request.long_poll
                    try:
                        response = await self._transport.send(
                            request, base_url=self._base_url, headers=headers, timeout=timeout
                        )
                    except errors.TransportError as exc:
                        failure = exc
                        slot.record(None, {})
                    else:
                        slot.record(response.status, response.headers)
            else:
                try:
                    response = await self._send_on_wire(
                        request, headers, priority, max_wait, orphan
                    )
                except errors.TransportError as exc:
                    failure = exc
            retry_after: float | None = None
            if response is not None and request.long_poll is not None:
                self._refusal_freezes(response)
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
                if response.status in (429, 503):
                    self._check_server_wait(response)
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
                    failure=failure_kind(failure.kind),
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
            # does not spend the retry budget.
            refused = retry_after is not None or (response is not None and response.status == 429)
            if (
                decision is RetryDecision.RETRY
                and attempt < self._retry_policy.max_attempts
                and (refused or self._retry_budget.try_spend())
            ):
                self._metrics.retry(
                    request,
                    attempt,
                    response.status if response is not None else None,
                    failure,
                    refused,
                )
                if not refused:
                    delay = self._retry_policy.delay(attempt, self._rng)
                    logger.debug(
                        "%s failed (%s); retry %d in %.2fs",
                        request.describe(),
                        response.status if response is not None else failure,
                        attempt,
                        delay,
                    )
                    await self._clock.sleep(delay)
                elif retry_after is not None:
                    await self._honour_retry_after(retry_after, max_wait)
                # After a 429 the limiter froze the whole bucket until the hinted time; the
                # next slot() waits for it (or raises RateLimitedError past the cap).
                continue
            if response is not None:
                error = proto.error_for_response(response, request, retry_after=retry_after)
                assert error is not None
                raise error
            assert failure is not None
            raise failure

    async def send_unlimited(self, request: proto.Request, base_url: str) -> proto.Response:
        """One exchange with another host, not through the limiter (an auth token request)."""
        return await self._transport.send(
            request, base_url=base_url, headers={}, timeout=self._request_timeout
        )

    async def _authorise(self, request: proto.Request) -> tuple[str, Mapping[str, str]]:
        """The current token and its headers; an untyped failure becomes `UnexpectedError`."""
        try:
            token = await self._auth.token()
            return token, self._auth_headers(token)
        except errors.ZapierError:
            raise
        except Exception as exc:
            # The exception's text is left out: a provider's error may quote a secret. It
            # is the __cause__, for tracebacks.
            raise errors.UnexpectedError(
                f"the auth provider's token() raised {type(exc).__name__}; nothing was sent",
                request.describe(),
            ) from exc

    def _auth_headers(self, token: str) -> Mapping[str, str]:
        cached = self._auth_header
        if cached is None or cached[0] != token:
            # Checked once per new token: one with a control character would otherwise make
            # the HTTP library raise a bare ValueError on every request.
            check_token(token)
            cached = (token, MappingProxyType({"Authorization": f"Bearer {token}"}))
            self._auth_header = cached
        return cached[1]

    async def _send_on_wire(
        self,
        request: proto.Request,
        headers: Mapping[str, str],
        priority: Priority,
        max_wait: float | None,
        orphan: Orphan | None,
    ) -> proto.Response:
        """One exchange of a request that is not idempotent, shielded once its slot is granted.

        Cancelled while waiting for the slot, the caller just leaves (nothing sent). Once the
        slot is granted, the exchange (and the slot, until the answer is recorded) belongs
        to a task of the pipeline; a caller cancelled after that gets `CancelledError` at
        once and the answer goes to `orphan`.
        """
        stack = contextlib.AsyncExitStack()
        slot = await stack.enter_async_context(self._limiter.slot(priority, max_wait=max_wait))
        # Granted: from here on the request is the client's. No await until the task owns it.
        wire = _Wire()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[proto.Response | None] = loop.create_future()
        task = loop.create_task(self._exchange(request, headers, stack, slot, wire))
        task.set_name(CREATE_TASK_NAME)
        self.wire_tasks.add(task)
        task.add_done_callback(partial(self._exchange_done, waiter, request, orphan))
        try:
            response = await waiter
        except asyncio.CancelledError:
            wire.abandoned = True
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                # The answer was in, but this caller was cancelled before it resumed.
                self._orphaned(request, _outcome(waiter), orphan)
            raise
        assert response is not None  # None only for a caller that left before the send
        return response

    async def _exchange(
        self,
        request: proto.Request,
        headers: Mapping[str, str],
        stack: contextlib.AsyncExitStack,
        slot: SlotLike,
        wire: _Wire,
    ) -> proto.Response | None:
        """The exchange of `_send_on_wire`, in the pipeline's task; None if it was not sent."""
        async with stack:
            if wire.abandoned:
                return None  # the caller left before the task started: nothing was sent
            if self._is_closed():
                # aclose() waits for creates on the wire; one that was not sent yet is
                # refused, so none is cut off by the transport closing under it.
                raise errors.InvalidRequestError("the client is closed; nothing was sent")
            try:
                response = await self._transport.send(
                    request,
                    base_url=self._base_url,
                    headers=headers,
                    timeout=self._request_timeout,
                )
            except errors.TransportError:
                slot.record(None, {})
                raise
            except errors.UnexpectedError as exc:
                # Whether it reached Zapier is unknown: never re-sent, and said so.
                raise errors.OutcomeUnknownError(
                    "the transport failed in an unexpected way", request.describe(), exc.message
                ) from exc
            slot.record(response.status, response.headers)
            return response

    def _exchange_done(
        self,
        waiter: asyncio.Future[proto.Response | None],
        request: proto.Request,
        orphan: Orphan | None,
        task: asyncio.Task[proto.Response | None],
    ) -> None:
        """The exchange ended: hand its outcome to its caller, or to `orphan` if it left."""
        self.wire_tasks.discard(task)
        outcome: proto.Response | BaseException | None
        if task.cancelled():
            # The event loop's shutdown cut it off.
            outcome = errors.OutcomeUnknownError(
                "the request may have reached Zapier before it failed",
                request.describe(),
                "cancelled while on the wire",
            )
        else:
            outcome = task.exception() or task.result()
        if waiter.cancelled():
            self._orphaned(request, outcome, orphan)
        elif not waiter.done():
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        drained = self._wire_drained
        if not self.wire_tasks and drained is not None:
            _resolve(drained)

    def _orphaned(
        self,
        request: proto.Request,
        outcome: proto.Response | BaseException | None,
        orphan: Orphan | None,
    ) -> None:
        """The outcome of an exchange whose caller was cancelled while it was on the wire."""
        if isinstance(outcome, proto.Response):
            if 200 <= outcome.status < 300:
                if orphan is None:
                    logger.warning(
                        "%s succeeded for a caller that was cancelled", request.describe()
                    )
                    return
                try:
                    orphan(outcome)
                except errors.ZapierError as exc:
                    self._metrics.error(exc)
                    logger.warning(
                        "%s was accepted for a caller that was cancelled, but: %s",
                        request.describe(),
                        exc,
                    )
                return
            retry_after = parse_retry_after(outcome.header("retry-after"), now=self._clock.time())
            decision = decide_retry(
                idempotent=request.idempotent,
                status=outcome.status,
                failure=None,
                has_retry_after=retry_after is not None,
            )
            what = f"HTTP {outcome.status}"
        elif isinstance(outcome, errors.TransportError):
            if outcome.sent is False:
                return
            decision = decide_retry(
                idempotent=request.idempotent,
                status=None,
                failure=failure_kind(outcome.kind),
                has_retry_after=False,
            )
            what = str(outcome)
        elif isinstance(outcome, errors.OutcomeUnknownError):
            decision = RetryDecision.UNKNOWN_OUTCOME
            what = outcome.cause
        else:
            return  # not sent (the client was closed, a journal hook refused it), or None
        if decision is not RetryDecision.UNKNOWN_OUTCOME:
            # Refused (a 429, a 401, a 4xx): no run was made, and nobody wants one now.
            logger.debug("%s for a cancelled caller ended with %s", request.describe(), what)
            return
        unknown = errors.OutcomeUnknownError(
            "the request may have reached Zapier before it failed; its caller was cancelled",
            request.describe(),
            what,
        )
        self._metrics.error(unknown)
        logger.warning("%s", unknown)

    # --- server-dictated waits ----------------------------------------------------------------

    def _check_server_wait(self, response: proto.Response) -> None:
        """Raise `RateLimitedError` when a 429/503 asks for a wait over `max_server_wait`.

        For a 429 the wait is what freezes the bucket (``Retry-After``, else the reset, else
        the cool-down); for a 503 its ``Retry-After``, whether or not it froze the bucket.
        """
        now = self._clock.time()
        state = RateLimitState.from_headers(response.headers, now=now)
        if response.status == 503:
            wait = state.retry_after
        else:
            wait = pause_after(response.status, state, default_cooldown=DEFAULT_COOLDOWN)
        if wait is None or wait <= self._max_server_wait:
            return
        named = getattr(state, "retry_at", None)  # the unclamped time the server named
        retry_at = now + wait
        if isinstance(named, float) and named > retry_at:
            retry_at = named
        logger.info(
            "the server asked to wait %.0fs, over max_server_wait (%.0fs): not waiting",
            wait,
            self._max_server_wait,
        )
        raise errors.RateLimitedError(wait, retry_at)

    async def _honour_retry_after(self, retry_after: float, max_wait: float | None) -> None:
        """Sleep whatever part of a refusal's ``Retry-After`` the limiter does not enforce.

        A 429 freezes the whole bucket, so the next `slot()` waits for it. A lone 503 with
        ``Retry-After`` need not (one transient 503 is not a rate signal): then this one
        request waits out the server's wait itself before it is sent again.
        """
        wait = min(retry_after, self._max_server_wait)
        frozen_until = getattr(self._limiter, "frozen_until", None)
        if isinstance(frozen_until, (int, float)):
            wait -= max(0.0, frozen_until - self._clock.monotonic())
        if wait <= 0:
            return
        if max_wait is not None and wait > max_wait:
            raise errors.RateLimitedError(wait, self._clock.time() + wait)
        await self._clock.sleep(wait)

    def _refusal_freezes(self, response: proto.Response) -> None:
        """A 429/503 to a long-poll (whose slot was released on send) still freezes the bucket."""
        state = RateLimitState.from_headers(response.headers, now=self._clock.time())
        pause = pause_after(response.status, state, default_cooldown=DEFAULT_COOLDOWN)
        if pause is not None:
            self._limiter.freeze(min(pause, self._max_server_wait))


def _outcome(
    future: asyncio.Future[proto.Response | None],
) -> proto.Response | BaseException | None:
    exc = future.exception()
    return exc if exc is not None else future.result()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

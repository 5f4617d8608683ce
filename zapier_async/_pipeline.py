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
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
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
from ._limits import Lane, pressure_of, slot_for
from ._ratelimit import (
    DEFAULT_COOLDOWN,
    RateLimitState,
    parse_retry_after,
    pause_after,
)

if TYPE_CHECKING:
    import random

    from ._metrics import Recorder
    from ._transport import Transport

__all__ = [
    "ACTIONS_API_RESULTS",
    "CREATE_TASK_NAME",
    "GENERAL",
    "BucketKey",
    "CreateHooks",
    "Credential",
    "Orphan",
    "SendPipeline",
    "SendTiming",
    "default_bucket_key",
    "endpoint_family",
]

logger = logging.getLogger("zapier_async")

CREATE_TASK_NAME: Final = "zapier_async-create"

Orphan = Callable[[proto.Response], object]
"""Takes the 2xx answer to a create whose caller was cancelled; returns what it tracked.

It may raise a `ZapierError` (the answer names no usable run id): that is logged."""

GENERAL: Final = "api"
"""The endpoint family of every call Zapier does not count separately."""

ACTIONS_API_RESULTS: Final = "actions_api_results"
"""Actions API reads of runs' results: Zapier counts them in a bucket of their own."""

BucketKey = Callable[[Hashable, str], Hashable]
"""``bucket_key(credential_id, family) -> key`` of the limiter bucket a request spends."""


def endpoint_family(request: proto.Request) -> str:
    """The budget family a request counts in at Zapier: `ACTIONS_API_RESULTS` for Actions API
    reads of a run (``GET /actions/.../runs/{id}``), `GENERAL` for everything else."""
    if (
        request.method == "GET"
        and request.path.startswith("/actions/")
        and "/runs/" in request.path
    ):
        return ACTIONS_API_RESULTS
    return GENERAL


def default_bucket_key(credential_id: Hashable, family: str) -> Hashable:
    """One bucket per credential and family. The client's own credential (id None) spends
    the limiter's default bucket for its general calls, so clients sharing one `Limiter`
    share it as before."""
    return credential_id if family == GENERAL else (credential_id, family)


_credential_ids = itertools.count(1)


class Credential:
    """One auth provider as the pipeline uses it: its bucket id and its header cache.

    Args:
        auth: The provider.
        bucket_id: A stable, non-secret id of its budget (never the token): the provider's
            own ``bucket_id`` if it has one, else one assigned here (``"auth-<n>"``).
            None for a client's own credential (the limiter's default bucket).
    """

    __slots__ = ("_header", "auth", "bucket_id")

    def __init__(self, auth: AuthProvider, bucket_id: Hashable | object = ...) -> None:
        self.auth = auth
        if bucket_id is ...:
            own = getattr(auth, "bucket_id", None)
            bucket_id = own if own is not None else f"auth-{next(_credential_ids)}"
        self.bucket_id: Hashable = bucket_id
        # The Authorization header of the latest token, built once per token, not per request.
        self._header: tuple[str, Mapping[str, str]] | None = None

    def headers(self, token: str) -> Mapping[str, str]:
        cached = self._header
        if cached is None or cached[0] != token:
            # Checked once per new token, before any slot is taken: one with a control
            # character would otherwise make the HTTP library raise a bare ValueError.
            check_token(token)
            cached = (token, MappingProxyType({"Authorization": f"Bearer {token}"}))
            self._header = cached
        return cached[1]

    def __repr__(self) -> str:
        return f"<Credential {self.bucket_id!r} {self.auth!r}>"


class CreateHooks:
    """What a create's caller wants done with its outcome should it be cancelled on the wire.

    Attributes:
        accepted: Takes the 2xx answer (see `Orphan`).
        refused: Called when the create provably made no run (never sent, refused).
        on_wire: Set once the slot was granted and the exchange belongs to the pipeline.
        sending: Called right before each attempt goes on the wire (after the limiter
            granted its slot), so a caller can journal "this create may have reached
            Zapier" at the last moment it is known not to have. If it raises, nothing is
            sent, the slot is given back unused, and the exception reaches the caller.
        claim: Awaited before `sending`, in the exchange's task (an idempotency key is
            claimed in its run store only once the slot is granted). If it raises, nothing
            is sent, the slot is given back unused, and the exception reaches the caller;
            a caller that left meanwhile gets nothing sent and `refused` called.
            `refused` is also called before a create's attempt that provably made no run
            is retried, so the next attempt claims afresh.
    """

    __slots__ = ("accepted", "claim", "on_wire", "refused", "sending")

    def __init__(
        self,
        accepted: Orphan | None = None,
        refused: Callable[[], object] | None = None,
        sending: Callable[[], object] | None = None,
        claim: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.accepted = accepted
        self.refused = refused
        self.sending = sending
        self.claim = claim
        self.on_wire = False


class SendTiming:
    """When the last attempt of a send got its slot and its answer (monotonic seconds).

    Pass one to `SendPipeline.send` to learn them: a poll planner must tell the limiter's
    wait from the run's duration, and a round trip is the wire time alone.
    """

    __slots__ = ("answered_at", "granted_at")

    def __init__(self) -> None:
        self.granted_at: float | None = None
        self.answered_at: float | None = None


class _Wire:
    """One create handed to its task: whether its caller left before it was sent."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class SendPipeline:
    """Sends requests for one client: auth, limiter, transport, retries, creates on the wire.

    Args:
        auth: The client's own credential (requests sent without one use it).
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
        bucket_key: ``(credential id, family) -> key`` of the bucket each request spends.
            A limiter without keys (no ``supports_keys``, e.g. an older custom one) has one
            bucket for all: checked once, here.
    """

    def __init__(
        self,
        *,
        auth: Credential,
        transport: Transport,
        limiter: LimiterLike,
        clock: Clock,
        base_url: str,
        request_timeout: float,
        retry_policy: RetryPolicy,
        rng: random.Random,
        metrics: Recorder,
        max_server_wait: float,
        is_closed: Callable[[], bool],
        check_loop: Callable[[], None],
        bucket_key: BucketKey = default_bucket_key,
    ) -> None:
        self._credential = auth
        self._bucket_key = bucket_key
        self._keyed = bool(getattr(limiter, "supports_keys", False))
        # Called after each answer (or failed exchange) handed to the limiter: admission
        # control waiting for a probe's answer re-checks the budget then.
        self.on_answer: Callable[[], None] | None = None
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

    def key_for(self, request: proto.Request, credential: Credential | None = None) -> Hashable:
        """The limiter bucket `request` spends when sent with `credential`."""
        if not self._keyed:
            return None
        credential = self._credential if credential is None else credential
        return self._bucket_key(credential.bucket_id, endpoint_family(request))

    async def send(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        orphan: Orphan | CreateHooks | None = None,
        credential: Credential | None = None,
        timing: SendTiming | None = None,
        first: bool = False,
        lane: Lane | None = None,
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
            credential: Whose token to send and whose bucket to spend; the client's own by
                default.
            timing: Filled with when the last attempt of an idempotent request got its
                slot and its answer.
            first: An idempotent request served before the other waiters of its priority
                (a read of a run someone awaits goes before new creates).
            lane: Every slot of the request (retries included) is asked in it: raised,
                it raises the request's priority, while it waits too (`Lane`).
        """
        credential = self._credential if credential is None else credential
        return await self._send(
            request,
            priority=priority,
            max_wait=max_wait,
            hooks=orphan if isinstance(orphan, CreateHooks) else CreateHooks(orphan),
            credential=credential,
            base_url=self._base_url,
            timing=timing,
            first=first,
            lane=lane,
        )

    async def send_unlimited(self, request: proto.Request, base_url: str) -> proto.Response:
        """A token request to another host: the same retry loop, without the limiter or a token.

        Returns the last answer when it is not retried (a refusal, or retries exhausted), so
        the auth provider parses its error itself (scrubbing its secrets); raises
        `TransportError` when no answer came.
        """
        return await self._send(
            request,
            priority=Priority.INTERACTIVE,
            max_wait=None,
            hooks=CreateHooks(),
            credential=None,
            base_url=base_url,
        )

    async def _send(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        hooks: CreateHooks,
        credential: Credential | None,
        base_url: str,
        timing: SendTiming | None = None,
        first: bool = False,
        lane: Lane | None = None,
    ) -> proto.Response:
        """The one retry loop. `credential` None: a token request (no limiter, no token)."""
        self._check_loop()
        key = self.key_for(request, credential) if credential is not None else None
        attempt = 0
        reauthorised = False
        token = ""
        while True:
            attempt += 1
            response: proto.Response | None = None
            failure: errors.TransportError | None = None
            headers: Mapping[str, str] = {}
            if credential is not None:
                # The token comes first: a refresh is a round trip to another host and must
                # not hold a slot of the API's budget (in probe mode the only one) meanwhile.
                token, headers = await self._authorise(request, credential)
            if credential is None:
                try:
                    response = await self._transport.send(
                        request, base_url=base_url, headers={}, timeout=self._request_timeout
                    )
                except errors.TransportError as exc:
                    failure = exc
            elif request.idempotent:
                async with self._slot(priority, max_wait, key, first=first, lane=lane) as slot:
                    self._waited(request, slot)
                    if timing is not None:
                        timing.granted_at = self._clock.monotonic()
                        timing.answered_at = None
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
                            request, base_url=base_url, headers=headers, timeout=timeout
                        )
                    except errors.TransportError as exc:
                        failure = exc
                        slot.record(None, {})
                    else:
                        if timing is not None:
                            timing.answered_at = self._clock.monotonic()
                        slot.record(response.status, response.headers)
                    self._answered()
            else:
                try:
                    response = await self._send_on_wire(
                        request, headers, priority, max_wait, hooks, key, lane
                    )
                except errors.TransportError as exc:
                    failure = exc
            retry_after: float | None = None
            if response is not None and request.long_poll is not None:
                self._refusal_freezes(response, key)
            if response is not None:
                if 200 <= response.status < 300:
                    self._retry_budget.on_success()
                    return response
                if (
                    credential is not None
                    and response.status == 401
                    and not reauthorised
                    and credential.auth.invalidate(token)
                ):
                    # A refused token was not a request Zapier acted on: safe to re-send once.
                    reauthorised = True
                    attempt -= 1
                    if not request.idempotent:
                        _call(hooks.refused)  # no run made: no claim held through the wait
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
                if not refused or (credential is None and retry_after is None):
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
                    await self._honour_retry_after(
                        retry_after, max_wait, key if credential is not None else _UNLIMITED
                    )
                # After a 429 the limiter froze the whole bucket until the hinted time; the
                # next slot() waits for it (or raises RateLimitedError past the cap).
                if not request.idempotent:
                    _call(hooks.refused)  # no run made: no claim held through the wait
                continue
            if response is not None:
                if credential is None:
                    return response  # a token endpoint's refusal: its provider parses it
                error = proto.error_for_response(response, request, retry_after=retry_after)
                assert error is not None
                raise error
            assert failure is not None
            raise failure

    def _slot(
        self,
        priority: Priority,
        max_wait: float | None,
        key: Hashable,
        *,
        first: bool = False,
        lane: Lane | None = None,
    ) -> contextlib.AbstractAsyncContextManager[SlotLike]:
        # Checked once at construction (`_keyed`): a limiter without keys gets no key.
        key = key if self._keyed else None
        return slot_for(self._limiter, priority, max_wait=max_wait, key=key, first=first, lane=lane)

    def _answered(self) -> None:
        hook = self.on_answer
        if hook is not None:
            hook()

    def _waited(self, request: proto.Request, slot: SlotLike) -> None:
        """Tell the metrics how long the slot waited (spans carry it), before the send."""
        waited = getattr(slot, "waited", None)
        if isinstance(waited, (int, float)):
            self._metrics.limiter_waited(request, float(waited))

    async def _authorise(
        self, request: proto.Request, credential: Credential
    ) -> tuple[str, Mapping[str, str]]:
        """The current token and its headers; an untyped failure becomes `UnexpectedError`."""
        try:
            token = await credential.auth.token()
            return token, credential.headers(token)
        except errors.ZapierError:
            raise
        except Exception as exc:
            # The exception's text is left out: a provider's error may quote a secret. It
            # is the __cause__, for tracebacks.
            raise errors.UnexpectedError(
                f"the auth provider's token() raised {type(exc).__name__}; nothing was sent",
                request.describe(),
            ) from exc

    async def _send_on_wire(
        self,
        request: proto.Request,
        headers: Mapping[str, str],
        priority: Priority,
        max_wait: float | None,
        hooks: CreateHooks,
        key: Hashable,
        lane: Lane | None,
    ) -> proto.Response:
        """One exchange of a request that is not idempotent, shielded once its slot is granted.

        Cancelled while waiting for the slot, the caller just leaves (nothing sent). Once the
        slot is granted, the exchange (and the slot, until the answer is recorded) belongs
        to a task of the pipeline; a caller cancelled after that gets `CancelledError` at
        once and the answer goes to `hooks`.
        """
        stack = contextlib.AsyncExitStack()
        slot = await stack.enter_async_context(self._slot(priority, max_wait, key, lane=lane))
        self._waited(request, slot)
        # Granted: from here on the request is the client's. No await until the task owns it.
        hooks.on_wire = True
        wire = _Wire()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[proto.Response | None] = loop.create_future()
        task = loop.create_task(self._exchange(request, headers, stack, slot, wire, hooks))
        task.set_name(CREATE_TASK_NAME)
        self.wire_tasks.add(task)
        task.add_done_callback(partial(self._exchange_done, waiter, request, hooks))
        try:
            response = await waiter
        except asyncio.CancelledError:
            wire.abandoned = True
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                # The answer was in, but this caller was cancelled before it resumed.
                self._orphaned(request, _outcome(waiter), hooks)
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
        hooks: CreateHooks,
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
                if hooks.claim is not None:
                    await hooks.claim()  # e.g. an idempotency key's "sending" in its store
                    if wire.abandoned:
                        _give_back(slot)
                        return None  # the caller left meanwhile: not sent, `refused` frees
                if hooks.sending is not None:
                    hooks.sending()  # e.g. a journal's "maybe sent" line
            except BaseException:
                _give_back(slot)  # nothing was sent: the grant is not a send
                raise
            try:
                response = await self._transport.send(
                    request,
                    base_url=self._base_url,
                    headers=headers,
                    timeout=self._request_timeout,
                )
            except errors.TransportError:
                slot.record(None, {})
                self._answered()
                raise
            except errors.UnexpectedError as exc:
                # Whether it reached Zapier is unknown: never re-sent, and said so.
                raise errors.OutcomeUnknownError(
                    "the transport failed in an unexpected way", request.describe(), exc.message
                ) from exc
            slot.record(response.status, response.headers)
            self._answered()
            return response

    def _exchange_done(
        self,
        waiter: asyncio.Future[proto.Response | None],
        request: proto.Request,
        hooks: CreateHooks,
        task: asyncio.Task[proto.Response | None],
    ) -> None:
        """The exchange ended: hand its outcome to its caller, or to `hooks` if it left."""
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
            self._orphaned(request, outcome, hooks)
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
        hooks: CreateHooks,
    ) -> None:
        """The outcome of an exchange whose caller was cancelled while it was on the wire."""
        orphan = hooks.accepted
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
                _call(hooks.refused)
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
            # Not sent (the client was closed, a journal hook refused it), or None.
            _call(hooks.refused)
            return
        if decision is not RetryDecision.UNKNOWN_OUTCOME:
            # Refused (a 429, a 401, a 4xx): no run was made, and nobody wants one now.
            _call(hooks.refused)
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

    async def _honour_retry_after(
        self, retry_after: float, max_wait: float | None, key: Hashable
    ) -> None:
        """Sleep whatever part of a refusal's ``Retry-After`` the limiter does not enforce.

        A 429 freezes the whole bucket, so the next `slot()` waits for it. A lone 503 with
        ``Retry-After`` need not (one transient 503 is not a rate signal): then this one
        request waits out the server's wait itself before it is sent again.
        """
        wait = min(retry_after, self._max_server_wait)
        frozen_until: object = None
        if key is _UNLIMITED:
            pass  # a token request: no limiter froze anything for it
        elif self._keyed:
            pressure = pressure_of(self._limiter, key)
            frozen_until = pressure.frozen_until if pressure is not None else None
        else:
            frozen_until = getattr(self._limiter, "frozen_until", None)
        if isinstance(frozen_until, (int, float)):
            wait -= max(0.0, frozen_until - self._clock.monotonic())
        if wait <= 0:
            return
        if max_wait is not None and wait > max_wait:
            raise errors.RateLimitedError(wait, self._clock.time() + wait)
        await self._clock.sleep(wait)

    def _refusal_freezes(self, response: proto.Response, key: Hashable) -> None:
        """A 429/503 to a long-poll (whose slot was released on send) still freezes the bucket.

        The pause is passed uncapped: the limiter caps it itself and, seeing a wait over its
        ``max_server_wait``, refuses at once instead of waiting.
        """
        state = RateLimitState.from_headers(response.headers, now=self._clock.time())
        pause = pause_after(response.status, state, default_cooldown=DEFAULT_COOLDOWN)
        if pause is None:
            return
        if self._keyed and key is not None:
            self._limiter.freeze(pause, key=key)  # type: ignore[call-arg]
        else:
            self._limiter.freeze(pause)


def _outcome(
    future: asyncio.Future[proto.Response | None],
) -> proto.Response | BaseException | None:
    exc = future.exception()
    return exc if exc is not None else future.result()


_UNLIMITED: Final = object()
"""The "bucket" of a token request: none."""


def _call(hook: Callable[[], object] | None) -> None:
    if hook is None:
        return
    try:
        hook()
    except Exception:
        logger.exception("a create's refusal hook failed")


def _give_back(slot: SlotLike) -> None:
    """Return a granted slot whose request was not sent: not counted as a send.

    A slot of this package's limiters (`_limits.OneShotSlot`) gives its token back; a
    slot of another limiter is released at the end of its ``async with`` block as usual.
    """
    undo = getattr(slot, "_undo", None)
    if callable(undo):
        undo()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

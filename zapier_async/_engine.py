"""The engine under the façade: send, create and track, for a client and all its views.

Theory of operation
-------------------
One `Engine` per `ZapierClient` holds what the client's views share: the send pipeline
(`_pipeline.SendPipeline`: token, limiter slot, transport, retries, creates on the wire), the
poller, the poll cadence, the metrics recorder, the handles it follows and the lifecycle
(open, closed, the event loop of first use). A view (`client.with_auth(auth)`) is only a
`Credential` (the provider, its bucket id, its header cache) plus a reference to the engine,
so creating one costs no task and no I/O, and closing the client ends them all.

Package-internal API (what the façade, views, stored actions, discovery and `run_many` call):

- `Engine.ensure_open()`: raise `InvalidRequestError` when closed, `WrongEventLoopError`
  from another loop;
- `Engine.send(request, priority=, max_wait=, auth=)`: one request, a 2xx `Response` or a
  typed error;
- `Engine.create(request, priority=, max_wait=, auth=, kind=, ..., idempotency_key=)`: a
  run-creating request, its run tracked: a `RunHandle`;
- `Engine.track(locator, auth=, first_delay=, ...)` and `Engine.resume(token, auth=, ...)`;
- `Engine.deliver(run, token)`: a completion callback;
- `Engine.credential(auth)`: the `Credential` of a provider (bound to the engine);
- `Engine.cap(max_rate_limit_wait)`: a per-call cap or the client's default.

Each request is paced by the limiter bucket ``bucket_key(credential.bucket_id, family)``
(`_pipeline.default_bucket_key`): per credential, and per endpoint family where Zapier
counts separately (`ACTIONS_API_RESULTS`), so a 429 for one user freezes only that user's
bucket.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
import random
import weakref
from collections.abc import Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs

from . import _actions as actions
from . import _protocol as proto
from . import errors
from ._admission import Admission, count_down
from ._auth import AuthContext, AuthProvider
from ._backoff import PollPolicy, RetryPolicy, cap_hint
from ._cadence import ReadCadence
from ._handle import RunHandle
from ._idempotency import KeyedCreates
from ._limiter import Priority
from ._limits import Lane, pressure_of
from ._pipeline import (
    BucketKey,
    CreateHooks,
    Credential,
    SendPipeline,
    SendTiming,
    default_bucket_key,
)
from ._polling import AdaptivePolling
from ._ratelimit import parse_retry_after
from ._scheduler import Poller
from ._spare import SpareReads
from .models import Run, RunStatus

if TYPE_CHECKING:
    from ._cadence import PressureLike
    from ._clock import Clock
    from ._limiter import LimiterLike
    from ._metrics import Recorder
    from ._runstore import RunStore
    from ._transport import Transport

__all__ = ["MAX_CREDENTIALS", "MAX_ORPHANS", "UNSET", "Engine", "Unset"]

logger = logging.getLogger("zapier_async")

MAX_ORPHANS: Final = 1000
"""Handles `ZapierClient.orphaned_runs` keeps (the most recent)."""

MAX_CREDENTIALS: Final = 10_000
"""Providers whose `Credential` (bucket id, header cache) the engine remembers (LRU)."""


class Unset:
    """The type of `UNSET`: "use the client's default"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<default>"


UNSET: Final = Unset()

# Poll failures that retrying later cannot fix: the handle fails at once.
_FATAL_POLL_ERRORS = (
    errors.NotFoundError,
    errors.AuthenticationError,
    errors.PermissionDeniedError,
    errors.BadRequestError,
    errors.InvalidRequestError,
)

_NOT_BULK: Final = object()
"""`Engine._bulk_runs.get`'s default: the run was not made by a bulk job."""


class Engine:
    """Send, create and track for one client and its views (see the module docstring)."""

    def __init__(
        self,
        *,
        auth: AuthProvider,
        transport: Transport,
        limiter: LimiterLike,
        owns_limiter: bool,
        clock: Clock,
        base_url: str,
        request_timeout: float,
        retry_policy: RetryPolicy,
        poll_policy: PollPolicy,
        rng: random.Random,
        metrics: Recorder,
        max_server_wait: float,
        max_wait: float | None,
        max_concurrent_polls: int,
        max_poll_failures: int,
        long_poll: actions.LongPoll | None,
        callback_polling: actions.CallbackPolling,
        allow_loopback_callback: bool,
        bucket_key: BucketKey | None = None,
        run_store: RunStore | None = None,
    ) -> None:
        self.clock = clock
        self.transport = transport
        self.limiter = limiter
        self.metrics = metrics
        self.base_url = base_url
        self.max_wait = max_wait
        self.max_server_wait = max_server_wait
        self.allow_loopback_callback = allow_loopback_callback
        self.run_store = run_store
        self._owns_limiter = owns_limiter
        self._request_timeout = request_timeout
        self._poll_policy = poll_policy
        # Polls are priced by the live budget of the bucket each run's reads spend.
        self._polling = AdaptivePolling(policy=poll_policy, pressure_of=self._pressure)
        self._rng = rng
        # When each run is read next: one place decides (see `_cadence.ReadCadence`).
        self.cadence = ReadCadence(
            planner=self._polling,
            callback=callback_polling,
            long_poll=long_poll,
            retry=retry_policy,
            max_failures=max_poll_failures,
        )
        self._closed = False
        # The event loop of the first use: the pool, the poller and the limiter belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Polls are capped per credential (its rate-limit buckets), under a larger total: one
        # user's polls waiting for that user's budget never hold back another user's.
        self.poller = Poller(
            clock=clock,
            poll=self._poll,
            max_concurrent_polls=max_concurrent_polls,
            bucket_of=_credential_of,
        )
        self.handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        # Reads ahead of plan on budget a window would lose (see `_spare`).
        self.spare = SpareReads(limiter, self.poller, self._polling, clock.monotonic)
        # Each bucket's budget is priced against its runs in flight (the spare reads count
        # them: wired once both are built) and its creates under way (`creating_of`).
        self._polling.runs_of = self.spare.following
        self._creating: collections.Counter[Hashable] = collections.Counter()
        self._polling.creating_of = self._creating.__getitem__
        # Runs Zapier created for callers cancelled while their create was on the wire.
        self.orphans: collections.deque[RunHandle] = collections.deque(maxlen=MAX_ORPHANS)
        # The client's own credential spends the limiter's default bucket (id None).
        self.own = Credential(auth, None)
        self._credentials: collections.OrderedDict[int, Credential] = collections.OrderedDict()
        # Creates under an idempotency key, and the run-store writes they leave behind.
        self.keyed = KeyedCreates(self)
        # Admission control: reads promised to admitted runs (see `_admission`).
        self.admission = Admission(
            limiter=limiter,
            clock=clock,
            call_later=self.poller.call_later,
            expected_polls=self._polling.expected_polls,
        )
        # Runs a bulk job created (at BULK), with the job's lane (or None): awaited by the
        # job, not by a person, so their reads are background work (they leave the
        # interactive reserve alone) and wait in the job's lane: raised with its creates
        # once the job's input is exhausted, reads already waiting included.
        self._bulk_runs: weakref.WeakKeyDictionary[RunHandle, Lane | None] = (
            weakref.WeakKeyDictionary()
        )
        self.pipeline = SendPipeline(
            auth=self.own,
            transport=transport,
            limiter=limiter,
            clock=clock,
            base_url=base_url,
            request_timeout=request_timeout,
            retry_policy=retry_policy,
            rng=rng,
            metrics=metrics,
            max_server_wait=max_server_wait,
            is_closed=lambda: self._closed,
            check_loop=self.check_loop,
            bucket_key=bucket_key if bucket_key is not None else default_bucket_key,
        )
        self.pipeline.on_answer = self.admission.answered
        self._bind(auth)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def ensure_open(self) -> None:
        """Raise `InvalidRequestError` once closed, `WrongEventLoopError` from another loop."""
        if self._closed:
            raise errors.InvalidRequestError("the client is closed")
        self.check_loop()

    def check_loop(self) -> None:
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

    def forget_loop(self) -> None:
        """Forget the event loop of first use (a forked child starts afresh)."""
        self._loop = None

    async def aclose(self) -> None:
        """Close: drain creates on the wire, stop polling, detach handles, close the pool."""
        if self._closed:
            return
        self.check_loop()
        self._closed = True
        try:
            await self.pipeline.drain()
            if self.keyed.background:
                await asyncio.wait(set(self.keyed.background), timeout=self._request_timeout)
        finally:
            self.spare.close()
            await self.poller.aclose()
            for handle in list(self.handles.values()):
                if not handle.done():
                    handle._finish(errors.RunDetachedError(handle.id, "client closed"))
            self.handles.clear()
            if self._owns_limiter:
                await self.limiter.aclose()
            # A create still on the wire past the drain fails with its connection (or its
            # own timeout): its caller gets OutcomeUnknownError.
            await self.transport.aclose()

    @property
    def in_flight(self) -> int:
        return sum(1 for h in self.handles.values() if not h.done())

    # --- credentials --------------------------------------------------------------------------

    def credential(self, auth: AuthProvider) -> Credential:
        """The `Credential` of `auth`: one per provider object (LRU of `MAX_CREDENTIALS`).

        No I/O: a new provider is bound to the engine's transport and clock (`bind`), and
        gets the bucket id it names (``auth.bucket_id``) or one assigned here.
        """
        if auth is self.own.auth:
            return self.own
        found = self._credentials.get(id(auth))
        if found is not None and found.auth is auth:
            self._credentials.move_to_end(id(auth))
            return found
        credential = Credential(auth)
        self._bind(auth)
        self._credentials[id(auth)] = credential
        while len(self._credentials) > MAX_CREDENTIALS:
            self._credentials.popitem(last=False)
        return credential

    def _bind(self, auth: AuthProvider) -> None:
        bind = getattr(auth, "bind", None)
        if callable(bind):
            # Providers that fetch tokens borrow our transport and clock (see `_auth`). Their
            # token requests go through the pipeline's retry loop (`send_token_request`): the
            # provider's own loop is given a single attempt so nothing is retried twice.
            bind(
                AuthContext(
                    clock=self.clock,
                    send=self.send_token_request,
                    retry_policy=RetryPolicy(max_attempts=1),
                    rng=self._rng,
                )
            )

    def cap(self, value: float | Unset | None) -> float | None:
        """A per-call ``max_rate_limit_wait``, or the client's default."""
        return self.max_wait if isinstance(value, Unset) else value

    # --- sending ------------------------------------------------------------------------------

    async def send(
        self,
        request: proto.Request,
        *,
        priority: Priority = Priority.INTERACTIVE,
        max_wait: float | None,
        auth: Credential | None = None,
        orphan: CreateHooks | None = None,
        timing: SendTiming | None = None,
        first: bool = False,
        lane: Lane | None = None,
    ) -> proto.Response:
        """Send through the limiter with retries (see `SendPipeline.send`)."""
        return await self.pipeline.send(
            request,
            priority=priority,
            max_wait=max_wait,
            orphan=orphan,
            credential=auth,
            timing=timing,
            first=first,
            lane=lane,
        )

    def _pressure(self, key: Hashable) -> PressureLike | None:
        """The live budget of the limiter bucket `key` (the poll planner prices by it).

        Reads promised to admitted runs are spoken for: they are not left to spend on polls.
        """
        pressure = pressure_of(self.limiter, key)
        owed = self.admission.owed.get(key, 0)
        if pressure is None or not owed or pressure.remaining_estimate is None:
            return pressure
        return attrs.evolve(pressure, remaining_estimate=max(pressure.remaining_estimate - owed, 0))

    def read_key(self, locator: proto.RunLocator, auth: Credential | None) -> Hashable:
        """The limiter bucket the reads of the run at `locator` spend with `auth`."""
        return self.pipeline.key_for(proto.poll_request(locator), auth)

    def _runs_key(self, kind: proto.RunKind, auth: Credential | None) -> Hashable:
        """The bucket the reads of a run of `kind` created with `auth` will spend."""
        return self.read_key(proto.RunLocator(kind=kind, run_id="x", stored_action_id="x"), auth)

    async def send_token_request(self, request: proto.Request, base_url: str) -> proto.Response:
        """An auth provider's token request (see `AuthContext.send`): the same retry loop,
        not through the limiter (the token endpoint is another host with another budget)."""
        return await self.pipeline.send_unlimited(request, base_url)

    # --- creating -----------------------------------------------------------------------------

    async def create(
        self,
        request: proto.Request,
        *,
        priority: Priority,
        max_wait: float | None,
        auth: Credential | None = None,
        kind: proto.RunKind = "action_run",
        stored_action_id: str | None = None,
        callback: bool = False,
        callback_token: str | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        before_send: Callable[[], object] | None = None,
        on_orphan: Callable[[RunHandle], object] | None = None,
        lane: Lane | None = None,
    ) -> RunHandle:
        """Send a run-creating request and track the run it created.

        `deadline` (monotonic, on the engine's clock): the caller's one deadline for the
        whole run (`run(timeout=)`); the handle carries it. An INTERACTIVE create with a
        deadline (or a ``max_wait``) is admitted only when the budget before it covers the
        create, and with a deadline also the reads the run will need (see `Admission.admit`);
        otherwise it fails fast with `RateLimitedError`.

        `callback_token` is the secret `bind_callback_url` put into the request's
        `callback_url`: callbacks must carry it (`deliver_callback`). A request built with a
        `callback_url` but without a token (`callback=True`) is tracked at the safety-net
        cadence but takes no callback.

        With `idempotency_key` (needs a run store), the store decides: a recorded run is
        resumed, a key left ``sending`` raises `OutcomeUnknownError`, and a free key is
        claimed once the slot is granted, right before the send (see `_idempotency`).

        `before_send` is called right before each attempt goes on the wire (see
        `CreateHooks.sending`); if it raises, nothing is sent and the exception is raised.

        `on_orphan` is called with the handle of a run created for a caller that was
        cancelled while its create was on the wire (it is in `orphaned_runs`), so the caller's
        owner (a bulk job) learns the id of the run it gave up on.

        `lane`: the create's slots are asked in it (a bulk job's creates, raised to
        INTERACTIVE once its input is exhausted, those waiting for a slot included; see
        `Lane`). Not with `idempotency_key`.
        """
        counted: list[Hashable] = []  # its read bucket while it is a create under way
        created = partial(
            self._created,
            request,
            auth=auth,
            kind=kind,
            stored_action_id=stored_action_id,
            callback=callback,
            callback_token=callback_token,
            submitted_at=self.clock.monotonic(),
            on_orphan=on_orphan,
            counted=counted,
        )
        promise: list[Any] | None = None
        runs_key = self._runs_key(kind, auth)
        if priority is Priority.INTERACTIVE and (deadline is not None or max_wait is not None):
            now = self.clock.monotonic()
            until = math.inf if deadline is None else deadline
            if max_wait is not None:
                until = min(until, now + max_wait)
            try:
                promise = await self.admission.admit(
                    self.pipeline.key_for(request, auth),
                    runs_key,
                    request.poll_key,
                    until,
                    reads=deadline is not None,
                )
            except errors.ZapierError as exc:
                self.metrics.error(exc)
                raise
            max_wait = max(until - self.clock.monotonic(), 0.0)
        counted.append(runs_key)
        self._creating[runs_key] += 1
        try:
            if idempotency_key is not None:
                handle = await self.keyed.create_once(
                    idempotency_key, request, created, priority, max_wait, auth, before_send
                )
            else:
                hooks = CreateHooks(partial(created, orphaned=True), sending=before_send)
                try:
                    response = await self.send(
                        request,
                        priority=priority,
                        max_wait=max_wait,
                        auth=auth,
                        orphan=hooks,
                        lane=lane,
                    )
                    handle = created(response)
                except errors.ZapierError as exc:
                    self.metrics.error(exc)
                    raise
        except BaseException:
            self.admission.keep(promise, 0)
            raise
        finally:
            self._followed(counted)
        handle.deadline = deadline
        if priority is Priority.BULK:
            self._bulk_runs[handle] = lane
        self.admission.follow(handle, promise)
        return handle

    def _followed(self, counted: list[Hashable] | None) -> None:
        """A create counted as under way (`_creating`) is over: answered, failed or gone."""
        if counted:
            count_down(self._creating, counted.pop())

    def _created(
        self,
        request: proto.Request,
        response: proto.Response,
        *,
        auth: Credential | None,
        kind: proto.RunKind,
        stored_action_id: str | None,
        callback: bool,
        callback_token: str | None,
        submitted_at: float,
        orphaned: bool = False,
        on_orphan: Callable[[RunHandle], object] | None = None,
        counted: list[Hashable] | None = None,
    ) -> RunHandle:
        """Track the run a 2xx answer to a create names, and announce it ("started").

        `orphaned`: its caller was cancelled while the create was on the wire (see
        `orphaned_runs`); the run is followed all the same, logged, and given to `on_orphan`.
        `counted`: the create's entry among those under way, ended here, before its run is
        planned (its own plan would count it twice).

        Raises:
            OutcomeUnknownError: The answer names no usable run id.
        """
        self._followed(counted)
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
            handle = RunHandle(locator, self.poller, created_at=self.clock.monotonic())
            handle._callback_token = callback_token
            handle.credential = auth
            handle._finish(errors.RunDetachedError(locator.run_id, "client closed"))
        else:
            handle = self.track(
                locator,
                auth=auth,
                first_delay=None,
                poll_key=request.poll_key,
                callback=callback,
                callback_token=callback_token,
            )
        # Announced even on a detached handle: a listener (a journal) learns the id.
        self.metrics.run_started(handle, submitted_at)
        if orphaned:
            self.orphans.append(handle)
            logger.warning(
                "run %s created for a caller that was cancelled; %s (client.orphaned_runs)",
                handle.id,
                "the client was closed" if self._closed else "it is followed to its end",
                extra={"run_id": handle.id, "action": request.poll_key},
            )
            if on_orphan is not None:
                try:
                    on_orphan(handle)
                except Exception:
                    logger.exception("on_orphan failed for run %s", handle.id)
        return handle

    # --- tracking -----------------------------------------------------------------------------

    def track(
        self,
        locator: proto.RunLocator,
        *,
        auth: Credential | None = None,
        first_delay: float | None,
        poll_key: str | None = None,
        callback: bool = False,
        callback_token: str | None = None,
    ) -> RunHandle:
        """Follow a run: a handle the poller reads (with `auth`'s token) until it ends."""
        handle = RunHandle(locator, self.poller, created_at=self.clock.monotonic())
        handle.credential = auth
        self.handles[locator.run_id] = handle
        if callback_token is not None:
            handle._callback_token = callback_token
            callback = True
        # With a callback, reads are only the safety net (`CallbackPolling`).
        handle.via_callback = callback
        bucket = self.read_key(locator, auth)
        self.spare.follow(handle, bucket)  # (counted in its bucket's runs when it is planned)
        if first_delay is None:
            first_delay = self.cadence.first(
                handle, poll_key, self._rng, bucket=bucket, callback=callback
            )
        self.poller.schedule(handle, first_delay)
        return handle

    def resume(
        self,
        token_or_run_id: str,
        *,
        auth: Credential | None = None,
        callback_token: str | None = None,
    ) -> RunHandle:
        """Follow a run again (see `ZapierClient.resume`); one handle per run and credential."""
        self.ensure_open()
        locator = proto.decode_continuation_token(token_or_run_id)
        existing = self.handles.get(locator.run_id)
        if (
            existing is not None
            and not existing.done()
            and existing.locator == locator
            and existing.credential is auth
        ):
            if callback_token is not None and existing._callback_token is None:
                existing._callback_token = callback_token
            self._bulk_runs.pop(existing, None)  # resumed: its caller's run, not a job's
            return existing
        if callback_token is not None and not (isinstance(callback_token, str) and callback_token):
            raise errors.InvalidRequestError("must be a non-empty string", "callback_token")
        return self.track(locator, auth=auth, first_delay=0.0, callback_token=callback_token)

    def deliver(self, run: Run, token: str | None) -> bool:
        """A completion callback for `run` (see `ZapierClient.deliver_callback`)."""
        handle = self.handles.get(run.id)
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
                extra={"run_id": run.id, "action": handle.reads.key},
            )
            return False
        previous = handle.status
        handle._update(run)
        self.metrics.run_read(handle, previous, run)
        if handle.done():
            self.poller.forget(handle)
            self.observe(handle, self.clock.monotonic() - handle.created_at)
        return True

    def observe(self, handle: RunHandle, elapsed: float, *, seen_at: float | None = None) -> None:
        """Teach the poll planner how long `handle`'s run took; poll what it brings forward."""
        for other, delay in self._polling.observe(handle, elapsed, seen_at=seen_at):
            self.poller.schedule(other, delay)

    async def _poll(self, handle: RunHandle) -> None:
        """Read one handle's run once; update, finish or reschedule it. Never raises."""
        if handle.done():
            return
        locator = handle.locator
        long_poll = self.cadence.long_polls(locator.kind, callback=handle.via_callback)
        if long_poll is not None:
            request = actions.poll_request(locator, long_poll=long_poll)
        else:
            request = proto.poll_request(locator)
        # A read of a run someone awaits, or was promised reads at admission, goes before
        # new creates: the run already took its create's share of the budget.
        promise = self.admission.promised.get(handle)
        lane = self._bulk_runs.get(handle, _NOT_BULK)  # one lookup per read
        bulk = lane is not _NOT_BULK
        first = (handle.awaited and not bulk) or promise is not None
        priority = Priority.INTERACTIVE if first else Priority.POLL
        self.admission.keep(promise, 1)
        attempt = handle.reads.attempts
        handle.reads.attempts += 1
        sent_at = self.clock.monotonic()
        credential = handle.credential
        auth = credential if isinstance(credential, Credential) else None
        timing = SendTiming()
        try:
            response = await self.send(
                request,
                priority=priority,
                max_wait=None,
                auth=auth,
                timing=timing,
                first=first,
                lane=lane if isinstance(lane, Lane) else None,
            )
            run = proto.parse_run(response, request, run_id=handle.id)
        except _FATAL_POLL_ERRORS as exc:
            self.metrics.error(exc)
            self.metrics.run_lost(handle, exc)
            handle._finish(exc)
            return
        except errors.RateLimitedError as exc:
            # The server dictated a wait past max_server_wait: not a failed read. Read again
            # when it allows (capped), without counting a poll failure.
            delay = min(max(exc.retry_after, 0.0), self.max_server_wait)
            logger.info(
                "reading run %s: %s; reading again in %.1fs",
                handle.id,
                exc,
                delay,
                extra={"run_id": handle.id, "action": handle.reads.key},
            )
            self.poller.schedule(handle, delay)
            return
        except Exception as exc:
            self._poll_failed(handle, request, exc)
            return
        handle.reads.failures = 0
        answered_at = self.clock.monotonic()
        granted_at = sent_at if timing.granted_at is None else timing.granted_at
        # The wire time alone: a wait for the rate budget is not the server's latency.
        self._polling.round_trip((timing.answered_at or answered_at) - granted_at)
        previous = handle.status
        handle._update(run)
        self.metrics.run_read(handle, previous, run)
        self.spare.read(handle, self.pipeline.key_for(request, auth))  # the bucket it spent
        elapsed = answered_at - handle.created_at
        if handle.done():
            # When the read was granted, not asked for: a wait for the budget is not duration.
            self.observe(handle, elapsed, seen_at=granted_at - handle.created_at)
            return
        # A server's hint is capped once, here, for every way of reading the run.
        hint = cap_hint(_throttle_hint(run), min(self._poll_policy.max_hint, self.max_server_wait))
        long_polled = request.long_poll is not None
        delay = self.cadence.after_read(
            handle,
            attempt=attempt + 1,
            elapsed=elapsed,
            rng=self._rng,
            hint=hint,
            callback=handle.via_callback,
            long_polled=long_polled,
            read_took=self.clock.monotonic() - sent_at,
            retry_after=(
                parse_retry_after(response.header("retry-after"), now=self.clock.time())
                if long_polled
                else None
            ),
        )
        self.poller.schedule(handle, delay)

    def _poll_failed(self, handle: RunHandle, request: proto.Request, exc: Exception) -> None:
        # Anything else is a failed poll, typed or not (an auth provider's OSError, a closed
        # session, ...): retried up to max_poll_failures, then the handle fails with it.
        # Never dropped: an awaiter of a handle nobody polls would hang.
        error: Exception = exc
        if not isinstance(exc, errors.ZapierError):
            error = errors.UnexpectedError(
                f"reading the run failed: {type(exc).__name__}", request.describe()
            )
            error.__cause__ = exc
        self.metrics.error(error)
        handle.reads.failures += 1
        delay = self.cadence.after_failure(handle.reads.failures, self._rng)
        if delay is None:
            self.metrics.run_lost(handle, error)
            logger.warning(
                "giving up on run %s after %d failed reads: %s",
                handle.id,
                handle.reads.failures,
                error,
                extra={"run_id": handle.id, "action": handle.reads.key},
            )
            handle._finish(error)
            return
        # Transient, and retried: not a WARNING (the give-up above is one).
        logger.info(
            "reading run %s failed (%s); trying again in %.1fs",
            handle.id,
            error,
            delay,
            extra={"run_id": handle.id, "action": handle.reads.key},
        )
        self.poller.schedule(handle, delay)


def _credential_of(handle: RunHandle) -> Hashable:
    """The poller's bucket of a handle: its credential's bucket id (None: the client's own)."""
    credential = handle.credential
    return credential.bucket_id if isinstance(credential, Credential) else None


def _throttle_hint(run: Run) -> float | None:
    """A throttled run error's `delay` (seconds), honoured before the next poll."""
    delays = [e.delay for e in run.errors if e.delay is not None and e.delay > 0]
    if not delays or run.status is RunStatus.SUCCESS:
        return None
    return max(delays)


def bucket_of(engine: Engine, request: proto.Request, auth: Credential | None) -> Hashable:
    """The limiter key `request` spends when sent with `auth` (for tests and planners)."""
    return engine.pipeline.key_for(request, auth)

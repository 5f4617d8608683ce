"""Run metrics and event hooks: counters on the hot path, numbers on demand.

Theory of operation
-------------------
The client owns one `Recorder`. The hot path only bumps a few integers in dicts (a request
by endpoint, a response by status, a run started or ended) and, for latency, keeps a bounded
reservoir sample (Vitter's algorithm R, 1,024 values), the exact maximum, sum and count: so
memory stays constant however long the client lives, and `ZapierClient.metrics()` derives
percentiles from the reservoir when asked. Latencies are also counted in fixed buckets
(`LATENCY_BUCKETS`), which is what a Prometheus histogram needs.

Events (`RequestEvent`, `RetryEvent`, `RateLimitEvent`, `RunEvent`, defined in `_events`
and re-exported here) are small frozen values
handed to listeners (`ZapierClient(on_event=...)`, `client.add_listener(...)`), so users can
wire logging, Prometheus or OpenTelemetry without this library depending on any of them. An
event is only built when at least one listener exists, and a listener that raises is logged
and skipped: a metrics bug must never break a run.

Cardinality stays bounded: nothing is labelled per end user by default. Per-credential run
figures (`CredentialMetrics`: runs started, succeeded, failed, lost, latency) are kept only
when asked (`Recorder.track_credentials(limit)`), for the `limit` most recently used
credentials, and read on demand (`credential_metrics(bucket_id)`); the number evicted is
counted, so a worker cycling through 100,000 users keeps a table of constant size.

The instrumented transport (`MeteredTransport`) wraps whichever transport the client uses,
so every HTTP exchange (creates, polls, and any other request) is counted in one place.

Correlation, for tracing (`zapier_async.otel`): every send of one `Request` value (the client
re-sends the same value on a retry) shares a `RequestEvent.request_id`, and
`RequestEvent.resend_count` says which send it was. A request that reads a run names it
(`run_id`, from its path), and the answer to a create names the run it created (parsed again
here, only when a listener exists). Nothing in an event is a secret or an input value: the
URL has no credentials and no ``zapier_async_token``, bodies are never included.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import random
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs

from . import errors
from ._events import (
    Event,
    EventListener,
    RateLimitEvent,
    RequestEvent,
    RetryEvent,
    RunEvent,
)
from ._protocol import Request, Response, parse_created_run
from .models import Run, RunStatus

if TYPE_CHECKING:
    from ._clock import Clock
    from ._handle import RunHandle
    from ._limiter import LimiterStats
    from ._transport import Transport

__all__ = [
    "DEFAULT_TRACKED_CREDENTIALS",
    "CredentialMetrics",
    "Event",
    "EventListener",
    "Metrics",
    "RateLimitEvent",
    "RequestEvent",
    "RetryEvent",
    "RunEvent",
]

logger = logging.getLogger("zapier_async")

RESERVOIR_SIZE: Final = 1024
"""Latency samples kept for percentiles (a uniform sample of every run's latency)."""

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Upper bounds (seconds) of the run-latency buckets in `Metrics.latency_buckets`."""

_SECONDS_PER_DAY: Final = 86_400.0

# Requests that read one run: their path ends with the run's (quoted) id.
_RUN_READS: Final = frozenset(
    {"action_runs.get", "actions_runs.get", "actions_runs.wait", "stored_actions.run_get"}
)

# Query parameters never put in an event's URL (the callback secret), and parameters whose
# value is replaced: anything that looks like a credential.
_DROPPED_QUERY: Final = frozenset({"zapier_async_token"})
_SECRET_HINTS: Final = ("token", "secret", "password", "key", "auth", "signature", "client_id")


# --- the snapshot ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Metrics:
    """A snapshot of what one client did since it was created (`ZapierClient.metrics()`).

    Attributes:
        uptime: Seconds since the client was created.
        runs_started: Runs Zapier accepted from this client.
        runs_succeeded: Runs seen ending with status ``success``.
        runs_failed: Runs seen ending with status ``error``.
        runs_lost: Runs whose outcome could not be read (e.g. 404 past retention).
        runs_in_flight: Runs this client follows now.
        outcome_unknown: Creates whose fate is unknown (`OutcomeUnknownError`).
        latency_mean: Mean seconds from submission (the create call) to the outcome.
        latency_p50: Median of that latency (from a bounded uniform sample), or None.
        latency_p95: 95th percentile of that latency, or None.
        latency_max: The longest latency seen, or None.
        latency_samples: How many latencies were measured.
        latency_sum: Those latencies summed, in seconds.
        latency_buckets: ``(upper bound, count)`` pairs, cumulative: how many latencies were
            at most each bound of `LATENCY_BUCKETS` (the ``+Inf`` bucket is `latency_samples`).
        requests_by_endpoint: HTTP requests sent, by endpoint label.
        responses_by_status: HTTP responses, by status code.
        responses_by_endpoint: HTTP responses by endpoint label, then by status code.
        transport_errors: Requests that got no HTTP answer.
        retries: Requests sent again after a failure or a refusal.
        rate_limited: 429 responses (from the limiter's count).
        limiter_waits: Requests that waited for the rate limiter.
        limiter_wait_total: Seconds waited for the rate limiter, summed.
        limiter_wait_max: The longest wait for the rate limiter.
        errors_by_code: Errors by ``code``: run error codes (``user``, ``throttled``, ...),
            API error codes (``invalid``, ``not_found``, ... or ``http_<status>`` when the
            body named none), ``transport_<kind>``, ``outcome_unknown``, ``rate_limited``.
    """

    uptime: float
    runs_started: int
    runs_succeeded: int
    runs_failed: int
    runs_lost: int
    runs_in_flight: int
    outcome_unknown: int
    latency_mean: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_max: float | None
    latency_samples: int
    requests_by_endpoint: Mapping[str, int]
    responses_by_status: Mapping[int, int]
    latency_sum: float = 0.0
    latency_buckets: tuple[tuple[float, int], ...] = ()
    responses_by_endpoint: Mapping[str, Mapping[int, int]] = attrs.field(factory=dict)
    transport_errors: int
    retries: int
    rate_limited: int
    limiter_waits: int
    limiter_wait_total: float
    limiter_wait_max: float
    errors_by_code: Mapping[str, int]

    @property
    def runs_ended(self) -> int:
        """Runs that reached a terminal status."""
        return self.runs_succeeded + self.runs_failed

    @property
    def success_rate(self) -> float | None:
        """Share of ended runs that succeeded, or None before any ended."""
        ended = self.runs_ended
        return self.runs_succeeded / ended if ended else None

    @property
    def failure_rate(self) -> float | None:
        """Share of ended runs that failed, or None before any ended."""
        ended = self.runs_ended
        return self.runs_failed / ended if ended else None

    @property
    def runs_per_day(self) -> float:
        """Runs started per day at the rate seen since the client was created."""
        return self.runs_started / self.uptime * _SECONDS_PER_DAY if self.uptime > 0 else 0.0

    @property
    def polls(self) -> int:
        """Requests that read a run."""
        return sum(n for name, n in self.requests_by_endpoint.items() if _is_poll(name))

    @property
    def polls_per_run(self) -> float | None:
        """Reads per run that ended or was lost, or None before any did."""
        ended = self.runs_ended + self.runs_lost
        return self.polls / ended if ended else None

    def as_dict(self) -> dict[str, object]:
        """The snapshot and its derived numbers as a JSON-ready dict."""
        out: dict[str, object] = attrs.asdict(self)
        out["responses_by_status"] = {str(k): v for k, v in self.responses_by_status.items()}
        out["responses_by_endpoint"] = {
            endpoint: {str(k): v for k, v in by_status.items()}
            for endpoint, by_status in self.responses_by_endpoint.items()
        }
        for name in (
            "runs_ended",
            "success_rate",
            "failure_rate",
            "runs_per_day",
            "polls",
            "polls_per_run",
        ):
            out[name] = getattr(self, name)
        return out


def _is_poll(endpoint: str) -> bool:
    return endpoint.endswith((".get", ".read", ".poll")) or endpoint.startswith("runs.")


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank; the list must not be empty."""
    index = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# --- the recorder ----------------------------------------------------------------------------


def safe_url(base_url: str, request: Request) -> str:
    """The URL `request` goes to, fit for telemetry: no user info, no secret query values.

    The callback secret (``zapier_async_token``) is dropped; the value of any parameter whose
    name looks like a credential is replaced by ``REDACTED``.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    path = parts.path.rstrip("/") + request.path
    query = []
    for name, value in request.query:
        lowered = name.lower()
        if lowered in _DROPPED_QUERY:
            continue
        if any(hint in lowered for hint in _SECRET_HINTS):
            value = "REDACTED"
        query.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return urlunsplit((parts.scheme, netloc, path, "&".join(query), ""))


def _run_id_of(request: Request) -> str | None:
    """The run a run-reading request reads: the last segment of its path."""
    if request.endpoint not in _RUN_READS:
        return None
    return unquote(request.path.rsplit("/", 1)[-1]) or None


@attrs.define(slots=True)
class _Send:
    """What one `Request` value's sends share (kept while the value lives)."""

    request_id: int
    sends: int = 0
    limiter_wait: float | None = None  # reported for the next send
    wait_total: float = 0.0  # over every send
    ref: weakref.ref[Request] | None = None


@attrs.frozen(kw_only=True)
class CredentialMetrics:
    """Run counts of one credential (one end user's budget), on demand.

    Kept only when the client tracks credentials (``track_credentials``), for at most that
    many credentials, least recently used evicted: a worker serving 100,000 users keeps the
    figures of those it served lately, and says how many it forgot (`evicted`).

    Attributes:
        bucket_id: The credential's (non-secret) bucket id; None for the client's own.
        runs_started: Runs created (or resumed) with it.
        runs_succeeded: Of those, ended with status success.
        runs_failed: Ended otherwise.
        runs_lost: Given up on (could not be read any more).
        latency_mean: Mean seconds from submission to the end, or None.
        latency_max: The longest, or 0.0.
        tracked: Credentials tracked now (all of them, not only this one).
        evicted: Credentials whose figures were dropped so far (least recently used).
    """

    bucket_id: object
    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    runs_lost: int = 0
    latency_mean: float | None = None
    latency_max: float = 0.0
    tracked: int = 0
    evicted: int = 0


class _CredentialCounts:
    __slots__ = ("failed", "lat_count", "lat_max", "lat_sum", "lost", "started", "succeeded")

    def __init__(self) -> None:
        self.started = self.succeeded = self.failed = self.lost = self.lat_count = 0
        self.lat_sum = self.lat_max = 0.0


class _CredentialTable:
    """Per-credential counts, an LRU of at most `limit` credentials (see `CredentialMetrics`)."""

    __slots__ = ("evicted", "limit", "rows")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.evicted = 0
        self.rows: collections.OrderedDict[object, _CredentialCounts] = collections.OrderedDict()

    def row(self, handle: RunHandle) -> _CredentialCounts:
        credential = getattr(handle, "credential", None)
        key = getattr(credential, "bucket_id", None)
        rows = self.rows
        found = rows.get(key)
        if found is not None:
            rows.move_to_end(key)
            return found
        found = rows[key] = _CredentialCounts()
        while len(rows) > self.limit:
            rows.popitem(last=False)
            self.evicted += 1
        return found

    def get(self, bucket_id: object) -> CredentialMetrics:
        counts = self.rows.get(bucket_id)
        if counts is None:
            return CredentialMetrics(
                bucket_id=bucket_id, tracked=len(self.rows), evicted=self.evicted
            )
        return CredentialMetrics(
            bucket_id=bucket_id,
            runs_started=counts.started,
            runs_succeeded=counts.succeeded,
            runs_failed=counts.failed,
            runs_lost=counts.lost,
            latency_mean=counts.lat_sum / counts.lat_count if counts.lat_count else None,
            latency_max=counts.lat_max,
            tracked=len(self.rows),
            evicted=self.evicted,
        )


DEFAULT_TRACKED_CREDENTIALS: Final = 1000
"""Credentials `track_credentials` keeps figures for by default (least recently used go)."""


class Recorder:
    """The client's mutable counters and its listeners (see the module docstring)."""

    __slots__ = (
        "_buckets",
        "_by_credential",
        "_clock",
        "_create_waits",
        "_created",
        "_lat_count",
        "_lat_max",
        "_lat_sum",
        "_next_request_id",
        "_reservoir",
        "_rng",
        "_run_waits",
        "_runs",
        "_sends",
        "by_endpoint",
        "by_endpoint_status",
        "by_status",
        "errors_by_code",
        "listeners",
        "outcome_unknown",
        "retries",
        "runs_failed",
        "runs_lost",
        "runs_started",
        "runs_succeeded",
        "transport_errors",
    )

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._created = clock.monotonic()
        self.listeners: list[EventListener] = []
        self.by_endpoint: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.by_endpoint_status: dict[tuple[str, int], int] = {}
        self.errors_by_code: dict[str, int] = {}
        self.transport_errors = 0
        self.retries = 0
        self.runs_started = 0
        self.runs_succeeded = 0
        self.runs_failed = 0
        self.runs_lost = 0
        self.outcome_unknown = 0
        self._reservoir: list[float] = []
        self._rng = random.Random(0)  # sampling only; deterministic for tests
        self._lat_count = 0
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        # For events only (filled while a listener exists): the sends of each live Request
        # value, by id() (the entry leaves with the value); the runs this client follows, by
        # id (weak: a dropped handle takes its entry with it); limiter waits per run.
        self._next_request_id = 0
        self._sends: dict[int, _Send] = {}
        self._runs: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._run_waits: weakref.WeakKeyDictionary[RunHandle, float] = weakref.WeakKeyDictionary()
        self._create_waits: dict[str, float] = {}
        # Per-credential run counts: off until `track_credentials` (bounded LRU when on).
        self._by_credential: _CredentialTable | None = None

    # per credential (on demand)

    def track_credentials(self, limit: int = DEFAULT_TRACKED_CREDENTIALS) -> None:
        """Keep run counts per credential for the `limit` most recently used ones (0: off).

        Raises:
            InvalidRequestError: `limit` is not an integer >= 0.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise errors.InvalidRequestError("must be an integer >= 0", "limit")
        if limit == 0:
            self._by_credential = None
        elif self._by_credential is None:
            self._by_credential = _CredentialTable(limit)
        else:
            table = self._by_credential
            table.limit = limit
            while len(table.rows) > limit:
                table.rows.popitem(last=False)
                table.evicted += 1

    def credential_metrics(self, bucket_id: object) -> CredentialMetrics | None:
        """The figures of the credential with `bucket_id` (None: the client's own), or None
        when credentials are not tracked. A credential evicted (or never seen) reads as
        zeros."""
        table = self._by_credential
        return None if table is None else table.get(bucket_id)

    # listeners

    def emit(self, event: Event) -> None:
        for listener in tuple(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %r failed", listener)

    # requests (called by MeteredTransport and the client's retry loop)

    def _send_of(self, request: Request) -> _Send:
        """The shared state of `request`'s sends (created on its first send)."""
        key = id(request)
        state = self._sends.get(key)
        if state is not None and state.ref is not None and state.ref() is request:
            return state
        self._next_request_id += 1
        state = _Send(self._next_request_id)
        sends = self._sends

        def forget(_: object, key: int = key) -> None:
            sends.pop(key, None)

        try:
            state.ref = weakref.ref(request, forget)
        except TypeError:  # not weak-referenceable: correlation is per send then
            return state
        sends[key] = state
        return state

    def limiter_waited(self, request: Request, seconds: float) -> None:
        """The client reports that `request`'s next send waited `seconds` for the limiter.

        Optional: without it, events carry no limiter wait (`Metrics` still has the totals).
        """
        if not self.listeners:
            return
        state = self._send_of(request)
        state.limiter_wait = (state.limiter_wait or 0.0) + seconds
        state.wait_total += seconds
        run_id = _run_id_of(request)
        handle = self._runs.get(run_id) if run_id is not None else None
        if handle is not None:
            self._run_waits[handle] = self._run_waits.get(handle, 0.0) + seconds

    def request_sent(self, request: Request) -> None:
        by_endpoint = self.by_endpoint
        by_endpoint[request.endpoint] = by_endpoint.get(request.endpoint, 0) + 1

    def _request_event(
        self,
        request: Request,
        base_url: str,
        started: float,
        status: int | None,
        error: str | None,
        response: Response | None,
    ) -> RequestEvent:
        state = self._send_of(request)
        state.sends += 1
        wait, state.limiter_wait = state.limiter_wait, None
        run_id = _run_id_of(request)
        action: str | None = None
        if run_id is not None:
            handle = self._runs.get(run_id)
            action = handle.reads.key if handle is not None else None
        elif request.creates_run:
            action = request.poll_key
            if response is not None and 200 <= response.status < 300:
                try:
                    run_id = parse_created_run(response, request)
                except Exception:  # the client says why; the event just has no run id
                    run_id = None
                if run_id is not None and wait is not None:
                    # the run's own wait starts with its create's (see `run_started`)
                    if len(self._create_waits) > 10_000:
                        self._create_waits.clear()  # runs never started: no unbounded growth
                    self._create_waits[run_id] = state.wait_total
        return RequestEvent(
            endpoint=request.endpoint,
            method=request.method,
            status=status,
            elapsed=max(self._clock.monotonic() - started, 0.0),
            error=error,
            request_id=state.request_id,
            resend_count=state.sends - 1,
            url=safe_url(base_url, request),
            run_id=run_id,
            action=action,
            creates_run=request.creates_run,
            limiter_wait=wait,
        )

    def _built(
        self,
        request: Request,
        base_url: str,
        started: float,
        status: int | None,
        error: str | None,
        response: Response | None,
    ) -> RequestEvent | None:
        # Called after the exchange: a bug here must not turn an answer into a failure.
        try:
            return self._request_event(request, base_url, started, status, error, response)
        except Exception:
            logger.exception("building the event of %s failed", request.describe())
            return None

    def response(
        self, request: Request, response: Response, started: float, base_url: str = ""
    ) -> None:
        status = response.status
        self.by_status[status] = self.by_status.get(status, 0) + 1
        key = (request.endpoint, status)
        self.by_endpoint_status[key] = self.by_endpoint_status.get(key, 0) + 1
        if self.listeners:
            event = self._built(request, base_url, started, status, None, response)
            if event is not None:
                self.emit(event)
            if status == 429 or (status == 503 and "retry-after" in response.headers):
                raw = response.headers.get("retry-after")
                seconds: float | None
                try:
                    seconds = float(raw) if raw is not None else None
                except ValueError:
                    seconds = None  # an HTTP-date; the limiter parses it, the event need not
                self.emit(
                    RateLimitEvent(endpoint=request.endpoint, status=status, retry_after=seconds)
                )

    def transport_failed(
        self, request: Request, exc: BaseException, started: float, base_url: str = ""
    ) -> None:
        self.transport_errors += 1
        if self.listeners:
            kind = exc.kind if isinstance(exc, errors.TransportError) else type(exc).__name__
            event = self._built(request, base_url, started, None, kind, None)
            if event is not None:
                self.emit(event)

    def retry(
        self, request: Request, attempt: int, status: int | None, failure: object, paced: bool
    ) -> None:
        self.retries += 1
        if self.listeners:
            reason = f"HTTP {status}" if status is not None else f"transport: {failure}"
            self.emit(
                RetryEvent(
                    endpoint=request.endpoint,
                    attempt=attempt,
                    reason=reason,
                    paced=paced,
                    request_id=self._send_of(request).request_id,
                )
            )

    def error(self, exc: BaseException) -> None:
        """An error surfaced from a request (after retries)."""
        code = error_code(exc)
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        if code == "outcome_unknown":
            self.outcome_unknown += 1

    # runs

    def run_started(self, handle: RunHandle, submitted_at: float) -> None:
        self.runs_started += 1
        if self._by_credential is not None:
            self._by_credential.row(handle).started += 1
        handle.submitted_at = submitted_at  # on the handle: no per-run dictionary entry
        if self.listeners:
            self._runs[handle.id] = handle
            wait = self._create_waits.pop(handle.id, None)
            if wait is not None:
                self._run_waits[handle] = wait
            self.emit(
                RunEvent(
                    kind="started",
                    run_id=handle.id,
                    status=handle.status,
                    action=handle.reads.key,
                    limiter_wait=wait,
                    age=max(self._clock.monotonic() - submitted_at, 0.0),
                )
            )

    def run_read(self, handle: RunHandle, previous: RunStatus, run: Run) -> None:
        """A poll read `run`; `handle` was updated with it (and may now be done). A run is
        counted ended once: a second terminal read (two reads in flight at once, a callback
        and a read) finds `previous` terminal."""
        status = run.status
        if status.is_terminal and not previous.is_terminal:
            submitted, handle.submitted_at = handle.submitted_at, None
            latency = None
            if submitted is not None:
                latency = self._clock.monotonic() - submitted
                self._sample(latency)
            codes: tuple[str, ...] = ()
            if self._by_credential is not None:
                row = self._by_credential.row(handle)
                if status is RunStatus.SUCCESS:
                    row.succeeded += 1
                else:
                    row.failed += 1
                if latency is not None:
                    row.lat_count += 1
                    row.lat_sum += latency
                    row.lat_max = max(row.lat_max, latency)
            if status is RunStatus.SUCCESS:
                self.runs_succeeded += 1
            else:
                self.runs_failed += 1
                counts = self.errors_by_code
                codes = tuple(
                    str(e.code.value) if e.code is not None else "unknown" for e in run.errors
                )
                for code in codes or ("unknown",):
                    counts[code] = counts.get(code, 0) + 1
            if self.listeners:
                self._runs.pop(handle.id, None)
                self.emit(
                    RunEvent(
                        kind="ended",
                        run_id=handle.id,
                        status=status,
                        latency=latency,
                        error_codes=codes,
                        action=handle.reads.key,
                        polls=handle.reads.attempts,
                        limiter_wait=self._run_waits.pop(handle, None),
                    )
                )
        elif status is not previous and self.listeners:
            self.emit(
                RunEvent(
                    kind="status",
                    run_id=handle.id,
                    status=status,
                    action=handle.reads.key,
                    polls=handle.reads.attempts,
                )
            )

    def run_lost(self, handle: RunHandle, exc: BaseException) -> None:
        self.runs_lost += 1
        if self._by_credential is not None:
            self._by_credential.row(handle).lost += 1
        handle.submitted_at = None
        if self.listeners:
            self._runs.pop(handle.id, None)
            self.emit(
                RunEvent(
                    kind="lost",
                    run_id=handle.id,
                    status=handle.status,
                    error_codes=(error_code(exc),),
                    action=handle.reads.key,
                    polls=handle.reads.attempts,
                    limiter_wait=self._run_waits.pop(handle, None),
                )
            )

    def _sample(self, value: float) -> None:
        self._lat_count += 1
        self._lat_sum += value
        if value > self._lat_max:
            self._lat_max = value
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        reservoir = self._reservoir
        if len(reservoir) < RESERVOIR_SIZE:
            reservoir.append(value)
        else:
            j = self._rng.randrange(self._lat_count)
            if j < RESERVOIR_SIZE:
                reservoir[j] = value

    def snapshot(self, *, in_flight: int, limiter: LimiterStats) -> Metrics:
        ordered = sorted(self._reservoir)
        n = self._lat_count
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip(LATENCY_BUCKETS, self._buckets, strict=False):
            total += count
            cumulative.append((bound, total))
        by_endpoint_status: dict[str, dict[int, int]] = {}
        for (endpoint, status), count in sorted(self.by_endpoint_status.items()):
            by_endpoint_status.setdefault(endpoint, {})[status] = count
        return Metrics(
            uptime=max(self._clock.monotonic() - self._created, 0.0),
            runs_started=self.runs_started,
            runs_succeeded=self.runs_succeeded,
            runs_failed=self.runs_failed,
            runs_lost=self.runs_lost,
            runs_in_flight=in_flight,
            outcome_unknown=self.outcome_unknown,
            latency_mean=self._lat_sum / n if n else None,
            latency_p50=percentile(ordered, 0.5) if ordered else None,
            latency_p95=percentile(ordered, 0.95) if ordered else None,
            latency_max=self._lat_max if n else None,
            latency_samples=n,
            latency_sum=self._lat_sum,
            latency_buckets=tuple(cumulative),
            requests_by_endpoint=dict(sorted(self.by_endpoint.items())),
            responses_by_status=dict(sorted(self.by_status.items())),
            responses_by_endpoint=by_endpoint_status,
            transport_errors=self.transport_errors,
            retries=self.retries,
            rate_limited=limiter.rate_limited,
            limiter_waits=limiter.waits,
            limiter_wait_total=limiter.wait_total,
            limiter_wait_max=limiter.wait_max,
            errors_by_code=dict(sorted(self.errors_by_code.items())),
        )


def error_code(exc: BaseException) -> str:
    """The key under which `exc` is counted in `Metrics.errors_by_code`."""
    if isinstance(exc, errors.OutcomeUnknownError):
        return "outcome_unknown"
    if isinstance(exc, errors.RunFailedError):
        first = exc.run.errors[0].code if exc.run.errors else None
        return str(first.value) if first is not None else "unknown"
    if isinstance(exc, errors.APIError):
        return exc.code or f"http_{exc.status}"
    if isinstance(exc, errors.TransportError):
        return f"transport_{exc.kind}"
    if isinstance(exc, errors.RateLimitedError):
        return "rate_limited"
    if isinstance(exc, errors.DecodeError):
        return "decode_error"
    if isinstance(exc, errors.InvalidRequestError):
        return "invalid_request"
    if isinstance(exc, errors.RunTimeoutError):
        return "timeout"
    if isinstance(exc, errors.RunDetachedError):
        return "detached"
    return type(exc).__name__


class MeteredTransport:
    """Wraps the client's transport: counts every exchange, feeds the event hooks."""

    __slots__ = ("_clock", "_recorder", "inner")

    def __init__(self, inner: Transport, recorder: Recorder, clock: Clock) -> None:
        self.inner = inner
        self._recorder = recorder
        self._clock = clock

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        recorder = self._recorder
        recorder.request_sent(request)
        started = self._clock.monotonic() if recorder.listeners else 0.0
        try:
            response = await self.inner.send(
                request, base_url=base_url, headers=headers, timeout=timeout
            )
        except errors.TransportError as exc:
            recorder.transport_failed(request, exc, started, base_url)
            raise
        recorder.response(request, response, started, base_url)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


_Recorder = Recorder
"""The former name of `Recorder` (kept for code that imported it)."""

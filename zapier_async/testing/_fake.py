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
2. rate limiting (fixed windows; every request counts): a refused request gets 429 and goes
   no further;
3. fault injection: the next fault queued by `FakeZapier.inject` that matches the endpoint,
   else one drawn at random with probability `fault_rate`. A fault *before* processing
   replaces the request (nothing happens on the server); a fault *after* processing, which
   only creates can get, lets the run be created and then loses or spoils the answer;
4. authentication (`Authorization: Bearer <token>`);
5. the endpoint's handler: request in, `_Reply` out;
6. latency, then the response, with the rate-limit headers.

A new surface (token endpoint, discovery, Actions API runs, ...) is one handler plus one row
in `FakeZapier._routes`; it gets steps 1-4 and 6 for free.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final, Literal, TypeGuard

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import MatchInfoError

from zapier_async._clock import Clock, SystemClock
from zapier_async.testing import _fake_auth
from zapier_async.testing._fake_actions import JWKS_PATH, FakeActions
from zapier_async.testing._fake_auth import FakeAuthServer, FakeCatalog

__all__ = ["FakeStats", "FakeZapier", "RecordedRequest", "RunRecord"]

FaultKind = Literal["500", "502", "503", "504", "reset", "non_json", "slow"]
"""What an injected fault does; see `FakeZapier`."""

Durations = float | tuple[float, float] | Callable[[random.Random], float]
"""A fixed duration in seconds, a `(low, high)` uniform range, or `rng -> seconds`."""

Latency = float | tuple[float, float]
"""A fixed delay in seconds or a `(low, high)` uniform range."""

FAULT_KINDS: Final[frozenset[str]] = frozenset(
    {"500", "502", "503", "504", "reset", "non_json", "slow"}
)
DEFAULT_FAULTS: Final[frozenset[str]] = FAULT_KINDS - {"slow"}
ENDPOINTS: Final[tuple[str, ...]] = ("create", "poll", "other")
"""Endpoint names used by `FakeStats.requests_by_endpoint` and `FakeZapier.inject`."""

_TERMINAL: Final = frozenset({"success", "error"})
_RESERVED_INPUT: Final = "__fake__"
_OVERRIDE_KEYS: Final = frozenset({"status", "duration", "results", "errors"})
_CREATE_KEYS: Final = frozenset({"action", "authentication", "inputs", "callback_url"})
# https://docs.zapier.com/powered-by-zapier/running-actions/action-run-callbacks
_CALLBACK_URL_MAX: Final = 2048
_JSON: Final = "application/json"
_HTML: Final = "text/html; charset=utf-8"
_SHUTDOWN_TIMEOUT: Final = 5.0
# The platform's action input limit: https://docs.zapier.com/platform/build/operating-constraints
_MAX_BODY: Final = 6 * 1024 * 1024
_NOT_JSON: Final[Any] = object()  # a body that was absent or did not decode


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RunRecord:
    """A snapshot of one run as the emulator knows it (server-side truth).

    Times are on the emulator's clock (`clock.monotonic()`, by default `time.monotonic()`).

    Attributes:
        id: The run id returned by the create.
        action: `data.action` of the create.
        authentication: `data.authentication` of the create (a string or None).
        inputs: `data.inputs` of the create, as sent (including any `__fake__` key). Shared
            with the emulator, not copied: do not mutate it.
        callback_url: `data.callback_url` of the create, or None.
        created_at: When the create was processed.
        duration: How long the run takes (`inf` for a run that waits for `complete()`).
        ends_at: When the run becomes (or became) terminal: `created_at + duration`.
        status: What a GET would answer at the time of the snapshot.
        final_status: `"success"` or `"error"`, the status once the run has ended.
        results: The `results` a GET answers once the run has ended.
        errors: The `errors` a GET answers once the run has ended.
        polls: How many GETs of this run were answered.
        first_terminal_poll_at: When a GET first answered a terminal status, or None.
    """

    id: str
    action: str
    authentication: str | None
    inputs: Mapping[str, Any]
    callback_url: str | None
    created_at: float
    duration: float
    ends_at: float
    status: str
    final_status: str
    results: Sequence[Any]
    errors: Sequence[Any]
    polls: int
    first_terminal_poll_at: float | None

    @property
    def is_terminal(self) -> bool:
        """Whether the run had ended at the time of the snapshot."""
        return self.status in _TERMINAL


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the emulator received it (kept in `FakeZapier.requests`).

    Attributes:
        method: The HTTP method.
        path: The URL path, without the query string.
        query: The query parameters (the first value of a repeated name).
        headers: The request headers, without `Authorization`.
        json: The decoded JSON body, or None when there was no body or it was not JSON.
        received_at: When it arrived, on the emulator's clock.
        endpoint: Which endpoint it was routed to: `"create"`, `"poll"` or `"other"`.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any
    received_at: float
    endpoint: str


@attrs.frozen(kw_only=True)
class FakeStats:
    """A snapshot of the emulator's counters (see `FakeZapier.stats`).

    Attributes:
        requests: Every request received, whatever happened to it.
        requests_by_endpoint: `requests` split by endpoint; always has `"create"`, `"poll"`
            and `"other"` (unrouted paths and wrong methods).
        responses_by_status: Responses sent, by HTTP status. A dropped connection (`reset`
            fault, or a `slow` request whose client gave up) is not a response.
        rate_limited: Requests refused with 429 by the rate limiter.
        faults: Faults that hit a request, by kind; has every kind, zero or not.
        runs_created: Runs created.
        duplicate_submissions: Accepted creates whose `data` (canonical JSON, sorted keys)
            equals that of an earlier accepted create. When every run has unique inputs, any
            duplicate means a client sent the same create twice.
        polls: GETs answered with a run (known id, not refused, not faulted).
        token_requests: Requests that reached the token endpoint (`fake.auth_server`).
        tokens_issued: Access tokens the token endpoint issued.
        token_refusals: Token requests refused (bad credentials, bad JWT, ...).
        expired_token_refusals: API requests refused with 401 because the token they carried
            was issued here and has expired.
        action_lookups: Get Actions requests answered (`fake.catalog`).
    """

    requests: int
    requests_by_endpoint: Mapping[str, int]
    responses_by_status: Mapping[int, int]
    rate_limited: int
    faults: Mapping[str, int]
    runs_created: int
    duplicate_submissions: int
    polls: int
    token_requests: int = 0
    tokens_issued: int = 0
    token_refusals: int = 0
    expired_token_refusals: int = 0
    action_lookups: int = 0


# --------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------


@attrs.define
class _Run:
    """The mutable record behind a `RunRecord`."""

    id: str
    action: str
    authentication: str | None
    inputs: dict[str, Any]
    callback_url: str | None
    created_at: float
    duration: float
    final_status: str
    results: list[Any]
    errors: list[Any]
    polls: int = 0
    first_terminal_poll_at: float | None = None

    @property
    def ends_at(self) -> float:
        return self.created_at + self.duration

    def status_at(self, now: float, pending: tuple[str, ...]) -> str:
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return self.final_status
        if len(pending) == 1 or math.isinf(self.duration):
            return pending[0]
        # The pending statuses are walked in order over the run's lifetime, e.g.
        # ("queued", "running"): queued for the first half, running for the second.
        return pending[min(len(pending) - 1, int(elapsed / self.duration * len(pending)))]

    def snapshot(self, now: float, pending: tuple[str, ...]) -> RunRecord:
        return RunRecord(
            id=self.id,
            action=self.action,
            authentication=self.authentication,
            inputs=self.inputs,
            callback_url=self.callback_url,
            created_at=self.created_at,
            duration=self.duration,
            ends_at=self.ends_at,
            status=self.status_at(now, pending),
            final_status=self.final_status,
            results=tuple(self.results),
            errors=tuple(self.errors),
            polls=self.polls,
            first_terminal_poll_at=self.first_terminal_poll_at,
        )


@attrs.define
class _Counters:
    requests: int = 0
    by_endpoint: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(ENDPOINTS, 0))
    by_status: dict[int, int] = attrs.Factory(dict)
    rate_limited: int = 0
    faults: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(sorted(FAULT_KINDS), 0))
    runs_created: int = 0
    duplicates: int = 0
    polls: int = 0


@attrs.frozen
class _Admission:
    """The rate limiter's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # monotonic
    retry_at: float | None = None  # monotonic; only when refused


@attrs.define
class _FixedWindow:
    """Fixed-window rate limiting: `limit` requests per `window` seconds.

    A window starts with the first request after the previous window ended. Every request
    counts, refused ones included. With a `cooldown`, exceeding the limit refuses everything
    for `cooldown` seconds (the Partner API documents 60 s:
    https://docs.zapier.com/powered-by-zapier/api-reference/rate-limiting); requests during
    the cool-down do not extend it.
    """

    limit: int
    window: float
    cooldown: float
    window_end: float = -math.inf
    used: int = 0
    cooldown_until: float = -math.inf

    def admit(self, now: float) -> _Admission:
        if now >= self.window_end:
            self.window_end = now + self.window
            self.used = 0
        self.used += 1
        if now < self.cooldown_until:
            until = self.cooldown_until
            return _Admission(False, self.limit, 0, max(self.window_end, until), until)
        if self.used > self.limit:
            retry_at = self.window_end
            if self.cooldown > 0:
                self.cooldown_until = now + self.cooldown
                retry_at = max(retry_at, self.cooldown_until)
            return _Admission(False, self.limit, 0, retry_at, retry_at)
        return _Admission(True, self.limit, self.limit - self.used, self.window_end)


@attrs.define
class _PlannedFault:
    kind: str
    remaining: int
    endpoint: str | None
    after_create: bool


@attrs.frozen
class _Reply:
    """What a handler answers; turned into an HTTP response by `FakeZapier._respond`."""

    status: int
    body: bytes
    content_type: str = _JSON
    retry_at: float | None = None  # monotonic; sent as Retry-After
    headers: tuple[tuple[str, str], ...] = ()


@attrs.define
class _Exchange:
    """One request on its way through the pipeline."""

    request: web.Request
    endpoint: str
    received_at: float
    body: Any  # decoded JSON, or _NOT_JSON
    raw: bytes


@attrs.frozen
class _Override:
    status: str | None
    duration: float | None
    results: list[Any] | None
    errors: list[Any] | None


@attrs.frozen
class _CreateRequest:
    data: dict[str, Any]
    action: str
    authentication: str | None
    inputs: dict[str, Any]
    callback_url: str | None
    override: _Override | None


_EndpointHandler = Callable[[_Exchange], Awaitable[_Reply]]


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _error(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    pointer: str | None = None,
    retry_at: float | None = None,
) -> _Reply:
    """A JSON:API error reply, the Partner API's `ErrorResponse`."""
    error = {
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
        "source": None if pointer is None else {"pointer": pointer},
        "meta": None,
    }
    return _Reply(status, _dumps({"errors": [error]}), retry_at=retry_at)


def _invalid(detail: str, pointer: str) -> _Reply:
    return _error(400, "invalid", "ValidationError", detail, pointer=pointer)


_GATEWAY_ERRORS: Final[Mapping[str, tuple[int, str, str, str]]] = {
    "500": (500, "error", "APIException", "A server error occurred."),
    "502": (502, "bad_gateway", "BadGateway", "The upstream server sent an invalid response."),
    "503": (503, "service_unavailable", "ServiceUnavailable", "Service temporarily unavailable."),
    "504": (504, "gateway_timeout", "GatewayTimeout", "The upstream server did not answer."),
}

_DEFAULT_RUN_ERROR: Final[Mapping[str, Any]] = types.MappingProxyType(
    {
        "code": "user",
        "title": "Action failed",
        "detail": "The fake app refused the action (FakeZapier error_rate or override).",
        "delay": None,
        "meta": None,
    }
)


# --------------------------------------------------------------------------------------------
# Request body validation (the Partner OpenAPI's `RunActionRequest`)
# --------------------------------------------------------------------------------------------


def _parse_create(body: Any) -> _CreateRequest | _Reply:
    """Validate a create body against the spec form; a `_Reply` is the 400 to send."""
    if body is _NOT_JSON:
        return _error(400, "parse_error", "ParseError", "Malformed request.")
    if not isinstance(body, dict):
        return _invalid("The request body must be a JSON object.", "")
    if "data" not in body:
        # The guides' flat form ({"action", "authentication", "input"}) ends up here.
        return _invalid("This field is required.", "/data")
    for key in body:
        if key != "data":
            return _invalid("Unexpected field.", f"/{key}")
    data = body["data"]
    if not isinstance(data, dict):
        return _invalid("Expected an object.", "/data")
    for key in ("action", "authentication", "inputs"):
        if key not in data:
            return _invalid("This field is required.", f"/data/{key}")
    for key in data:
        if key not in _CREATE_KEYS:
            return _invalid("Unexpected field.", f"/data/{key}")
    action, authentication, inputs = data["action"], data["authentication"], data["inputs"]
    if not isinstance(action, str) or not action:
        return _invalid("Expected a non-empty string.", "/data/action")
    if authentication is not None and not isinstance(authentication, str):
        return _invalid("Expected a string or null.", "/data/authentication")
    if not isinstance(inputs, dict):
        return _invalid("Expected an object.", "/data/inputs")
    callback_url = data.get("callback_url")
    if "callback_url" in data and (
        not isinstance(callback_url, str) or not 0 < len(callback_url) <= _CALLBACK_URL_MAX
    ):
        return _invalid(
            f"Expected a URL of at most {_CALLBACK_URL_MAX} characters.", "/data/callback_url"
        )
    override: _Override | None = None
    if _RESERVED_INPUT in inputs:
        parsed = _parse_override(inputs[_RESERVED_INPUT])
        if isinstance(parsed, _Reply):
            return parsed
        override = parsed
    return _CreateRequest(data, action, authentication, inputs, callback_url, override)


def _parse_override(raw: Any) -> _Override | _Reply:
    pointer = f"/data/inputs/{_RESERVED_INPUT}"
    if not isinstance(raw, dict):
        return _invalid("Expected an object.", pointer)
    for key in raw:
        if key not in _OVERRIDE_KEYS:
            return _invalid(f"Unknown key; allowed: {sorted(_OVERRIDE_KEYS)}.", f"{pointer}/{key}")
    status = raw.get("status")
    if status is not None and status not in _TERMINAL:
        return _invalid('Expected "success" or "error".', f"{pointer}/status")
    duration = raw.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not duration >= 0  # also refuses NaN
    ):
        return _invalid("Expected a number of seconds >= 0.", f"{pointer}/duration")
    lists: dict[str, list[Any] | None] = {}
    for key in ("results", "errors"):
        value = raw.get(key)
        if value is not None and not isinstance(value, list):
            return _invalid("Expected an array.", f"{pointer}/{key}")
        lists[key] = value
    return _Override(
        status=status,
        duration=None if duration is None else float(duration),
        results=lists["results"],
        errors=lists["errors"],
    )


def _decode_json(raw: bytes) -> Any:
    if not raw:
        return _NOT_JSON
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


# --------------------------------------------------------------------------------------------
# Constructor validation
# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _check_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or not 0.0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _check_range(name: str, value: object, *, allow_inf: bool) -> None:
    """Seconds >= 0 (`inf` only if allowed), or a finite `(low, high)` pair."""
    if isinstance(value, (tuple, list)):
        pair_ok = len(value) == 2 and all(_is_number(v) for v in value)
        if not pair_ok or not 0.0 <= value[0] <= value[1] < math.inf:
            raise ValueError(
                f"{name} must be a (low, high) pair with 0 <= low <= high, got {value!r}"
            )
        return
    if not _is_number(value) or not value >= 0 or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name} must be seconds >= 0 or a (low, high) pair, got {value!r}")


def _check_durations(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        _check_range(attribute.name, value, allow_inf=True)


def _check_latency(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_range(attribute.name, value, allow_inf=False)


def _check_one_of(*allowed: object) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {allowed!r}, got {value!r}")

    return check


def _check_host(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"host must be a non-empty string, got {value!r}")


def _check_port(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {value!r}")


def _check_seed(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"seed must be an integer or None, got {value!r}")


def _check_clock(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(getattr(value, "monotonic", None)):
        raise ValueError(f"clock must have a monotonic() method, got {value!r}")


def _check_rate_limit(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or value[0] < 1
        or not _is_number(value[1])
        or not 0 < value[1] < math.inf
    ):
        raise ValueError(
            f"rate_limit must be None or (limit >= 1, window seconds > 0), got {value!r}"
        )


def _check_retry_after(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name} must be None or an integer >= 0, got {value!r}")


def _check_http_status(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 200 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP status in [200, 599], got {value!r}")


def _check_bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be a bool, got {value!r}")


def _to_statuses(value: str | Sequence[str]) -> tuple[str, ...]:
    statuses = (value,) if isinstance(value, str) else tuple(value)
    if not statuses or not all(isinstance(s, str) and s for s in statuses):
        raise ValueError(f"pending_statuses must be non-empty strings, got {value!r}")
    if _TERMINAL.intersection(statuses):
        raise ValueError(f"pending_statuses cannot contain a terminal status, got {value!r}")
    return statuses


def _to_tokens(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    tokens = frozenset((value,) if isinstance(value, str) else value)
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError("tokens must be None or a non-empty collection of non-empty strings")
    return tokens


def _to_faults(value: Iterable[str]) -> frozenset[str]:
    kinds = frozenset((value,) if isinstance(value, str) else value)
    unknown = kinds - FAULT_KINDS
    if unknown:
        raise ValueError(f"faults: unknown kinds {sorted(unknown)}; known: {sorted(FAULT_KINDS)}")
    return kinds


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
    - `"slow"`: the answer waits `slow_delay` seconds (real time). Before processing, the
      request is processed after the delay only if the client is still connected; after
      processing, the run exists and the real answer is merely late.

    On a create, a fault happens after the run was created with probability
    `fault_after_create` (or when injected with `after_create=True`): the run exists but
    its id is lost, which is what tests of "never duplicate a run" need. Faults on other
    endpoints always happen before processing.

    Rate limiting (`rate_limit=(limit, window)`): fixed windows, each starting at the first
    request after the previous one ended; every request on every path counts, refused ones
    included. Every response then carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    `X-RateLimit-Reset`; a refused request gets 429 with `Retry-After` and is not
    processed. With `cooldown_after_429`, the request that exceeds the limit starts a
    cool-down during which everything is refused (requests during it do not extend it).

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
            headers.
        cooldown_after_429: Seconds during which everything is refused after the limit was
            exceeded (the Partner API documents 60).
        reset_format: `X-RateLimit-Reset` as `"epoch"` (integer UTC epoch seconds, as
            documented), `"delta"` (integer seconds until the reset, as Zapier has been
            seen to send) or `"iso"` (ISO-8601 UTC, `2024-01-01T00:00:00Z`). All round up.
        retry_after_format: `Retry-After` as `"seconds"` (integer, rounded up) or
            `"http-date"`.
        fault_rate: Probability that a request is hit by a fault drawn from `faults`.
        faults: The kinds `fault_rate` draws from. Default: all but `"slow"`.
        fault_after_create: Probability that a fault drawn for a create happens after the
            run was created.
        fault_retry_after: `Retry-After` seconds on a 503 fault that refused a request, or
            None for no header.
        non_json_status: The HTTP status of a `"non_json"` fault.
        slow_delay: Seconds a `"slow"` fault delays the answer.
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
    cooldown_after_429: float = attrs.field(
        default=0.0, validator=_check_seconds, on_setattr=attrs.setters.frozen
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
    _limiter: _FixedWindow | None = attrs.field(init=False, repr=False)
    _runs: dict[str, _Run] = attrs.field(init=False, factory=dict, repr=False)
    _accepted: set[str] = attrs.field(init=False, factory=set, repr=False)
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
        self.actions._bind(self)
        self._limiter = (
            None
            if self.rate_limit is None
            else _FixedWindow(
                self.rate_limit[0], float(self.rate_limit[1]), float(self.cooldown_after_429)
            )
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
        return [run.snapshot(now, pending) for run in self._runs.values()]

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
            run.results = self._default_results(run.id, run.inputs)
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
                `endpoint="create"`.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be None or one of {ENDPOINTS}, got {endpoint!r}")
        if after_create and endpoint != "create":
            raise ValueError('after_create=True needs endpoint="create"')
        self._injected.append(_PlannedFault(kind, count, endpoint, after_create))

    @property
    def stats(self) -> FakeStats:
        """A snapshot of the counters; see `FakeStats`."""
        c = self._counters
        return FakeStats(
            requests=c.requests,
            requests_by_endpoint=types.MappingProxyType(dict(c.by_endpoint)),
            responses_by_status=types.MappingProxyType(dict(c.by_status)),
            rate_limited=c.rate_limited,
            faults=types.MappingProxyType(dict(c.faults)),
            runs_created=c.runs_created,
            duplicate_submissions=c.duplicates,
            polls=c.polls,
            token_requests=self.auth_server.token_requests,
            tokens_issued=self.auth_server.tokens_issued,
            token_refusals=self.auth_server.token_refusals,
            expired_token_refusals=self.auth_server.expired_token_refusals,
            action_lookups=self.catalog.action_lookups,
        )

    @property
    def token_url(self) -> str:
        """The emulated OAuth token endpoint, e.g. `http://127.0.0.1:54321/oauth/token/`."""
        return self.url + _fake_auth.TOKEN_PATHS[0]

    @property
    def jwks_url(self) -> str:
        """The JWKS that verifies this emulator's callback signatures."""
        return self.url + JWKS_PATH

    # ---------------------------------------------------------------------------- routing

    def _routes(self) -> tuple[tuple[str, str, str, _EndpointHandler], ...]:
        """(method, path, endpoint name, handler) for every route."""
        return (
            # The OpenAPI path has no trailing slash; the guides write one. Accept both.
            ("POST", "/v2/action-runs", "create", self._create),
            ("POST", "/v2/action-runs/", "create", self._create),
            ("GET", "/v2/action-runs/{id}", "poll", self._poll),
            # Actions API, stored actions, long-poll reads, JWKS (testing/_fake_actions.py).
            *self.actions.routes(),
            # Token endpoint, discovery and connections (testing/_fake_auth.py).
            *(
                (method, path, endpoint, _answer(handler))
                for method, path, endpoint, handler in _fake_auth.routes(
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
        # The token endpoint is another host (zapier.com) with another budget: not limited.
        limited = self._limiter is not None and endpoint not in _UNAUTHENTICATED
        admission = self._limiter.admit(received_at) if limited and self._limiter else None
        reply: _Reply | None
        if admission is not None and not admission.allowed:
            counters.rate_limited += 1
            reply = self._throttled(admission)
        else:
            reply = await self._serve(exchange, handler)
        if reply is None:
            return web.Response()  # the connection is gone; this is never sent
        delay = self._sample(self.latency)
        if delay > 0:
            await self._sleep(delay)
        return self._respond(reply, admission)

    async def _serve(self, exchange: _Exchange, handler: _EndpointHandler) -> _Reply | None:
        """Steps 3-5: fault, authentication, handler. None: the connection was dropped."""
        fault = self._draw_fault(exchange.endpoint)
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

    def _draw_fault(self, endpoint: str) -> tuple[str, bool] | None:
        """The fault that hits this request, and whether it comes after processing."""
        injected = self._injected
        if injected:  # a short queue filled by tests, not a scan over runs
            for index, planned in enumerate(injected):
                if planned.endpoint is None or planned.endpoint == endpoint:
                    planned.remaining -= 1
                    if planned.remaining == 0:
                        del injected[index]
                    return planned.kind, planned.after_create
        if self.fault_rate > 0 and self.faults and self._rng.random() < self.fault_rate:
            kind = self._rng.choice(sorted(self.faults))  # sorted: set order varies by run
            after = endpoint == "create" and self._rng.random() < self.fault_after_create
            return kind, after
        return None

    def _authenticate(self, request: web.Request) -> _Reply | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
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

    def _throttled(self, admission: _Admission) -> _Reply:
        wait = math.ceil(max(0.0, (admission.retry_at or 0.0) - self.clock.monotonic()))
        return _error(
            429,
            "throttled",
            "Throttled",
            f"Request was throttled. Expected available in {wait} seconds.",
            retry_at=admission.retry_at,
        )

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
            if admission is not None:
                headers["X-RateLimit-Limit"] = str(admission.limit)
                headers["X-RateLimit-Remaining"] = str(admission.remaining)
                headers["X-RateLimit-Reset"] = self._format_reset(admission.reset_at, now)
            if reply.retry_at is not None:
                headers["Retry-After"] = self._format_retry_after(reply.retry_at, now)
        counters = self._counters.by_status
        counters[reply.status] = counters.get(reply.status, 0) + 1
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _format_reset(self, reset_at: float, now: float) -> str:
        delta = max(0.0, reset_at - now)
        if self.reset_format == "delta":
            return str(math.ceil(delta))
        epoch = math.ceil(self._wall_time() + delta)
        if self.reset_format == "epoch":
            return str(epoch)
        return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _format_retry_after(self, retry_at: float, now: float) -> str:
        delta = max(0.0, retry_at - now)
        if self.retry_after_format == "seconds":
            return str(math.ceil(delta))
        return email.utils.formatdate(math.ceil(self._wall_time() + delta), usegmt=True)

    def _wall_time(self) -> float:
        wall = getattr(self.clock, "time", None)
        return float(wall()) if callable(wall) else time.time()

    def _sample(self, value: float | tuple[float, float]) -> float:
        if isinstance(value, (tuple, list)):
            low, high = value
            return low if low == high else self._rng.uniform(low, high)
        return float(value)

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

    # ---------------------------------------------------------------------------- handlers

    async def _create(self, exchange: _Exchange) -> _Reply:
        """`POST /v2/action-runs`: validate the spec body, create the run."""
        if exchange.raw and exchange.request.content_type != _JSON:
            return _error(
                415,
                "unsupported_media_type",
                "UnsupportedMediaType",
                f'Unsupported media type "{exchange.request.content_type}" in request.',
            )
        parsed = _parse_create(exchange.body)
        if isinstance(parsed, _Reply):
            return parsed
        canonical = json.dumps(parsed.data, sort_keys=True, separators=(",", ":"))
        if canonical in self._accepted:
            self._counters.duplicates += 1
        else:
            self._accepted.add(canonical)
        run = self._new_run(parsed)
        self._runs[run.id] = run
        self._counters.runs_created += 1
        self.actions.run_created(run)  # schedules its signed callback, if it has a URL
        return _Reply(200, _dumps({"data": {"type": "run", "id": run.id}}))

    async def _poll(self, exchange: _Exchange) -> _Reply:
        """`GET /v2/action-runs/{id}`: the run's status; the body has no id (per the spec)."""
        run = self._runs.get(exchange.request.match_info["id"])
        if run is None:
            return _error(404, "not_found", "NotFound", "Not found.")
        now = self.clock.monotonic()
        run.polls += 1
        self._counters.polls += 1
        status = run.status_at(now, self.pending_statuses)
        terminal = status in _TERMINAL
        if terminal and run.first_terminal_poll_at is None:
            run.first_terminal_poll_at = now
        data = {
            "type": "run",
            "status": status,
            "results": run.results if terminal else [],
            "errors": run.errors if terminal else [],
        }
        return _Reply(200 if terminal else self.pending_http_status, _dumps({"data": data}))

    def _new_run(self, request: _CreateRequest) -> _Run:
        rng = self._rng
        run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        override = request.override or _Override(None, None, None, None)
        duration = override.duration
        if duration is None:
            duration = self._sample_duration()
        status = override.status
        if status is None:
            status = (
                "error" if self.error_rate > 0 and rng.random() < self.error_rate else "success"
            )
        results = override.results
        if results is None:
            results = self._default_results(run_id, request.inputs) if status == "success" else []
        errors = override.errors
        if errors is None:
            errors = [dict(_DEFAULT_RUN_ERROR)] if status == "error" else []
        return _Run(
            id=run_id,
            action=request.action,
            authentication=request.authentication,
            inputs=request.inputs,
            callback_url=request.callback_url,
            created_at=self.clock.monotonic(),
            duration=duration,
            final_status=status,
            results=results,
            errors=errors,
        )

    def _sample_duration(self) -> float:
        durations = self.durations
        if callable(durations):
            value = durations(self._rng)
            if not _is_number(value) or not value >= 0:
                raise ValueError(f"the durations callable returned {value!r}, not seconds >= 0")
            return float(value)
        return self._sample(durations)

    @staticmethod
    def _default_results(run_id: str, inputs: Mapping[str, Any]) -> list[Any]:
        return [{"id": run_id, "inputs": inputs}]

    def _get_run(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise KeyError(f"no run with id {run_id!r}") from None


_UNAUTHENTICATED: Final = frozenset({"token", "jwks"})
"""Endpoints without bearer authentication and outside the API rate limit."""


def _answer(handler: _fake_auth.Handler) -> _EndpointHandler:
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

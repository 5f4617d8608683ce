"""FakeZapier's runs: the records, the run table, and the Partner API's run endpoints.

A run costs nothing while it runs. It is a record with a creation time, a duration and a
final outcome, all decided when the run is created; its status is computed when somebody
asks (a GET, `FakeZapier.run`) from the emulator's clock. Every surface that creates or reads
runs (`POST /v2/action-runs` here, the Actions API in `_fake_actions`) keeps them in the one
`_RunStore` of its emulator, reached through the narrow `_RunHost` view of `FakeZapier`.
"""

from __future__ import annotations

import json
import math
import random
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs

from zapier_async._clock import Clock
from zapier_async.testing._fake_knobs import _is_number, _sample
from zapier_async.testing._fake_wire import (
    _JSON,
    _NOT_JSON,
    _TERMINAL,
    _dumps,
    _error,
    _Exchange,
    _invalid,
    _Reply,
)

__all__ = ["Durations", "RunRecord"]

Durations = float | tuple[float, float] | Callable[[random.Random], float]
"""A fixed duration in seconds, a `(low, high)` uniform range, or `rng -> seconds`."""

_RESERVED_INPUT: Final = "__fake__"
_OVERRIDE_KEYS: Final = frozenset({"status", "duration", "results", "errors"})
_CREATE_KEYS: Final = frozenset({"action", "authentication", "inputs", "callback_url"})
# https://docs.zapier.com/powered-by-zapier/running-actions/action-run-callbacks
_CALLBACK_URL_MAX: Final = 2048

# The published spec types `delay` as an integer (documented for throttled errors only):
# a default error leaves it out rather than send null.
_DEFAULT_RUN_ERROR: Final[Mapping[str, Any]] = types.MappingProxyType(
    {
        "code": "user",
        "title": "Action failed",
        "detail": "The fake app refused the action (FakeZapier error_rate or override).",
        "meta": None,
    }
)


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


@attrs.define(eq=False)
class _RunStore:
    """Every run of one emulator, and the counts `FakeStats` reports about them."""

    runs: dict[str, _Run] = attrs.Factory(dict)
    accepted: set[str] = attrs.Factory(set)  # canonical JSON of every accepted create
    created: int = 0
    duplicates: int = 0
    polls: int = 0
    on_created: Callable[[_Run], None] | None = None  # told of every new run (callbacks)

    def add(self, run: _Run, canonical: str) -> None:
        """Keep a new run; `canonical` (its create, canonical JSON) detects duplicates."""
        if canonical in self.accepted:
            self.duplicates += 1
        else:
            self.accepted.add(canonical)
        self.runs[run.id] = run
        self.created += 1
        if self.on_created is not None:
            self.on_created(run)

    def read(self, run: _Run, now: float, pending: tuple[str, ...]) -> str:
        """Answer one read of `run`: count it and return the status it sees."""
        run.polls += 1
        self.polls += 1
        status = run.status_at(now, pending)
        if status in _TERMINAL and run.first_terminal_poll_at is None:
            run.first_terminal_poll_at = now
        return status


class _RunHost(Protocol):
    """The part of `FakeZapier` that the run surfaces read (its knobs are live)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def pending_statuses(self) -> tuple[str, ...]: ...

    @property
    def pending_http_status(self) -> int: ...

    @property
    def durations(self) -> Durations: ...

    @property
    def error_rate(self) -> float: ...

    @property
    def _rng(self) -> random.Random: ...

    @property
    def _store(self) -> _RunStore: ...


def _new_run(host: _RunHost, request: _CreateRequest) -> _Run:
    """A run for an accepted create: its duration and outcome are decided now."""
    rng = host._rng
    run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    override = request.override or _Override(None, None, None, None)
    duration = override.duration
    if duration is None:
        duration = _sample_duration(host.durations, rng)
    status = override.status
    if status is None:
        error_rate = host.error_rate
        status = "error" if error_rate > 0 and rng.random() < error_rate else "success"
    results = override.results
    if results is None:
        results = _default_results(run_id, request.inputs) if status == "success" else []
    errors = override.errors
    if errors is None:
        errors = [dict(_DEFAULT_RUN_ERROR)] if status == "error" else []
    return _Run(
        id=run_id,
        action=request.action,
        authentication=request.authentication,
        inputs=request.inputs,
        callback_url=request.callback_url,
        created_at=host.clock.monotonic(),
        duration=duration,
        final_status=status,
        results=results,
        errors=errors,
    )


def _sample_duration(durations: Durations, rng: random.Random) -> float:
    if callable(durations):
        value = durations(rng)
        if not _is_number(value) or not value >= 0:
            raise ValueError(f"the durations callable returned {value!r}, not seconds >= 0")
        return float(value)
    return _sample(rng, durations)


def _default_results(run_id: str, inputs: Mapping[str, Any]) -> list[Any]:
    return [{"id": run_id, "inputs": inputs}]


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# POST /v2/action-runs and GET /v2/action-runs/{id}
# --------------------------------------------------------------------------------------------


async def _create(host: _RunHost, exchange: _Exchange) -> _Reply:
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
    run = _new_run(host, parsed)
    host._store.add(run, _canonical(parsed.data))
    return _Reply(200, _dumps({"data": {"type": "run", "id": run.id}}))


async def _poll(host: _RunHost, exchange: _Exchange) -> _Reply:
    """`GET /v2/action-runs/{id}`: the run's status; the body has no id (per the spec)."""
    store = host._store
    run = store.runs.get(exchange.request.match_info["id"])
    if run is None:
        return _error(404, "not_found", "NotFound", "Not found.")
    status = store.read(run, host.clock.monotonic(), host.pending_statuses)
    terminal = status in _TERMINAL
    data = {
        "type": "run",
        "status": status,
        "results": run.results if terminal else [],
        "errors": run.errors if terminal else [],
    }
    return _Reply(200 if terminal else host.pending_http_status, _dumps({"data": data}))


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

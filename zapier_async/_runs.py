"""Every kind of run in one place: how a run is created on the wire, where it is read, how it is
named in a continuation token, and how a read is parsed.

Pure (see `_wire` for the conventions). Three kinds of run share one handle type:

==================  ==================================================  =======================
kind                read (`poll_request`)                               created by
==================  ==================================================  =======================
``action_run``      ``GET /v2/action-runs/{id}``                        `_protocol`
``actions_v1``      ``GET /actions/v1/runs/{id}``, or with `LongPoll`   `_actions.create_run`
                    ``GET /actions/v2/runs/{id}?wait_seconds=N``
``stored_action``   ``GET /actions/v1/stored-actions/{sa}/runs/{id}``   `_actions.run_stored_action`
==================  ==================================================  =======================

Every run-creating POST is built by `run_creating_post`, so all share what makes a create
safe. Every read is parsed by `parse_run` (HTTP 202 means "still running" on every surface).

Long-polls and the rate limiter
-------------------------------
A long-poll read is one request against the budget (Zapier counts it in
``actions_api_results``), so it takes a limiter slot like any request, at the usual
priority. But the server may hold it for N seconds, and a slot held that long would stall
the limiter: in probe mode (one request at a time) nobody else could send for N s, and the
request would sit in ``in_flight`` all along. So `ZapierClient._send` records the slot as
answered, without a status, the moment the request is handed to the transport: the budget
keeps the grant (it was spent when Zapier received it, which is when the server-side
``Remaining`` drops too), the probe is released and other requests flow. The late answer's
rate-limit headers describe the window at arrival and are stale, so they are not fed to the
limiter; only a refusal (429, or 503 with ``Retry-After``) still freezes the whole bucket,
through `Limiter.freeze`. The transport timeout of a long-poll is ``request_timeout + N``.
Parked long-polls do occupy the poller's ``max_concurrent_polls`` and pooled connections, so
long-polling suits few latency-sensitive runs; callbacks suit many.
https://docs.zapier.com/api-reference/actions/action-runs/read-an-action-run
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import cattrs

from . import errors
from ._redact import redact_value
from ._validators import fraction, positive
from ._wire import (
    JSON_TYPE,
    Request,
    Response,
    check_response,
    decode_error,
    describe_cattrs,
    dump_json,
    is_loopback_host,
    load_json,
    path_segment,
    unwrap_data,
    validate_id,
)
from .models import Run, RunStatus, converter

__all__ = [
    "MAX_CALLBACK_URL",
    "CallbackPolling",
    "LongPoll",
    "RunKind",
    "RunLocator",
    "decode_continuation_token",
    "encode_continuation_token",
    "get_action_run",
    "get_run",
    "get_run_v2",
    "get_stored_action_run",
    "parse_created_run",
    "parse_run",
    "poll_request",
    "run_creating_post",
    "validate_callback_url",
]

MAX_CALLBACK_URL: Final = 2048
"""Zapier's documented maximum length of `callback_url`."""

STORED_ACTIONS: Final = "/actions/v1/stored-actions"
"""The stored actions collection's path."""


# --- configuration of reads -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LongPoll:
    """Long-poll reads of Actions API runs (``GET /actions/v2/runs/{id}?wait_seconds=N``).

    Zapier holds such a read until the run ends or `wait_seconds` pass, then answers 202 if it
    is still running. A 202 means "read again", not "the wait is over": one that comes back
    well before the wait ran out (`early_fraction` of it) is followed by a pause of
    ``Retry-After`` seconds, or `early_pause` without one; a 202 after the full wait is read
    again at once. https://docs.zapier.com/api-reference/actions/action-runs/read-an-action-run

    Attributes:
        wait_seconds: N, the longest the server may hold one read.
        early_fraction: A 202 that arrives before this share of `wait_seconds` is "early".
        early_pause: Seconds to pause after an early 202 without ``Retry-After``.
        max_pause: The longest ``Retry-After`` honoured.
    """

    wait_seconds: float = attrs.field(default=20.0, validator=positive)
    early_fraction: float = attrs.field(default=0.8, validator=fraction)
    early_pause: float = attrs.field(default=1.0, validator=positive)
    max_pause: float = attrs.field(default=60.0, validator=positive)

    def next_delay(self, *, elapsed: float, retry_after: float | None) -> float:
        """Seconds to wait before reading again after a 202 that took `elapsed` seconds."""
        if elapsed >= self.wait_seconds * self.early_fraction:
            return 0.0
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_pause)
        return self.early_pause


@attrs.frozen(kw_only=True)
class CallbackPolling:
    """The safety-net cadence of runs created with a `callback_url`.

    Such a run resolves when its callback arrives (`ZapierClient.deliver_callback`); polls
    only catch callbacks that were lost (Zapier gives up after 3 attempts, a receiver may be
    down). So the first poll comes late and the next ones slowly.

    Attributes:
        first_delay: Seconds before the first poll.
        interval: Seconds between later polls.
        jitter: Relative jitter on each delay, so runs created together do not poll together.
    """

    first_delay: float = attrs.field(default=45.0, validator=positive)
    interval: float = attrs.field(default=120.0, validator=positive)
    jitter: float = attrs.field(default=0.2, validator=fraction)

    def delay(self, attempt: int, rng: Any) -> float:
        """The delay before safety-net poll number `attempt` (0 = the first)."""
        base = self.first_delay if attempt == 0 else self.interval
        return float(base * (1 + self.jitter * (2 * rng.random() - 1)))


# --- creating a run ---------------------------------------------------------------------------


def validate_callback_url(url: object, *, allow_loopback_http: bool = False) -> str:
    """Check a `callback_url` as Zapier will: https, at most 2048 characters, public host.

    Zapier rejects non-https URLs, private and loopback addresses with a 400; we say so before
    sending. `allow_loopback_http` admits ``http://127.0.0.1`` and friends, for the emulator.
    """
    field = "callback_url"
    if not isinstance(url, str):
        raise errors.InvalidRequestError(f"must be a string, not {type(url).__name__}", field)
    if len(url) > MAX_CALLBACK_URL:
        raise errors.InvalidRequestError(
            f"is {len(url)} characters long; Zapier allows at most {MAX_CALLBACK_URL}", field
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise errors.InvalidRequestError(f"is not a valid URL: {exc}", field) from None
    if not host:
        raise errors.InvalidRequestError("has no host", field)
    loopback = is_loopback_host(host)
    if parts.scheme == "http" and loopback and allow_loopback_http:
        return url
    if parts.scheme != "https":
        raise errors.InvalidRequestError("must use https (Zapier refuses anything else)", field)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url
    if not address.is_global:
        raise errors.InvalidRequestError(
            f"points at a non-public address ({host}); Zapier only calls public hosts", field
        )
    return url


def run_creating_post(
    *,
    path: str,
    endpoint: str,
    data: dict[str, Any],
    poll_key: str,
    callback_url: object = None,
    allow_loopback_callback: bool = False,
) -> Request:
    """A POST that creates a run, of any API: body ``{"data": {..., "callback_url"?}}``.

    Every run-creating request is built here, so they all share what makes a create safe:
    never re-sent blind (`idempotent=False`), journalled before it leaves (`creates_run`),
    inputs bounded by Zapier's size limit, and a `callback_url` validated as Zapier will.

    Args:
        path: The request path.
        endpoint: The endpoint name for metrics.
        data: The ``data`` object (changed in place: the callback URL is added).
        poll_key: What the run's durations are learnt under (see `Request.poll_key`).
        callback_url: Where Zapier POSTs the outcome, or None.
        allow_loopback_callback: Accept an ``http://`` loopback callback URL (emulator only).
    """
    if callback_url is not None:
        data["callback_url"] = validate_callback_url(
            callback_url, allow_loopback_http=allow_loopback_callback
        )
    return Request(
        method="POST",
        path=path,
        endpoint=endpoint,
        body=dump_json({"data": data}, field="inputs"),
        content_type=JSON_TYPE,
        idempotent=False,
        creates_run=True,
        poll_key=poll_key,
    )


# --- reading a run ----------------------------------------------------------------------------


def get_action_run(run_id: object) -> Request:
    """`GET /v2/action-runs/{id}`."""
    rid = validate_id(run_id, field="run_id")
    return Request(
        method="GET", path=f"/v2/action-runs/{path_segment(rid)}", endpoint="action_runs.get"
    )


def get_run(run_id: object) -> Request:
    """``GET /actions/v1/runs/{run_id}``: HTTP 202 (or status ``waiting``) while it runs."""
    rid = validate_id(run_id, field="run_id")
    return Request(
        method="GET", path=f"/actions/v1/runs/{path_segment(rid)}", endpoint="actions_runs.get"
    )


def get_run_v2(run_id: object, *, wait_seconds: float) -> Request:
    """``GET /actions/v2/runs/{run_id}?wait_seconds=N``, a long-poll read (notes section 5.3)."""
    rid = validate_id(run_id, field="run_id")
    wait = max(1, round(wait_seconds))
    return Request(
        method="GET",
        path=f"/actions/v2/runs/{path_segment(rid)}",
        endpoint="actions_runs.wait",
        query=(("wait_seconds", str(wait)),),
        long_poll=float(wait),
    )


def get_stored_action_run(stored_action_id: object, run_id: object) -> Request:
    """``GET /actions/v1/stored-actions/{id}/runs/{run_id}``: a FLAT body with `next_page`."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    rid = validate_id(run_id, field="run_id")
    return Request(
        method="GET",
        path=f"{STORED_ACTIONS}/{path_segment(sid)}/runs/{path_segment(rid)}",
        endpoint="stored_actions.run_get",
    )


# --- run locators and continuation tokens -----------------------------------------------------

RunKind = Literal["action_run", "actions_v1", "stored_action"]
_KINDS: Final[frozenset[str]] = frozenset({"action_run", "actions_v1", "stored_action"})


@attrs.frozen(kw_only=True)
class RunLocator:
    """Where a run can be read: which API surface, and its ids.

    Attributes:
        kind: The surface: ``"action_run"`` is `/v2/action-runs/{id}`, ``"actions_v1"`` is
            `/actions/v1/runs/{id}` (one-off Actions API runs), ``"stored_action"`` is
            `/actions/v1/stored-actions/{stored_action_id}/runs/{id}`.
        run_id: The run id.
        stored_action_id: The stored action's id (kind ``"stored_action"`` only).
    """

    kind: RunKind
    run_id: str
    stored_action_id: str | None = None


def poll_request(locator: RunLocator, *, long_poll: LongPoll | None = None) -> Request:
    """The request that reads a run's state, for every kind of run.

    `long_poll` applies to one-off Actions API runs (kind ``"actions_v1"``), the only kind
    Zapier offers a long-poll read for; the other kinds ignore it.
    """
    if locator.kind == "action_run":
        return get_action_run(locator.run_id)
    if locator.kind == "stored_action":
        return get_stored_action_run(locator.stored_action_id, locator.run_id)
    if locator.kind == "actions_v1":
        if long_poll is not None:
            return get_run_v2(locator.run_id, wait_seconds=long_poll.wait_seconds)
        return get_run(locator.run_id)
    raise errors.InvalidRequestError(f"not a kind of run: {locator.kind!r}", "locator")


_TOKEN_PREFIX: Final = "za1."


def encode_continuation_token(locator: RunLocator) -> str:
    """A versioned, opaque, secret-free string from which `resume()` rebuilds a handle.

    `/v2/action-runs` runs keep the version-1 form (older releases can still read them); the
    Actions API kinds use version 2, which adds the stored action's id (``"sa"``).
    """
    fields: dict[str, object] = {"v": 1, "k": locator.kind, "id": locator.run_id}
    if locator.kind != "action_run":
        fields["v"] = 2
        if locator.stored_action_id is not None:
            fields["sa"] = locator.stored_action_id
    payload = json.dumps(fields, separators=(",", ":"))
    raw = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return _TOKEN_PREFIX + raw


def decode_continuation_token(value: object) -> RunLocator:
    """Parse a continuation token, or a bare run id (a `/v2/action-runs` run)."""
    if not isinstance(value, str):
        raise errors.InvalidRequestError(
            f"must be a continuation token or a run id string, not {type(value).__name__}",
            "token",
        )
    if not value.startswith(_TOKEN_PREFIX):
        return RunLocator(kind="action_run", run_id=validate_id(value, field="run_id"))
    raw = value[len(_TOKEN_PREFIX) :]
    try:
        payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise errors.InvalidRequestError("is not a valid continuation token", "token") from None
    if not isinstance(payload, dict) or payload.get("v") not in (1, 2):
        raise errors.InvalidRequestError(
            "is a continuation token of an unknown version; upgrade zapier_async", "token"
        )
    kind = payload.get("k")
    # Version 1 only ever named /v2/action-runs runs, and those are always encoded as v1.
    if not isinstance(kind, str) or kind not in _KINDS:
        raise errors.InvalidRequestError("names an unknown kind of run", "token")
    if (payload["v"] == 1) != (kind == "action_run"):
        raise errors.InvalidRequestError("names an unknown kind of run", "token")
    run_id = validate_id(payload.get("id"), field="run_id")
    if kind == "stored_action":
        stored = validate_id(payload.get("sa"), field="stored_action_id")
        return RunLocator(kind="stored_action", run_id=run_id, stored_action_id=stored)
    if kind == "actions_v1":
        return RunLocator(kind="actions_v1", run_id=run_id)
    return RunLocator(kind="action_run", run_id=run_id)


# --- parsing ----------------------------------------------------------------------------------


def parse_created_run(response: Response, request: Request) -> str:
    """The run id from a create response (``{"data": {"type": "run", "id": ...}}``)."""
    check_response(response, request)
    data = unwrap_data(load_json(response, request), response, request)
    run_id = data.get("id")
    if not isinstance(run_id, str) or not run_id:
        raise decode_error("create response has no run id", response, request)
    return run_id


def parse_run(response: Response, request: Request, *, run_id: str) -> Run:
    """A `Run` from a read response, wrapped in `data` or flat.

    The GET body of `/v2/action-runs/{id}` carries no id, so the id comes from the caller.
    HTTP 202 means "still running" whatever the body says (Actions API behaviour, handled on
    every surface). An empty 202 body is a pending run.
    """
    check_response(response, request)
    pending = response.status == 202
    if pending and not response.body.strip():
        return Run(id=run_id, status=RunStatus.WAITING)
    data = dict(unwrap_data(load_json(response, request), response, request))
    data["id"] = run_id
    data.pop("type", None)
    if data.setdefault("errors", []):
        # A run's errors are server text a `RunFailedError` shows: no secret echoed in them.
        data["errors"] = redact_value(data["errors"])
    try:
        run = converter.structure(data, Run)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise decode_error(
            f"run body does not match the documented shape: {describe_cattrs(exc)}",
            response,
            request,
        ) from None
    if pending and run.status.is_terminal:
        run = attrs.evolve(run, status=RunStatus.WAITING)
    return run

"""Pure builders and parsers for the Actions API: v1 one-off runs, stored actions, v2 reads.

Nothing here does I/O (see `_protocol` for the conventions). Sources:

- one-off runs, ``POST /actions/v1/runs`` and ``GET /actions/v1/runs/{run_id}``: the White Label
  "Actions API" spec description and the wire format of Zapier's SDK (notes section 5.2);
- stored actions: https://docs.zapier.com/white-label/api-reference/stored-actions and
  https://docs.zapier.com/powered-by-zapier/running-actions/stored-actions (notes section 5.1);
- the v2 long-poll read: https://docs.zapier.com/api-reference/actions/action-runs/read-an-action-run
  (notes section 5.3).

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from . import errors
from ._protocol import (
    Request,
    Response,
    RunLocator,
    _check,
    _dump,
    _load_json,
    _seg,
    _unwrap_data,
    _validate_inputs,
    body_excerpt,
    run_creating_post,
    validate_id,
)
from .models import StoredAction

__all__ = [
    "CallbackPolling",
    "LongPoll",
    "create_run",
    "create_stored_action",
    "delete_stored_action",
    "get_run",
    "get_run_v2",
    "get_stored_action",
    "get_stored_action_run",
    "list_stored_actions",
    "parse_stored_action",
    "parse_stored_action_list",
    "poll_request",
    "run_stored_action",
    "update_stored_action",
]

ACTION_TYPES: Final = frozenset({"read", "write", "search"})
"""The Actions API's action types; it wants them lowercase (the Partner API's are upper)."""

_JSON: Final = "application/json"
_MAX_NAME: Final = 256


# --- configuration ----------------------------------------------------------------------------


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


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

    wait_seconds: float = attrs.field(default=20.0, validator=_positive)
    early_fraction: float = attrs.field(default=0.8, validator=_fraction)
    early_pause: float = attrs.field(default=1.0, validator=_positive)
    max_pause: float = attrs.field(default=60.0, validator=_positive)

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

    first_delay: float = attrs.field(default=45.0, validator=_positive)
    interval: float = attrs.field(default=120.0, validator=_positive)
    jitter: float = attrs.field(default=0.2, validator=_fraction)

    def delay(self, attempt: int, rng: Any) -> float:
        """The delay before safety-net poll number `attempt` (0 = the first)."""
        base = self.first_delay if attempt == 0 else self.interval
        return float(base * (1 + self.jitter * (2 * rng.random() - 1)))


# --- validation -------------------------------------------------------------------------------


def _name(value: object, *, field: str) -> str:
    """A name that goes into a body (not a path): non-empty text, at most 256 characters."""
    if not isinstance(value, str):
        raise errors.InvalidRequestError(f"must be a string, not {type(value).__name__}", field)
    if not value.strip():
        raise errors.InvalidRequestError("must not be empty", field)
    if len(value) > _MAX_NAME:
        raise errors.InvalidRequestError(f"must be at most {_MAX_NAME} characters", field)
    return value


def action_type(value: object) -> str:
    """Normalise an action type to the lowercase form the Actions API wants."""
    if not isinstance(value, str) or value.lower() not in ACTION_TYPES:
        raise errors.InvalidRequestError(
            f"must be one of {sorted(ACTION_TYPES)} (any case), got {value!r}", "action_type"
        )
    return value.lower()


def _page(value: object) -> str | None:
    # `next_page` comes back as a number or a string; the SDK sends it back as a string.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise errors.InvalidRequestError(
            f"must be a string or an integer (a `next_page`), not {type(value).__name__}", "page"
        )
    return str(value)


# --- one-off runs -----------------------------------------------------------------------------


def create_run(
    *,
    selected_api: object,
    action_key: object,
    action_type: object,
    inputs: object,
    connection_id: object = None,
    page: object = None,
    callback_url: object = None,
    allow_loopback_callback: bool = False,
) -> Request:
    """``POST /actions/v1/runs``.

    Body ``{"data": {"selected_api", "action_key", "action_type", "inputs",
    "authentication_id"?, "page"?, "callback_url"?}}`` (notes section 5.2: the SDK's form;
    the connection id is called `authentication_id` here).
    """
    kind = _action_type_arg(action_type)
    data: dict[str, Any] = {
        "selected_api": _name(selected_api, field="selected_api"),
        "action_key": _name(action_key, field="action_key"),
        "action_type": kind,
        "inputs": _validate_inputs(inputs),
    }
    if connection_id is not None:
        data["authentication_id"] = validate_id(connection_id, field="connection_id")
    page_value = _page(page)
    if page_value is not None:
        data["page"] = page_value
    return run_creating_post(
        path="/actions/v1/runs",
        endpoint="actions_runs.create",
        data=data,
        poll_key=f"{data['selected_api']}/{data['action_key']}/{kind}",
        callback_url=callback_url,
        allow_loopback_callback=allow_loopback_callback,
    )


_action_type_arg = action_type


def get_run(run_id: object) -> Request:
    """``GET /actions/v1/runs/{run_id}``: HTTP 202 (or status ``waiting``) while it runs."""
    rid = validate_id(run_id, field="run_id")
    return Request(method="GET", path=f"/actions/v1/runs/{_seg(rid)}", endpoint="actions_runs.get")


def get_run_v2(run_id: object, *, wait_seconds: float) -> Request:
    """``GET /actions/v2/runs/{run_id}?wait_seconds=N``, a long-poll read (notes section 5.3)."""
    rid = validate_id(run_id, field="run_id")
    wait = max(1, round(wait_seconds))
    return Request(
        method="GET",
        path=f"/actions/v2/runs/{_seg(rid)}",
        endpoint="actions_runs.wait",
        query=(("wait_seconds", str(wait)),),
        long_poll=float(wait),
    )


# --- stored actions ---------------------------------------------------------------------------

_STORED = "/actions/v1/stored-actions"


def create_stored_action(
    *,
    connection_id: object = None,
    selected_api: object,
    action_key: object,
    action_type: object,
    inputs: object,
) -> Request:
    """``POST /actions/v1/stored-actions``: saves a configuration; runs nothing.

    The (selected_api, action_key, action_type) triple is required; `action_id` is
    deliberately not accepted by Zapier, so it is not sent. `connection_id` is optional, as
    in the published spec (apps that need no authentication have no connection); without it
    the key is left out of the body.
    """
    data: dict[str, Any] = {}
    if connection_id is not None:
        data["connection_id"] = validate_id(connection_id, field="connection_id")
    data.update(
        selected_api=_name(selected_api, field="selected_api"),
        action_key=_name(action_key, field="action_key"),
        action_type=_action_type_arg(action_type),
        inputs=_validate_inputs(inputs),
    )
    # Creating executes nothing, but two POSTs make two records: not retried blindly either.
    return Request(
        method="POST",
        path=_STORED,
        endpoint="stored_actions.create",
        body=_dump({"data": data}, field="inputs"),
        content_type=_JSON,
        idempotent=False,
    )


def get_stored_action(stored_action_id: object) -> Request:
    """``GET /actions/v1/stored-actions/{id}``."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    return Request(method="GET", path=f"{_STORED}/{_seg(sid)}", endpoint="stored_actions.get")


def update_stored_action(
    stored_action_id: object,
    *,
    action_key: object = None,
    action_type: object = None,
    inputs: object = None,
) -> Request:
    """``PATCH /actions/v1/stored-actions/{id}`` with the fields given.

    `connection_id` and `selected_api` cannot be changed (Zapier: delete and recreate).
    """
    sid = validate_id(stored_action_id, field="stored_action_id")
    data: dict[str, Any] = {}
    if action_key is not None:
        data["action_key"] = _name(action_key, field="action_key")
    if action_type is not None:
        data["action_type"] = _action_type_arg(action_type)
    if inputs is not None:
        data["inputs"] = _validate_inputs(inputs)
    if not data:
        raise errors.InvalidRequestError(
            "nothing to update: pass action_key, action_type or inputs"
        )
    return Request(
        method="PATCH",
        path=f"{_STORED}/{_seg(sid)}",
        endpoint="stored_actions.update",
        body=_dump({"data": data}, field="inputs"),
        content_type=_JSON,
        idempotent=True,  # the same PATCH twice leaves the same record
    )


def delete_stored_action(stored_action_id: object) -> Request:
    """``DELETE /actions/v1/stored-actions/{id}``."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    return Request(method="DELETE", path=f"{_STORED}/{_seg(sid)}", endpoint="stored_actions.delete")


def list_stored_actions() -> Request:
    """``GET /actions/v1/stored-actions``."""
    return Request(method="GET", path=_STORED, endpoint="stored_actions.list")


def run_stored_action(
    stored_action_id: object,
    *,
    inputs: object = None,
    page: object = None,
    callback_url: object = None,
    allow_loopback_callback: bool = False,
) -> Request:
    """``POST /actions/v1/stored-actions/{id}/run``, body ``{"data": {"inputs", "page"?}}``.

    Where `callback_url` goes is not documented; like on every other create it goes inside
    `data` (notes section 5.1).
    """
    sid = validate_id(stored_action_id, field="stored_action_id")
    data: dict[str, Any] = {"inputs": _validate_inputs(inputs)}
    page_value = _page(page)
    if page_value is not None:
        data["page"] = page_value
    return run_creating_post(
        path=f"{_STORED}/{_seg(sid)}/run",
        endpoint="stored_actions.run",
        data=data,
        poll_key=f"stored/{sid}",
        callback_url=callback_url,
        allow_loopback_callback=allow_loopback_callback,
    )


def get_stored_action_run(stored_action_id: object, run_id: object) -> Request:
    """``GET /actions/v1/stored-actions/{id}/runs/{run_id}``: a FLAT body with `next_page`."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    rid = validate_id(run_id, field="run_id")
    return Request(
        method="GET",
        path=f"{_STORED}/{_seg(sid)}/runs/{_seg(rid)}",
        endpoint="stored_actions.run_get",
    )


def poll_request(locator: RunLocator, *, long_poll: LongPoll | None = None) -> Request:
    """The read of an Actions API run (kinds ``"actions_v1"`` and ``"stored_action"``)."""
    if locator.kind == "stored_action":
        return get_stored_action_run(locator.stored_action_id, locator.run_id)
    if locator.kind == "actions_v1":
        if long_poll is not None:
            return get_run_v2(locator.run_id, wait_seconds=long_poll.wait_seconds)
        return get_run(locator.run_id)
    raise errors.InvalidRequestError(f"not an Actions API run: {locator.kind!r}", "locator")


# --- parsing ----------------------------------------------------------------------------------


def _stored_from(data: Mapping[str, Any], response: Response, request: Request) -> StoredAction:
    sid = data.get("id")
    if not isinstance(sid, str) or not sid:
        raise errors.DecodeError(
            "stored action has no id", request.describe(), response.status, body_excerpt(response)
        )

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    inputs = data.get("inputs")
    return StoredAction(
        id=sid,
        connection_id=text("connection_id"),
        selected_api=text("selected_api"),
        action_key=text("action_key"),
        action_type=text("action_type"),
        inputs=dict(inputs) if isinstance(inputs, Mapping) else {},
    )


def parse_stored_action(response: Response, request: Request) -> StoredAction:
    """A `StoredAction` from a flat record (create: only ``{type, id}``) or a `data` wrapper."""
    _check(response, request)
    return _stored_from(
        _unwrap_data(_load_json(response, request), response, request), response, request
    )


def parse_stored_action_list(response: Response, request: Request) -> list[StoredAction]:
    """The list response: items under ``results`` (the spec's example) or ``data``."""
    _check(response, request)
    payload = _load_json(response, request)
    items: object = payload
    if isinstance(payload, dict):
        items = payload.get("results", payload.get("data"))
    if not isinstance(items, list):
        raise errors.DecodeError(
            "expected a list of stored actions",
            request.describe(),
            response.status,
            body_excerpt(response),
        )
    return [_stored_from(item, response, request) for item in items if isinstance(item, dict)]

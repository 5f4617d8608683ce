"""Pure builders and parsers for the Actions API: v1 one-off runs, stored actions, v2 reads.

Nothing here does I/O (see `_protocol` for the conventions). Sources:

- one-off runs, ``POST /actions/v1/runs`` and ``GET /actions/v1/runs/{run_id}``: the White Label
  "Actions API" spec description and the wire format of Zapier's SDK (notes section 5.2);
- stored actions: https://docs.zapier.com/white-label/api-reference/stored-actions and
  https://docs.zapier.com/powered-by-zapier/running-actions/stored-actions (notes section 5.1);
- the v2 long-poll read: https://docs.zapier.com/api-reference/actions/action-runs/read-an-action-run
  (notes section 5.3).

Reads of these runs (``poll_request``, the v2 long-poll read, `LongPoll`), their locators and
continuation tokens live in `_runs`, with every other kind of run; they are re-exported here
under the names other modules import. `_runs` also explains how long-polls and the rate
limiter meet.
"""

from __future__ import annotations

from typing import Any, Final

import cattrs

from . import errors
from ._runs import (
    STORED_ACTIONS,
    CallbackPolling,
    LongPoll,
    get_run,
    get_run_v2,
    get_stored_action_run,
    poll_request,
    run_creating_post,
)
from ._wire import (
    JSON_TYPE,
    Request,
    Response,
    check_response,
    decode_error,
    describe_cattrs,
    dump_json,
    load_json,
    path_segment,
    unwrap_data,
    validate_id,
    validate_inputs,
)
from .models import StoredAction, converter

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

_MAX_NAME: Final = 256


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
        "inputs": validate_inputs(inputs),
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


# --- stored actions ---------------------------------------------------------------------------

_STORED: Final = STORED_ACTIONS


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
        inputs=validate_inputs(inputs),
    )
    # Creating executes nothing, but two POSTs make two records: not retried blindly either.
    return Request(
        method="POST",
        path=_STORED,
        endpoint="stored_actions.create",
        body=dump_json({"data": data}, field="inputs"),
        content_type=JSON_TYPE,
        idempotent=False,
    )


def get_stored_action(stored_action_id: object) -> Request:
    """``GET /actions/v1/stored-actions/{id}``."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    return Request(
        method="GET", path=f"{_STORED}/{path_segment(sid)}", endpoint="stored_actions.get"
    )


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
        data["inputs"] = validate_inputs(inputs)
    if not data:
        raise errors.InvalidRequestError(
            "nothing to update: pass action_key, action_type or inputs"
        )
    return Request(
        method="PATCH",
        path=f"{_STORED}/{path_segment(sid)}",
        endpoint="stored_actions.update",
        body=dump_json({"data": data}, field="inputs"),
        content_type=JSON_TYPE,
        idempotent=True,  # the same PATCH twice leaves the same record
    )


def delete_stored_action(stored_action_id: object) -> Request:
    """``DELETE /actions/v1/stored-actions/{id}``."""
    sid = validate_id(stored_action_id, field="stored_action_id")
    return Request(
        method="DELETE", path=f"{_STORED}/{path_segment(sid)}", endpoint="stored_actions.delete"
    )


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
    data: dict[str, Any] = {"inputs": validate_inputs(inputs)}
    page_value = _page(page)
    if page_value is not None:
        data["page"] = page_value
    return run_creating_post(
        path=f"{_STORED}/{path_segment(sid)}/run",
        endpoint="stored_actions.run",
        data=data,
        poll_key=f"stored/{sid}",
        callback_url=callback_url,
        allow_loopback_callback=allow_loopback_callback,
    )


# --- parsing ----------------------------------------------------------------------------------


def _stored_from(data: Any, response: Response, request: Request) -> StoredAction:
    record = dict(data)
    record.pop("type", None)  # ``"stored_action"``: the kind of record, not a field of it
    try:
        return converter.structure(record, StoredAction)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise decode_error(
            f"stored action does not match the documented shape: {describe_cattrs(exc)}",
            response,
            request,
        ) from None


def parse_stored_action(response: Response, request: Request) -> StoredAction:
    """A `StoredAction` from a flat record (create: only ``{type, id}``) or a `data` wrapper."""
    check_response(response, request)
    return _stored_from(
        unwrap_data(load_json(response, request), response, request), response, request
    )


def parse_stored_action_list(response: Response, request: Request) -> list[StoredAction]:
    """The list response: items under ``results`` (the spec's example) or ``data``."""
    check_response(response, request)
    payload = load_json(response, request)
    items: object = payload
    if isinstance(payload, dict):
        items = payload.get("results", payload.get("data"))
    if not isinstance(items, list):
        raise decode_error("expected a list of stored actions", response, request)
    return [_stored_from(item, response, request) for item in items if isinstance(item, dict)]

"""The Workflow API's run surface, ``/v2/action-runs``: building the create request.

Pure, like every module of the core. The shared wire helpers (request and response values,
JSON, envelopes, the one error mapping) live in `_wire`; reads, locators, continuation tokens
and parsing for every kind of run live in `_runs`. Both are re-exported here under the names
other modules have always imported from `_protocol` (see `__all__`); new code imports them
from their homes.

Facts encoded here come from Zapier's Partner API OpenAPI (`tests/spec/zapier-partner-api.yml`,
paths `/v2/action-runs` and `/v2/action-runs/{id}`) and the notes in
`shared/reference/zapier-api-notes.md`.
"""

from __future__ import annotations

from typing import Any

from ._runs import (
    MAX_CALLBACK_URL,
    RunKind,
    RunLocator,
    decode_continuation_token,
    encode_continuation_token,
    get_action_run,
    parse_created_run,
    parse_run,
    poll_request,
    run_creating_post,
    validate_callback_url,
)
from ._wire import (
    MAX_INPUT_BYTES,
    Request,
    Response,
    body_excerpt,
    check_authentication,
    error_class_for_status,
    error_for_response,
    is_loopback_host,
    validate_id,
    validate_inputs,
)

__all__ = [
    "MAX_CALLBACK_URL",
    "MAX_INPUT_BYTES",
    "Request",
    "Response",
    "RunKind",
    "RunLocator",
    "body_excerpt",
    "create_action_run",
    "decode_continuation_token",
    "encode_continuation_token",
    "error_class_for_status",
    "error_for_response",
    "get_action_run",
    "is_loopback_host",
    "parse_created_run",
    "parse_run",
    "poll_request",
    "run_creating_post",
    "validate_callback_url",
    "validate_id",
]


def create_action_run(
    *,
    action: object,
    authentication: object,
    inputs: object,
    callback_url: object = None,
    allow_loopback_callback: bool = False,
) -> Request:
    """`POST /v2/action-runs` in the published spec's form.

    The body is ``{"data": {"action", "authentication", "inputs", "callback_url"?}}``
    (`RunActionRequest` in the Partner OpenAPI). Some guides show a flat body with ``input``;
    the spec rejects that form, so we never send it.
    """
    action_id = validate_id(action, field="action")
    data: dict[str, Any] = {
        "action": action_id,
        "authentication": check_authentication(authentication),
        "inputs": validate_inputs(inputs),
    }
    return run_creating_post(
        path="/v2/action-runs",
        endpoint="action_runs.create",
        data=data,
        poll_key=action_id,
        callback_url=callback_url,
        allow_loopback_callback=allow_loopback_callback,
    )

"""The pure discovery layer: requests to find actions, fields and connections, and parsers.

Like `_protocol`, nothing here does I/O: builders validate input and return `Request` values,
parsers turn `Response` values into models or raise typed errors (non-2xx responses go through
the one mapping, `_wire.error_for_response`).

Facts come from Zapier's Partner OpenAPI (`shared/spec/zapier-partner-api.yml`): paths
`/v2/actions`, `/v2/actions/{action_id}/inputs`, `.../inputs/{input_id}/choices`,
`.../outputs` and `/v2/authentications`. The spec types some 200 bodies as an *array* of the
`{links, meta, data}` envelope (its examples are one-element arrays) and others as the bare
envelope; every parser accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import attrs
import cattrs

from . import errors
from ._wire import (
    JSON_TYPE,
    Request,
    Response,
    check_authentication,
    check_response,
    decode_error,
    describe_cattrs,
    dump_json,
    load_json,
    path_segment,
    validate_id,
    validate_inputs,
)
from .models import (
    Action,
    ActionType,
    Choice,
    ChoicePage,
    Connection,
    Fieldset,
    InfoField,
    InputField,
    OutputField,
    _converter,
    _field_kind,
)

__all__ = [
    "ConnectionPage",
    "action_choices",
    "action_inputs",
    "action_outputs",
    "get_actions",
    "list_authentications",
    "parse_actions",
    "parse_choices",
    "parse_connections",
    "parse_input_fields",
    "parse_output_fields",
    "pick_action",
]

_ACTION_TYPE_RE: Final = re.compile(r"[A-Z][A-Z_]{0,39}")
MAX_PAGE_SIZE: Final = 1000

InputItem = InputField | InfoField | Fieldset
"""One entry of an action's input fields."""


# --- validation -------------------------------------------------------------------------------


def check_action_type(value: object) -> str:
    """An action type as the Partner API spells it (uppercase), e.g. ``"WRITE"``."""
    if not isinstance(value, str):
        raise errors.InvalidRequestError(
            f"must be a string such as 'WRITE', not {type(value).__name__}", "action_type"
        )
    upper = value.upper()  # the Actions API spells them lowercase; accept both
    if not _ACTION_TYPE_RE.fullmatch(upper):
        raise errors.InvalidRequestError(
            f"{value!r} is not an action type; e.g. " + ", ".join(t.value for t in ActionType),
            "action_type",
        )
    return upper


def _check_count(value: object, field: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise errors.InvalidRequestError(f"must be an integer >= {low}", field)
    if high is not None and value > high:
        raise errors.InvalidRequestError(f"must be at most {high}", field)
    return value


# --- builders ---------------------------------------------------------------------------------


def get_actions(app: object, action_type: object = None) -> Request:
    """`GET /v2/actions?app=&action_type=`: an app's actions, with fresh ids."""
    query = [("app", validate_id(app, field="app"))]
    if action_type is not None:
        query.append(("action_type", check_action_type(action_type)))
    return Request(method="GET", path="/v2/actions", endpoint="actions.list", query=tuple(query))


def _fields_body(
    authentication: object, inputs: object, *, nullable_inputs: bool = False
) -> dict[str, Any]:
    auth = check_authentication(authentication)
    if nullable_inputs and inputs is None:
        return {"authentication": auth, "inputs": None}
    return {"authentication": auth, "inputs": validate_inputs(inputs)}


def _post(path: str, endpoint: str, data: Mapping[str, Any], **kwargs: Any) -> Request:
    return Request(
        method="POST",
        path=path,
        endpoint=endpoint,
        body=dump_json({"data": data}, field="inputs"),
        content_type=JSON_TYPE,
        # These POSTs create nothing (they ask the app about its fields), so a retry after
        # an ambiguous failure is harmless.
        idempotent=True,
        **kwargs,
    )


def action_inputs(action_id: object, *, authentication: object, inputs: object) -> Request:
    """`POST /v2/actions/{action_id}/inputs` (`ListInputFieldsRequest`)."""
    aid = validate_id(action_id, field="action_id")
    return _post(
        f"/v2/actions/{path_segment(aid)}/inputs",
        "actions.inputs",
        _fields_body(authentication, inputs),
    )


def action_choices(
    action_id: object,
    input_id: object,
    *,
    authentication: object,
    inputs: object,
    page: object = None,
) -> Request:
    """`POST /v2/actions/{action_id}/inputs/{input_id}/choices?page=` (`ChoiceRequest`).

    `ChoiceParams.inputs` may be null in the spec, so None is sent as null here.
    """
    aid = validate_id(action_id, field="action_id")
    iid = validate_id(input_id, field="input_id")
    query: tuple[tuple[str, str], ...] = ()
    if page is not None:
        query = (("page", str(_check_count(page, "page", low=1))),)
    return _post(
        f"/v2/actions/{path_segment(aid)}/inputs/{path_segment(iid)}/choices",
        "actions.choices",
        _fields_body(authentication, inputs, nullable_inputs=True),
        query=query,
    )


def action_outputs(
    action_id: object,
    *,
    authentication: object,
    inputs: object,
    fetch_live_samples: bool = False,
) -> Request:
    """`POST /v2/actions/{action_id}/outputs` (`ListOutputFieldsRequest`).

    ``fetch_live_samples`` is sent only when True (the spec's default is false; Zapier does
    not support it for WRITE actions).
    """
    aid = validate_id(action_id, field="action_id")
    data = _fields_body(authentication, inputs)
    if fetch_live_samples:
        data["fetch_live_samples"] = True
    return _post(f"/v2/actions/{path_segment(aid)}/outputs", "actions.outputs", data)


def list_authentications(app: object, *, limit: object = 100, offset: object = 0) -> Request:
    """`GET /v2/authentications?app=&limit=&offset=`: one page of the user's connections."""
    query = (
        ("app", validate_id(app, field="app")),
        ("limit", str(_check_count(limit, "limit", low=1, high=MAX_PAGE_SIZE))),
        ("offset", str(_check_count(offset, "offset", low=0))),
    )
    return Request(
        method="GET", path="/v2/authentications", endpoint="authentications.list", query=query
    )


# --- parsing ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Envelope:
    data: list[Any]
    links: Mapping[str, Any]
    meta: Mapping[str, Any]


def _envelope(response: Response, request: Request) -> _Envelope:
    check_response(response, request)
    payload = load_json(response, request)
    if isinstance(payload, list):
        if payload and all(isinstance(p, Mapping) and "data" in p for p in payload):
            # The spec's "array of envelopes" typing (one element in every example).
            data: list[Any] = []
            for part in payload:
                data.extend(_data_list(part.get("data"), response, request))
            last = payload[-1]
            return _Envelope(data=data, links=_obj(last.get("links")), meta=_obj(last.get("meta")))
        return _Envelope(data=list(payload), links={}, meta={})  # a bare list of items
    if not isinstance(payload, Mapping):
        raise decode_error("expected a JSON object or array", response, request)
    return _Envelope(
        data=_data_list(payload.get("data"), response, request),
        links=_obj(payload.get("links")),
        meta=_obj(payload.get("meta")),
    )


def _data_list(value: Any, response: Response, request: Request) -> list[Any]:
    if value is None:
        return []  # `data` is not required by ActionsResponse / AuthenticationResponse
    if isinstance(value, Mapping):
        return [value]
    if not isinstance(value, list):
        raise decode_error("expected `data` to be an array", response, request)
    return value


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _structure_all(
    items: Sequence[Any], kind: Any, response: Response, request: Request
) -> list[Any]:
    out = []
    for item in items:
        try:
            cls = kind(item) if callable(kind) and not isinstance(kind, type) else kind
            out.append(_converter.structure(item, cls))
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise decode_error(
                f"response item does not match the documented shape: {describe_cattrs(exc)}",
                response,
                request,
            ) from None
    return out


def parse_actions(response: Response, request: Request) -> list[Action]:
    """The actions of a Get Actions response."""
    return _structure_all(_envelope(response, request).data, Action, response, request)


def _item_kind(item: Any) -> type[InputItem]:
    if not isinstance(item, Mapping):
        raise TypeError("each input field must be an object")
    return _field_kind(item)


def parse_input_fields(response: Response, request: Request) -> list[InputItem]:
    """The `RootFieldset` of an input-fields response: input fields, info fields, fieldsets."""
    return _structure_all(_envelope(response, request).data, _item_kind, response, request)


def parse_output_fields(response: Response, request: Request) -> list[OutputField]:
    """The output fields of an output-fields response."""
    return _structure_all(_envelope(response, request).data, OutputField, response, request)


def parse_choices(response: Response, request: Request) -> ChoicePage:
    """One page of a choices response (`ChoiceResponse`, `meta.page`, `links.next`)."""
    env = _envelope(response, request)
    choices = _structure_all(env.data, Choice, response, request)
    page = _int(env.meta.get("page"))
    next_page: int | None = None
    nxt = env.links.get("next")
    if isinstance(nxt, str) and nxt:
        next_page = _query_int(nxt, "page")
        if next_page is None:
            next_page = page + 1 if page is not None else None
    return ChoicePage(choices=choices, page=page, next_page=next_page)


@attrs.frozen(kw_only=True)
class ConnectionPage:
    """One page of `GET /v2/authentications`.

    Attributes:
        connections: The connections on the page.
        next_offset: The `offset` of the next page, or None on the last one.
    """

    connections: list[Connection]
    next_offset: int | None


def parse_connections(response: Response, request: Request, *, offset: int) -> ConnectionPage:
    """One page of connections and where the next page starts.

    `links.next` decides whether there is a next page (only its `offset` parameter is read:
    the URL itself is never followed, so a response cannot send our token elsewhere). Without
    `links`, `meta.count` decides.
    """
    env = _envelope(response, request)
    connections = _structure_all(env.data, Connection, response, request)
    following = offset + len(connections)
    next_offset: int | None = None
    if not connections:
        next_offset = None  # an empty page ends the listing whatever the links say
    elif "next" in env.links:
        nxt = env.links.get("next")
        if isinstance(nxt, str) and nxt:
            found = _query_int(nxt, "offset")
            next_offset = found if found is not None and found > offset else following
    else:
        count = _int(env.meta.get("count"))
        if count is not None and following < count:
            next_offset = following
    return ConnectionPage(connections=connections, next_offset=next_offset)


def pick_action(
    actions: Sequence[Action], *, app: str, action_key: str, action_type: str | None
) -> Action:
    """The action with `action_key` (and `action_type`, if given) among `actions`.

    Raises:
        ActionNotFoundError: None matches.
    """
    for action in actions:
        if action.key == action_key and (
            action_type is None or action.action_type.value == action_type
        ):
            return action
    available = sorted(
        {a.key for a in actions if action_type is None or a.action_type.value == action_type}
    )
    raise errors.ActionNotFoundError(app, action_key, action_type, available)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _query_int(url: str, name: str) -> int | None:
    try:
        values = parse_qs(urlsplit(url).query).get(name)
    except ValueError:
        return None
    return _int(values[0]) if values else None

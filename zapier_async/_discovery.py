"""The pure discovery layer: requests to find actions, fields and connections, and parsers.

Like `_protocol`, nothing here does I/O: builders validate input and return `Request` values,
parsers turn `Response` values into models or raise typed errors (non-2xx responses go through
the one mapping, `_wire.error_for_response`).

Facts come from Zapier's Partner OpenAPI (`shared/spec/zapier-partner-api.yml`): paths
`/v2/apps`, `/v2/actions`, `/v2/actions/{action_id}/inputs`, `.../inputs/{input_id}/choices`,
`.../outputs` and `/v2/authentications`.

Discovery by name: users know "Slack", not an app's uuid. `find_app_request` + `pick_app` turn a
name or slug into an `App` (an exact, case-insensitive match of its title or slug, or a typed
error listing the candidates: never a guess, running the wrong app's action is worse than
failing). `check_inputs` checks `inputs` against an action's input fields before a run is
created, and `filter_connections` keeps connections by status. Each is what one client method
needs, so the client adds them in a line each. The spec types some 200 bodies as an *array* of the
`{links, meta, data}` envelope (its examples are one-element arrays) and others as the bare
envelope; every parser accepts both.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
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
    App,
    AppPage,
    Choice,
    ChoicePage,
    Connection,
    Fieldset,
    InfoField,
    InputField,
    OutputField,
    converter,
    field_kind,
    slugify,
)

__all__ = [
    "FIND_APP_LIMIT",
    "ConnectionPage",
    "InputItem",
    "action_choices",
    "action_inputs",
    "action_outputs",
    "app_search_text",
    "check_inputs",
    "connection_matches",
    "filter_connections",
    "find_app_request",
    "get_actions",
    "is_app_id",
    "list_apps",
    "list_authentications",
    "parse_actions",
    "parse_apps",
    "parse_choices",
    "parse_connections",
    "parse_input_fields",
    "parse_output_fields",
    "pick_action",
    "pick_app",
]

_ACTION_TYPE_RE: Final = re.compile(r"[A-Z][A-Z_]{0,39}")
MAX_PAGE_SIZE: Final = 1000
MAX_QUERY: Final = 256
FIND_APP_LIMIT: Final = 50
"""Apps asked for when resolving a name: an exact title is among the most popular matches."""

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


def _check_text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise errors.InvalidRequestError(f"must be a string, not {type(value).__name__}", field)
    if not value.strip():
        raise errors.InvalidRequestError("must not be empty", field)
    if len(value) > MAX_QUERY:
        raise errors.InvalidRequestError(f"must be at most {MAX_QUERY} characters", field)
    return value


def list_apps(
    *,
    query: object = None,
    category: object = None,
    ids: object = None,
    limit: object = None,
    offset: object = 0,
) -> Request:
    """`GET /v2/apps?query=&category=&ids=&limit=&offset=`: apps, most popular first.

    Args:
        query: Only apps whose titles match this text (Zapier's search, not an exact match).
        category: Only apps in this category (a slug such as ``"ai-tools"``).
        ids: Only these app ids (one id, or several); Zapier refuses it with `category`.
        limit: Apps per page; Zapier's default is 10.
        offset: Where the page starts.
    """
    params: list[tuple[str, str]] = []
    if query is not None:
        params.append(("query", _check_text(query, "query")))
    if category is not None:
        params.append(("category", _check_text(category, "category")))
    if ids is not None:
        if category is not None:
            raise errors.InvalidRequestError("cannot be combined with category", "ids")
        values = [ids] if isinstance(ids, str) else ids
        if not isinstance(values, Iterable):
            raise errors.InvalidRequestError(
                f"must be an app id or a list of them, not {type(ids).__name__}", "ids"
            )
        checked = [validate_id(v, field="ids") for v in values]
        if not checked:
            raise errors.InvalidRequestError("must name at least one app id", "ids")
        params.append(("ids", ",".join(checked)))
    if limit is not None:
        params.append(("limit", str(_check_count(limit, "limit", low=1, high=MAX_PAGE_SIZE))))
    params.append(("offset", str(_check_count(offset, "offset", low=0))))
    return Request(method="GET", path="/v2/apps", endpoint="apps.list", query=tuple(params))


def app_search_text(name: object) -> str:
    """What to search Get Apps for to find the app `name` names: a slug's words
    (``"google-sheets"`` searches ``"google sheets"``), anything else as given."""
    text = _check_text(name, "app").strip()
    if " " not in text:
        text = re.sub(r"[-_]+", " ", text).strip() or text
    return text


def find_app_request(name: object) -> Request:
    """The one Get Apps request that resolves an app name or slug (then `pick_app`)."""
    return list_apps(query=app_search_text(name), limit=FIND_APP_LIMIT)


_APP_ID_RE: Final = re.compile(r"[0-9]+")


def is_app_id(value: object) -> bool:
    """True when `value` is an app id rather than a name: a uuid (``"1e4fcbf4-d80b-..."``),
    or all digits (the spec's older numeric form). No app is named like either."""
    if not isinstance(value, str):
        return False
    if _APP_ID_RE.fullmatch(value):
        return True
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


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
            out.append(converter.structure(item, cls))
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
    return field_kind(item)


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
    next_offset = _next_offset(env, offset, len(connections))
    return ConnectionPage(connections=connections, next_offset=next_offset)


def _next_offset(env: _Envelope, offset: int, count: int) -> int | None:
    """Where the next page starts, or None: `links.next` decides (only its `offset` parameter
    is read: the URL itself is never followed, so a response cannot send our token
    elsewhere); without `links`, `meta.count` does. An empty page ends the listing whatever
    the links say."""
    following = offset + count
    if not count:
        return None
    if "next" in env.links:
        nxt = env.links.get("next")
        if isinstance(nxt, str) and nxt:
            found = _query_int(nxt, "offset")
            return found if found is not None and found > offset else following
        return None
    total = _int(env.meta.get("count"))
    if total is not None and following < total:
        return following
    return None


def parse_apps(response: Response, request: Request, *, offset: int = 0) -> AppPage:
    """One page of Get Apps (`ExpandedAppsResponse`, typed as an array of envelopes) and where
    the next page starts (see `parse_connections`)."""
    env = _envelope(response, request)
    apps = _structure_all(env.data, App, response, request)
    return AppPage(apps=apps, next_offset=_next_offset(env, offset, len(apps)))


def pick_app(apps: Sequence[App], name: str) -> App:
    """The app among `apps` whose title or slug is `name`, ignoring case.

    A title match wins over a slug match (``"Slack"`` over an app titled ``"Slack!"``).
    Nothing is guessed: running an action of the wrong app is worse than an error.

    Raises:
        AppNotFoundError: No app has that title or slug; `candidates` lists what was found.
        AmbiguousAppError: Several apps have it; pass the app's id instead.
    """
    key = _check_text(name, "app").strip()
    unique = list({app.id: app for app in apps}.values())
    by_title = [a for a in unique if a.title.strip().casefold() == key.casefold()]
    matches = by_title or [a for a in unique if a.slug and a.slug == slugify(key)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise errors.AmbiguousAppError(key, [f"{a.title} ({a.id})" for a in matches])
    raise errors.AppNotFoundError(key, [a.title for a in unique])


def check_inputs(
    fields: Sequence[InputItem], inputs: object, *, allow_unknown: bool = False
) -> dict[str, Any]:
    """Check `inputs` against an action's input fields before the run is created.

    Every required field (`InputField.is_required`, with no `default_value`) must have a value
    (None and ``""`` count as none), and every key must be a field of the action (unless
    `allow_unknown`); a `Fieldset`'s value is a list of rows, each checked against its
    fields. Ask for the fields with the same `inputs` (`action_inputs`): fields that
    `invalidates_input_fields` change the list.

    Returns:
        A copy of `inputs` (None is ``{}``).

    Raises:
        InvalidInputsError: naming every missing required field and every unknown one.
        InvalidRequestError: `inputs` is not a mapping with string keys.
    """
    values = validate_inputs(inputs)
    missing: list[str] = []
    unknown: list[str] = []
    known: set[str] = set()
    for item in fields:
        if isinstance(item, InputField):
            known.add(item.id)
            if _required_and_empty(item, values):
                missing.append(item.id)
        elif isinstance(item, Fieldset):
            known.add(item.id)
            rows = values.get(item.id)
            if rows is None:
                continue
            if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
                raise errors.InvalidInputsError(
                    f"{item.id!r} is a fieldset: its value must be a list of objects", "inputs"
                )
            inner = [f for f in item.fields if isinstance(f, InputField)]
            names = {f.id for f in inner}
            for i, row in enumerate(rows):
                missing += [f"{item.id}[{i}].{f.id}" for f in inner if _required_and_empty(f, row)]
                if not allow_unknown:
                    unknown += [f"{item.id}[{i}].{k}" for k in row if k not in names]
    if not allow_unknown:
        unknown = [key for key in values if key not in known] + unknown
    if missing or unknown:
        raise errors.InvalidInputsError(
            _inputs_message(missing, unknown, known), "inputs", missing, unknown
        )
    return values


def _required_and_empty(field: InputField, values: Mapping[str, Any]) -> bool:
    if not field.is_required or field.default_value not in (None, ""):
        return False
    return values.get(field.id) in (None, "")


def _inputs_message(missing: list[str], unknown: list[str], known: set[str]) -> str:
    parts = []
    if missing:
        parts.append("missing required input " + ", ".join(repr(m) for m in missing))
    if unknown:
        offered = ", ".join(sorted(known)) or "none"
        parts.append(
            "unknown input " + ", ".join(repr(u) for u in unknown) + f" (fields: {offered})"
        )
    return "; ".join(parts)


def connection_matches(connection: Connection, *, expired: bool | None = None) -> bool:
    """Whether `connection` has the status asked for: `expired` True or False, or None for
    any."""
    return expired is None or connection.is_expired is expired


def filter_connections(
    connections: Iterable[Connection], *, expired: bool | None = False
) -> list[Connection]:
    """The connections with the status asked for; by default the usable (not expired) ones."""
    return [c for c in connections if connection_matches(c, expired=expired)]


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

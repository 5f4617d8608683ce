"""The pure protocol layer: request values out, decisions on response values in.

Nothing here does I/O. Builders validate the caller's input and return a `Request` (the body
is serialised once, here, so input that cannot be sent fails before anything is sent).
Parsers take a `Response` and return a model or raise a typed error. `error_for_response` is
the ONE place that maps an HTTP response to an exception.

Facts encoded here come from Zapier's Partner API OpenAPI (`shared/spec/zapier-partner-api.yml`,
paths `/v2/action-runs` and `/v2/action-runs/{id}`) and the notes in
`shared/reference/zapier-api-notes.md`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import attrs
import cattrs

from . import errors
from ._redact import redact, redact_value, redacted_excerpt
from .models import Run, RunStatus, _converter

__all__ = [
    "MAX_INPUT_BYTES",
    "Request",
    "Response",
    "RunLocator",
    "body_excerpt",
    "create_action_run",
    "decode_continuation_token",
    "encode_continuation_token",
    "error_for_response",
    "get_action_run",
    "parse_created_run",
    "parse_run",
    "poll_request",
    "validate_id",
]

MAX_INPUT_BYTES = 6 * 1024 * 1024
"""Zapier's documented input payload limit (6 MB); larger bodies are refused locally."""

MAX_CALLBACK_URL = 2048
"""Zapier's documented maximum length of `callback_url`."""

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:.\-]{0,255}")
_JSON = "application/json"


@attrs.frozen(kw_only=True)
class Request:
    """One HTTP request to send, as a value.

    Attributes:
        method: HTTP method.
        path: The path, every variable segment already validated and quoted.
        endpoint: A stable label for metrics and logs, e.g. ``"action_runs.create"``.
        query: Query parameters.
        body: The serialised body, or None.
        content_type: The body's media type.
        idempotent: Whether sending it twice is harmless (decides what may be retried).
        creates_run: True for requests that start an action run (never blindly retried).
        poll_key: For a create, what its runs' durations are learnt under (the action), see
            `_polling`.
        long_poll: For a long-poll read (``?wait_seconds=N``), N: the server may hold the
            request that long, so the transport timeout is extended by N and the limiter slot
            is released as soon as it is sent (see `_actions` and `ZapierClient._send`).
    """

    method: str
    path: str
    endpoint: str
    query: tuple[tuple[str, str], ...] = ()
    body: bytes | None = attrs.field(default=None, repr=False)
    content_type: str | None = None
    idempotent: bool = True
    creates_run: bool = False
    poll_key: str | None = None
    long_poll: float | None = None

    def describe(self) -> str:
        """``"METHOD /path"``, for messages (no query: it could carry a client id)."""
        return f"{self.method} {self.path}"


@attrs.frozen(kw_only=True)
class Response:
    """One HTTP response, as a value.

    Attributes:
        status: HTTP status code.
        headers: The response headers; names match case-insensitively (a lower-cased
            `dict`, or the transport's own case-insensitive mapping).
        body: The raw body.
    """

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = attrs.field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        """A header's value by (case-insensitive) name."""
        return self.headers.get(name.lower())


# --- input validation ------------------------------------------------------------------------


def validate_id(value: object, *, field: str) -> str:
    """Check an opaque Zapier id before it goes into a URL path.

    Ids are opaque strings (uuids, ``arun_abc123``, ``core:abc``). We accept letters, digits,
    ``_ : . -``, starting with a letter or digit, at most 256 characters: enough for every form
    documented, and it keeps ``/``, ``..``, ``?``, ``#`` and spaces out of paths.
    """
    if not isinstance(value, str):
        raise errors.InvalidRequestError(f"must be a string, not {type(value).__name__}", field)
    if not value:
        raise errors.InvalidRequestError("must not be empty", field)
    if not _ID_RE.fullmatch(value):
        raise errors.InvalidRequestError(
            f"{_excerpt(value, 60)!r} is not a valid Zapier id (allowed: letters, digits, "
            "'_', ':', '.', '-'; at most 256 characters)",
            field,
        )
    return value


def _validate_inputs(inputs: object) -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise errors.InvalidRequestError(
            f"must be a mapping of input field id to value, not {type(inputs).__name__}",
            "inputs",
        )
    for key in inputs:
        if not isinstance(key, str):
            raise errors.InvalidRequestError(
                f"keys must be strings (input field ids), found {type(key).__name__} {key!r}",
                "inputs",
            )
    return dict(inputs)


# One encoder for every body: `json.dumps` with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dump(payload: Mapping[str, Any], *, field: str) -> bytes:
    try:
        text = _ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        # json's messages name the offending type ("Object of type datetime is not JSON
        # serializable"), which is what the caller needs to fix it.
        raise errors.InvalidRequestError(f"cannot be sent as JSON: {exc}", field) from None
    except RecursionError:
        raise errors.InvalidRequestError("is nested too deeply to send as JSON", field) from None
    body = text.encode("utf-8")
    if len(body) > MAX_INPUT_BYTES:
        raise errors.InvalidRequestError(
            f"serialises to {len(body):,} bytes, over Zapier's {MAX_INPUT_BYTES:,}-byte limit",
            field,
        )
    return body


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


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- builders ---------------------------------------------------------------------------------


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
    if authentication is not None:
        if not isinstance(authentication, str):
            raise errors.InvalidRequestError(
                f"must be a string or None, not {type(authentication).__name__}",
                "authentication",
            )
        if not authentication:
            raise errors.InvalidRequestError(
                "must not be empty; pass None for apps that need no authentication",
                "authentication",
            )
    data: dict[str, Any] = {
        "action": action_id,
        "authentication": authentication,
        "inputs": _validate_inputs(inputs),
    }
    return run_creating_post(
        path="/v2/action-runs",
        endpoint="action_runs.create",
        data=data,
        poll_key=action_id,
        callback_url=callback_url,
        allow_loopback_callback=allow_loopback_callback,
    )


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
        body=_dump({"data": data}, field="inputs"),
        content_type=_JSON,
        idempotent=False,
        creates_run=True,
        poll_key=poll_key,
    )


def get_action_run(run_id: object) -> Request:
    """`GET /v2/action-runs/{id}`."""
    rid = validate_id(run_id, field="run_id")
    return Request(method="GET", path=f"/v2/action-runs/{_seg(rid)}", endpoint="action_runs.get")


def _seg(value: str) -> str:
    # Ids are validated already; quoting is defence in depth (':' stays readable, it is a
    # legal path character).
    return quote(value, safe=":")


# --- run locators and continuation tokens -----------------------------------------------------

RunKind = Literal["action_run", "actions_v1", "stored_action"]
_KINDS: frozenset[str] = frozenset({"action_run", "actions_v1", "stored_action"})


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


def poll_request(locator: RunLocator) -> Request:
    """The request that reads a run's state."""
    if locator.kind == "action_run":
        return get_action_run(locator.run_id)
    from . import _actions  # imported here: _actions builds on this module

    return _actions.poll_request(locator)


_TOKEN_PREFIX = "za1."


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


def _excerpt(text: str, limit: int = errors.BODY_EXCERPT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def body_excerpt(response: Response) -> str:
    """The start of the body, for an error: secrets echoed in it redacted (see `_redact`).

    Every error that keeps server text uses this (or `error_for_response`), so no module
    keeps a body excerpt of its own that could carry an echoed secret.
    """
    limit = errors.BODY_EXCERPT_LIMIT
    # Decode a little more than is kept: enough for a secret straddling the cut to be found.
    head = response.body[: 8 * limit].decode("utf-8", errors="replace")
    return redacted_excerpt(head, limit)


_body_text = body_excerpt  # the name other modules import today


def _load_json(response: Response, request: Request) -> Any:
    try:
        # JSON on the wire is UTF-8 (RFC 8259 section 8.1): decoding it ourselves skips
        # `json.loads`' encoding detection.
        return json.loads(response.body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.DecodeError(
            "response body is not JSON",
            request.describe(),
            response.status,
            _body_text(response),
        ) from None


def _str_or_none(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


_ERRORS_BY_STATUS: dict[int, type[errors.APIError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    429: errors.TooManyRequestsError,
    503: errors.ServiceUnavailableError,
}


def error_class_for_status(status: int) -> type[errors.APIError]:
    """The `APIError` subclass for an HTTP status."""
    cls = _ERRORS_BY_STATUS.get(status)
    if cls is not None:
        return cls
    return errors.ServerError if status >= 500 else errors.APIError


def error_for_response(
    response: Response, request: Request, *, retry_after: float | None = None
) -> errors.APIError | None:
    """Map a response to the error it means, or None for a 2xx.

    Understands the JSON:API envelope ``{"errors": [{status, code, title, detail, ...}]}``
    (the spec's `ErrorResponse`), the flat ``{"code", "detail"}`` body Zapier's gateway sends
    (e.g. ``403 {"code": "authentication_failed", ...}``), non-JSON bodies, and `status` given
    as an integer or a string.

    Server text (code, title, detail, the body excerpt, the `errors` entries) has every secret
    we send redacted here, where the error is built, so `str`, `repr`, pickles and log lines
    of the error never hold one (see `_redact`).
    """
    status = response.status
    if 200 <= status < 300:
        return None
    code = title = detail = None
    entries: list[dict[str, Any]] = []
    try:
        payload = json.loads(response.body) if response.body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        raw_errors = payload.get("errors")
        if isinstance(raw_errors, list):
            entries = [dict(e) for e in raw_errors if isinstance(e, dict)]
            first: dict[str, Any] = entries[0] if entries else {}
        else:
            first = payload
        code = _str_or_none(first.get("code"))
        title = _str_or_none(first.get("title"))
        detail = _str_or_none(first.get("detail")) or _str_or_none(first.get("message"))
    cls = error_class_for_status(status)
    return cls(
        status,
        None if code is None else redact(code),
        None if title is None else redact(title),
        None if detail is None else redact(detail),
        request.describe(),
        _body_text(response),
        retry_after,
        redact_value(entries) if entries else entries,
    )


def _unwrap_data(payload: Any, response: Response, request: Request) -> dict[str, Any]:
    if isinstance(payload, list) and len(payload) == 1:
        # Some Partner API responses are typed as one-element lists; accept both.
        payload = payload[0]
    if not isinstance(payload, dict):
        raise errors.DecodeError(
            "expected a JSON object", request.describe(), response.status, _body_text(response)
        )
    data = payload.get("data", payload)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise errors.DecodeError(
            "expected `data` to be an object",
            request.describe(),
            response.status,
            _body_text(response),
        )
    return data


def _check(response: Response, request: Request) -> None:
    err = error_for_response(response, request)
    if err is not None:
        raise err


def parse_created_run(response: Response, request: Request) -> str:
    """The run id from a create response (``{"data": {"type": "run", "id": ...}}``)."""
    _check(response, request)
    data = _unwrap_data(_load_json(response, request), response, request)
    run_id = data.get("id")
    if not isinstance(run_id, str) or not run_id:
        raise errors.DecodeError(
            "create response has no run id",
            request.describe(),
            response.status,
            _body_text(response),
        )
    return run_id


def parse_run(response: Response, request: Request, *, run_id: str) -> Run:
    """A `Run` from a read response, wrapped in `data` or flat.

    The GET body of `/v2/action-runs/{id}` carries no id, so the id comes from the caller.
    HTTP 202 means "still running" whatever the body says (Actions API behaviour, handled on
    every surface). An empty 202 body is a pending run.
    """
    _check(response, request)
    pending = response.status == 202
    if pending and not response.body.strip():
        return Run(id=run_id, status=RunStatus.WAITING)
    data = dict(_unwrap_data(_load_json(response, request), response, request))
    data["id"] = run_id
    data.pop("type", None)
    if data.setdefault("errors", []):
        # A run's errors are server text a `RunFailedError` shows: no secret echoed in them.
        data["errors"] = redact_value(data["errors"])
    try:
        run = _converter.structure(data, Run)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise errors.DecodeError(
            f"run body does not match the documented shape: {_describe_cattrs(exc)}",
            request.describe(),
            response.status,
            _body_text(response),
        ) from None
    if pending and run.status.is_terminal:
        run = attrs.evolve(run, status=RunStatus.WAITING)
    return run


def _describe_cattrs(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        notes = cattrs.transform_error(exc)
        return "; ".join(notes) if notes else str(exc)
    return str(exc)

"""Wire helpers every pure API module shares: request and response values, ids in paths,
JSON in and out, the `data` envelope, body excerpts and the one error mapping.

Nothing here does I/O, and nothing here knows an API surface: `_protocol` (``/v2/action-runs``),
`_actions` (the Actions API), `_discovery` (actions, fields, apps, connections) and `_runs`
(run locators and reads of every kind of run) build on these names, and no module reaches into
another's private helpers. `error_for_response` is the ONE place that maps an HTTP response to
an exception.

Facts encoded here come from Zapier's Partner API OpenAPI (`tests/spec/zapier-partner-api.yml`,
`ErrorResponse`) and the notes in `shared/reference/zapier-api-notes.md`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import attrs
import cattrs

from . import errors
from ._redact import redact, redact_value, redacted_excerpt

__all__ = [
    "JSON_TYPE",
    "MAX_INPUT_BYTES",
    "Request",
    "Response",
    "body_excerpt",
    "check_authentication",
    "check_response",
    "decode_error",
    "describe_cattrs",
    "dump_json",
    "error_class_for_status",
    "error_for_response",
    "excerpt",
    "is_loopback_host",
    "load_json",
    "path_segment",
    "unwrap_data",
    "validate_id",
    "validate_inputs",
]

MAX_INPUT_BYTES: Final = 6 * 1024 * 1024
"""Zapier's documented input payload limit (6 MB); larger bodies are refused locally."""

JSON_TYPE: Final = "application/json"
"""The media type of every body we send."""

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:.\-]{0,255}")


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
            f"{excerpt(value, 60)!r} is not a valid Zapier id (allowed: letters, digits, "
            "'_', ':', '.', '-'; at most 256 characters)",
            field,
        )
    return value


def path_segment(value: str) -> str:
    """A validated id, quoted for a path segment.

    Ids are validated already (`validate_id`); quoting is defence in depth, and every id
    character it keeps (letters, digits, ``_ : . -``) is a legal path character.
    """
    return quote(value, safe=":")


def validate_inputs(inputs: object) -> dict[str, Any]:
    """A copy of the caller's `inputs` mapping (None is ``{}``); keys must be strings."""
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


def check_authentication(value: object) -> str | None:
    """An `authentication` (connection id) as the Partner API takes it: a string, or None for
    apps that need no authentication."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidRequestError(
            f"must be a string or None, not {type(value).__name__}", "authentication"
        )
    if not value:
        raise errors.InvalidRequestError(
            "must not be empty; pass None for apps that need no authentication",
            "authentication",
        )
    return value


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- JSON -------------------------------------------------------------------------------------

# One encoder for every body: `json.dumps` with non-default options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dump_json(payload: Mapping[str, Any], *, field: str) -> bytes:
    """Serialise a body once, before anything is sent.

    Raises:
        InvalidRequestError: naming `field`, when the payload is not JSON or is over Zapier's
            6 MB input limit.
    """
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


def load_json(response: Response, request: Request) -> Any:
    """The response body as JSON, or a `DecodeError`."""
    try:
        # JSON on the wire is UTF-8 (RFC 8259 section 8.1): decoding it ourselves skips
        # `json.loads`' encoding detection.
        return json.loads(response.body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise decode_error("response body is not JSON", response, request) from None


# --- excerpts and errors ----------------------------------------------------------------------


def excerpt(text: str, limit: int = errors.BODY_EXCERPT_LIMIT) -> str:
    """At most `limit` characters of `text`, with an ellipsis when cut (no redaction: for
    text the caller gave us, such as an id in a validation message)."""
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


def decode_error(message: str, response: Response, request: Request) -> errors.DecodeError:
    """A `DecodeError` for a response that does not have the documented shape."""
    return errors.DecodeError(message, request.describe(), response.status, body_excerpt(response))


def describe_cattrs(exc: BaseException) -> str:
    """What a structuring failure found, in one line (cattrs' notes, joined)."""
    if isinstance(exc, cattrs.BaseValidationError):
        notes = cattrs.transform_error(exc)
        return "; ".join(notes) if notes else str(exc)
    return str(exc)


def _str_or_none(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


_ERRORS_BY_STATUS: Final[dict[int, type[errors.APIError]]] = {
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
        body_excerpt(response),
        retry_after,
        redact_value(entries) if entries else entries,
    )


def check_response(response: Response, request: Request) -> None:
    """Raise the error a non-2xx response means (`error_for_response`)."""
    err = error_for_response(response, request)
    if err is not None:
        raise err


def unwrap_data(payload: Any, response: Response, request: Request) -> dict[str, Any]:
    """The object of a ``{"data": {...}}`` envelope, or a flat object itself.

    Some Partner API responses are typed as one-element lists (of the envelope or of `data`);
    both are accepted.
    """
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    if not isinstance(payload, dict):
        raise decode_error("expected a JSON object", response, request)
    data = payload.get("data", payload)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise decode_error("expected `data` to be an object", response, request)
    return data

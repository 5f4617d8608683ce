"""FakeZapier's wire values: one request on its way through the pipeline, one reply, JSON.

Every surface of the emulator (`_fake`, `_fake_runs`, `_fake_actions`, `_fake_limits`) builds
its answers from these; this module imports none of them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web

__all__ = ["ENDPOINTS", "RecordedRequest"]

ENDPOINTS: Final[tuple[str, ...]] = ("create", "poll", "other")
"""Endpoint names used by `FakeStats.requests_by_endpoint` and `FakeZapier.inject`."""

_TERMINAL: Final = frozenset({"success", "error"})
_JSON: Final = "application/json"
_HTML: Final = "text/html; charset=utf-8"
_NOT_JSON: Final[Any] = object()  # a body that was absent or did not decode


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


_EndpointHandler = Callable[[_Exchange], Awaitable[_Reply]]


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _decode_json(raw: bytes) -> Any:
    if not raw:
        return _NOT_JSON
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _reply(status: int, payload: Any) -> _Reply:
    """A JSON reply; `None` is an empty body (a 204)."""
    return _Reply(status, b"" if payload is None else _dumps(payload))


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


def _bearer(request: web.Request) -> str | None:
    """The request's bearer token, or None when it carries none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token

"""The exception tree, split by whose fault it is.

```
ZapierError
├── InvalidRequestError      local: bad input, refused before any request was sent
│   └── InvalidInputsError     inputs that do not fit the action's input fields
├── TransportError           the request never got an HTTP answer (connect error, reset, timeout)
│   └── ResponseTooLargeError  it got one, larger than max_body_size; we stopped reading it
├── APIError                 Zapier answered with an error status
│   ├── BadRequestError         400
│   ├── AuthenticationError     401
│   │   └── TokenRequestError      the OAuth token endpoint refused the credentials
│   ├── PermissionDeniedError   403
│   ├── NotFoundError           404 (also: a run past Zapier's 7-day retention)
│   ├── ConflictError           409
│   ├── TooManyRequestsError    429
│   └── ServerError             5xx
│       └── ServiceUnavailableError  503
├── DecodeError              Zapier answered 2xx with a body we cannot understand
├── RateLimitedError         our limiter would have to wait longer than you allowed
├── LimiterClosedError       the shared rate limiter was closed while a request waited
├── OutcomeUnknownError      a run-creating POST whose fate is unknown: it may exist
├── RunFailedError           the run ended with status "error" (carries the Run)
├── RunTimeoutError          `result(timeout=)` ran out; the run is still being polled
├── RunDetachedError         polling stopped locally (handle cancelled, client closed)
├── ActionNotFoundError      discovery: the app has no action with that key
├── AppNotFoundError         discovery: no app has that name (or slug)
│   └── AmbiguousAppError      several apps have it
└── NoConnectionError        discovery: the user has no usable connection to the app
```

Exceptions are attrs `auto_exc` classes **without** `kw_only`, so they pickle and copy.
No exception carries a secret: request headers are never stored, bodies are truncated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from .models import Run, RunStatus

__all__ = [
    "APIError",
    "ActionNotFoundError",
    "AmbiguousAppError",
    "AppNotFoundError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DecodeError",
    "InvalidInputsError",
    "InvalidRequestError",
    "LimiterClosedError",
    "NoConnectionError",
    "NotFoundError",
    "OutcomeUnknownError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "RunDetachedError",
    "RunFailedError",
    "RunTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "TokenRequestError",
    "TooManyRequestsError",
    "TransportError",
    "UnexpectedError",
    "WrongEventLoopError",
    "ZapierError",
]

BODY_EXCERPT_LIMIT = 2048
"""At most this many characters of a response body are kept on an error."""


class ZapierError(Exception):
    """Base class of every exception this library raises on purpose."""


@attrs.define(auto_exc=True, eq=False)
class InvalidRequestError(ZapierError, ValueError):
    """The caller's input cannot be sent; nothing was sent.

    Attributes:
        message: What is wrong and how to fix it.
        field: The argument at fault, if one is.
    """

    message: str
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@attrs.define(auto_exc=True, eq=False)
class InvalidInputsError(InvalidRequestError):
    """`inputs` do not fit the action's input fields; nothing was sent.

    Raised by `validate_inputs=True` (see `_discovery.check_inputs`) before the run is
    created, so a typo costs no run.

    Attributes:
        message: What is wrong, naming each field.
        field: ``"inputs"``.
        missing: Ids of required fields with no value (``"fieldset[0].id"`` inside a fieldset).
        unknown: Ids given that the action has no field for.
    """

    missing: list[str] = attrs.field(factory=list)
    unknown: list[str] = attrs.field(factory=list)


@attrs.define(auto_exc=True, eq=False)
class TransportError(ZapierError):
    """The request got no HTTP answer.

    Attributes:
        message: What happened.
        request: ``"METHOD /path"`` of the request.
        sent: False when the request provably never left (connect failed): safe to retry
            even a run-creating POST. None when it may have reached Zapier.
        kind: ``"connect"``, ``"tls"``, ``"timeout"``, ``"reset"``, ``"closed"``,
            ``"too_large"`` or ``"other"``.
    """

    message: str
    request: str = ""
    sent: bool | None = None
    kind: str = "other"

    def __str__(self) -> str:
        where = f" ({self.request})" if self.request else ""
        return f"{self.message}{where}"


@attrs.define(auto_exc=True, eq=False)
class ResponseTooLargeError(TransportError):
    """Zapier's answer was larger than the transport's `max_body_size`; we stopped reading.

    A `TransportError` (kind ``"too_large"``) rather than a `DecodeError`: what we have is no
    complete answer, and the retry rule for "no (complete) answer" is the safe one. The
    request *was* received (``sent=True``), so a run-creating POST is never re-sent: the
    client reports it as `OutcomeUnknownError` (the run may exist), while a read may be tried
    again. Raise `AiohttpTransport(max_body_size=)` if Zapier's answers are legitimately
    this large.

    Attributes:
        status: The HTTP status of the answer.
        limit: The `max_body_size` that was passed, in decoded bytes.
    """

    status: int | None = None
    limit: int | None = None


@attrs.define(auto_exc=True, eq=False)
class APIError(ZapierError):
    """Zapier answered with an error status.

    Attributes:
        status: The HTTP status code.
        code: The error `code` from the body, if any.
        title: The error `title` from the body, if any.
        detail: The error `detail` from the body, if any.
        request: ``"METHOD /path"`` of the request.
        body: The start of the response body (at most 2048 characters).
        retry_after: Seconds Zapier asked us to wait (`Retry-After`), if it said.
        errors: Every entry of a JSON:API `errors` array, as dicts.
    """

    status: int
    code: str | None = None
    title: str | None = None
    detail: str | None = None
    request: str = ""
    body: str = ""
    retry_after: float | None = None
    errors: list[dict[str, Any]] = attrs.field(factory=list)

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = self.detail or self.title
        msg = " ".join(parts)
        if text:
            msg += f": {text}"
        if self.request:
            msg += f" ({self.request})"
        return msg


class BadRequestError(APIError):
    """400: Zapier refused the request as malformed."""


class AuthenticationError(APIError):
    """401: the access token is missing, invalid or expired."""


class TokenRequestError(AuthenticationError):
    """The OAuth token endpoint refused to issue an access token (bad client credentials, a
    JWT it would not accept, a grant it does not support).

    `code` is the OAuth ``error`` (e.g. ``invalid_client``, ``invalid_grant``) and `detail`
    its ``error_description``. Neither the credentials nor the response body are kept.
    """

    def __str__(self) -> str:
        return f"token request refused: {super().__str__()}"


class PermissionDeniedError(APIError):
    """403: the token lacks a scope or access to the resource."""


class NotFoundError(APIError):
    """404: no such resource; a run older than Zapier's 7-day retention is gone."""


class ConflictError(APIError):
    """409: the request conflicts with the resource's state."""


class TooManyRequestsError(APIError):
    """429: over Zapier's rate limit, and retries did not get through."""


class ServerError(APIError):
    """5xx: Zapier failed to process the request."""


class ServiceUnavailableError(ServerError):
    """503: Zapier is temporarily unavailable."""


@attrs.define(auto_exc=True, eq=False)
class DecodeError(ZapierError):
    """Zapier answered, but the body is not the shape the API documents.

    Attributes:
        message: What could not be understood.
        request: ``"METHOD /path"`` of the request.
        status: The HTTP status of the response.
        body: The start of the response body.
    """

    message: str
    request: str = ""
    status: int | None = None
    body: str = ""

    def __str__(self) -> str:
        where = f" ({self.request} -> HTTP {self.status})" if self.request else ""
        return f"{self.message}{where}"


@attrs.define(auto_exc=True, eq=False)
class RateLimitedError(ZapierError):
    """Sending now would exceed the rate budget, and waiting is longer than allowed.

    Raised instead of sleeping when the wait is over `max_rate_limit_wait`, so a web app can
    answer its own caller (e.g. with a 503 and `Retry-After`) instead of hanging.

    Also raised when the server itself dictates a wait (``Retry-After``,
    ``X-RateLimit-Reset``) longer than the client's `max_server_wait`.

    Attributes:
        retry_after: Seconds until a request may be sent.
        retry_at: The same moment as wall-clock epoch seconds.
        reason: Which cap was exceeded: ``"max_rate_limit_wait"`` (the caller's patience)
            or ``"max_server_wait"`` (a wait the server dictated).
    """

    retry_after: float
    retry_at: float
    reason: str = "max_rate_limit_wait"

    def __str__(self) -> str:
        return (
            f"rate limited: the next request may be sent in {self.retry_after:.1f}s, "
            f"longer than {self.reason} allows"
        )


@attrs.define(auto_exc=True, eq=False)
class OutcomeUnknownError(ZapierError):
    """A run-creating request failed in a way that leaves its fate unknown.

    Zapier may or may not have created the run. It was NOT retried, because a retry could run
    the action twice (a duplicate email to a real person). Check in Zapier before re-sending.

    Attributes:
        message: What happened to the request.
        request: ``"METHOD /path"`` of the request.
        cause: Short description of the underlying failure.
    """

    message: str
    request: str = ""
    cause: str = ""

    def __str__(self) -> str:
        text = f"outcome unknown: {self.message}"
        if self.cause:
            text += f" ({self.cause})"
        return text + "; the run may exist; it was not re-sent to avoid a duplicate"


@attrs.define(auto_exc=True, eq=False)
class RunFailedError(ZapierError):
    """The run ended with status ``error``.

    Attributes:
        run: The final `Run`, with its `errors`.
    """

    run: Run

    def __str__(self) -> str:
        first = self.run.errors[0] if self.run.errors else None
        if first is None:
            return f"run {self.run.id} failed"
        code = f"[{first.code}] " if first.code is not None else ""
        text = first.detail or first.title or ""
        more = f" (+{len(self.run.errors) - 1} more)" if len(self.run.errors) > 1 else ""
        return f"run {self.run.id} failed: {code}{text}{more}"


@attrs.define(auto_exc=True, eq=False)
class RunTimeoutError(ZapierError, TimeoutError):
    """The wait ran out before the run ended. The run itself goes on and is still polled.

    Attributes:
        run_id: The run's id: `client.resume(run_id)` picks it up later.
        status: The last status seen.
        timeout: The wait that ran out, in seconds.
    """

    run_id: str
    status: RunStatus | None
    timeout: float

    def __str__(self) -> str:
        return (
            f"run {self.run_id} did not finish within {self.timeout:g}s "
            f"(last status: {self.status}); it is still running and still polled"
        )


@attrs.define(auto_exc=True, eq=False)
class RunDetachedError(ZapierError):
    """Local polling of the run stopped before it ended; the run may still be running.

    Attributes:
        run_id: The run's id: `client.resume(run_id)` picks it up again.
        reason: Why polling stopped (``"cancelled"``, ``"client closed"``, or an error).
    """

    run_id: str
    reason: str

    def __str__(self) -> str:
        return f"stopped following run {self.run_id}: {self.reason}; resume it by id"


@attrs.define(auto_exc=True, eq=False)
class ActionNotFoundError(ZapierError):
    """Get Actions lists no action with this key for the app.

    Attributes:
        app: The app id that was searched.
        action_key: The stable action key asked for.
        action_type: The action type filter, if one was used.
        available: The keys the app does offer (for that type), sorted.
    """

    app: str
    action_key: str
    action_type: str | None = None
    available: list[str] = attrs.field(factory=list)

    def __str__(self) -> str:
        kind = f" of type {self.action_type}" if self.action_type else ""
        offered = ", ".join(self.available[:20]) if self.available else "none"
        more = f" (+{len(self.available) - 20} more)" if len(self.available) > 20 else ""
        return (
            f"app {self.app} has no action{kind} with key {self.action_key!r}; "
            f"available keys: {offered}{more}"
        )


@attrs.define(auto_exc=True, eq=False)
class AppNotFoundError(ZapierError, LookupError):
    """No app in Zapier's catalogue has this name or slug.

    Attributes:
        name: The name asked for.
        candidates: Titles Get Apps offered for it (most popular first), for a "did you
            mean"; pass one of them, or the app's id.
    """

    name: str
    candidates: list[str] = attrs.field(factory=list)

    def __str__(self) -> str:
        offered = ", ".join(repr(c) for c in self.candidates[:10]) or "none"
        return f"no app is named {self.name!r}; similar apps: {offered}"


@attrs.define(auto_exc=True, eq=False)
class AmbiguousAppError(AppNotFoundError):
    """Several apps have this name or slug; pass the app's id instead.

    Attributes:
        name: The name asked for.
        candidates: ``"title (id)"`` of each app that matches.
    """

    def __str__(self) -> str:
        return f"{len(self.candidates)} apps are named {self.name!r}: " + ", ".join(
            self.candidates[:10]
        )


@attrs.define(auto_exc=True, eq=False)
class NoConnectionError(ZapierError):
    """The user has no usable connection (authentication) to the app.

    Attributes:
        app: The app id.
        expired: How many connections were found that are expired (unusable until the user
            reconnects them).
    """

    app: str
    expired: int = 0

    def __str__(self) -> str:
        if self.expired:
            return (
                f"no usable connection to app {self.app}: {self.expired} found, all expired; "
                "the user must reconnect the app"
            )
        return f"no connection to app {self.app}; the user must connect the app first"


@attrs.define(auto_exc=True, eq=False)
class LimiterClosedError(ZapierError, RuntimeError):
    """The limiter was closed: no more slots are granted.

    Attributes:
        message: What was refused.
    """

    message: str = "the rate limiter is closed"

    def __str__(self) -> str:
        return self.message


@attrs.define(auto_exc=True, eq=False)
class WrongEventLoopError(ZapierError, RuntimeError):
    """The client was used from an event loop other than the one it was first used in.

    A client owns a connection pool and a poller bound to one event loop; create one
    client per event loop (e.g. inside the coroutine that `asyncio.run` runs), or use
    `SyncZapierClient` from synchronous code.

    Attributes:
        message: What was refused and what to do instead.
    """

    message: str = (
        "this client belongs to another event loop; create the client inside the event loop "
        "that uses it (one client per asyncio.run)"
    )

    def __str__(self) -> str:
        return self.message


@attrs.define(auto_exc=True, eq=False)
class UnexpectedError(ZapierError):
    """A component raised an exception that is not a `ZapierError`; it is wrapped in this.

    Raised, for instance, when a custom auth provider's ``token()`` raises ``OSError`` or a
    caller-owned session is closed under the client. The original exception is the
    ``__cause__``; its type and text are in `message`.

    Attributes:
        message: What failed, and the original exception's type and text.
        request: ``"METHOD /path"`` of the request it happened in, if any.
    """

    message: str
    request: str = ""

    def __str__(self) -> str:
        where = f" ({self.request})" if self.request else ""
        return f"{self.message}{where}"

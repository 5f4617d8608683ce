"""Token requests and responses, and the token cache: what every fetching provider shares.

`_auth` holds the providers (and the theory of operation); this module the parts they have in
common, none of which import `_auth` back:

- `AuthContext`, what a client lends a provider through ``bind()``, and `Binding`, where a
  provider keeps it;
- `token_problem`, the one definition of a sendable bearer token;
- the pure wire of a token endpoint: `parse_token_url`, `token_request` (form-encoded) and
  `parse_token_response` (an `IssuedToken` or the typed error it means, secrets redacted);
- `TokenCache`: tokens by key, refreshed single-flight ahead of expiry, bounded (LRU).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from . import errors
from ._backoff import RetryPolicy, SupportsRandom
from ._clock import Clock
from ._protocol import Request, Response, error_class_for_status, is_loopback_host
from ._redact import SecretSet, redact

__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_TOKEN_URL",
    "AuthContext",
    "Binding",
    "IssuedToken",
    "TokenCache",
    "TokenEndpoint",
    "check_margin",
    "check_secret",
    "parse_token_response",
    "parse_token_url",
    "token_problem",
    "token_request",
]

DEFAULT_TOKEN_URL: Final = "https://zapier.com/oauth/token/"
"""Zapier's OAuth token endpoint (the Partner OpenAPI's `securitySchemes.OAuth.tokenUrl`)."""

DEFAULT_LIFETIME: Final = 3600.0
"""Seconds a token is assumed valid when the endpoint says no `expires_in` (as Zapier's SDK)."""

_FORM: Final = "application/x-www-form-urlencoded"


# --- what a client lends a provider ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class AuthContext:
    """What a client lends its auth provider, through `bind()`.

    Attributes:
        clock: The client's clock: token lifetimes are measured on ``clock.monotonic()`` and
            JWT times (`iat`, `nbf`, `exp`) come from ``clock.time()``.
        send: ``await send(request, base_url)``: sends a token request through the client's
            transport (not its rate limiter), with no `Authorization` header, retried there
            under the client's `RetryPolicy` like any idempotent request (the providers here
            make one call per refresh, never a retry loop of their own). Returns the last
            answer (a refusal is parsed by the provider); raises `TransportError` when no
            answer came.
        retry_policy: Unused by the providers of this module (kept for providers written
            against earlier versions).
        rng: Unused likewise.
    """

    clock: Clock
    send: Callable[[Request, str], Awaitable[Response]] = attrs.field(repr=False)
    retry_policy: RetryPolicy = attrs.field(factory=RetryPolicy)
    rng: SupportsRandom = attrs.field(factory=random.Random, repr=False)


def token_problem(token: str) -> str | None:
    """Why `token` cannot be sent as ``Authorization: Bearer <token>``, or None if it can.

    A bearer token is printable ASCII without spaces (RFC 6750's ``b64token`` and then some):
    a control character (NUL, a line break) cannot be carried in an HTTP header at all, and a
    space or a non-ASCII character would be refused by Zapier. The answer never quotes the
    token.
    """
    if not token.isascii():
        return "holds a non-ASCII character"
    if not token.isprintable():
        return "holds a control character (e.g. NUL or a line break)"
    if " " in token:
        return "holds a space"
    return None


# --- pure: token requests and responses ------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenEndpoint:
    """A validated token URL, split the way the transport wants it.

    Attributes:
        base_url: ``scheme://host[:port]``.
        path: The path (``/oauth/token/``).
        query: Query parameters of the URL, if any.
    """

    base_url: str
    path: str
    query: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """The URL again, without its query."""
        return self.base_url + self.path


def parse_token_url(url: object, *, field: str = "token_url") -> TokenEndpoint:
    """Check a token URL: absolute, ``https`` (``http`` only for loopback hosts)."""
    if not isinstance(url, str) or not url:
        raise errors.InvalidRequestError("must be a non-empty string", field)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise errors.InvalidRequestError(f"is not a valid URL: {exc}", field) from None
    if parts.scheme not in ("https", "http") or not host:
        raise errors.InvalidRequestError(f"must be an absolute https:// URL, got {url!r}", field)
    if parts.scheme == "http" and not is_loopback_host(host):
        # Client secrets and JWTs would cross the network in clear text.
        raise errors.InvalidRequestError(
            "http:// is only allowed for loopback hosts (127.0.0.1, ::1, localhost); use https://",
            field,
        )
    if parts.fragment or parts.username or parts.password:
        raise errors.InvalidRequestError("must not have a fragment or credentials", field)
    return TokenEndpoint(
        base_url=f"{parts.scheme}://{parts.netloc}",
        path=parts.path or "/",
        query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
    )


def token_request(endpoint: TokenEndpoint, form: Mapping[str, str]) -> Request:
    """A form-encoded ``POST`` to the token endpoint (RFC 6749 section 4.4 / RFC 8693).

    The body holds secrets; `Request` keeps it out of its `repr`, and `describe()` shows only
    the method and path.
    """
    return Request(
        method="POST",
        path=endpoint.path,
        endpoint="oauth.token",
        query=endpoint.query,
        body=urlencode(list(form.items())).encode("ascii"),
        content_type=_FORM,
        idempotent=True,  # issuing a second token is harmless
    )


@attrs.frozen(kw_only=True)
class IssuedToken:
    """An access token as the token endpoint issued it.

    Attributes:
        access_token: The token (never in `repr`).
        expires_in: Seconds it is valid for, from when it was issued.
        token_type: The `token_type` the endpoint named (``"Bearer"``).
    """

    access_token: str = attrs.field(repr=False)
    expires_in: float
    token_type: str = "Bearer"


def _scrub(text: str | None, secrets: Sequence[str]) -> str | None:
    # Every registered secret in every encoding (see `_redact`), and `secrets` too.
    return None if text is None else redact(text, extra=secrets)


def _token_body(response: Response) -> Any:
    try:
        return json.loads(response.body) if response.body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def parse_token_response(
    response: Response,
    request: Request,
    *,
    default_lifetime: float = DEFAULT_LIFETIME,
    secrets: Sequence[str] = (),
) -> IssuedToken:
    """An `IssuedToken` from a token endpoint's response, or the typed error it means.

    A 4xx other than 429 is a refusal, `TokenRequestError`, with the OAuth ``error`` and
    ``error_description`` (RFC 6749 section 5.2) as `code` and `detail`; 429 and 5xx get the
    usual `APIError` subclass (transient: a later request may succeed). The response body is
    never kept on the error (a success body holds a token; an error body may echo the
    request), and every secret we send (registered ones and `secrets`), in every encoding,
    is redacted from the code, title and description (see `_redact`).

    Raises:
        TokenRequestError: The endpoint refused the request, or issued a token that cannot
            be sent (a control character, a space, non-ASCII; the token is not quoted).
        APIError: 429 or 5xx.
        DecodeError: A 2xx without an ``access_token``.
    """
    payload = _token_body(response)
    where = request.describe()
    if not 200 <= response.status < 300:
        code = detail = title = None
        if isinstance(payload, dict):
            first = payload
            nested = payload.get("errors")
            if isinstance(nested, list) and nested and isinstance(nested[0], dict):
                first = nested[0]  # a JSON:API body, as the API host sends
            raw_code = first.get("error", first.get("code"))
            code = raw_code if isinstance(raw_code, str) else None
            raw_detail = first.get("error_description", first.get("detail"))
            detail = raw_detail if isinstance(raw_detail, str) else None
            raw_title = first.get("title")
            title = raw_title if isinstance(raw_title, str) else None
        status = response.status
        refused = 400 <= status < 500 and status != 429
        cls = errors.TokenRequestError if refused else error_class_for_status(status)
        raise cls(
            status,
            _scrub(code, secrets),
            _scrub(title, secrets),
            _scrub(detail, secrets),
            where,
            "",  # the body is never kept: it may echo the request's secrets
        )
    if not isinstance(payload, dict):
        raise errors.DecodeError("token response is not a JSON object", where, response.status)
    token = payload.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise errors.DecodeError(
            "token response has no usable access_token", where, response.status
        )
    token = token.strip()
    problem = token_problem(token)
    if problem is not None:
        raise errors.TokenRequestError(
            response.status,
            "invalid_token",
            None,
            f"the issued access token {problem}; it cannot be sent in an HTTP header",
            where,
            "",
        )
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        token_type = "Bearer"
    return IssuedToken(
        access_token=token,
        expires_in=_expires_in(payload.get("expires_in"), default_lifetime),
        token_type=token_type,
    )


def _expires_in(value: object, default: float) -> float:
    # RFC 6749 says a number; some servers send a numeric string. Anything else (missing,
    # zero, negative, nonsense) falls back to the default Zapier's SDK assumes.
    if isinstance(value, bool):
        return default
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return default
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return default


# --- the cache: single-flight refresh ahead of expiry ---------------------------------------


class _Entry:
    """A cached token. In a cache of many keys it is registered for redaction in a
    `SecretSet` of its own, which leaves the registry with the entry."""

    __slots__ = ("expires_at", "refresh_at", "secrets", "token")

    def __init__(
        self, token: str, expires_at: float, refresh_at: float, *, own_secrets: bool
    ) -> None:
        self.token = token
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.secrets: SecretSet | None = None
        if own_secrets:
            self.secrets = SecretSet(recent=0)
            self.secrets.set("token", token)

    def __repr__(self) -> str:
        return f"<_Entry expires_at={self.expires_at} token=<redacted>>"


class _Restart(Exception):
    """The leader of a refresh was cancelled; a waiter takes over."""


class TokenCache:
    """Tokens by key, refreshed single-flight ahead of expiry, bounded in memory.

    At most `max_entries` tokens are kept (least recently used evicted first), and a token
    past its expiry is dropped as soon as it reaches the least-recently-used end, so a
    partner acting for 100,000 users keeps only the tokens of the users it served lately.
    An evicted token is fetched again on its key's next use (single-flight as ever).

    `secrets` holds the provider's own secrets and the tokens it retired (among its
    recent ones); each cached token is registered in its entry's own `SecretSet`, so it
    leaves the redaction registry with its entry (see `_redact`).
    """

    __slots__ = ("_entries", "_flights", "_margin", "_single", "evicted", "max_entries", "secrets")

    def __init__(self, margin: float, max_entries: int | None = None) -> None:
        self._margin = margin
        # No cap: one key only (client credentials), whose token lives in `secrets`.
        self._single = max_entries is None
        self.max_entries = 1 if max_entries is None else max_entries
        self.evicted = 0
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._flights: dict[Hashable, asyncio.Future[str]] = {}
        self.secrets = SecretSet()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self, key: Hashable, context: AuthContext, fetch: Callable[[], Awaitable[IssuedToken]]
    ) -> str:
        clock = context.clock
        while True:
            entry = self._entries.get(key)
            if entry is not None and clock.monotonic() < entry.refresh_at:
                self._entries.move_to_end(key)
                return entry.token
            flight = self._flights.get(key)
            if flight is None:
                break
            try:
                # shield: a waiter that is cancelled must not cancel the refresh of the others.
                return await asyncio.shield(flight)
            except _Restart:
                continue
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            # One attempt: the client's send (`AuthContext.send`) is the retry loop.
            issued = await fetch()
        except asyncio.CancelledError:
            flight.set_exception(_Restart())
            flight.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()
            raise
        finally:
            del self._flights[key]
        now = clock.monotonic()
        lifetime = issued.expires_in
        # Refresh ahead of expiry by the margin, but never sooner than half-way through a
        # short-lived token's life (else a 60 s margin would refetch a 60 s token every time).
        margin = min(self._margin, lifetime / 2)
        # A one-key cache (client credentials) registers its token in its own set (the
        # token it replaces becomes a recent one); a many-key cache, in the entry's.
        single = self._single
        entry = _Entry(
            issued.access_token, now + lifetime, now + lifetime - margin, own_secrets=not single
        )
        if single:
            self.secrets.set(("token", key), issued.access_token)
        self._put(key, entry, now)
        flight.set_result(issued.access_token)
        return issued.access_token

    def _put(self, key: Hashable, entry: _Entry, now: float) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None and old.secrets is not None:
            self.secrets.add_recent(old.token)
        entries[key] = entry
        # Expired tokens at the least-recently-used end go first (amortised O(1)), then
        # whatever exceeds the cap.
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if not (oldest.expires_at <= now or len(entries) > self.max_entries):
                break
            del entries[oldest_key]
            self.evicted += 1

    def invalidate(self, token: str) -> bool:
        for key, entry in list(self._entries.items()):
            if entry.token == token:
                del self._entries[key]
                self.secrets.add_recent(token)
        # A new token can be had (whether this was the cached one, or another request has
        # already replaced it): the client retries its request once.
        return True


def check_secret(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise errors.InvalidRequestError("must be a non-empty string", field)
    return value


def check_margin(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise errors.InvalidRequestError("must be a number of seconds >= 0", "refresh_margin")
    return float(value)


class Binding:
    """The context a provider was bound to (the most recent `bind` wins)."""

    __slots__ = ("context",)

    def __init__(self) -> None:
        self.context: AuthContext | None = None

    def require(self, provider: str) -> AuthContext:
        if self.context is None:
            raise errors.InvalidRequestError(
                f"{provider} is not bound to a client: pass it as ZapierClient(auth=...), "
                "which binds it to the client's transport and clock"
            )
        return self.context

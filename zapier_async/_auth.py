"""Auth providers: where the `Authorization` header comes from.

A provider hands the client a bearer token for each request and is told when Zapier refused
one (401), so that providers that can refresh (client credentials, token exchange) fetch a new
token once instead of failing. Providers never put a secret into a `repr`, a log line, an
exception or a continuation token.

Theory of operation
-------------------
Providers that fetch tokens need HTTP. A client lends them its transport and its clock by
calling ``provider.bind(AuthContext(...))`` once, at construction. Token requests are pure
`Request` values built here (form-encoded, ``application/x-www-form-urlencoded``) and sent
through `AuthContext.send`: the client's transport, so transport failures are the same
`TransportError`s, but *not* the client's rate limiter: the token endpoint is another host
(``zapier.com``) with its own budget.

Tokens are cached per key (one key for client credentials, one per ``(subject, tenant)`` for
token exchange) in a `_TokenCache`:

- a token is used until ``expires_in`` minus a margin (refresh ahead of expiry, so a request
  never leaves with a token about to lapse); ``expires_in`` missing means 3600 s;
- refresh is single-flight: however many requests find the token stale at once, exactly one
  token request is made and every waiter gets its result (or its error);
- `invalidate(token)` (Zapier answered 401) drops the token if it is still the cached one,
  so the client's one retry fetches a fresh one, again single-flight;
- memory is bounded: at most ``max_cached_tokens`` tokens (least recently used evicted), and
  an expired token is dropped when it reaches the least-recently-used end. A worker cycling
  through 100,000 users keeps the tokens of those it served lately, not all of them
  (`PartnerTokenExchange.cached_tokens` and `evicted_tokens` count them).

A token request is made once per refresh: the client's send (`AuthContext.send`) is the one
retry loop for token requests as for every other request.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import errors
from ._backoff import RetryPolicy, SupportsRandom
from ._clock import Clock
from ._protocol import Request, Response, error_class_for_status, is_loopback_host
from ._redact import SecretSet, redact

__all__ = [
    "ALLOWED_JWT_ALGORITHMS",
    "DEFAULT_TOKEN_URL",
    "AuthContext",
    "AuthProvider",
    "BearerToken",
    "ClientCredentials",
    "IssuedToken",
    "PartnerTokenExchange",
    "parse_token_response",
    "token_request",
]

logger = logging.getLogger("zapier_async")

DEFAULT_TOKEN_URL: Final = "https://zapier.com/oauth/token/"
"""Zapier's OAuth token endpoint (the Partner OpenAPI's `securitySchemes.OAuth.tokenUrl`)."""

DEFAULT_LIFETIME: Final = 3600.0
"""Seconds a token is assumed valid when the endpoint says no `expires_in` (as Zapier's SDK)."""

ALLOWED_JWT_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
"""Algorithms Zapier accepts for a partner-signed JWT; no HMAC.
https://docs.zapier.com/white-label/token-exchange"""

TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
"""RFC 8693's grant type. Zapier does not document its exact parameters; see
`PartnerTokenExchange` for how to change them."""

JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
"""RFC 8693's `subject_token_type` for a JWT."""

ZAPIER_CONNECT_AUDIENCE: Final = "connect.zapier.com"
"""The `aud` Zapier requires in a partner JWT (https://docs.zapier.com/white-label/token-exchange)."""

MAX_JWT_LIFETIME: Final = 300.0
"""Zapier asks for `exp` at most about 5 minutes after `iat`."""

_FORM: Final = "application/x-www-form-urlencoded"
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


# --- the provider protocol and the binding -------------------------------------------------


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


@runtime_checkable
class AuthProvider(Protocol):
    """Supplies access tokens to a client.

    A provider that needs HTTP or time (to fetch tokens) may also define
    ``bind(context: AuthContext) -> None``; a client calls it once, when it is created, so
    the provider can use the client's transport and clock. It is optional, so providers
    written against earlier versions keep working.
    """

    async def token(self) -> str:
        """The access token to send now."""
        ...

    def invalidate(self, token: str) -> bool:
        """Zapier refused `token` (HTTP 401).

        Returns:
            True when a different token can be had (the request is retried once), False when
            the provider has nothing else to offer (the 401 is raised).
        """
        ...


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


class BearerToken:
    """A fixed access token (a Powered by Zapier user token, or one you refresh yourself).

    Args:
        token: The access token, sent as ``Authorization: Bearer <token>``. Surrounding
            whitespace is dropped.

    Raises:
        InvalidRequestError: The token is empty, or holds a character an HTTP header cannot
            carry (a control character, a space, non-ASCII). The message never quotes it.
    """

    __slots__ = ("_secrets", "_token")

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise errors.InvalidRequestError("must be a non-empty string", "token")
        token = token.strip()
        problem = token_problem(token)
        if problem is not None:
            raise errors.InvalidRequestError(f"{problem}; it cannot be sent", "token")
        self._token = token
        self._secrets = SecretSet()
        self._secrets.set("token", token)

    def bind(self, context: AuthContext) -> None:
        """Nothing to bind: a fixed token needs neither HTTP nor time."""

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False  # nothing else to offer: a static token that Zapier refused stays refused

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"


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


class _TokenCache:
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


def _check_secret(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise errors.InvalidRequestError("must be a non-empty string", field)
    return value


def _check_margin(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise errors.InvalidRequestError("must be a number of seconds >= 0", "refresh_margin")
    return float(value)


class _Binding:
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


# --- client credentials ----------------------------------------------------------------------


class ClientCredentials:
    """An app access token from the OAuth client-credentials grant.

    Sends ``POST token_url`` form-encoded with ``grant_type=client_credentials``,
    ``client_id``, ``client_secret``, ``scope`` and ``audience=zapier.com``, as Zapier's own
    SDK does (https://docs.zapier.com/powered-by-zapier/authentication/methods/app-access-token),
    and caches the token until ``expires_in`` (3600 s when missing) minus `refresh_margin`.

    Args:
        client_id: The OAuth client id.
        client_secret: The OAuth client secret (never logged or shown).
        scope: Space-separated scopes, or a sequence of them.
        token_url: The token endpoint; ``https`` (``http`` only for loopback hosts).
        audience: The ``audience`` parameter; None leaves it out.
        refresh_margin: Seconds before expiry at which a token is replaced (at most half its
            lifetime).

    Raises:
        InvalidRequestError: A bad argument.
    """

    __slots__ = ("_binding", "_cache", "_client_id", "_client_secret", "_endpoint", "_form")

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        scope: str | Sequence[str] = "external",
        token_url: str = DEFAULT_TOKEN_URL,
        audience: str | None = "zapier.com",
        refresh_margin: float = 60.0,
    ) -> None:
        self._client_id = _check_secret(client_id, "client_id")
        self._client_secret = _check_secret(client_secret, "client_secret")
        scopes = scope.split() if isinstance(scope, str) else list(scope)
        if not scopes or not all(isinstance(s, str) and s and " " not in s for s in scopes):
            raise errors.InvalidRequestError("must name at least one scope", "scope")
        self._endpoint = parse_token_url(token_url)
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": " ".join(scopes),
        }
        if audience is not None:
            form["audience"] = _check_secret(audience, "audience")
        self._form: Mapping[str, str] = form
        self._cache = _TokenCache(_check_margin(refresh_margin))
        self._cache.secrets.set("client_secret", self._client_secret)
        self._binding = _Binding()

    def bind(self, context: AuthContext) -> None:
        """Use a client's transport and clock (called by `ZapierClient`)."""
        self._binding.context = context

    async def token(self) -> str:
        context = self._binding.require("ClientCredentials")
        return await self._cache.get(None, context, self._fetch)

    def invalidate(self, token: str) -> bool:
        return self._cache.invalidate(token)

    async def _fetch(self) -> IssuedToken:
        context = self._binding.require("ClientCredentials")
        request = token_request(self._endpoint, self._form)
        response = await context.send(request, self._endpoint.base_url)
        issued = parse_token_response(response, request, secrets=(self._client_secret,))
        logger.debug(
            "client-credentials token issued by %s, valid %.0fs",
            self._endpoint.url,
            issued.expires_in,
        )
        return issued

    def __repr__(self) -> str:
        return (
            f"ClientCredentials(client_id={self._client_id!r}, scope={self._form['scope']!r}, "
            f"token_url={self._endpoint.url!r}, client_secret=<redacted>)"
        )


# --- White Label token exchange --------------------------------------------------------------


def _load_private_key(
    key: object, password: bytes | None, algorithm: str
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    loaded: object = key
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        try:
            loaded = serialization.load_pem_private_key(key, password=password)
        except (ValueError, TypeError):
            # cryptography's message could quote nothing secret, but we do not even risk it.
            raise errors.InvalidRequestError(
                "is not a PEM-encoded RSA or EC private key (or the password is wrong)",
                "private_key",
            ) from None
    if algorithm.startswith("RS"):
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise errors.InvalidRequestError(f"{algorithm} needs an RSA private key", "private_key")
        return loaded
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise errors.InvalidRequestError(f"{algorithm} needs an EC private key", "private_key")
    if loaded.curve.name != _EC_CURVES[algorithm]:
        raise errors.InvalidRequestError(
            f"{algorithm} needs a {_EC_CURVES[algorithm]} key, not {loaded.curve.name}",
            "private_key",
        )
    return loaded


def _check_rate_limit(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise errors.InvalidRequestError("must be a mapping or None", "rate_limit")
    unknown = set(value) - {"exempt", "limit_override"}
    if unknown:
        raise errors.InvalidRequestError(
            f"unknown keys {sorted(unknown)}; allowed: exempt, limit_override", "rate_limit"
        )
    out: dict[str, Any] = {}
    if "exempt" in value:
        if not isinstance(value["exempt"], bool):
            raise errors.InvalidRequestError("exempt must be a bool", "rate_limit")
        out["exempt"] = value["exempt"]
    if "limit_override" in value:
        limit = value["limit_override"]
        # https://docs.zapier.com/white-label/api-reference/stored-actions (rate_limit claim)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise errors.InvalidRequestError(
                "limit_override must be an integer in 1..1000", "rate_limit"
            )
        out["limit_override"] = limit
    return out


def _check_billing(value: Mapping[str, Any] | str | None) -> str | None:
    # The Actions API reads `billing` as a JSON *string* claim.
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise errors.InvalidRequestError("must be a JSON object (or a mapping)", "billing")
        return value
    if not isinstance(value, Mapping):
        raise errors.InvalidRequestError("must be a mapping, a JSON string or None", "billing")
    try:
        return json.dumps(dict(value), separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidRequestError(f"cannot be sent as JSON: {exc}", "billing") from None


@attrs.frozen(kw_only=True)
class _ExchangeConfig:
    """Everything a `PartnerTokenExchange` shares with the siblings `for_subject` makes."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    algorithm: str
    key_id: str
    issuer: str
    audience: str
    tenant_claim: str
    lifetime: float
    rate_limit: dict[str, Any] | None
    billing: str | None
    client_id: str
    client_secret: str = attrs.field(repr=False)
    endpoint: TokenEndpoint
    grant_type: str
    subject_token_param: str
    subject_token_type: str | None
    extra_params: tuple[tuple[str, str], ...]
    cache: _TokenCache = attrs.field(repr=False)
    binding: _Binding = attrs.field(repr=False)


DEFAULT_MAX_CACHED_TOKENS: Final = 10_000
"""Tokens a `PartnerTokenExchange` and its `for_subject` siblings keep at most (LRU)."""


class PartnerTokenExchange:
    """A White Label user access token, from a partner-signed JWT (token exchange).

    For each end user (``subject``) and workspace (``tenant``), signs a short-lived JWT with
    your private key and exchanges it at the token endpoint for a user access token, as
    https://docs.zapier.com/white-label/token-exchange describes: algorithm RS256/384/512 or
    ES256/384/512 (HMAC is refused), header ``kid``, claims ``sub``, the tenant claim,
    ``iss``, ``aud=connect.zapier.com``, ``iat``, ``nbf``, ``exp`` (at most 5 minutes), and
    optionally ``rate_limit`` and ``billing``. Tokens are cached per (subject, tenant) until
    ``expires_in`` minus `refresh_margin`; refreshes are single-flight.

    The exchange request follows RFC 8693: ``grant_type=urn:ietf:params:oauth:grant-type:
    token-exchange``, ``subject_token=<jwt>``, ``subject_token_type=urn:ietf:params:oauth:
    token-type:jwt``, plus ``client_id`` and ``client_secret``. Zapier does not document the
    exact names, so `grant_type`, `subject_token_param`, `subject_token_type` and
    `extra_params` (e.g. ``{"scope": "...", "requested_token_type": "..."}``) change them.

    Args:
        private_key: A PEM private key (str or bytes) or a loaded `cryptography` RSA/EC key.
        key_id: The ``kid`` of the matching public key in your registered JWKS.
        issuer: The ``iss`` registered with Zapier.
        subject: The end user's id (``sub``).
        tenant: The user's workspace/tenant id.
        client_id: The client id issued at onboarding.
        client_secret: The client secret issued at onboarding.
        tenant_claim: The name of the tenant claim, as configured at onboarding.
        algorithm: One of `ALLOWED_JWT_ALGORITHMS`.
        key_password: The password of an encrypted PEM key.
        token_url: The token endpoint; ``https`` (``http`` only for loopback hosts).
        audience: The ``aud`` claim.
        jwt_lifetime: Seconds between ``iat`` and ``exp`` (1..300).
        rate_limit: Optional ``{"exempt": bool, "limit_override": 1..1000}`` claim.
        billing: Optional ``billing`` claim: a mapping (sent as a JSON string) or a JSON
            string.
        grant_type: The ``grant_type`` parameter.
        subject_token_param: The name of the parameter that carries the JWT.
        subject_token_type: The ``subject_token_type`` value; None leaves it out.
        extra_params: More form parameters to send.
        refresh_margin: Seconds before expiry at which a token is replaced (at most half its
            lifetime).
        max_cached_tokens: Tokens kept at most by this provider and its `for_subject`
            siblings together (the least recently used is evicted and fetched again on its
            user's next request); expired ones are dropped too.

    Attributes:
        bucket_id: ``"<tenant>/<subject>"``: the (non-secret) id of this user's rate budget,
            the same for every `for_subject` copy naming the same user, so a client's views
            of one user share one limiter bucket.

    Raises:
        InvalidRequestError: A bad argument, e.g. an HMAC algorithm, a key that does not fit
            the algorithm, a JWT lifetime over 5 minutes. The message never quotes a secret.
    """

    __slots__ = ("_config", "_subject", "_tenant", "bucket_id")

    def __init__(
        self,
        *,
        private_key: str | bytes | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        key_id: str,
        issuer: str,
        subject: str,
        tenant: str,
        client_id: str,
        client_secret: str,
        tenant_claim: str = "tenant_id",
        algorithm: str = "RS256",
        key_password: bytes | None = None,
        token_url: str = DEFAULT_TOKEN_URL,
        audience: str = ZAPIER_CONNECT_AUDIENCE,
        jwt_lifetime: float = MAX_JWT_LIFETIME,
        rate_limit: Mapping[str, Any] | None = None,
        billing: Mapping[str, Any] | str | None = None,
        grant_type: str = TOKEN_EXCHANGE_GRANT,
        subject_token_param: str = "subject_token",
        subject_token_type: str | None = JWT_TOKEN_TYPE,
        extra_params: Mapping[str, str] | None = None,
        refresh_margin: float = 60.0,
        max_cached_tokens: int = DEFAULT_MAX_CACHED_TOKENS,
    ) -> None:
        if (
            isinstance(max_cached_tokens, bool)
            or not isinstance(max_cached_tokens, int)
            or max_cached_tokens < 1
        ):
            raise errors.InvalidRequestError("must be an integer >= 1", "max_cached_tokens")
        if not isinstance(algorithm, str) or algorithm.upper().startswith("HS"):
            raise errors.InvalidRequestError(
                f"{algorithm!r} is an HMAC (shared-secret) algorithm; Zapier verifies partner "
                "JWTs against your public JWKS, so use an asymmetric one: "
                + ", ".join(sorted(ALLOWED_JWT_ALGORITHMS)),
                "algorithm",
            )
        if algorithm not in ALLOWED_JWT_ALGORITHMS:
            raise errors.InvalidRequestError(
                f"{algorithm!r} is not accepted by Zapier; use one of "
                + ", ".join(sorted(ALLOWED_JWT_ALGORITHMS)),
                "algorithm",
            )
        if (
            isinstance(jwt_lifetime, bool)
            or not isinstance(jwt_lifetime, (int, float))
            or not 1 <= jwt_lifetime <= MAX_JWT_LIFETIME
        ):
            raise errors.InvalidRequestError(
                f"must be between 1 and {MAX_JWT_LIFETIME:g} seconds (Zapier asks for a "
                "short-lived JWT)",
                "jwt_lifetime",
            )
        extra = dict(extra_params or {})
        for name, value in extra.items():
            if not isinstance(name, str) or not isinstance(value, str) or not name:
                raise errors.InvalidRequestError("must map strings to strings", "extra_params")
        reserved = {"grant_type", subject_token_param, "client_id", "client_secret"}
        if subject_token_type is not None:
            reserved.add("subject_token_type")
        if reserved & set(extra):
            raise errors.InvalidRequestError(
                f"must not set {sorted(reserved & set(extra))}; use the named arguments",
                "extra_params",
            )
        self._config = _ExchangeConfig(
            key=_load_private_key(private_key, key_password, algorithm),
            algorithm=algorithm,
            key_id=_check_secret(key_id, "key_id"),
            issuer=_check_secret(issuer, "issuer"),
            audience=_check_secret(audience, "audience"),
            tenant_claim=_check_tenant_claim(tenant_claim),
            lifetime=float(jwt_lifetime),
            rate_limit=_check_rate_limit(rate_limit),
            billing=_check_billing(billing),
            client_id=_check_secret(client_id, "client_id"),
            client_secret=_check_secret(client_secret, "client_secret"),
            endpoint=parse_token_url(token_url),
            grant_type=_check_secret(grant_type, "grant_type"),
            subject_token_param=_check_secret(subject_token_param, "subject_token_param"),
            subject_token_type=(
                None
                if subject_token_type is None
                else _check_secret(subject_token_type, "subject_token_type")
            ),
            extra_params=tuple(extra.items()),
            cache=_TokenCache(_check_margin(refresh_margin), max_cached_tokens),
            binding=_Binding(),
        )
        self._config.cache.secrets.set("client_secret", self._config.client_secret)
        self._subject = _check_secret(subject, "subject")
        self._tenant = _check_secret(tenant, "tenant")
        self.bucket_id = f"{self._tenant}/{self._subject}"

    @property
    def subject(self) -> str:
        """The end user's id (the JWT's ``sub``)."""
        return self._subject

    @property
    def tenant(self) -> str:
        """The user's tenant/workspace id."""
        return self._tenant

    def for_subject(self, subject: str, tenant: str) -> PartnerTokenExchange:
        """A provider for another user that shares this one's key, settings, binding and cache.

        Args:
            subject: The other user's id.
            tenant: The other user's tenant id.
        """
        sibling = object.__new__(PartnerTokenExchange)
        sibling._config = self._config
        sibling._subject = _check_secret(subject, "subject")
        sibling._tenant = _check_secret(tenant, "tenant")
        sibling.bucket_id = f"{sibling._tenant}/{sibling._subject}"
        return sibling

    @property
    def cached_tokens(self) -> int:
        """Tokens cached now by this provider and its `for_subject` siblings."""
        return len(self._config.cache)

    @property
    def evicted_tokens(self) -> int:
        """Tokens dropped so far (least recently used past `max_cached_tokens`, or expired)."""
        return self._config.cache.evicted

    def bind(self, context: AuthContext) -> None:
        """Use a client's transport and clock (called by `ZapierClient`)."""
        self._config.binding.context = context

    async def token(self) -> str:
        context = self._config.binding.require("PartnerTokenExchange")
        return await self._config.cache.get((self._subject, self._tenant), context, self._fetch)

    def invalidate(self, token: str) -> bool:
        return self._config.cache.invalidate(token)

    def signed_jwt(self, now: float) -> str:
        """The partner JWT for this user, signed as of wall-clock time `now` (epoch seconds).

        Exposed for tests and debugging; treat the result as a secret.
        """
        config = self._config
        iat = math.floor(now)
        claims: dict[str, Any] = {
            "sub": self._subject,
            config.tenant_claim: self._tenant,
            "iss": config.issuer,
            "aud": config.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + math.floor(config.lifetime),
        }
        if config.rate_limit is not None:
            claims["rate_limit"] = config.rate_limit
        if config.billing is not None:
            claims["billing"] = config.billing
        signed = jwt.encode(
            claims, config.key, algorithm=config.algorithm, headers={"kid": config.key_id}
        )
        # Sent once, to the token endpoint, which may echo it in a refusal: redacted there.
        config.cache.secrets.add_recent(signed)
        return signed

    def exchange_request(self, now: float) -> Request:
        """The token-exchange `Request` for this user at wall-clock time `now` (a secret)."""
        config = self._config
        form = {"grant_type": config.grant_type, config.subject_token_param: self.signed_jwt(now)}
        if config.subject_token_type is not None:
            form["subject_token_type"] = config.subject_token_type
        form["client_id"] = config.client_id
        form["client_secret"] = config.client_secret
        form.update(config.extra_params)
        return token_request(config.endpoint, form)

    async def _fetch(self) -> IssuedToken:
        config = self._config
        context = config.binding.require("PartnerTokenExchange")
        request = self.exchange_request(context.clock.time())
        response = await context.send(request, config.endpoint.base_url)
        issued = parse_token_response(response, request, secrets=(config.client_secret,))
        logger.debug(
            "token exchange for subject %r issued by %s, valid %.0fs",
            self._subject,
            config.endpoint.url,
            issued.expires_in,
        )
        return issued

    def __repr__(self) -> str:
        c = self._config
        return (
            f"PartnerTokenExchange(issuer={c.issuer!r}, key_id={c.key_id!r}, "
            f"algorithm={c.algorithm!r}, subject={self._subject!r}, tenant={self._tenant!r}, "
            f"token_url={c.endpoint.url!r}, private_key=<redacted>, client_secret=<redacted>)"
        )


def _check_tenant_claim(value: object) -> str:
    name = _check_secret(value, "tenant_claim")
    if name in {"sub", "iss", "aud", "iat", "nbf", "exp", "rate_limit", "billing"}:
        raise errors.InvalidRequestError(f"{name!r} is a reserved claim", "tenant_claim")
    return name

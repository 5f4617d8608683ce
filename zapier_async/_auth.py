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
token exchange) in a `_tokens.TokenCache`:

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

Layout: this module holds the provider protocol, `BearerToken` and `ClientCredentials`;
`_tokens` the token wire (requests, responses), `AuthContext` and the cache; `_partner`
`PartnerTokenExchange`. Both are imported here, never the other way round, and every name is
re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from . import errors
from ._partner import (
    ALLOWED_JWT_ALGORITHMS,
    DEFAULT_MAX_CACHED_TOKENS,
    JWT_TOKEN_TYPE,
    MAX_JWT_LIFETIME,
    TOKEN_EXCHANGE_GRANT,
    ZAPIER_CONNECT_AUDIENCE,
    PartnerTokenExchange,
)
from ._redact import SecretSet
from ._tokens import (
    DEFAULT_LIFETIME,
    DEFAULT_TOKEN_URL,
    AuthContext,
    Binding,
    IssuedToken,
    TokenCache,
    TokenEndpoint,
    check_margin,
    check_secret,
    parse_token_response,
    parse_token_url,
    token_problem,
    token_request,
)

__all__ = [  # with the names re-exported from `_tokens` and `_partner`, which never import this
    "ALLOWED_JWT_ALGORITHMS",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_CACHED_TOKENS",
    "DEFAULT_TOKEN_URL",
    "JWT_TOKEN_TYPE",
    "MAX_JWT_LIFETIME",
    "TOKEN_EXCHANGE_GRANT",
    "ZAPIER_CONNECT_AUDIENCE",
    "AuthContext",
    "AuthProvider",
    "BearerToken",
    "ClientCredentials",
    "IssuedToken",
    "PartnerTokenExchange",
    "TokenEndpoint",
    "parse_token_response",
    "parse_token_url",
    "token_problem",
    "token_request",
]

logger = logging.getLogger("zapier_async")


# --- the provider protocol --------------------------------------------------------------------


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
        self._client_id = check_secret(client_id, "client_id")
        self._client_secret = check_secret(client_secret, "client_secret")
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
            form["audience"] = check_secret(audience, "audience")
        self._form: Mapping[str, str] = form
        self._cache = TokenCache(check_margin(refresh_margin))
        self._cache.secrets.set("client_secret", self._client_secret)
        self._binding = Binding()

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

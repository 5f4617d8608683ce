"""White Label token exchange: `PartnerTokenExchange`, a user token from a partner-signed JWT.

The provider signs a short-lived JWT per (subject, tenant) and exchanges it at the token
endpoint (RFC 8693); requests, responses and the cache are `_tokens`' (see `_auth` for the
theory of operation). Nothing here imports `_auth`, which re-exports these names.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import errors
from ._protocol import Request
from ._tokens import (
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
    token_request,
)

__all__ = [
    "ALLOWED_JWT_ALGORITHMS",
    "DEFAULT_MAX_CACHED_TOKENS",
    "JWT_TOKEN_TYPE",
    "MAX_JWT_LIFETIME",
    "TOKEN_EXCHANGE_GRANT",
    "ZAPIER_CONNECT_AUDIENCE",
    "PartnerTokenExchange",
]

logger = logging.getLogger("zapier_async")

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
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


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
    cache: TokenCache = attrs.field(repr=False)
    binding: Binding = attrs.field(repr=False)


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
            key_id=check_secret(key_id, "key_id"),
            issuer=check_secret(issuer, "issuer"),
            audience=check_secret(audience, "audience"),
            tenant_claim=_check_tenant_claim(tenant_claim),
            lifetime=float(jwt_lifetime),
            rate_limit=_check_rate_limit(rate_limit),
            billing=_check_billing(billing),
            client_id=check_secret(client_id, "client_id"),
            client_secret=check_secret(client_secret, "client_secret"),
            endpoint=parse_token_url(token_url),
            grant_type=check_secret(grant_type, "grant_type"),
            subject_token_param=check_secret(subject_token_param, "subject_token_param"),
            subject_token_type=(
                None
                if subject_token_type is None
                else check_secret(subject_token_type, "subject_token_type")
            ),
            extra_params=tuple(extra.items()),
            cache=TokenCache(check_margin(refresh_margin), max_cached_tokens),
            binding=Binding(),
        )
        self._config.cache.secrets.set("client_secret", self._config.client_secret)
        self._subject = check_secret(subject, "subject")
        self._tenant = check_secret(tenant, "tenant")
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
        sibling._subject = check_secret(subject, "subject")
        sibling._tenant = check_secret(tenant, "tenant")
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
    name = check_secret(value, "tenant_claim")
    if name in {"sub", "iss", "aud", "iat", "nbf", "exp", "rate_limit", "billing"}:
        raise errors.InvalidRequestError(f"{name!r} is a reserved claim", "tenant_claim")
    return name

"""Auth providers: where the `Authorization` header comes from.

A provider hands the client a bearer token for each request and is told when Zapier refused
one (401), so that providers that can refresh (client credentials, token exchange) fetch a new
token once instead of failing. Providers never put a secret into a `repr`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from . import errors

__all__ = ["AuthProvider", "BearerToken"]


@runtime_checkable
class AuthProvider(Protocol):
    """Supplies access tokens to a client."""

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
        token: The access token, sent as ``Authorization: Bearer <token>``.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise errors.InvalidRequestError("must be a non-empty string", "token")
        if any(c in token for c in "\r\n"):
            raise errors.InvalidRequestError("must not contain line breaks", "token")
        self._token = token.strip()

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> bool:
        return False  # nothing else to offer: a static token that Zapier refused stays refused

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

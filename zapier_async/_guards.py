"""What the client checks at its edges: the base URL, tokens, callback URLs, foreign code.

Pure helpers for `ZapierClient`, kept out of `_client` so each can be tested alone:

- `check_base_url`: refuses credentials, paths, queries and clear-text remote hosts at
  construction, without ever echoing a password;
- `check_token`: an access token from any provider can be sent as a header, or it is a typed
  error that never shows the token;
- `bind_callback_url`: the per-run secret appended to a `callback_url`, which is how a
  callback is tied to its run (Zapier's signature says only that Zapier sent *a* callback);
- `GuardedTransport`: whatever a transport raises reaches the client as a `ZapierError`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from . import errors
from ._auth import token_problem
from ._protocol import MAX_CALLBACK_URL, Request, Response, is_loopback_host

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = [
    "CALLBACK_TOKEN_PARAM",
    "GuardedTransport",
    "bind_callback_url",
    "check_base_url",
    "check_token",
]

CALLBACK_TOKEN_PARAM: Final = "zapier_async_token"
"""The query parameter of a `callback_url` that carries the run's secret token."""

_SENDABLE: Final = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no control
_TOKEN_BYTES: Final = 24  # 192 bits: 32 URL-safe characters


def check_base_url(base_url: object) -> str:
    """The API root without a trailing slash, or `InvalidRequestError` (field ``base_url``).

    Refused: anything but an absolute ``https://`` URL (``http://`` only for loopback hosts),
    user info (``user:password@``: it would be sent nowhere useful and shows in every repr),
    a path other than ``/`` (request paths are absolute: ``/v2`` would be sent to
    ``/v2/v2/...``), a query or a fragment. Messages never repeat the URL, so a password in
    it cannot leak through the error.
    """
    field = "base_url"
    if not isinstance(base_url, str) or not base_url:
        raise errors.InvalidRequestError("must be a non-empty string", field)
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        raise errors.InvalidRequestError("is not a valid URL", field) from None
    if "@" in parts.netloc:
        raise errors.InvalidRequestError(
            "must not contain user info (user:password@); authenticate with auth=", field
        )
    if parts.scheme not in ("https", "http") or not host:
        raise errors.InvalidRequestError(
            "must be an absolute https:// URL such as https://api.zapier.com", field
        )
    if parts.scheme == "http" and not is_loopback_host(host):
        # Tokens would cross the network in clear text. Loopback is allowed for the emulator.
        raise errors.InvalidRequestError(
            "http:// is only allowed for loopback hosts (127.0.0.1, ::1, localhost); use https://",
            field,
        )
    if parts.query or parts.fragment or base_url.endswith(("?", "#")):
        raise errors.InvalidRequestError("must not have a query or fragment", field)
    if parts.path not in ("", "/"):
        raise errors.InvalidRequestError(
            "must not have a path: request paths start at the root (/v2/..., /actions/...), "
            "so pass the scheme and host only, e.g. https://api.zapier.com",
            field,
        )
    return base_url.rstrip("/")


def check_token(token: object) -> str:
    """`token` if it can go into an ``Authorization`` header; else a typed error.

    A token from a custom provider, or a refreshed one, with a control character, a space or
    a non-ASCII character would make the HTTP library raise a bare ``ValueError`` on every
    request. The token is never part of the message.
    """
    # One definition of a sendable token: `_auth.token_problem` (BearerToken checks the
    # same at construction); the pattern is the fallback for what it does not look at.
    problem = None
    if isinstance(token, str) and token:
        problem = token_problem(token)
        if problem is None and _SENDABLE.fullmatch(token):
            return token
    kind = type(token).__name__
    why = f"it {problem}" if problem else "it is empty or not visible ASCII"
    raise errors.UnexpectedError(
        f"the auth provider returned an access token ({kind}) that cannot be sent in a "
        f"header: {why} (not shown); nothing was sent"
    )


def bind_callback_url(url: object) -> tuple[object, str | None]:
    """Append a fresh secret to `url`; returns ``(url to send, token)``.

    The token (`secrets.token_urlsafe`, 192 bits) goes into the query as
    ``zapier_async_token``, after the caller's own parameters. `ZapierClient.deliver_callback`
    resolves a handle only for a callback that carries its run's token, so a callback replayed
    with a forged body for another run, or sent to a guessed URL, is refused.

    Anything that is not a usable URL is returned as it is, without a token, for the request
    builder to refuse with its usual message.

    Raises:
        InvalidRequestError: The URL already has a ``zapier_async_token`` parameter, or it is
            too long once the token is appended (Zapier allows 2048 characters).
    """
    if not isinstance(url, str) or len(url) > MAX_CALLBACK_URL:
        return url, None
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if any(name == CALLBACK_TOKEN_PARAM for name, _ in parse_qsl(parts.query, True)):
        raise errors.InvalidRequestError(
            f"must not have a {CALLBACK_TOKEN_PARAM} parameter: the client adds its own",
            "callback_url",
        )
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    pair = f"{CALLBACK_TOKEN_PARAM}={token}"
    bound = urlunsplit(parts._replace(query=f"{parts.query}&{pair}" if parts.query else pair))
    if len(bound) > MAX_CALLBACK_URL:
        raise errors.InvalidRequestError(
            f"is {len(url)} characters long, {len(bound)} with the run's token the client "
            f"appends ({CALLBACK_TOKEN_PARAM}); Zapier allows at most {MAX_CALLBACK_URL}",
            "callback_url",
        )
    return bound, token


class GuardedTransport:
    """Wraps a transport: any exception that is not a `ZapierError` becomes `UnexpectedError`.

    A caller-owned session closed under the client, or a custom transport's bug, raise
    ``RuntimeError``, ``OSError`` and the like; the client decides on typed errors only
    (whether the request may have been sent is not known: see `ZapierClient._send`). The
    original exception is the ``__cause__``; header values (the token) are cut from its text.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        try:
            return await self.inner.send(
                request, base_url=base_url, headers=headers, timeout=timeout
            )
        except errors.ZapierError:
            raise
        except Exception as exc:
            text = str(exc)
            for value in headers.values():
                for secret in (value, value.partition(" ")[2]):
                    if len(secret) >= 8:
                        text = text.replace(secret, "<redacted>")
            raise errors.UnexpectedError(
                f"the transport raised {type(exc).__name__}: {text}", request.describe()
            ) from exc

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        except errors.ZapierError:
            raise
        except Exception as exc:
            raise errors.UnexpectedError(
                f"closing the transport raised {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return repr(self.inner)

"""The transport: `Request` value in, `Response` value out. The only module that imports aiohttp.

Every aiohttp exception is translated here, once, into `TransportError` with a `kind` that the
retry decision reads:

- ``"connect"``: the connection could not be opened, so the request provably never left.
  Safe to retry even a run-creating POST.
- ``"timeout"`` / ``"reset"``: the request may have reached Zapier. A GET may be retried; a
  create may not (its outcome is unknown).
- ``"tls"``: certificate or TLS failure before the request was sent. Not retried: it will not
  fix itself, and verification is never switched off silently.
- ``"closed"``: this transport, or the caller's session under it, is closed: never sent.
- ``"too_large"`` (`ResponseTooLargeError`): Zapier answered, but the decoded body passed
  `max_body_size` and we stopped reading. ``sent=True``: a create was received, so it is never
  re-sent (the client reports `OutcomeUnknownError`).

Response bodies are read incrementally and never past `max_body_size` *decoded* bytes, so a
gzip bomb or an endless body costs at most that much memory: aiohttp inflates each received
chunk into bounded pieces, and we stop reading (and drop the connection) at the cap. An error
answer (not 2xx) that is too large is truncated instead of refused: its status is what matters
(a 429 stays a 429), and only an excerpt of its body is ever kept.

A secret the server may echo is redacted from errors built from its answer (see `_redact`):
the transport registers each ``Authorization`` value it sends, so tokens from custom auth
providers are covered too.
"""

from __future__ import annotations

import asyncio
import functools
import platform
from collections.abc import Mapping
from typing import Final, Protocol

import aiohttp

from . import errors
from ._protocol import Request, Response
from ._redact import SecretSet
from ._version import __version__

__all__ = ["DEFAULT_MAX_BODY_SIZE", "AiohttpTransport", "Transport", "default_user_agent"]

DEFAULT_MAX_BODY_SIZE: Final = 8 * 1024 * 1024
"""Decoded bytes of a response body read at most (8 MiB): above Zapier's 6 MB input limit, so
a run that echoes its inputs fits, far below what would hurt a worker."""


@functools.cache
def default_user_agent() -> str:
    """``zapier-async/<version> python/<x.y> aiohttp/<x.y>``."""
    python = ".".join(platform.python_version_tuple()[:2])
    aiohttp_version = ".".join(aiohttp.__version__.split(".")[:2])
    return f"zapier-async/{__version__} python/{python} aiohttp/{aiohttp_version}"


def _timeouts(timeout: float | None) -> aiohttp.ClientTimeout:
    """aiohttp timeouts for one request of at most `timeout` seconds on the wire.

    Waiting for a pooled connection and connecting count against `connect`, which aiohttp
    reports as `ConnectionTimeoutError` (mapped to kind "connect": provably never sent). A
    `total` alone would also run while the request queues for the pool, and a create that
    timed out there, never sent, would wrongly be reported as an unknown outcome. So `total`
    is twice `timeout`: connecting may take `timeout`, and the exchange gets the rest (at
    least `timeout`). There is deliberately no `sock_read`: aiohttp re-arms that timer on
    every chunk received, about 10 us of CPU per request (a tenth of aiohttp's own cost),
    and a stalled answer is abandoned by `total` anyway.
    """
    cached = _TIMEOUTS.get(timeout)
    if cached is None:
        if timeout is None:
            cached = aiohttp.ClientTimeout(total=None)
        else:
            cached = aiohttp.ClientTimeout(total=2 * timeout, connect=timeout)
        if len(_TIMEOUTS) >= 64:  # a client uses one or two values; stay bounded regardless
            _TIMEOUTS.clear()
        _TIMEOUTS[timeout] = cached
    return cached


# `ClientTimeout` values are frozen: one per timeout value, not one per request.
_TIMEOUTS: dict[float | None, aiohttp.ClientTimeout] = {}


class Transport(Protocol):
    """Sends one request and returns its response; raises `TransportError` on no answer."""

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        """Send `request` to `base_url` with extra `headers` (e.g. Authorization)."""
        ...

    async def aclose(self) -> None:
        """Release connections the transport owns."""
        ...


class AiohttpTransport:
    """The default `Transport`, over an `aiohttp.ClientSession`.

    Args:
        session: A session you own; it is used as is and never closed by us. Without one, the
            transport creates its own on first use and closes it in `aclose()`.
        limit: Connection pool size of a session we create.
        user_agent: Sent as `User-Agent`; by default
            ``zapier-async/<version> python/<x.y> aiohttp/<x.y>``.
        max_body_size: Decoded bytes of a response body read at most. A 2xx answer over it
            raises `ResponseTooLargeError`; a longer error answer is cut to this size.

    Raises:
        InvalidRequestError: `max_body_size` is not a positive integer.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        limit: int = 100,
        user_agent: str | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if isinstance(max_body_size, bool) or not isinstance(max_body_size, int):
            raise errors.InvalidRequestError("must be an integer", "max_body_size")
        if max_body_size < 1:
            raise errors.InvalidRequestError("must be at least 1 byte", "max_body_size")
        if user_agent is None:
            user_agent = default_user_agent()
        self._session = session
        self._owns_session = session is None
        self._limit = limit
        self._user_agent = user_agent
        self._max_body_size = max_body_size
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._base_headers = {"User-Agent": user_agent, "Accept": "application/json"}
        # Each Authorization value sent, so an echo of it is redacted (see `_redact`).
        self._secrets = SecretSet()
        self._last_auth: str | None = None

    @property
    def max_body_size(self) -> int:
        """Decoded bytes of a response body read at most."""
        return self._max_body_size

    def _get_session(self, request: Request) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            # Connections and timers of a session belong to the loop it was first used in
            # (often one that `asyncio.run` has closed since): refuse, and say what to do.
            raise errors.WrongEventLoopError()
        if self._closed:
            raise errors.TransportError("transport is closed", request.describe(), False, "closed")
        session = self._session
        if session is None:
            # TLS verification stays on (aiohttp's default); there is no switch to turn it off.
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=15.0)
            session = self._session = aiohttp.ClientSession(connector=connector)
        elif session.closed:
            raise _session_closed(request)
        return session

    def _remember_auth(self, headers: Mapping[str, str]) -> None:
        auth = headers.get("Authorization")
        if auth is not None and auth != self._last_auth:
            self._last_auth = auth
            scheme, _, credential = auth.partition(" ")
            self._secrets.set("authorization", credential or scheme)

    async def _read_body(self, resp: aiohttp.ClientResponse, request: Request) -> bytes:
        """The decoded body, read incrementally and never past `max_body_size` bytes."""
        cap = self._max_body_size
        ok = 200 <= resp.status < 300
        length = resp.content_length
        if ok and length is not None and length > cap and "Content-Encoding" not in resp.headers:
            resp.close()  # refused before reading a byte of it
            raise _too_large(request, resp.status, cap)
        content = resp.content
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                # Stop reading: drop the connection with whatever it still carries.
                resp.close()
                if ok:
                    raise _too_large(request, resp.status, cap)
                # An error answer: its status decides; keep what fits (an excerpt is kept).
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        session = self._get_session(request)
        self._remember_auth(headers)
        all_headers = {**self._base_headers, **headers}
        if request.content_type is not None:
            all_headers["Content-Type"] = request.content_type
        try:
            async with session.request(
                request.method,
                base_url + request.path,
                params=list(request.query) or None,
                data=request.body,
                headers=all_headers,
                timeout=_timeouts(timeout),
                allow_redirects=False,
            ) as resp:
                body = await self._read_body(resp, request)
                # aiohttp's headers are an immutable case-insensitive mapping already: no copy.
                return Response(status=resp.status, headers=resp.headers, body=body)
        except aiohttp.ClientConnectorCertificateError as exc:
            what = request.describe()
            raise errors.TransportError(
                f"TLS certificate error: {exc}", what, False, "tls"
            ) from exc
        except aiohttp.ClientConnectorSSLError as exc:
            what = request.describe()
            raise errors.TransportError(f"TLS error: {exc}", what, False, "tls") from exc
        except aiohttp.ClientConnectorError as exc:
            what = request.describe()
            raise errors.TransportError(f"cannot connect: {exc}", what, False, "connect") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            what = request.describe()
            # Timed out while connecting: the request was never written.
            raise errors.TransportError(
                f"connect timed out after {timeout:g}s", what, False, "connect"
            ) from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            what = request.describe()
            # Say the limit that was applied (`total`, twice `timeout`: see `_timeouts`), not
            # the one asked for.
            applied = _timeouts(timeout).total
            raise errors.TransportError(
                f"no response within {applied:g}s", what, None, "timeout"
            ) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            what = request.describe()
            raise errors.TransportError(
                f"connection lost: {exc or type(exc).__name__}", what, None, "reset"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            what = request.describe()
            raise errors.TransportError(
                f"response body cut short: {exc}", what, None, "reset"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise errors.InvalidRequestError(f"invalid URL: {exc}", "base_url") from exc
        except aiohttp.ClientError as exc:
            what = request.describe()
            raise errors.TransportError(
                f"HTTP client error: {type(exc).__name__}: {exc}", what, None, "other"
            ) from exc
        except ValueError:
            # aiohttp refuses a header value with a line break or NUL. Its message (and so the
            # cause) may quote the value, a token: neither is kept. Nothing was sent.
            raise errors.InvalidRequestError(
                "cannot be sent: a header holds characters HTTP cannot carry (such as control "
                "characters); check the token your auth provider returns",
                "headers",
            ) from None
        except RuntimeError as exc:
            raise self._runtime_error(exc, request, session) from exc

    def _runtime_error(
        self, exc: RuntimeError, request: Request, session: aiohttp.ClientSession
    ) -> errors.ZapierError:
        """aiohttp's RuntimeErrors (a closed session, a closed or foreign loop), typed."""
        text = str(exc)
        if session.closed or "Session is closed" in text:
            return _session_closed(request)
        if "Event loop is closed" in text or "attached to a different loop" in text:
            return errors.WrongEventLoopError(
                "the aiohttp session belongs to an event loop that is closed or is not the "
                "running one; create the client (and any session you pass it) inside the event "
                "loop that uses it (one client per asyncio.run)"
            )
        return errors.UnexpectedError(
            f"aiohttp raised {type(exc).__name__}: {exc}", request.describe()
        )

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is None or not self._owns_session:
            return
        try:
            await session.close()
        except RuntimeError:
            # Closed from another loop than the one it ran in, still alive: its connections
            # cannot be closed from here. Drop the session; they go with that loop.
            session.detach()

    def __repr__(self) -> str:
        owner = "own session" if self._owns_session else "caller's session"
        return f"AiohttpTransport({owner}, closed={self._closed})"


def _session_closed(request: Request) -> errors.TransportError:
    return errors.TransportError(
        "the aiohttp session passed to the client was closed; nothing was sent (keep the "
        "session open until the client is closed, or let the client own its session)",
        request.describe(),
        False,
        "closed",
    )


def _too_large(request: Request, status: int, cap: int) -> errors.ResponseTooLargeError:
    return errors.ResponseTooLargeError(
        f"the answer (HTTP {status}) is larger than max_body_size ({cap:,} bytes decoded); "
        "stopped reading it",
        request.describe(),
        True,
        "too_large",
        status,
        cap,
    )

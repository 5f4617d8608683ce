"""The transport: `Request` value in, `Response` value out. The only module that imports aiohttp.

Every aiohttp exception is translated here, once, into `TransportError` with a `kind` that the
retry decision reads:

- ``"connect"``: the connection could not be opened, so the request provably never left.
  Safe to retry even a run-creating POST.
- ``"timeout"`` / ``"reset"``: the request may have reached Zapier. A GET may be retried; a
  create may not (its outcome is unknown).
- ``"tls"``: certificate or TLS failure before the request was sent. Not retried: it will not
  fix itself, and verification is never switched off silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from . import errors
from ._protocol import Request, Response

__all__ = ["AiohttpTransport", "Transport"]


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
        user_agent: Sent as `User-Agent`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        limit: int = 100,
        user_agent: str = "zapier-async",
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._limit = limit
        self._user_agent = user_agent
        self._closed = False
        self._base_headers = {"User-Agent": user_agent, "Accept": "application/json"}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise errors.TransportError("transport is closed", "", False, "closed")
        if self._session is None:
            # TLS verification stays on (aiohttp's default); there is no switch to turn it off.
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=15.0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        session = self._get_session()
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
                body = await resp.read()
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
            raise errors.TransportError("connect timed out", what, False, "connect") from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            what = request.describe()
            raise errors.TransportError(
                f"no response within {timeout}s", what, None, "timeout"
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

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def __repr__(self) -> str:
        owner = "own session" if self._owns_session else "caller's session"
        return f"AiohttpTransport({owner}, closed={self._closed})"

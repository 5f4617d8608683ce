"""A fixed-window rate limiter in front of the emulator, for the budget benchmarks (issue #15).

`FakeZapier` limits with windows that start at the first request after the previous one
ended. How Zapier counts is not ours to assume, so the budget benchmarks put this front on
the emulator (run with no limit of its own) and offer both kinds of fixed window:

- ``"first"``: a window of `window` seconds starts with the first request after the
  previous window ended (what `FakeZapier` does);
- ``"aligned"``: windows are aligned on the wall clock (epoch seconds), ``[k * window,
  (k + 1) * window)``, whoever comes first.

``"first-ms"`` and ``"aligned-ms"`` are the same windows with ``X-RateLimit-Reset`` written to
the millisecond (``1764504000.123``): a diagnostic server whose window end a client can know,
to tell what the end's uncertainty costs from everything else.

Every request counts, refused ones included. Every response carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds, rounded up, as
documented); a refused request gets 429 with ``Retry-After`` (whole seconds, rounded up) and
never reaches the emulator. Admitted requests are forwarded as they are (method, path, query,
body, ``Authorization``) and the emulator's answer is passed back with the headers added.

The front also keeps the counts the benchmarks print: requests per endpoint, 429s in all and
429s to requests that arrived after the first answer was sent (before it, a client knows
nothing of the budget).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import aiohttp  # noqa: TID251 (the front is plain aiohttp, outside the library)
from aiohttp import web  # noqa: TID251

__all__ = ["WindowFront"]

Align = Literal["first", "aligned", "first-ms", "aligned-ms"]
_FORWARD = ("Authorization", "Content-Type", "Accept")
_BACK = ("Content-Type", "Retry-After")


class WindowFront:
    """`limit` requests per `window` seconds in front of `upstream` (see the module doc)."""

    def __init__(self, upstream: str, *, limit: int, window: float, align: Align) -> None:
        if align not in ("first", "aligned", "first-ms", "aligned-ms"):
            raise ValueError(f"align must be 'first' or 'aligned' (+ '-ms'), got {align!r}")
        self.upstream = upstream
        self.limit = limit
        self.window = window
        self.align = align.removesuffix("-ms")
        self.precise = align.endswith("-ms")  # Reset to the millisecond, not whole seconds
        self.window_end = -math.inf  # epoch seconds
        self.used = 0
        self.requests = 0
        self.by_endpoint: dict[str, int] = {"create": 0, "poll": 0, "other": 0}
        self.rate_limited = 0
        self.rate_limited_after_first_answer = 0
        self.first_answer_at: float | None = None  # epoch seconds
        # Per window, in order: [start (epoch), creates admitted, polls admitted, others
        # admitted, refused]: what a client left unspent shows here.
        self.windows: list[list[float]] = []
        self.log: list[tuple[float, str, bool]] = []  # (epoch, endpoint, admitted)
        self._session: aiohttp.ClientSession | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_endpoint": dict(self.by_endpoint),
            "rate_limited": self.rate_limited,
            "rate_limited_after_first_answer": self.rate_limited_after_first_answer,
            "first_answer_at": self.first_answer_at,
            "windows": [list(w) for w in self.windows],
            "log": self.log,
            "window_end": self.window_end if math.isfinite(self.window_end) else None,
            "now": time.time(),
        }

    def _admit(self, now: float, endpoint: str) -> tuple[bool, int, float]:
        """(allowed, remaining, reset epoch) for a request arriving at `now` (epoch)."""
        if now >= self.window_end:
            if self.align == "aligned":
                self.window_end = (math.floor(now / self.window) + 1) * self.window
            else:
                self.window_end = now + self.window
            self.used = 0
            self.windows.append([now, 0, 0, 0, 0])
        self.used += 1
        counts = self.windows[-1]
        if self.used > self.limit:
            counts[4] += 1
            return False, 0, self.window_end
        counts[("create", "poll", "other").index(endpoint) + 1] += 1
        return True, self.limit - self.used, self.window_end

    @staticmethod
    def _endpoint(request: web.Request) -> str:
        if request.path.rstrip("/").endswith("/action-runs") and request.method == "POST":
            return "create"
        if "/action-runs/" in request.path and request.method == "GET":
            return "poll"
        return "other"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        self.requests += 1
        endpoint = self._endpoint(request)
        self.by_endpoint[endpoint] += 1
        allowed, remaining, reset = self._admit(now, endpoint)
        self.log.append((now, endpoint, allowed))
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": (
                f"{math.ceil(reset * 1000) / 1000:.3f}" if self.precise else str(math.ceil(reset))
            ),
        }
        if not allowed:
            self.rate_limited += 1
            if self.first_answer_at is not None and now > self.first_answer_at:
                self.rate_limited_after_first_answer += 1
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
            body = (
                b'{"errors": [{"status": 429, "code": "throttled", "title": "Throttled", '
                b'"detail": "Request was throttled."}]}'
            )
            self._answered()
            return web.Response(
                status=429, body=body, headers=headers, content_type="application/json"
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
        raw = await request.read()
        forward = {k: request.headers[k] for k in _FORWARD if k in request.headers}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=raw or None, headers=forward
        ) as resp:
            body = await resp.read()
            status = resp.status
            for name in _BACK:
                if name in resp.headers and name not in headers:
                    headers[name] = resp.headers[name]
        self._answered()
        return web.Response(status=status, body=body, headers=headers)

    def _answered(self) -> None:
        if self.first_answer_at is None:
            self.first_answer_at = time.time()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

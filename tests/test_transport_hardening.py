"""The transport against misbehaving loopback servers: bounded bodies, honest timeouts, typed
errors for a closed session or a foreign event loop, the User-Agent (issue 14 items 7, 12 and
"Also"; issue 13)."""

from __future__ import annotations

import asyncio
import platform
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp  # noqa: TID251 (a caller-owned session, as users pass one)
import pytest
import pytest_asyncio
from aiohttp import web  # noqa: TID251 (misbehaving loopback servers)

import zapier_async as za
from zapier_async import errors
from zapier_async._protocol import Request
from zapier_async._transport import DEFAULT_MAX_BODY_SIZE, AiohttpTransport

GET = Request(method="GET", path="/v2/action-runs/r1", endpoint="action_runs.get")
MiB = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """An aiohttp.web app on 127.0.0.1 with one catch-all handler, and what it saw."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.requests: list[web.Request] = []
        self.headers: list[dict[str, str]] = []
        self.sent = 0  # body bytes the handler managed to write
        self.finished = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.headers.append(dict(request.headers))
        assert self.handler is not None
        try:
            return await self.handler(request)
        finally:
            self.finished.set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def stream(
        self, request: web.Request, chunks: Callable[[], bytes], *, total: int, **headers: str
    ) -> web.StreamResponse:
        """Stream `total` bytes made by `chunks()` (never the whole body in memory at once)."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.headers.update(headers)
        await resp.prepare(request)
        try:
            while self.sent < total:
                chunk = chunks()
                await resp.write(chunk)
                self.sent += len(chunk)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client stopped reading and hung up: what we want
        return resp


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def _measure(coro: Awaitable[object]) -> tuple[BaseException | object, int]:
    """Await `coro`; return its result (or exception) and the peak of traced allocations."""
    tracemalloc.start()
    try:
        try:
            result: BaseException | object = await coro
        except BaseException as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _gzip_bomb(mebibytes: int) -> tuple[Callable[[], bytes], int]:
    """A gzip body of `mebibytes` MiB of zeros, made piece by piece as it is sent (about 1 KB
    on the wire per MiB decoded), and its compressed size."""
    piece = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    # One raw deflate block of 1 MiB zeros, repeated, between a gzip header and trailer.
    block = piece.compress(zeros) + piece.flush(zlib.Z_FULL_FLUSH)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    size = (mebibytes * MiB) & 0xFFFFFFFF
    trailer = b"\x03\x00" + crc.to_bytes(4, "little") + size.to_bytes(4, "little")
    parts = [header, *([block] * mebibytes), trailer]
    total = sum(len(p) for p in parts)
    parts.reverse()
    return parts.pop, total


# --- item 7: response bodies are bounded ------------------------------------------------------


def test_the_default_cap_is_a_few_megabytes_and_configurable():
    assert 4 * MiB <= DEFAULT_MAX_BODY_SIZE <= 16 * MiB
    assert AiohttpTransport().max_body_size == DEFAULT_MAX_BODY_SIZE
    assert AiohttpTransport(max_body_size=1234).max_body_size == 1234
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(errors.InvalidRequestError) as info:
            AiohttpTransport(max_body_size=bad)  # type: ignore[arg-type]
        assert info.value.field == "max_body_size"


@pytest.mark.asyncio
async def test_a_gzip_bomb_is_refused_with_bounded_memory(server):
    # 256 MiB of zeros once decoded, about 256 KB on the wire (unbounded, this test would
    # hold all of it; an endless bomb would take the machine down).
    chunks, total = _gzip_bomb(256)
    assert total < MiB

    async def bomb_handler(request: web.Request) -> web.StreamResponse:
        return await server.stream(request, chunks, total=total, **{"Content-Encoding": "gzip"})

    server.handler = bomb_handler
    transport = AiohttpTransport(max_body_size=MiB)
    try:
        result, peak = await _measure(
            transport.send(GET, base_url=server.url, headers={}, timeout=30.0)
        )
    finally:
        await transport.aclose()
    assert isinstance(result, errors.ResponseTooLargeError), result
    assert isinstance(result, errors.TransportError)
    assert result.kind == "too_large"
    assert result.sent is True
    assert result.status == 200
    assert result.limit == MiB
    assert "max_body_size" in str(result)
    # Decoded data held at once stays a small multiple of the cap (aiohttp inflates in
    # 256 KiB pieces); unbounded, this reads until the server gives up.
    assert peak < 12 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


@pytest.mark.asyncio
async def test_a_huge_plain_body_is_not_read_whole(server):
    chunk = b"x" * (64 * 1024)

    async def huge(request: web.Request) -> web.StreamResponse:
        return await server.stream(request, lambda: chunk, total=100 * MiB)

    server.handler = huge
    transport = AiohttpTransport(max_body_size=2 * MiB)
    try:
        result, peak = await _measure(
            transport.send(GET, base_url=server.url, headers={}, timeout=30.0)
        )
    finally:
        await transport.aclose()
    assert isinstance(result, errors.ResponseTooLargeError), result
    assert peak < 16 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    await asyncio.wait_for(server.finished.wait(), 10)
    # What crossed the wire is the cap plus socket buffers, not the 100 MiB.
    assert server.sent < 40 * MiB, f"server wrote {server.sent / MiB:.1f} MiB"


@pytest.mark.asyncio
async def test_a_declared_oversized_body_is_refused_before_reading(server):
    async def declared(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_length = 50 * MiB
        await resp.prepare(request)
        try:
            await resp.write(b"{")  # then stall: a reader that waits for 50 MiB hangs here
            await asyncio.Event().wait()
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    server.handler = declared
    transport = AiohttpTransport(max_body_size=MiB)
    try:
        with pytest.raises(errors.ResponseTooLargeError):
            await transport.send(GET, base_url=server.url, headers={}, timeout=30.0)
    finally:
        await transport.aclose()


@pytest.mark.asyncio
async def test_a_body_at_the_cap_is_read_whole(server):
    body = b'"' + b"y" * (MiB - 2) + b'"'

    async def exact(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    server.handler = exact
    transport = AiohttpTransport(max_body_size=MiB)
    try:
        response = await transport.send(GET, base_url=server.url, headers={}, timeout=30.0)
    finally:
        await transport.aclose()
    assert response.status == 200
    assert response.body == body


@pytest.mark.asyncio
async def test_an_oversized_error_answer_keeps_its_status_and_is_cut(server):
    async def refusal(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=429, headers={"Retry-After": "3"})
        await resp.prepare(request)
        try:
            for _ in range(40):
                await resp.write(b"z" * (256 * 1024))
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    server.handler = refusal
    transport = AiohttpTransport(max_body_size=MiB)
    try:
        response = await transport.send(GET, base_url=server.url, headers={}, timeout=30.0)
    finally:
        await transport.aclose()
    # A 429 is still a 429 (it paces the client, and a refused create may be re-sent).
    assert response.status == 429
    assert response.header("retry-after") == "3"
    assert len(response.body) == MiB


@pytest.mark.asyncio
async def test_a_too_large_answer_to_a_create_is_never_re_sent(server):
    chunk = b" " * (64 * 1024)

    async def accepted_but_huge(request: web.Request) -> web.StreamResponse:
        return await server.stream(request, lambda: chunk, total=20 * MiB)

    server.handler = accepted_but_huge
    transport = AiohttpTransport(max_body_size=MiB)
    async with za.ZapierClient(
        auth=za.BearerToken("token-for-tests-1"),
        base_url=server.url,
        transport=transport,
        retry_policy=za.RetryPolicy(base=0.001, cap=0.002),
    ) as client:
        with pytest.raises(errors.OutcomeUnknownError) as info:
            await client.run("core:abc", authentication="auth1", inputs={"x": 1})
    assert len([r for r in server.requests if r.method == "POST"]) == 1
    assert isinstance(info.value.__cause__, errors.ResponseTooLargeError)


# --- "Also": the timeout message names the limit applied ---------------------------------------


@pytest.mark.asyncio
async def test_a_timeout_names_the_limit_that_was_applied(server):
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="{}")

    server.handler = stall
    transport = AiohttpTransport()
    try:
        with pytest.raises(errors.TransportError) as info:
            await transport.send(GET, base_url=server.url, headers={}, timeout=0.1)
    finally:
        release.set()
        await transport.aclose()
    assert info.value.kind == "timeout"
    # The exchange was abandoned after `total`, twice the request timeout (see `_timeouts`).
    assert "within 0.2s" in str(info.value), str(info.value)


# --- "Also": a closed caller session and a foreign event loop are typed ------------------------


@pytest.mark.asyncio
async def test_a_caller_session_closed_under_the_client_is_a_closed_transport_error(server):
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": {"type": "run", "id": "r1"}})

    server.handler = ok
    session = aiohttp.ClientSession()
    transport = AiohttpTransport(session)
    await transport.send(GET, base_url=server.url, headers={}, timeout=5.0)
    await session.close()
    with pytest.raises(errors.TransportError) as info:
        await transport.send(GET, base_url=server.url, headers={}, timeout=5.0)
    assert info.value.kind == "closed"
    assert info.value.sent is False
    assert "session" in str(info.value)
    assert "closed" in str(info.value)
    await transport.aclose()


@pytest.mark.asyncio
async def test_a_create_on_a_closed_caller_session_raises_a_typed_error_and_sends_nothing(server):
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": {"type": "run", "id": "r1"}})

    server.handler = ok
    session = aiohttp.ClientSession()
    async with za.ZapierClient(
        auth=za.BearerToken("token-for-tests-2"), base_url=server.url, session=session
    ) as client:
        await session.close()
        with pytest.raises(errors.TransportError) as info:
            await client.run("core:abc", authentication="auth1", inputs={})
    assert info.value.kind == "closed"
    assert server.requests == []


def test_a_transport_used_from_a_second_event_loop_raises_wrong_event_loop():
    async def serve_and_send(transport: AiohttpTransport) -> None:
        srv = Server()

        async def ok(request: web.Request) -> web.StreamResponse:
            # No keep-alive: no pooled socket is left in the first loop when it closes.
            return web.json_response({}, headers={"Connection": "close"})

        srv.handler = ok
        await srv.start()
        try:
            await transport.send(GET, base_url=srv.url, headers={}, timeout=5.0)
        finally:
            await srv.stop()

    transport = AiohttpTransport()
    asyncio.run(serve_and_send(transport))
    with pytest.raises(errors.WrongEventLoopError) as info:
        asyncio.run(serve_and_send(transport))
    assert "event loop" in str(info.value)
    asyncio.run(transport.aclose())  # from yet another loop: no error, no warning


def test_a_caller_session_from_a_closed_loop_raises_wrong_event_loop():
    async def make_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    session = asyncio.run(make_session())

    async def use() -> None:
        srv = Server()

        async def ok(request: web.Request) -> web.StreamResponse:
            return web.json_response({})

        srv.handler = ok
        await srv.start()
        try:
            await AiohttpTransport(session).send(GET, base_url=srv.url, headers={}, timeout=5.0)
        finally:
            await srv.stop()

    try:
        with pytest.raises(errors.WrongEventLoopError):
            asyncio.run(use())
    finally:
        session.detach()  # its loop is gone: nothing left to close


# --- item 12: a header aiohttp would refuse is an InvalidRequestError, without the token -------


@pytest.mark.asyncio
async def test_a_control_character_in_a_header_is_typed_and_not_echoed(server):
    secret = "sec\x00ret-do-not-show"
    transport = AiohttpTransport()
    try:
        with pytest.raises(errors.InvalidRequestError) as info:
            await transport.send(
                GET, base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=5
            )
    finally:
        await transport.aclose()
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert "sec" not in str(info.value)
    assert "do-not-show" not in repr(info.value)
    assert server.requests == []


# --- issue 13: the User-Agent ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_user_agent_names_library_python_and_aiohttp_versions(server):
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    server.handler = ok
    transport = AiohttpTransport()
    try:
        await transport.send(GET, base_url=server.url, headers={}, timeout=5.0)
    finally:
        await transport.aclose()
    python = ".".join(platform.python_version_tuple()[:2])
    major, minor = aiohttp.__version__.split(".")[:2]
    expected = f"zapier-async/{za.__version__} python/{python} aiohttp/{major}.{minor}"
    assert server.headers[0]["User-Agent"] == expected


@pytest.mark.asyncio
async def test_a_custom_user_agent_is_sent_as_given(server):
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    server.handler = ok
    transport = AiohttpTransport(user_agent="my-app/2")
    try:
        await transport.send(GET, base_url=server.url, headers={}, timeout=5.0)
    finally:
        await transport.aclose()
    assert server.headers[0]["User-Agent"] == "my-app/2"

"""Issue 14, client side: no hung handle, no untyped error, no lost id, no unbounded wait."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp  # noqa: TID251 (a caller-owned session and a misbehaving server are tested)
import pytest
from _util import client_for, drive, eventually
from aiohttp import web  # noqa: TID251

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async import errors
from zapier_async._backoff import RetryDecision, decide_retry
from zapier_async._scheduler import Poller
from zapier_async.testing import FakeClock, FakeZapier
from zapier_async.testing._clock import settle

BASE = "https://api.zapier.com"
CREATED = b'{"data": {"type": "run", "id": "r-1"}}'
WAITING = b'{"data": {"type": "run", "status": "waiting", "results": [], "errors": []}}'
SUCCESS = b'{"data": {"type": "run", "status": "success", "results": [], "errors": []}}'


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


class Transport:
    """Answers each request with `answer(request)`; records what was sent."""

    def __init__(self, answer: Callable[[proto.Request], proto.Response]) -> None:
        self.answer = answer
        self.sent: list[proto.Request] = []

    async def send(self, request, *, base_url, headers, timeout):
        self.sent.append(request)
        return self.answer(request)

    async def aclose(self) -> None:
        return None

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.sent if r.endpoint == endpoint)


def runs_forever(request: proto.Request) -> proto.Response:
    if request.method == "POST":
        return proto.Response(status=200, body=CREATED)
    return proto.Response(status=200, body=WAITING)


class FlakyAuth:
    """Gives a token `good` times, then raises OSError (a secrets file that went away)."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.calls = 0

    async def token(self) -> str:
        self.calls += 1
        if self.calls > self.good:
            raise OSError(5, "Input/output error reading the token file")
        return "tok"

    def invalidate(self, token: str) -> bool:
        return False


def scripted(
    answer: Callable[[proto.Request], proto.Response], **kwargs: Any
) -> tuple[za.ZapierClient, Transport, FakeClock]:
    transport = Transport(answer)
    clock = kwargs.pop("clock", None) or FakeClock()
    options: dict[str, Any] = {
        "auth": za.BearerToken("tok"),
        "transport": transport,
        "clock": clock,
        "retry_policy": za.RetryPolicy(base=0.01, cap=0.05),
        "rng": random.Random(3),
    }
    options.update(kwargs)
    return za.ZapierClient(**options), transport, clock


# --- item 3: a poll that raises anything but ZapierError --------------------------------------


@pytest.mark.asyncio
async def test_an_auth_provider_raising_oserror_fails_the_handle_typed_after_the_poll_failures():
    client, transport, clock = scripted(runs_forever, auth=FlakyAuth(good=1), max_poll_failures=3)
    async with client:
        handle = await client.run("core:x", authentication=None, inputs={})
        await drive(clock, handle.done, steps=500)
        with pytest.raises(errors.UnexpectedError) as info:
            await handle
    assert isinstance(info.value.__cause__, OSError)
    assert "OSError" in str(info.value)
    assert handle.reads.failures == 3  # retried up to max_poll_failures, then failed
    assert transport.count("action_runs.get") == 0  # the token never came: nothing was sent


@pytest.mark.asyncio
async def test_a_create_whose_token_provider_raises_gets_a_typed_error_and_sends_nothing():
    client, transport, _ = scripted(runs_forever, auth=FlakyAuth(good=0))
    async with client:
        with pytest.raises(errors.UnexpectedError) as info:
            await client.run("core:x", authentication=None, inputs={})
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.request == "POST /v2/action-runs"
    assert transport.sent == []


@pytest.mark.asyncio
async def test_a_token_with_a_control_character_is_a_typed_error_that_never_shows_the_token():
    class Nul:
        async def token(self) -> str:
            return "hunter2\x00hunter3"

        def invalidate(self, token: str) -> bool:
            return False

    client, transport, _ = scripted(runs_forever, auth=Nul())
    async with client:
        with pytest.raises(errors.ZapierError) as info:
            await client.get_run("r-1")
    assert "hunter" not in str(info.value)
    assert "hunter" not in repr(info.value)
    assert transport.sent == []


@pytest.mark.asyncio
async def test_a_caller_owned_session_closed_under_the_client_ends_every_handle_typed():
    async with FakeZapier(durations=600.0, seed=2) as fake:
        session = aiohttp.ClientSession()
        try:
            async with client_for(fake, session=session, max_poll_failures=2) as client:
                handle = await client.run("core:x", authentication=None, inputs={})
                await session.close()
                with pytest.raises(errors.ZapierError) as created:
                    await client.run("core:x", authentication=None, inputs={})
                # Nobody can tell whether a bare exception from the transport sent the create.
                assert isinstance(
                    created.value, (errors.OutcomeUnknownError, errors.TransportError)
                )
                with pytest.raises(errors.ZapierError) as polled:
                    await asyncio.wait_for(handle.result(), timeout=10.0)
        finally:
            await session.close()
    assert not isinstance(polled.value, errors.RunTimeoutError)
    assert handle.done()


@pytest.mark.asyncio
async def test_the_poller_never_drops_a_handle_whose_poll_raises():
    clock = FakeClock()

    async def poll(handle: za.RunHandle) -> None:
        raise KeyError("a bug in the poll")

    poller = Poller(clock=clock, poll=poll)
    locator = proto.RunLocator(kind="action_run", run_id="r-9")
    handle = za.RunHandle(locator, poller, created_at=0.0)
    poller.schedule(handle, 0.0)
    try:
        await drive(clock, handle.done, steps=50)
        with pytest.raises(errors.UnexpectedError) as info:
            await handle
        assert isinstance(info.value.__cause__, KeyError)
    finally:
        await poller.aclose()


@pytest.mark.asyncio
async def test_a_retried_poll_failure_logs_at_info_with_the_run_id_as_extra(caplog):
    failures = iter([500, 200])

    def answer(request: proto.Request) -> proto.Response:
        if request.method == "POST":
            return proto.Response(status=200, body=CREATED)
        return proto.Response(status=next(failures), body=SUCCESS)

    client, _, clock = scripted(answer, retry_policy=za.RetryPolicy(max_attempts=1))
    caplog.set_level(logging.DEBUG, logger="zapier_async")
    async with client:
        handle = await client.run("core:x", authentication=None, inputs={})
        await drive(clock, handle.done, steps=500)
        await handle
    retried = [r for r in caplog.records if "r-1" in r.getMessage()]
    assert retried, caplog.text
    assert all(r.levelno < logging.WARNING for r in retried)
    assert all(getattr(r, "run_id", None) == "r-1" for r in retried)
    assert not [r for r in caplog.records if r.getMessage().startswith("zapier_async: ")]


# --- item 4: aclose() while a create is on the wire -------------------------------------------


@pytest.mark.asyncio
async def test_aclose_waits_for_a_create_on_the_wire_and_hands_back_its_id():
    received = asyncio.Event()
    release = asyncio.Event()

    async def create(request: web.Request) -> web.Response:
        received.set()
        await release.wait()
        return web.json_response({"data": {"type": "run", "id": "late-1"}})

    app = web.Application()
    app.router.add_post("/v2/action-runs", create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = za.ZapierClient(auth=za.BearerToken("t"), base_url=f"http://127.0.0.1:{port}")
        creating = asyncio.create_task(client.run("core:x", authentication=None, inputs={}))
        await eventually(received.is_set)
        closing = asyncio.create_task(client.aclose())
        await eventually(lambda: client.closed)
        release.set()  # the server answers after aclose() started
        handle = await creating
        await closing
    finally:
        release.set()
        await runner.cleanup()
    assert handle.id == "late-1"
    with pytest.raises(errors.RunDetachedError):
        await handle


@pytest.mark.asyncio
async def test_a_create_started_after_aclose_began_is_refused_before_sending():
    gate = asyncio.Event()

    class Slow(Transport):
        async def send(self, request, *, base_url, headers, timeout):
            self.sent.append(request)
            await gate.wait()
            return self.answer(request)

    transport = Slow(runs_forever)
    client = za.ZapierClient(auth=za.BearerToken("t"), transport=transport)
    first = asyncio.create_task(client.run("core:x", authentication=None, inputs={}))
    await eventually(lambda: len(transport.sent) == 1)
    closing = asyncio.create_task(client.aclose())
    await eventually(lambda: client.closed)
    with pytest.raises(errors.InvalidRequestError):
        await client.run("core:x", authentication=None, inputs={})
    gate.set()
    handle = await first
    await closing
    assert handle.id == "r-1"
    assert len(transport.sent) == 1


# --- items 8 and 9: caps on every server-dictated wait ----------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("retry_after", ["1000000000000", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_huge_retry_after_fails_the_request_typed_instead_of_sleeping(retry_after):
    def answer(request: proto.Request) -> proto.Response:
        return proto.Response(status=429, headers={"retry-after": retry_after})

    client, transport, clock = scripted(answer, max_rate_limit_wait=None, max_server_wait=300.0)
    async with client:
        reading = asyncio.create_task(client.get_run("r-1"))
        await settle(200)
        assert reading.done(), "the request froze on the server's Retry-After"
        with pytest.raises(errors.RateLimitedError) as info:
            await reading
    assert info.value.retry_after > 300.0
    assert info.value.retry_at > clock.time() + 300.0
    assert len(transport.sent) == 1


@pytest.mark.asyncio
async def test_a_create_refused_with_a_huge_retry_after_is_not_resent():
    def answer(request: proto.Request) -> proto.Response:
        return proto.Response(status=503, headers={"retry-after": "99999999"})

    client, transport, _ = scripted(answer, max_rate_limit_wait=None)
    async with client:
        with pytest.raises(errors.RateLimitedError):
            await asyncio.wait_for(client.run("core:x", authentication=None, inputs={}), 5.0)
    assert len(transport.sent) == 1


class NeverFreezes:
    """A limiter that grants every slot at once and ignores freezes (a lone 503 does not)."""

    def slot(self, priority=None, *, max_wait=None):
        class _Slot:
            def record(self, status, headers) -> None:
                return None

        class _Ctx:
            async def __aenter__(self):
                return _Slot()

            async def __aexit__(self, *exc):
                return None

        return _Ctx()

    def freeze(self, seconds: float) -> None:
        return None

    def snapshot(self):
        return za.Limiter().snapshot()

    async def aclose(self) -> None:
        return None


@pytest.mark.asyncio
async def test_a_503_retry_after_that_froze_nothing_still_delays_that_request():
    sent_at: list[float] = []
    clock = FakeClock()

    def answer(request: proto.Request) -> proto.Response:
        sent_at.append(clock.monotonic())
        if len(sent_at) == 1:
            return proto.Response(status=503, headers={"retry-after": "7"})
        return proto.Response(status=200, body=SUCCESS)

    client, _, _ = scripted(answer, clock=clock, limiter=NeverFreezes())
    async with client:
        reading = asyncio.create_task(client.get_run("r-1"))
        await drive(clock, reading.done, steps=50)
        run = await reading
    assert run.status is za.RunStatus.SUCCESS
    assert sent_at[1] - sent_at[0] >= 7.0


def throttled(delay: float) -> bytes:
    error = {"code": "throttled", "title": "slow down", "detail": "", "delay": delay}
    return _json({"data": {"type": "run", "status": "waiting", "results": [], "errors": [error]}})


@pytest.mark.asyncio
async def test_a_long_polled_throttled_run_is_read_again_within_the_cap():
    def answer(request: proto.Request) -> proto.Response:
        if request.method == "POST":
            return proto.Response(status=200, body=CREATED)
        return proto.Response(status=200, body=throttled(1e300))

    client, transport, clock = scripted(answer, long_poll=za.LongPoll(wait_seconds=20.0))
    async with client:
        handle = await client.run_action(
            selected_api="A@1", action_key="k", action_type="write", inputs={}
        )
        await drive(clock, lambda: handle.reads.attempts >= 1 and handle.reads.timer is not None)
        assert transport.count("actions_runs.wait") == 1
        assert handle.reads.timer.when <= 600.0  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_max_server_wait_caps_a_throttled_runs_delay_on_the_ordinary_path():
    def answer(request: proto.Request) -> proto.Response:
        if request.method == "POST":
            return proto.Response(status=200, body=CREATED)
        return proto.Response(status=200, body=throttled(5000.0))

    client, _, clock = scripted(answer, max_server_wait=120.0)
    async with client:
        handle = await client.run("core:x", authentication=None, inputs={})
        await drive(clock, lambda: handle.reads.attempts >= 1 and handle.reads.timer is not None)
        assert handle.reads.timer.when <= 121.0  # type: ignore[union-attr]


def test_max_server_wait_must_be_positive():
    with pytest.raises(errors.InvalidRequestError) as info:
        za.ZapierClient(auth=za.BearerToken("t"), max_server_wait=0.0)
    assert info.value.field == "max_server_wait"


# --- items 11 and 13: base URLs, redirects ----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://user:hunter2@api.zapier.com", "https://:hunter2@api.zapier.com", "ftp://u:hunter2@x"],
)
def test_a_base_url_with_credentials_is_refused_without_echoing_them(url):
    with pytest.raises(errors.InvalidRequestError) as info:
        za.ZapierClient(auth=za.BearerToken("t"), base_url=url)
    assert info.value.field == "base_url"
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v2", "https://api.zapier.com/v2/"])
def test_a_base_url_with_a_path_is_refused(url):
    with pytest.raises(errors.InvalidRequestError, match="path") as info:
        za.ZapierClient(auth=za.BearerToken("t"), base_url=url)
    assert info.value.field == "base_url"


def test_a_base_url_with_only_a_slash_is_accepted():
    client = za.ZapierClient(auth=za.BearerToken("t"), base_url="https://api.zapier.com/")
    assert "https://api.zapier.com " in repr(client)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_after_a_create_is_an_unknown_outcome(status):
    decision = decide_retry(idempotent=False, status=status, failure=None, has_retry_after=False)
    assert decision is RetryDecision.UNKNOWN_OUTCOME
    get = decide_retry(idempotent=True, status=status, failure=None, has_retry_after=False)
    assert get is RetryDecision.GIVE_UP


@pytest.mark.asyncio
async def test_a_303_answer_to_a_create_raises_outcome_unknown_and_is_not_resent():
    def answer(request: proto.Request) -> proto.Response:
        return proto.Response(status=303, headers={"location": "/v2/action-runs/r-1"})

    client, transport, _ = scripted(answer)
    async with client:
        with pytest.raises(errors.OutcomeUnknownError) as info:
            await client.run("core:x", authentication=None, inputs={})
    assert "303" in str(info.value)
    assert len(transport.sent) == 1


# --- also: a second event loop ----------------------------------------------------------------


def test_a_client_used_from_a_second_event_loop_raises_a_typed_error_before_any_io():
    transport = Transport(runs_forever)
    client = za.ZapierClient(auth=za.BearerToken("t"), transport=transport)

    async def read() -> za.Run:
        return await client.get_run("r-1")

    asyncio.run(read())
    assert len(transport.sent) == 1
    with pytest.raises(errors.WrongEventLoopError):
        asyncio.run(read())
    with pytest.raises(errors.WrongEventLoopError):
        asyncio.run(client.run("core:x", authentication=None, inputs={}))
    assert len(transport.sent) == 1


# --- also: stored actions without a connection ------------------------------------------------


@pytest.mark.asyncio
async def test_a_stored_action_can_be_created_without_a_connection_id():
    def answer(request: proto.Request) -> proto.Response:
        return proto.Response(status=200, body=b'{"type": "stored_action", "id": "sa-1"}')

    client, transport, _ = scripted(answer)
    async with client:
        stored = await client.stored_actions.create(
            selected_api="A@1", action_key="k", action_type="write", inputs={}
        )
    assert stored.id == "sa-1"
    assert stored.connection_id is None
    body = json.loads(transport.sent[0].body or b"")
    assert "connection_id" not in body["data"]


# --- item 14: a callback must carry its run's token -------------------------------------------


def _sent_callback(transport: Transport) -> str:
    body = json.loads(transport.sent[-1].body or b"")
    return str(body["data"]["callback_url"])


@pytest.mark.asyncio
async def test_a_callback_run_carries_a_secret_token_in_its_callback_url(caplog):
    client, transport, _ = scripted(runs_forever)
    async with client:
        handle = await client.run(
            "core:x", authentication=None, inputs={}, callback_url="https://example.com/cb?t=1#f"
        )
        url = _sent_callback(transport)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert query["t"] == ["1"]
        (token,) = query["zapier_async_token"]
        assert len(token) >= 32
        assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
            "https",
            "example.com",
            "/cb",
            "f",
        )
        assert token not in repr(handle)
        done = za.Run(id="r-1", status=za.RunStatus.SUCCESS, results=[], errors=[])
        caplog.set_level(logging.WARNING, logger="zapier_async")
        assert client.deliver_callback(done) is False  # no token
        assert client.deliver_callback(done, token="forged") is False
        assert client.deliver_callback(done, token="é" * 32) is False
        assert not handle.done()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
        assert token not in caplog.text
        assert client.deliver_callback(done, token=token) is True
        assert handle.done()


@pytest.mark.asyncio
async def test_each_callback_run_gets_its_own_token_and_one_cannot_resolve_another():
    ids = iter(["a-1", "a-2"])

    def answer(request: proto.Request) -> proto.Response:
        if request.method == "POST":
            return proto.Response(
                status=200, body=_json({"data": {"type": "run", "id": next(ids)}})
            )
        return proto.Response(status=200, body=WAITING)

    client, transport, _ = scripted(answer)
    async with client:
        first = await client.run_action(
            selected_api="A@1",
            action_key="k",
            action_type="write",
            callback_url="https://example.com/cb",
        )
        token_1 = parse_qs(urlsplit(_sent_callback(transport)).query)["zapier_async_token"][0]
        second = await client.stored_actions.run("sa-1", callback_url="https://example.com/cb")
        token_2 = parse_qs(urlsplit(_sent_callback(transport)).query)["zapier_async_token"][0]
        assert token_1 != token_2
        assert token_1 not in first.continuation_token()
        forged = za.Run(id="a-2", status=za.RunStatus.SUCCESS, results=[], errors=[])
        assert client.deliver_callback(forged, token=token_1) is False
        assert not second.done()
        assert client.deliver_callback(forged, token=token_2) is True


@pytest.mark.asyncio
async def test_a_callback_url_too_long_once_the_token_is_appended_is_refused_before_sending():
    client, transport, _ = scripted(runs_forever)
    url = "https://example.com/" + "a" * 2000
    async with client:
        with pytest.raises(errors.InvalidRequestError, match="token") as info:
            await client.run("core:x", authentication=None, inputs={}, callback_url=url)
        with pytest.raises(errors.InvalidRequestError):
            await client.run(
                "core:x",
                authentication=None,
                inputs={},
                callback_url="https://example.com/cb?zapier_async_token=mine",
            )
    assert info.value.field == "callback_url"
    assert transport.sent == []


@pytest.mark.asyncio
async def test_a_plain_run_does_not_take_callbacks():
    client, _, _ = scripted(runs_forever)
    async with client:
        handle = await client.run("core:x", authentication=None, inputs={})
        done = za.Run(id="r-1", status=za.RunStatus.SUCCESS, results=[], errors=[])
        assert client.deliver_callback(done, token="anything") is False
        assert not handle.done()


@pytest.mark.asyncio
async def test_aclose_waits_for_a_create_on_the_wire_at_most_request_timeout():
    never = asyncio.Event()
    clock = FakeClock()

    class Stuck(Transport):
        async def send(self, request, *, base_url, headers, timeout):
            self.sent.append(request)
            await never.wait()
            return self.answer(request)

        async def aclose(self) -> None:
            self.closed_at = clock.monotonic()

    transport = Stuck(runs_forever)
    client = za.ZapierClient(
        auth=za.BearerToken("t"), transport=transport, clock=clock, request_timeout=12.0
    )
    creating = asyncio.create_task(client.run("core:x", authentication=None, inputs={}))
    await eventually(lambda: len(transport.sent) == 1)
    closing = asyncio.create_task(client.aclose())
    await settle(50)
    assert not closing.done()  # waiting for the create on the wire ...
    await clock.advance(12.0)
    await asyncio.wait_for(closing, 5.0)  # ... but no longer than request_timeout
    assert transport.closed_at == 12.0
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating


@pytest.mark.asyncio
async def test_cancelling_aclose_while_it_waits_for_a_create_still_closes_the_client():
    never = asyncio.Event()
    closed: list[bool] = []

    class Stuck(Transport):
        async def send(self, request, *, base_url, headers, timeout):
            self.sent.append(request)
            await never.wait()
            return self.answer(request)

        async def aclose(self) -> None:
            closed.append(True)

    transport = Stuck(runs_forever)
    client = za.ZapierClient(auth=za.BearerToken("t"), transport=transport, clock=FakeClock())
    creating = asyncio.create_task(client.run("core:x", authentication=None, inputs={}))
    await eventually(lambda: len(transport.sent) == 1)
    closing = asyncio.create_task(client.aclose())
    await settle(50)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert client.closed
    assert closed == [True]
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating

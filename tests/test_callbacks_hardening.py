"""Callbacks under attack (issue 14, items 14 and 15).

Item 14: a valid ``Zapier-Callback-Signature`` says nothing about the body or the run (Zapier's
JWT carries only ``iat``/``exp``), so a callback is bound to its run by the unguessable token
the client puts in the ``callback_url`` (``zapier_async_token``); the receiver passes it to
``ZapierClient.deliver_callback(run, token=...)`` and refuses a mismatch exactly like a bad
signature.

Item 15: a key rotated shortly after the last JWKS fetch is accepted after one refetch, and
random ``kid`` values cannot make the verifier fetch per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp  # noqa: TID251 (the callbacks are real HTTP requests)
import jwt
import pytest
import pytest_asyncio
from _util import until
from aiohttp import web  # noqa: TID251
from cryptography.hazmat.primitives.asymmetric import rsa

import zapier_async as za
from zapier_async.callbacks import (
    SIGNATURE_HEADER,
    TOKEN_PARAM,
    CallbackKeysUnavailableError,
    CallbackReceiver,
    CallbackSignatureError,
    CallbackVerifier,
)
from zapier_async.testing import FakeClock, FakeZapier


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class _Captured:
    """Every request a capture route saw: (path with query, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Mapping[str, str], bytes]] = []


def capture_app(
    receiver: CallbackReceiver | None, path: str = "/cb"
) -> tuple[web.Application, _Captured]:
    """An app that records each callback, then hands it to `receiver` (or answers 200)."""
    captured = _Captured()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        captured.requests.append((request.raw_path, dict(request.headers), body))
        if receiver is None:
            return web.Response(status=200)
        return await receiver.handle(request)

    app = web.Application()
    app.router.add_post(path, handler)
    return app, captured


def body_of(run_id: str, *, results: list[Any] | None = None) -> bytes:
    data = {"type": "run", "id": run_id, "status": "success", "results": results or []}
    return json.dumps({"data": data}).encode()


# ------------------------------------------------------------------------------- item 14


class _TokenClient:
    """A stand-in for `ZapierClient.deliver_callback` with the agreed contract: a followed
    run resolves only when the URL token is that run's token."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.resolved: dict[str, za.Run] = {}
        self.calls: list[tuple[str, str | None]] = []

    def deliver_callback(self, run: za.Run, *, token: str | None = None) -> bool:
        self.calls.append((run.id, token))
        expected = self.tokens.get(run.id)
        if expected is None or token != expected or run.id in self.resolved:
            return False
        self.resolved[run.id] = run
        return True


class _AcceptingClient:
    """Takes every run's first callback (for tests of signatures, not of run binding)."""

    def __init__(self) -> None:
        self.resolved: dict[str, za.Run] = {}

    def deliver_callback(self, run: za.Run, *, token: str | None = None) -> bool:
        if run.id in self.resolved:
            return False
        self.resolved[run.id] = run
        return True


async def create_with_callback(
    http: aiohttp.ClientSession, fake: FakeZapier, callback_url: str, *, duration: float = 1.0
) -> str:
    """Create a run on the emulator over plain HTTP; returns its id."""
    data = {
        "action": "a",
        "authentication": None,
        "inputs": {"__fake__": {"duration": duration}},
        "callback_url": callback_url,
    }
    async with http.post(
        fake.url + "/v2/action-runs", json={"data": data}, headers={"Authorization": "Bearer t"}
    ) as resp:
        assert resp.status == 200
        run_id: str = (await resp.json())["data"]["id"]
        return run_id


@pytest.mark.asyncio
async def test_receiver_passes_the_url_token_and_refuses_a_mismatch_like_a_bad_signature(
    served, http, caplog
):
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        client = _TokenClient({"run-a": "token-a", "run-b": "token-b"})
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
        receiver = CallbackReceiver(client, verifier)  # type: ignore[arg-type]
        url = await served(receiver.app()) + "/zapier/callback"
        good = fake.actions.sign() or ""

        async def post(query: str, body: bytes, signature: str | None = good) -> tuple[int, str]:
            headers = {} if signature is None else {SIGNATURE_HEADER: signature}
            async with http.post(url + query, data=body, headers=headers) as resp:
                return resp.status, await resp.text()

        with caplog.at_level(logging.INFO, logger="zapier_async"):
            bad_signature = await post("?zapier_async_token=token-b", body_of("run-b"), None)
            forged = [
                await post("?zapier_async_token=token-a", body_of("run-b", results=[{"x": 1}])),
                await post("", body_of("run-b", results=[{"x": 1}])),
                await post("?zapier_async_token=guess", body_of("run-b", results=[{"x": 1}])),
            ]
        genuine = await post("?zapier_async_token=token-b", body_of("run-b", results=[{"ok": 1}]))
        again = await post("?zapier_async_token=token-b", body_of("run-b", results=[{"ok": 1}]))
    # A wrong or missing URL token is refused, and the answer is the bad-signature answer
    # byte for byte: the sender cannot tell which check failed.
    assert bad_signature[0] == 401
    assert forged == [bad_signature] * 3
    assert ("run-b", "token-a") in client.calls
    assert ("run-b", None) in client.calls
    # The forgeries did not poison the duplicate memory: the genuine callback still lands.
    assert genuine[0] == 200
    assert client.resolved["run-b"].results == [{"ok": 1}]
    assert again[0] == 200
    assert "duplicate" in again[1]
    stats = receiver.stats
    assert (stats.delivered, stats.duplicates, stats.rejected_signatures) == (1, 1, 1)
    assert stats.not_accepted == 3
    refusals = [r for r in caplog.records if "not accepted" in r.getMessage()]
    assert len(refusals) == 3
    assert all("token-a" not in r.getMessage() and "guess" not in r.getMessage() for r in refusals)


@pytest.mark.asyncio
async def test_a_duplicate_with_a_wrong_token_is_refused_not_acknowledged(served, http):
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        client = _TokenClient({"run-a": "token-a"})
        receiver = CallbackReceiver(
            client,  # type: ignore[arg-type]
            CallbackVerifier(jwks_url=fake.jwks_url, clock=clock),
        )
        url = await served(receiver.app()) + "/zapier/callback"
        headers = {SIGNATURE_HEADER: fake.actions.sign() or ""}
        statuses = []
        for query in ("?zapier_async_token=token-a", "?zapier_async_token=nope", ""):
            async with http.post(url + query, data=body_of("run-a"), headers=headers) as resp:
                statuses.append(resp.status)
    assert statuses == [200, 401, 401]
    assert receiver.stats.duplicates == 0


@pytest.mark.asyncio
async def test_the_emulator_posts_callbacks_to_the_exact_url_it_got(served, http):
    clock = FakeClock()
    app, captured = capture_app(None)
    base = await served(app)
    # Escapes a URL library would normalise (%2F, %7E, %41) must reach the receiver as sent.
    url = base + "/cb?zapier_async_token=Ab_-9%2F%7E&x=%41+b"
    async with FakeZapier(clock=clock, durations=1.0) as fake:
        body = {"data": {"action": "a", "authentication": None, "inputs": {}, "callback_url": url}}
        async with http.post(
            fake.url + "/v2/action-runs", json=body, headers={"Authorization": "Bearer t"}
        ) as resp:
            assert resp.status == 200
        await clock.advance(1.0)
        await until(lambda: len(captured.requests) == 1 and fake.actions.callbacks_in_flight == 0)
    assert captured.requests[0][0] == "/cb?zapier_async_token=Ab_-9%2F%7E&x=%41+b"


def client_for(fake: FakeZapier, clock: FakeClock) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        clock=clock,
        rng=random.Random(3),
        allow_insecure_callback_url_for_testing=True,
        callback_polling=za.CallbackPolling(first_delay=45.0, interval=60.0),
    )


@pytest.mark.asyncio
async def test_a_replayed_signature_with_a_forged_body_does_not_resolve_another_run(served, http):
    """End to end: real client, emulator callbacks, receiver; the attacker holds run A's
    genuine signed callback (signature, URL, body) and targets run B."""
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake, client_for(fake, clock) as client:
        receiver = CallbackReceiver(client, CallbackVerifier(jwks_url=fake.jwks_url, clock=clock))
        app, captured = capture_app(receiver)
        base = await served(app)
        run_a = await client.run(
            "core:x",
            authentication=None,
            inputs={"__fake__": {"duration": 1}},
            callback_url=base + "/cb",
        )
        run_b = await client.run(
            "core:x",
            authentication=None,
            inputs={"__fake__": {"duration": 100}},
            callback_url=base + "/cb",
        )
        await clock.advance(1.0)
        await until(lambda: run_a.done() and fake.actions.callbacks_in_flight == 0)
        assert (await run_a).id == run_a.id
        [(path_a, headers_a, _)] = captured.requests
        # The client bound the callback to run A with a token in the URL it sent.
        assert f"?{TOKEN_PARAM}=" in path_a
        signature_a = headers_a[SIGNATURE_HEADER]
        forged = body_of(run_b.id, results=[{"forged": True}])
        answers = []
        for path in (path_a, "/cb", f"/cb?{TOKEN_PARAM}={uuid.uuid4().hex}"):
            async with http.post(
                base + path, data=forged, headers={SIGNATURE_HEADER: signature_a}
            ) as resp:
                answers.append(resp.status)
        assert answers == [401, 401, 401]
        assert not run_b.done()
        assert run_b.status == za.RunStatus.WAITING
        # B's own callback still resolves B, with the genuine results.
        fake.complete(run_b.id, results=[{"genuine": True}])
        await until(lambda: run_b.done() and fake.actions.callbacks_in_flight == 0)
        assert (await run_b).results == [{"genuine": True}]
    assert fake.stats.polls == 0  # both resolved by their callbacks, none by polling
    assert receiver.stats.delivered == 2
    assert receiver.stats.not_accepted == 3


# ------------------------------------------------------------------------------- item 15


@pytest.mark.asyncio
async def test_a_key_rotated_seconds_after_the_last_fetch_is_accepted_after_one_refetch():
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
        await verifier.verify(fake.actions.sign())
        assert verifier.fetches == 1
        await clock.advance(20.0)  # well within the old 60 s refresh window
        old_kid = fake.actions.kid
        new_kid = fake.actions.rotate_key()
        assert new_kid != old_kid
        assert [k["kid"] for k in fake.actions.jwks()["keys"]] == [new_kid]
        claims = await verifier.verify(fake.actions.sign())
        assert claims["exp"] - claims["iat"] == 300
        assert verifier.fetches == 2
        # A second callback with the new key costs no fetch.
        await verifier.verify(fake.actions.sign())
        assert verifier.fetches == 2


@pytest.mark.asyncio
async def test_a_rotation_during_the_refresh_interval_is_retried_with_503_then_accepted(
    served, http
):
    """The emulator rotates its key right after the verifier fetched: the first callback with
    the new key is answered 503 (Zapier retries 5xx, not 4xx) and the retry is accepted."""
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        fake.actions.callback_retry_delays = (15.0, 15.0)
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock, min_refresh_interval=10.0)
        client = _AcceptingClient()
        receiver = CallbackReceiver(client, verifier)  # type: ignore[arg-type]
        url = await served(receiver.app()) + "/zapier/callback"
        await verifier.verify(fake.actions.sign())  # keys fetched at t=0
        run_id = await create_with_callback(http, fake, url, duration=1.0)
        await clock.advance(0.5)
        fake.actions.rotate_key()  # t=0.5: inside the 10 s interval, after our fetch
        await clock.advance(0.5)  # the run ends, its callback is signed with the new key
        await until(lambda: fake.actions.callback(run_id).attempts == 1)
        await until(lambda: fake.actions.callbacks_in_flight == 0)
        assert fake.actions.callback(run_id).statuses == (503,)
        assert run_id not in client.resolved
        await clock.advance(15.0)
        await until(lambda: run_id in client.resolved and fake.actions.callbacks_in_flight == 0)
        record = fake.actions.callback(run_id)
    assert record.statuses == (503, 200)
    assert verifier.fetches == 2
    assert receiver.stats.deferred == 1
    assert receiver.stats.delivered == 1


def _random_kid_token(clock: FakeClock, key: rsa.RSAPrivateKey) -> str:
    now = int(clock.time())
    return jwt.encode(
        {"iat": now, "exp": now + 300},
        key,
        algorithm="RS256",
        headers={"kid": uuid.uuid4().hex},
    )


@pytest.mark.asyncio
async def test_random_kids_cannot_force_a_fetch_per_request():
    clock = FakeClock()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with FakeZapier(clock=clock) as fake:
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock, min_refresh_interval=10.0)
        await verifier.verify(fake.actions.sign())
        await clock.advance(30.0)
        # A burst of 100 at once: one shared refetch, then every one refused.
        results = await asyncio.gather(
            *(verifier.verify(_random_kid_token(clock, attacker)) for _ in range(100)),
            return_exceptions=True,
        )
        assert all(isinstance(r, CallbackSignatureError) for r in results)
        assert verifier.fetches == 2
        # Then 100 more, one every 0.5 s: at most one fetch per 10 s of the clock.
        for _ in range(100):
            await clock.advance(0.5)
            with pytest.raises(CallbackSignatureError):
                await verifier.verify(_random_kid_token(clock, attacker))
        assert verifier.fetches <= 2 + 5
        # The genuine key still verifies, without a fetch.
        before = verifier.fetches
        await verifier.verify(fake.actions.sign())
        assert verifier.fetches == before


@pytest.mark.asyncio
async def test_an_unknown_kid_after_a_fresh_refetch_is_refused_for_good():
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
        await verifier.verify(fake.actions.sign())
        await clock.advance(60.0)
        with pytest.raises(CallbackSignatureError) as info:
            await verifier.verify(fake.actions.sign(forge="unknown_kid"))
        assert not isinstance(info.value, CallbackKeysUnavailableError)
        assert "unknown key" in str(info.value)
        assert verifier.fetches == 2


@pytest.mark.asyncio
async def test_an_unreachable_jwks_is_answered_503_so_zapier_retries(served, http):
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        failures = [OSError("connection refused")]

        async def fetch() -> Mapping[str, Any]:
            if failures:
                raise failures.pop()
            return fake.actions.jwks()

        verifier = CallbackVerifier(clock=clock, fetch=fetch)
        client = _AcceptingClient()
        receiver = CallbackReceiver(client, verifier)  # type: ignore[arg-type]
        url = await served(receiver.app()) + "/zapier/callback"
        with pytest.raises(CallbackKeysUnavailableError) as info:
            await verifier.verify(fake.actions.sign())
        assert isinstance(info.value, CallbackSignatureError)  # old handlers still refuse it
        failures.append(OSError("still down"))
        run_id = await create_with_callback(http, fake, url, duration=1.0)
        await clock.advance(1.0)  # t=1: the fetch fails again, the callback gets 503
        await until(lambda: fake.actions.callback(run_id).attempts == 1)
        await until(lambda: fake.actions.callbacks_in_flight == 0)
        assert fake.actions.callback(run_id).statuses == (503,)
        # The emulator retries after 0.5 s: within a second of the failed fetch, no new one.
        await clock.advance(0.5)
        await until(lambda: fake.actions.callback(run_id).attempts == 2)
        await until(lambda: fake.actions.callbacks_in_flight == 0)
        await clock.advance(1.0)  # its last attempt, a second later: the JWKS is back
        await until(lambda: run_id in client.resolved)
        await until(lambda: fake.actions.callbacks_in_flight == 0)
        record = fake.actions.callback(run_id)
    assert record.statuses == (503, 503, 200)  # the fetch is retried after a second, not 10
    assert verifier.fetches == 3
    assert receiver.stats.deferred == 2
    assert receiver.stats.rejected_signatures == 0


@pytest.mark.asyncio
async def test_a_fetcher_raising_anything_is_a_typed_refusal():
    clock = FakeClock()

    async def fetch() -> Mapping[str, Any]:
        raise RuntimeError("boom")

    verifier = CallbackVerifier(clock=clock, fetch=fetch)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CallbackKeysUnavailableError):
        await verifier.verify(_random_kid_token(clock, key))


def test_signature_errors_pickle_and_copy():
    import copy
    import pickle

    for exc in (CallbackSignatureError("x"), CallbackKeysUnavailableError("y")):
        for clone in (pickle.loads(pickle.dumps(exc)), copy.copy(exc)):
            assert type(clone) is type(exc)
            assert str(clone) == str(exc)


@pytest.mark.asyncio
async def test_an_overlapping_rotation_keeps_signatures_of_the_retired_key_valid():
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
        before = fake.actions.sign()
        await verifier.verify(before)
        await clock.advance(20.0)
        old_kid = fake.actions.kid
        new_kid = fake.actions.rotate_key(keep_previous=True)
        assert [k["kid"] for k in fake.actions.jwks()["keys"]] == [new_kid, old_kid]
        await verifier.verify(fake.actions.sign())  # refetch: both keys now cached
        await verifier.verify(before)  # the retired key's signature, still within 5 min
        assert verifier.fetches == 2
        fake.actions.rotate_key()  # a clean rotation retires every earlier key
        assert [k["kid"] for k in fake.actions.jwks()["keys"]] == [fake.actions.kid]

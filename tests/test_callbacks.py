"""Completion callbacks: signatures, the receiver, and resolution with polling as a safety net."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from _util import until
from aiohttp import web  # noqa: TID251 (the receiver is an aiohttp.web app)

import zapier_async as za
from zapier_async.callbacks import (
    CallbackReceiver,
    CallbackSignatureError,
    CallbackVerifier,
    parse_callback,
)
from zapier_async.testing import FakeClock, FakeZapier


def client_for(fake: FakeZapier, clock: FakeClock, **kwargs: Any) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        clock=clock,
        rng=random.Random(11),
        allow_insecure_callback_url_for_testing=True,
        callback_polling=za.CallbackPolling(first_delay=45.0, interval=60.0),
        **kwargs,
    )


async def settle_and_advance(clock: FakeClock, fake: FakeZapier, done: Any) -> None:
    """Move the clock deadline by deadline, letting callbacks in flight land first."""
    for _ in range(10_000):
        await until(lambda: fake.actions.callbacks_in_flight == 0 or done())
        await asyncio.sleep(0)
        if done():
            return
        deadline = clock.next_deadline()
        if deadline is not None:
            await clock.advance_to(deadline)
        else:
            await asyncio.sleep(0)
    raise AssertionError("runs did not resolve")


@pytest.mark.asyncio
async def test_acceptance_1000_runs_resolve_with_5_percent_lost_callbacks(served):
    clock = FakeClock()
    async with FakeZapier(clock=clock, seed=5, durations=(0.5, 3.0), record_requests=False) as fake:
        fake.actions.callback_loss_rate = 0.05
        # The first four attempts carry forged signatures, in four different ways.
        fake.actions.forge_callbacks("bad_signature", "expired", "unknown_kid", "missing")
        async with client_for(fake, clock) as client:
            verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
            receiver = CallbackReceiver(client, verifier)
            url = await served(receiver.app()) + "/zapier/callback"
            handles: list[za.RunHandle] = []
            for start in range(0, 1000, 100):
                handles += await asyncio.gather(
                    *(
                        client.run("core:x", authentication=None, inputs={"n": n}, callback_url=url)
                        for n in range(start, start + 100)
                    )
                )
            await settle_and_advance(clock, fake, lambda: all(h.done() for h in handles))
            outcomes = [h.run for h in handles]
        stats = fake.stats
        records = fake.actions.callbacks()
    assert all(run is not None and run.status.is_terminal for run in outcomes)
    assert len(handles) == 1000
    polls_per_run = stats.polls / 1000
    lost = sum(r.lost for r in records)
    print(f"\npolls/run={polls_per_run:.3f} lost={lost} rejected={receiver.stats}")
    assert polls_per_run < 0.2
    assert 20 <= lost <= 90
    assert receiver.stats.rejected_signatures == 4
    assert sum(r.forged for r in records) == 4
    assert receiver.stats.delivered == 1000 - lost - 4
    assert stats.duplicate_submissions == 0
    # Server-side truth: every sent callback was delivered in one attempt (no 5xx here).
    assert all(r.delivered_at is not None for r in records if not r.lost and not r.forged)


@pytest.mark.asyncio
async def test_duplicate_deliveries_are_ignored_and_runs_resolve_on_the_callback(served):
    clock = FakeClock()
    async with FakeZapier(clock=clock, seed=2, durations=1.0) as fake:
        fake.actions.callback_duplicate_rate = 1.0
        async with client_for(fake, clock) as client:
            receiver = CallbackReceiver(
                client, CallbackVerifier(jwks_url=fake.jwks_url, clock=clock)
            )
            url = await served(receiver.app()) + "/zapier/callback"
            handles = [
                await client.run_action(
                    selected_api="A@1", action_key="k", action_type="write", callback_url=url
                ),
                await fake_stored_run(client, url),
            ]
            await settle_and_advance(clock, fake, lambda: all(h.done() for h in handles))
            runs = [await h for h in handles]
            await until(lambda: fake.actions.callbacks_in_flight == 0)
    assert [r.id for r in runs] == [h.id for h in handles]
    assert receiver.stats.delivered == 2
    assert receiver.stats.duplicates == 2
    assert fake.stats.polls == 0  # resolved by callbacks well before the safety net
    assert all(fake.actions.callback(h.id).duplicated for h in handles)
    assert clock.monotonic() < 45.0


async def fake_stored_run(client: za.ZapierClient, url: str) -> za.RunHandle:
    stored = await client.stored_actions.create(
        connection_id="conn", selected_api="A@1", action_key="k", action_type="write"
    )
    return await client.stored_actions.run(stored.id, inputs={"x": 1}, callback_url=url)


@pytest.mark.asyncio
async def test_callbacks_are_retried_on_5xx_up_to_three_attempts(served):
    clock = FakeClock()
    answers = [500, 503, 200]

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/cb", flaky)
    url = await served(app) + "/cb"
    async with FakeZapier(clock=clock, durations=0.5) as fake, client_for(fake, clock) as client:
        handle = await client.run("core:x", authentication=None, callback_url=url)
        await settle_and_advance(
            clock, fake, lambda: fake.actions.callback(handle.id).attempts == 3
        )
        await until(lambda: fake.actions.callbacks_in_flight == 0)
        record = fake.actions.callback(handle.id)
    assert record.statuses == (500, 503, 200)
    assert record.delivered_at is not None


@pytest.mark.asyncio
async def test_verifier_rejects_forgeries_and_rate_limits_jwks_refreshes():
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake:
        verifier = CallbackVerifier(jwks_url=fake.jwks_url, clock=clock, min_refresh_interval=60)
        claims = await verifier.verify(fake.actions.sign())
        assert claims["exp"] - claims["iat"] == 300
        assert verifier.fetches == 1
        for kind in ("bad_signature", "expired", "unknown_kid"):
            with pytest.raises(CallbackSignatureError):
                await verifier.verify(fake.actions.sign(forge=kind))  # type: ignore[arg-type]
        with pytest.raises(CallbackSignatureError, match="no Zapier-Callback-Signature"):
            await verifier.verify(None)
        assert verifier.fetches == 1  # the unknown kid came within a minute of the last fetch
        token = fake.actions.sign()
        await clock.advance(306)  # past the 5-minute validity + leeway (and the refresh interval)
        with pytest.raises(CallbackSignatureError, match="expired"):
            await verifier.verify(token)
        with pytest.raises(CallbackSignatureError):
            await verifier.verify(fake.actions.sign(forge="unknown_kid"))
        assert verifier.fetches == 2


@pytest.mark.asyncio
async def test_receiver_answers_401_for_bad_signatures_and_unknown_runs_400_for_bad_bodies(
    served,
):
    clock = FakeClock()
    async with FakeZapier(clock=clock) as fake, client_for(fake, clock) as client:
        receiver = CallbackReceiver(client, CallbackVerifier(jwks_url=fake.jwks_url, clock=clock))
        url = await served(receiver.app())
        import aiohttp  # noqa: TID251

        good = fake.actions.sign()
        async with aiohttp.ClientSession() as session:
            statuses = []
            for headers, body in [
                ({}, b"{}"),
                ({"Zapier-Callback-Signature": fake.actions.sign(forge="expired") or ""}, b"{}"),
                ({"Zapier-Callback-Signature": good or ""}, b"not json"),
                ({"Zapier-Callback-Signature": good or ""}, b'{"data": {"status": "success"}}'),
                (
                    {"Zapier-Callback-Signature": good or ""},
                    b'{"data": {"type": "run", "id": "unknown", "status": "success"}}',
                ),
            ]:
                async with session.post(url + "/zapier/callback", data=body, headers=headers) as r:
                    statuses.append(r.status)
    # A run the client does not follow is refused like a bad signature (Zapier does not
    # retry 4xx either): its body is never believed.
    assert statuses == [401, 401, 400, 400, 401]
    assert receiver.stats.rejected_signatures == 2
    assert receiver.stats.bad_bodies == 2
    assert receiver.stats.not_accepted == 1


def test_parse_callback_reads_the_documented_shape():
    run = parse_callback(
        b'{"data": {"type": "run", "id": "r1", "status": "error", "results": [],'
        b' "errors": [{"code": "user", "title": "t", "detail": "d"}]}}'
    )
    assert (run.id, run.status, run.errors[0].code) == (
        "r1",
        za.RunStatus.ERROR,
        za.RunErrorCode.USER,
    )


@pytest.mark.asyncio
async def test_loopback_http_callback_urls_need_the_testing_flag():
    async with FakeZapier() as fake:
        async with za.ZapierClient(auth=za.BearerToken("t"), base_url=fake.url) as client:
            with pytest.raises(za.InvalidRequestError, match="https"):
                await client.run("core:x", authentication=None, callback_url="http://127.0.0.1/cb")
        assert fake.stats.runs_created == 0

"""End to end: the real ZapierClient against the real FakeZapier over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import aiohttp  # noqa: TID251 (a caller-owned session is part of what is tested)
import pytest
import pytest_asyncio
from _util import FAST_RETRIES, client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._scheduler import POLL_TASK_NAME, POLLER_TASK_NAME
from zapier_async.testing import FakeClock, FakeZapier


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1) as server:
        yield server


def live_tasks(name: str) -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == name and not t.done())


@pytest.mark.asyncio
async def test_run_sends_the_spec_body_and_resolves_to_the_run(fake):
    async with client_for(fake) as client:
        handle = await client.run(
            "core:send_email",
            authentication="auth_1",
            inputs={"to": "a@example.com", "__fake__": {"results": [{"sent": True}]}},
        )
        assert fake.run(handle.id).action == "core:send_email"
        run = await handle
    assert run.id == handle.id
    assert run.status is za.RunStatus.SUCCESS
    assert run.results == [{"sent": True}]
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.path == "/v2/action-runs"
    assert set(create.json) == {"data"}
    assert set(create.json["data"]) == {"action", "authentication", "inputs"}
    assert fake.stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_a_failed_run_raises_run_failed_error_with_its_errors(fake):
    detail = {"code": "user", "title": "Bad address", "detail": "'x' is not an email"}
    async with client_for(fake) as client:
        handle = await client.run(
            "core:send_email",
            authentication=None,
            inputs={"__fake__": {"status": "error", "errors": [detail]}},
        )
        with pytest.raises(za.RunFailedError) as info:
            await handle
    assert info.value.run.id == handle.id
    assert info.value.run.status is za.RunStatus.ERROR
    (err,) = info.value.run.errors
    assert err.code is za.RunErrorCode.USER
    assert err.detail == "'x' is not an email"
    assert "'x' is not an email" in str(info.value)


@pytest.mark.asyncio
async def test_a_thousand_concurrent_runs_each_get_their_own_outcome():
    async with FakeZapier(seed=3, durations=(0.0, 0.2)) as fake:
        async with client_for(fake, max_rate_limit_wait=None) as client:
            wanted = ["error" if i % 7 == 0 else "success" for i in range(1000)]
            failed_ids: list[tuple[str, str]] = []

            async def one(i: int) -> str:
                handle = await client.run(
                    "core:x",
                    authentication="a",
                    inputs={"i": i, "__fake__": {"status": wanted[i], "results": [{"i": i}]}},
                )
                try:
                    run = await handle
                except za.RunFailedError as exc:
                    failed_ids.append((exc.run.id, handle.id))
                    return "error"
                assert run.results == [{"i": i}]
                return "success"

            got = await asyncio.gather(*(one(i) for i in range(1000)))
        assert got == wanted
        assert all(a == b for a, b in failed_ids)
        stats = fake.stats
        assert stats.runs_created == 1000
        assert stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_result_timeout_raises_but_does_not_cancel_the_run():
    async with FakeZapier(durations=math.inf) as fake, client_for(fake) as client:
        handle = await client.run("core:x", authentication=None, inputs={})
        with pytest.raises(za.RunTimeoutError) as info:
            await handle.result(timeout=0.2)
        assert info.value.run_id == handle.id
        assert info.value.status is za.RunStatus.WAITING
        assert not handle.done()
        polls_before = fake.run(handle.id).polls
        assert polls_before >= 1
        fake.complete(handle.id, results=[{"late": 1}])
        run = await handle.result(timeout=10)
        assert run.results == [{"late": 1}]
        assert fake.run(handle.id).polls > polls_before


@pytest.mark.asyncio
async def test_resume_from_id_and_from_token_in_another_client():
    async with FakeZapier(durations=math.inf) as fake:
        async with client_for(fake) as first:
            a = await first.run("core:x", authentication=None, inputs={"n": 1})
            b = await first.run("core:x", authentication=None, inputs={"n": 2})
            token = b.continuation_token()
            assert "test-token" not in token
            run_id = a.id
        for rid in (a.id, b.id):
            fake.complete(rid, results=[{"id": rid}])
        async with client_for(fake) as second:
            ra = second.resume(run_id)
            rb = second.resume(token)
            assert second.resume(run_id) is ra  # never followed twice
            assert (await ra).results == [{"id": a.id}]
            assert (await rb).results == [{"id": b.id}]
        assert fake.stats.runs_created == 2


@pytest.mark.asyncio
async def test_resume_of_an_unknown_run_fails_with_not_found(fake):
    async with client_for(fake) as client:
        handle = client.resume("00000000-0000-0000-0000-000000000000")
        with pytest.raises(errors.NotFoundError):
            await handle


@pytest.mark.asyncio
async def test_cancel_stops_following_but_the_run_can_be_resumed():
    async with FakeZapier(durations=math.inf) as fake, client_for(fake) as client:
        handle = await client.run("core:x", authentication=None, inputs={})
        assert handle.cancel()
        with pytest.raises(za.RunDetachedError, match="cancelled"):
            await handle
        assert client.in_flight == 0
        fake.complete(handle.id)
        again = client.resume(handle.id)
        assert again is not handle
        assert (await again).status is za.RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_close_with_runs_in_flight_detaches_cleanly_and_runs_are_resumable():
    async with FakeZapier(durations=math.inf) as fake:
        client = client_for(fake)
        handles = [
            await client.run("core:x", authentication=None, inputs={"n": i}) for i in range(50)
        ]
        waiters = [asyncio.create_task(h.result()) for h in handles]
        await asyncio.sleep(0)
        await client.aclose()
        await client.aclose()  # idempotent
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, za.RunDetachedError) for r in results)
        assert all("client closed" in str(r) for r in results)
        assert live_tasks(POLLER_TASK_NAME) == 0
        assert live_tasks(POLL_TASK_NAME) == 0
        with pytest.raises(errors.InvalidRequestError, match="closed"):
            await client.run("core:x", authentication=None, inputs={})
        for h in handles:
            fake.complete(h.id)
        async with client_for(fake) as other:
            done = await asyncio.gather(*(other.resume(h.id).result() for h in handles))
        assert {r.id for r in done} == {h.id for h in handles}


@pytest.mark.asyncio
async def test_ten_thousand_runs_in_flight_use_one_poller_task():
    async with FakeZapier(durations=math.inf, record_requests=False) as fake:
        slow = za.PollPolicy(initial=30.0, cap=60.0)
        async with client_for(fake, poll_policy=slow, max_rate_limit_wait=None) as client:
            handles: list[za.RunHandle] = []
            for start in range(0, 10_000, 500):
                handles += await asyncio.gather(
                    *(
                        client.run("core:x", authentication=None, inputs={"n": n})
                        for n in range(start, start + 500)
                    )
                )
            assert client.in_flight == 10_000
            assert live_tasks(POLLER_TASK_NAME) == 1
            assert live_tasks(POLL_TASK_NAME) == 0  # no poll is due: no task per run
            assert len({h.id for h in handles}) == 10_000
        assert fake.stats.runs_created == 10_000


@pytest.mark.asyncio
async def test_updates_follow_unknown_pending_statuses_to_the_end():
    async with (
        FakeZapier(durations=0.3, pending_statuses=("queued", "running")) as fake,
        client_for(fake) as client,
    ):
        handle = await client.run("core:x", authentication=None, inputs={})
        seen = [s async for s in handle.updates()]
    assert seen[0] is za.RunStatus.WAITING
    assert seen[-1] is za.RunStatus.SUCCESS
    assert za.RunStatus.QUEUED in seen
    assert len(seen) == len(set(seen))


@pytest.mark.asyncio
async def test_http_202_pending_reads_are_followed():
    async with FakeZapier(durations=0.1, pending_http_status=202) as fake:
        async with client_for(fake) as client:
            run = await (await client.run("core:x", authentication=None, inputs={}))
        assert run.status is za.RunStatus.SUCCESS
        assert fake.stats.responses_by_status.get(202, 0) >= 1


@pytest.mark.asyncio
async def test_get_run_reads_once_without_following(fake):
    async with client_for(fake) as client:
        handle = await client.run("core:x", authentication=None, inputs={})
        await handle
        run = await client.get_run(handle.id)
    assert run.id == handle.id
    assert run.status is za.RunStatus.SUCCESS


# --- bad input: a clear error before any request ---------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": "", "authentication": None, "inputs": {}},
        {"action": "core/../admin", "authentication": None, "inputs": {}},
        {"action": "core:x", "authentication": "", "inputs": {}},
        {"action": "core:x", "authentication": None, "inputs": {"d": object()}},
        {"action": "core:x", "authentication": None, "inputs": "to=a"},
        {"action": "core:x", "authentication": None, "inputs": {}, "callback_url": "http://x.io"},
    ],
)
async def test_bad_input_raises_before_any_request(fake, kwargs):
    async with client_for(fake) as client:
        with pytest.raises(errors.InvalidRequestError):
            await client.run(**kwargs)
    assert fake.stats.requests == 0


@pytest.mark.parametrize(
    "url",
    ["http://api.zapier.com", "ftp://127.0.0.1", "api.zapier.com", "https://x.io/?a=1", ""],
)
def test_unsafe_or_malformed_base_urls_are_refused(url):
    with pytest.raises(errors.InvalidRequestError) as info:
        za.ZapierClient(auth=za.BearerToken("t"), base_url=url)
    assert info.value.field == "base_url"


def test_auth_must_be_a_provider_and_tokens_never_show():
    with pytest.raises(errors.InvalidRequestError, match="BearerToken"):
        za.ZapierClient(auth="raw-token")  # type: ignore[arg-type]
    client = za.ZapierClient(auth=za.BearerToken("s3cret-token"))
    assert "s3cret" not in repr(client)


@pytest.mark.asyncio
async def test_a_caller_owned_session_is_used_and_left_open(fake):
    async with aiohttp.ClientSession() as session:
        async with client_for(fake, session=session) as client:
            await (await client.run("core:x", authentication=None, inputs={}))
        assert not session.closed
        async with session.get(fake.url + "/v2/action-runs/nope") as resp:
            assert resp.status in (401, 404)


# --- failures: never a duplicate, nothing lost ------------------------------------------------


@pytest.mark.asyncio
async def test_create_refused_with_503_retry_after_is_resent_once_created_once(fake):
    fake.inject("503", endpoint="create", after_create=False)
    async with client_for(fake) as client:
        handle = await client.run("core:x", authentication=None, inputs={"u": 1})
        await handle
    stats = fake.stats
    assert stats.runs_created == 1
    assert stats.duplicate_submissions == 0
    assert stats.requests_by_endpoint["create"] == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["reset", "500", "502", "504", "non_json"])
async def test_create_failing_after_the_run_was_made_raises_outcome_unknown(fake, kind):
    fake.inject(kind, endpoint="create", after_create=True)
    async with client_for(fake) as client:
        with pytest.raises(errors.OutcomeUnknownError) as info:
            await client.run("core:x", authentication=None, inputs={"u": 1})
    assert "POST /v2/action-runs" in str(info.value) or info.value.request
    stats = fake.stats
    assert stats.runs_created == 1  # it exists at Zapier ...
    assert stats.requests_by_endpoint["create"] == 1  # ... and was not re-sent
    assert stats.duplicate_submissions == 0


@pytest.mark.asyncio
async def test_connection_refused_is_retried_then_raised_as_not_sent():
    async with FakeZapier() as fake:
        url = fake.url
    # The emulator is closed: nothing listens on that port any more.
    async with za.ZapierClient(
        auth=za.BearerToken("t"), base_url=url, retry_policy=FAST_RETRIES
    ) as client:
        with pytest.raises(errors.TransportError) as info:
            await client.run("core:x", authentication=None, inputs={})
    assert info.value.kind == "connect"
    assert info.value.sent is False


@pytest.mark.asyncio
async def test_transient_poll_failures_are_retried_and_the_run_resolves(fake):
    fake.inject("500", endpoint="poll", count=2)
    fake.inject("reset", endpoint="poll", count=2)
    async with client_for(fake) as client:
        run = await (await client.run("core:x", authentication=None, inputs={}))
    assert run.status is za.RunStatus.SUCCESS
    assert fake.stats.faults["500"] == 2


@pytest.mark.asyncio
async def test_a_refused_token_raises_authentication_error_without_retrying():
    async with FakeZapier(tokens={"good"}) as fake:
        async with client_for(fake, auth=za.BearerToken("bad")) as client:
            with pytest.raises(errors.AuthenticationError) as info:
                await client.run("core:x", authentication=None, inputs={})
        assert info.value.status == 401
        assert "bad" not in str(info.value)
        assert fake.stats.requests == 1


@pytest.mark.asyncio
async def test_the_create_request_never_leaks_the_token_into_recorded_errors(fake):
    fake.inject("500", endpoint="create", after_create=True)
    async with client_for(fake, auth=za.BearerToken("tok-XYZ-secret")) as client:
        with pytest.raises(errors.OutcomeUnknownError) as info:
            await client.run("core:x", authentication=None, inputs={})
    assert "tok-XYZ-secret" not in repr(info.value)
    assert "tok-XYZ-secret" not in str(info.value)
    recorded = json.dumps([dict(r.headers) for r in fake.requests])
    assert "tok-XYZ-secret" not in recorded


# --- the rate budget --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_web_app_fails_fast_when_the_budget_is_spent():
    async with FakeZapier(rate_limit=(3, 60.0), durations=math.inf) as fake:
        async with client_for(fake, max_rate_limit_wait=0.5) as client:
            sent = [
                await client.run("core:x", authentication=None, inputs={"n": n}) for n in (1, 2)
            ]
            creates_before = fake.stats.requests_by_endpoint["create"]

            async def keep_submitting() -> None:
                for n in range(3, 10):
                    await client.run("core:x", authentication=None, inputs={"n": n})

            with pytest.raises(za.RateLimitedError) as info:
                await keep_submitting()
            assert info.value.retry_after > 0.5
            assert info.value.retry_at > 1e9  # wall-clock epoch seconds
            for h in sent:
                h.cancel()
        stats = fake.stats
    assert stats.rate_limited == 0  # refused locally: no 429 was collected
    assert stats.requests <= 3
    assert stats.requests_by_endpoint["create"] >= creates_before


@pytest.mark.asyncio
async def test_on_rate_limited_reports_waits_and_no_429_is_collected():
    waits: list[tuple[float, za.Priority]] = []
    async with FakeZapier(rate_limit=(10, 0.5), durations=0.0) as fake:
        async with client_for(
            fake, max_rate_limit_wait=None, on_rate_limited=lambda s, p: waits.append((s, p))
        ) as client:

            async def one(n: int) -> za.Run:
                return await (await client.run("core:x", authentication=None, inputs={"n": n}))

            runs = await asyncio.gather(*(one(n) for n in range(12)))
        assert len(runs) == 12
        assert fake.stats.rate_limited == 0
    assert waits
    assert all(seconds > 0 for seconds, _ in waits)


def test_limiter_knobs_are_refused_with_a_shared_limiter():
    shared = za.Limiter()
    with pytest.raises(errors.InvalidRequestError, match="shared Limiter"):
        za.ZapierClient(auth=za.BearerToken("t"), limiter=shared, rate_limit=(60, 60.0))
    with pytest.raises(errors.InvalidRequestError, match="window_length"):
        za.ZapierClient(auth=za.BearerToken("t"), limiter=shared, rate_window=300.0)


@pytest.mark.parametrize("bad", [0, -5.0, math.inf, math.nan, "300", True])
def test_a_bad_rate_window_is_a_typed_error(bad):
    with pytest.raises(errors.InvalidRequestError) as info:
        za.ZapierClient(auth=za.BearerToken("t"), rate_window=bad)
    assert info.value.field == "rate_window"
    with pytest.raises(errors.InvalidRequestError) as info:
        za.Limiter(window_length=bad)
    assert info.value.field == "window_length"


@pytest.mark.asyncio
async def test_two_clients_sharing_a_limiter_share_one_budget():
    async with FakeZapier(rate_limit=(8, 0.5), durations=0.0) as fake:
        shared = za.Limiter()
        async with (
            client_for(fake, limiter=shared, max_rate_limit_wait=None) as a,
            client_for(fake, limiter=shared, max_rate_limit_wait=None) as b,
        ):

            async def go(client: za.ZapierClient, n: int) -> za.Run:
                return await (await client.run("core:x", authentication=None, inputs={"n": n}))

            await asyncio.gather(*(go(a if n % 2 else b, n) for n in range(12)))
        await shared.aclose()
        assert fake.stats.rate_limited == 0
        assert fake.stats.runs_created == 12


@pytest.mark.asyncio
async def test_an_instant_actions_runs_are_polled_at_once_a_slow_ones_after_three_probes():
    # The client's clock never moves, and the policy's first poll is 30 s away: only the
    # at-once polls of an unlearnt action can read anything.
    slow_policy = za.PollPolicy(initial=30.0, cap=60.0, jitter=0.0)
    async with (
        FakeZapier(durations=0.0, seed=3) as fake,
        client_for(fake, clock=FakeClock(), poll_policy=slow_policy) as client,
    ):
        handles = [
            await client.run("core:instant", authentication=None, inputs={"i": i}) for i in range(6)
        ]
        await eventually(lambda: all(h.done() for h in handles))
        assert [(await h).status for h in handles] == [za.RunStatus.SUCCESS] * 6
        assert fake.stats.polls == 6  # one poll per run, each found it ended
    async with (
        FakeZapier(durations=60.0, seed=3) as fake,
        client_for(fake, clock=FakeClock(), poll_policy=slow_policy) as client,
    ):
        slow = [
            await client.run("core:slow", authentication=None, inputs={"i": i}) for i in range(6)
        ]
        await eventually(lambda: fake.stats.polls >= 3 and client._poller.in_flight == 0)
        # Three at-once polls found their runs going; every run now waits for the
        # policy's 30 s (nothing else is due on the client's clock, which stands at 0).
        assert fake.stats.polls == 3
        timers = [h.reads.timer for h in slow]
        assert all(t is not None and t.when >= 30.0 for t in timers)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_run_resumed_with_callback_is_read_once_then_polled_as_a_safety_net():
    safety_net = za.CallbackPolling(first_delay=45.0, interval=300.0, jitter=0.0)
    async with FakeZapier(durations=600.0, seed=5) as fake:
        async with client_for(fake, allow_insecure_callback_url_for_testing=True) as first:
            created = await first.run(
                "core:x",
                authentication=None,
                inputs={"i": 1},
                callback_url="http://127.0.0.1:9/cb",
            )
            token = created.continuation_token()
            secret = created.callback_token
        clock = FakeClock()
        async with client_for(fake, clock=clock, callback_polling=safety_net) as client:
            plain = client.resume(token)
            await eventually(lambda: plain.reads.attempts == 1 and client._poller.in_flight == 0)
            plain_next = plain.reads.timer.when  # type: ignore[union-attr]
            plain.cancel()
            unbound = client.resume(token, callback=True)
            await eventually(lambda: unbound.reads.attempts == 1 and client._poller.in_flight == 0)
            # Without its callback token no callback can be accepted: the ordinary cadence.
            assert not unbound.via_callback
            assert unbound.reads.timer.when < 10.0  # type: ignore[union-attr]
            unbound.cancel()
            handle = client.resume(token, callback_token=secret)
            await eventually(lambda: handle.reads.attempts == 1 and client._poller.in_flight == 0)
            assert handle.via_callback
            assert handle.reads.timer.when == 300.0  # type: ignore[union-attr]  # the safety net
            assert plain_next < 10.0  # without callback=True: the ordinary cadence

"""client.metrics() and the event hooks, against the real FakeZapier."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from _util import client_for

import zapier_async as za
from zapier_async import errors
from zapier_async._metrics import RESERVOIR_SIZE, Recorder, percentile
from zapier_async.testing import FakeClock, FakeZapier


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1) as server:
        yield server


async def finish(handle: za.RunHandle) -> None:
    with contextlib.suppress(za.RunFailedError):
        await handle


@pytest.mark.asyncio
async def test_metrics_count_runs_requests_latency_and_error_codes(fake):
    async with client_for(fake) as client:
        before = client.metrics()
        assert before.runs_started == 0
        assert before.latency_p50 is None
        assert before.success_rate is None
        assert before.polls_per_run is None
        for i in range(4):
            await finish(await client.run("core:x", authentication=None, inputs={"i": i}))
        await finish(
            await client.run(
                "core:x",
                authentication=None,
                inputs={"__fake__": {"status": "error", "errors": [{"code": "throttled"}]}},
            )
        )
        with pytest.raises(errors.BadRequestError):  # the emulator refuses this override
            await client.run("core:x", authentication=None, inputs={"__fake__": {"status": "?"}})
        m = client.metrics()
    assert m.runs_started == 5
    assert m.runs_succeeded == 4
    assert m.runs_failed == 1
    assert m.runs_in_flight == 0
    assert m.success_rate == pytest.approx(0.8)
    assert m.failure_rate == pytest.approx(0.2)
    assert m.latency_samples == 5
    assert m.latency_p50 is not None
    assert m.latency_p95 is not None
    assert m.latency_max is not None
    assert 0 < m.latency_p50 <= m.latency_p95 <= m.latency_max
    assert m.latency_mean is not None
    assert 0 < m.latency_mean <= m.latency_max
    stats = fake.stats
    assert m.requests_by_endpoint["action_runs.create"] == 6
    assert m.requests_by_endpoint["action_runs.get"] == stats.polls
    assert m.polls == stats.polls
    assert m.polls_per_run == pytest.approx(stats.polls / 5)
    assert m.responses_by_status == {200: stats.responses_by_status[200], 400: 1}
    assert m.errors_by_code == {"throttled": 1, "invalid": 1}
    assert m.outcome_unknown == 0
    assert m.runs_per_day > 0
    assert m.as_dict()["responses_by_status"] == {"200": stats.responses_by_status[200], "400": 1}


@pytest.mark.asyncio
async def test_listeners_receive_request_retry_rate_limit_and_run_events():
    events: list[za.Event] = []
    async with (
        FakeZapier(seed=3, rate_limit=(1, 0.2)) as fake,
        client_for(fake, on_event=events.append, max_rate_limit_wait=None) as client,
    ):
        fake.inject("502", endpoint="poll")
        handle = await client.run("core:x", authentication=None, inputs={})
        await handle
        # A second client (its own limiter) on the same budget gets a 429 from the emulator.
        async with client_for(fake, on_event=events.append) as other:
            await client.get_run(handle.id)
            await other.get_run(handle.id)
        assert client.metrics().retries >= 1
    kinds = {type(e) for e in events}
    assert {za.RequestEvent, za.RetryEvent, za.RunEvent} <= kinds
    runs = [e for e in events if isinstance(e, za.RunEvent)]
    assert runs[0].kind == "started"
    assert runs[-1].kind == "ended"
    assert runs[-1].status is za.RunStatus.SUCCESS
    assert runs[-1].latency is not None
    retry = next(e for e in events if isinstance(e, za.RetryEvent))
    assert retry.endpoint == "action_runs.get"
    assert retry.reason == "HTTP 502"
    requests = [e for e in events if isinstance(e, za.RequestEvent)]
    assert any(e.status == 502 for e in requests)
    assert all(e.elapsed >= 0 for e in requests)
    refused = [e for e in events if isinstance(e, za.RateLimitEvent)]
    assert refused
    assert all(e.status == 429 for e in refused)


@pytest.mark.asyncio
async def test_a_raising_listener_is_logged_and_the_client_goes_on(fake, caplog):
    def broken(event: za.Event) -> None:
        raise RuntimeError("exporter down")

    seen: list[za.Event] = []
    async with client_for(fake, on_event=broken) as client:
        client.add_listener(seen.append)
        with caplog.at_level(logging.ERROR, logger="zapier_async"):
            run = await (await client.run("core:x", authentication=None, inputs={}))
        assert run.succeeded
        assert client.remove_listener(broken) is True
        assert client.remove_listener(broken) is False
    assert seen  # the other listener still got every event
    failed = [r for r in caplog.records if "event listener" in r.message]
    assert failed
    # The logger's name already says "zapier_async": the message does not repeat it.
    assert not any(r.message.startswith("zapier_async:") for r in failed)


@pytest.mark.asyncio
async def test_outcome_unknown_and_lost_runs_are_counted(fake):
    async with client_for(fake) as client:
        fake.inject("500", endpoint="create", after_create=True)
        with pytest.raises(errors.OutcomeUnknownError):
            await client.run("core:x", authentication=None, inputs={"a": 1})
        handle = client.resume("no-such-run")
        with pytest.raises(errors.NotFoundError):
            await handle
        m = client.metrics()
    assert m.outcome_unknown == 1
    assert m.runs_started == 0
    assert m.runs_lost == 1
    assert m.errors_by_code == {"outcome_unknown": 1, "not_found": 1}


def test_latency_memory_is_bounded_and_percentiles_are_close():
    clock = FakeClock()
    recorder = Recorder(clock)
    for i in range(50_000):
        recorder._sample(i / 50_000)
    assert len(recorder._reservoir) == RESERVOIR_SIZE
    m = recorder.snapshot(in_flight=0, limiter=za.Limiter(clock=clock).snapshot())
    assert m.latency_samples == 50_000
    assert m.latency_max == pytest.approx(49_999 / 50_000)
    assert m.latency_mean == pytest.approx(0.5, abs=1e-3)
    assert m.latency_p50 == pytest.approx(0.5, abs=0.05)
    assert m.latency_p95 == pytest.approx(0.95, abs=0.03)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.95) == 3.0


def test_event_url_has_no_credentials_and_no_callback_token():
    from zapier_async._metrics import safe_url
    from zapier_async._protocol import Request

    request = Request(
        method="GET",
        path="/v2/actions",
        endpoint="actions.list",
        query=(("app", "slack"), ("zapier_async_token", "cb-secret"), ("access_token", "t0k")),
    )
    url = safe_url("https://user:pw@api.zapier.com:8443/", request)
    assert url == "https://api.zapier.com:8443/v2/actions?app=slack&access_token=REDACTED"


def test_latency_buckets_are_cumulative_and_reported_waits_reach_events():
    from zapier_async._metrics import LATENCY_BUCKETS
    from zapier_async._protocol import Request, Response

    clock = FakeClock()
    recorder = Recorder(clock)
    for value in (0.05, 0.3, 0.3, 7.0, 10_000.0):
        recorder._sample(value)
    m = recorder.snapshot(in_flight=0, limiter=za.Limiter(clock=clock).snapshot())
    buckets = dict(m.latency_buckets)
    assert tuple(buckets) == LATENCY_BUCKETS
    assert buckets[0.1] == 1
    assert buckets[0.5] == 3
    assert buckets[10.0] == 4
    assert buckets[3600.0] == 4  # the 10,000 s one is only in +Inf (latency_samples)
    assert m.latency_samples == 5
    assert m.latency_sum == pytest.approx(10_007.65)

    events: list[za.Event] = []
    recorder.listeners.append(events.append)
    request = Request(method="GET", path="/v2/action-runs/r%201", endpoint="action_runs.get")
    recorder.limiter_waited(request, 0.25)
    recorder.response(request, Response(status=502), clock.monotonic(), "https://h")
    recorder.retry(request, 1, 502, None, paced=False)
    recorder.response(request, Response(status=200), clock.monotonic(), "https://h")
    first, retry, second = events
    assert isinstance(first, za.RequestEvent)
    assert isinstance(second, za.RequestEvent)
    assert isinstance(retry, za.RetryEvent)
    assert first.run_id == second.run_id == "r 1"
    assert first.limiter_wait == 0.25
    assert second.limiter_wait is None
    assert (first.resend_count, second.resend_count) == (0, 1)
    assert first.request_id == second.request_id == retry.request_id
    assert recorder.snapshot(
        in_flight=0, limiter=za.Limiter(clock=clock).snapshot()
    ).responses_by_endpoint == {"action_runs.get": {200: 1, 502: 1}}


@pytest.mark.asyncio
async def test_per_credential_figures_are_off_by_default_and_bounded_when_on():
    from zapier_async.testing import FakeZapier

    done = {"__fake__": {"results": [{"ok": True}]}}
    failed = {"__fake__": {"status": "error"}}
    async with FakeZapier(seed=1) as fake, client_for(fake) as client:
        recorder = client._engine.metrics
        assert recorder.credential_metrics(None) is None  # off: nothing per user
        recorder.track_credentials(3)
        users = [za.BearerToken(f"user-token-{i}") for i in range(5)]
        views = [client.with_auth(u) for u in users]
        for view in views:
            await (await view.run("core:x", authentication=None, inputs=done))
        with pytest.raises(za.RunFailedError):
            await (await views[4].run("core:x", authentication=None, inputs=failed))
        last = recorder.credential_metrics(views[4].bucket_id)
        assert last is not None
        assert (last.runs_started, last.runs_succeeded, last.runs_failed) == (2, 1, 1)
        assert last.latency_mean is not None
        assert last.latency_max >= last.latency_mean
        assert (last.tracked, last.evicted) == (3, 2)
        first = recorder.credential_metrics(views[0].bucket_id)
        assert first is not None
        assert first.runs_started == 0  # evicted: reads as zeros
        with pytest.raises(za.InvalidRequestError):
            recorder.track_credentials(-1)
        recorder.track_credentials(1)
        shrunk = recorder.credential_metrics(views[4].bucket_id)
        assert shrunk is not None
        assert (shrunk.tracked, shrunk.evicted, shrunk.runs_started) == (1, 4, 2)


def test_a_run_read_ended_twice_is_counted_once():
    # Two reads of one run in flight at once (a planned read and a read ahead of plan, or a
    # callback and a read) both find it ended: one run ended, not two (the demo once
    # counted 28 succeeded + 4 failed for 30 runs).
    from zapier_async._handle import RunHandle
    from zapier_async._protocol import RunLocator

    recorder = Recorder(FakeClock())
    handle = RunHandle(RunLocator(kind="action_run", run_id="r1"), None, created_at=0.0)  # type: ignore[arg-type]
    ended = za.Run(id="r1", status=za.RunStatus.SUCCESS)
    recorder.run_read(handle, za.RunStatus.WAITING, ended)
    recorder.run_read(handle, za.RunStatus.SUCCESS, ended)
    assert (recorder.runs_succeeded, recorder.runs_failed) == (1, 0)

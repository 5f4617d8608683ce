"""The poller and RunHandle, driven by a FakeClock and a scripted poll function."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable

import pytest
import pytest_asyncio
from _util import drive, eventually, until

from zapier_async import errors
from zapier_async._clock import SystemClock
from zapier_async._handle import RunHandle
from zapier_async._protocol import RunLocator
from zapier_async._scheduler import POLL_TASK_NAME, POLLER_TASK_NAME, Poller
from zapier_async.models import Run, RunStatus
from zapier_async.testing import FakeClock
from zapier_async.testing._clock import settle


class Script:
    """A poll function that records calls and answers from a per-run script."""

    def __init__(self, clock: FakeClock, poller_ref: Callable[[], Poller]) -> None:
        self.clock = clock
        self.poller_ref = poller_ref
        self.calls: list[tuple[float, str, bool]] = []
        self.answers: dict[str, list[RunStatus]] = {}
        self.every = 1.0
        self.gate: asyncio.Event | None = None
        self.active = 0
        self.max_active = 0

    async def __call__(self, handle: RunHandle) -> None:
        self.calls.append((self.clock.monotonic(), handle.id, handle.awaited))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answers = self.answers.get(handle.id, [RunStatus.SUCCESS])
            status = answers.pop(0) if len(answers) > 1 else answers[0]
            handle._update(Run(id=handle.id, status=status))
            if not handle.done():
                self.poller_ref().schedule(handle, self.every)
        finally:
            self.active -= 1


@pytest.fixture
def clock():
    return FakeClock()


@pytest_asyncio.fixture
async def rig(clock):
    poller: Poller
    script = Script(clock, lambda: poller)
    poller = Poller(clock=clock, poll=script, max_concurrent_polls=4)
    yield poller, script
    await poller.aclose()


def track(poller: Poller, clock: FakeClock, run_id: str, delay: float) -> RunHandle:
    handle = RunHandle(
        RunLocator(kind="action_run", run_id=run_id), poller, created_at=clock.monotonic()
    )
    poller.schedule(handle, delay)
    return handle


def tasks_named(name: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


@pytest.mark.asyncio
async def test_polls_fire_in_due_order_at_due_time(rig, clock):
    poller, script = rig
    track(poller, clock, "late", 3.0)
    track(poller, clock, "early", 1.0)
    track(poller, clock, "mid", 2.0)
    await clock.advance(0.5)
    assert script.calls == []
    await clock.advance(10)
    assert [(t, rid) for t, rid, _ in script.calls] == [(1.0, "early"), (2.0, "mid"), (3.0, "late")]


@pytest.mark.asyncio
async def test_an_earlier_timer_wakes_a_sleeping_runner(rig, clock):
    poller, script = rig
    track(poller, clock, "far", 100.0)
    await clock.advance(1)
    track(poller, clock, "near", 1.0)  # due at t=2, earlier than the runner's t=100 sleep
    await clock.advance(1.5)
    assert [rid for _, rid, _ in script.calls] == ["near"]


@pytest.mark.asyncio
async def test_status_is_live_without_anyone_awaiting(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCESS]
    handle = track(poller, clock, "r", 1.0)
    assert handle.status is RunStatus.WAITING
    await clock.advance(1)
    assert handle.status is RunStatus.QUEUED
    await clock.advance(1)
    assert handle.status is RunStatus.RUNNING
    await clock.advance(1)
    assert handle.status is RunStatus.SUCCESS
    assert handle.done()
    assert (await handle).status is RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_one_runner_task_for_ten_thousand_handles_and_it_exits_when_idle(rig, clock):
    poller, script = rig
    handles = [track(poller, clock, f"r{i}", 1.0 + i % 7) for i in range(10_000)]
    await settle()
    assert len(tasks_named(POLLER_TASK_NAME)) == 1
    assert len(tasks_named(POLL_TASK_NAME)) == 0  # nothing due yet: no poll tasks at all
    await clock.advance(1)
    assert len(tasks_named(POLLER_TASK_NAME)) == 1
    assert len(tasks_named(POLL_TASK_NAME)) <= 4
    await drive(clock, lambda: all(h.done() for h in handles))
    assert len(script.calls) == 10_000
    await settle()
    assert tasks_named(POLLER_TASK_NAME) == []
    assert not poller.running


@pytest.mark.asyncio
async def test_concurrency_is_bounded_and_awaited_handles_go_first(rig, clock):
    poller, script = rig
    script.gate = asyncio.Event()
    background = [track(poller, clock, f"bg{i}", 1.0) for i in range(10)]
    awaited = track(poller, clock, "hot", 1.0)
    waiter = asyncio.create_task(awaited.result())
    await settle()
    await clock.advance(1)
    assert script.max_active == 4
    first_four = [rid for _, rid, _ in script.calls]
    assert first_four[0] == "hot"
    assert script.calls[0][2] is True  # the poll knew someone awaits
    script.gate.set()
    await until(lambda: all(h.done() for h in background))
    assert (await waiter).status is RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_result_timeout_raises_but_polling_goes_on(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.WAITING] * 5 + [RunStatus.SUCCESS]
    handle = track(poller, clock, "r", 1.0)
    waiter = asyncio.create_task(handle.result(timeout=2.5))
    await clock.advance(2.5)
    with pytest.raises(errors.RunTimeoutError) as info:
        await waiter
    assert info.value.run_id == "r"
    assert info.value.status is RunStatus.WAITING
    assert info.value.timeout == 2.5
    assert not handle.done()
    await clock.advance(10)
    assert handle.done()
    assert (await handle.result(timeout=1)).status is RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_failed_run_raises_run_failed_error_carrying_the_run(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.ERROR]
    handle = track(poller, clock, "r", 1.0)
    await clock.advance(1)
    with pytest.raises(errors.RunFailedError) as info:
        await handle
    assert info.value.run.id == "r"
    assert info.value.run.status is RunStatus.ERROR
    assert handle.run is info.value.run


@pytest.mark.asyncio
async def test_cancel_stops_local_polling_and_detaches_waiters(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.WAITING]
    handle = track(poller, clock, "r", 1.0)
    waiter = asyncio.create_task(handle.result())
    await clock.advance(1)
    assert len(script.calls) == 1
    assert handle.cancel() is True
    assert handle.cancel() is False
    with pytest.raises(errors.RunDetachedError, match="cancelled"):
        await waiter
    await clock.advance(100)
    assert len(script.calls) == 1


@pytest.mark.asyncio
async def test_a_cancelled_awaiter_does_not_stop_the_run(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.WAITING, RunStatus.SUCCESS]
    handle = track(poller, clock, "r", 1.0)
    waiter = asyncio.create_task(handle.result())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await clock.advance(5)
    assert handle.done()
    assert handle.status is RunStatus.SUCCESS


@pytest.mark.asyncio
async def test_updates_yield_each_change_then_end(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.ERROR]
    handle = track(poller, clock, "r", 1.0)
    seen: list[RunStatus] = []

    async def consume() -> None:
        async for status in handle.updates():
            seen.append(status)

    consumer = asyncio.create_task(consume())
    await settle()
    await clock.run_until_idle()
    await consumer
    assert seen == [RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.ERROR]


@pytest.mark.asyncio
async def test_updates_raise_when_detached(rig, clock):
    poller, script = rig
    script.answers["r"] = [RunStatus.WAITING]
    handle = track(poller, clock, "r", 1.0)

    async def consume() -> list[RunStatus]:
        return [s async for s in handle.updates()]

    consumer = asyncio.create_task(consume())
    await clock.advance(1)
    handle.cancel()
    with pytest.raises(errors.RunDetachedError):
        await consumer


@pytest.mark.asyncio
async def test_done_callbacks_run_once_on_the_loop(rig, clock):
    poller, _ = rig
    handle = track(poller, clock, "r", 1.0)
    called: list[RunHandle] = []
    handle.add_done_callback(called.append)
    handle.add_done_callback(called.append)
    assert handle.remove_done_callback(called.append) == 2
    handle.add_done_callback(called.append)
    await clock.advance(1)
    assert called == [handle]
    handle.add_done_callback(called.append)  # already done: still called, soon
    await settle()
    assert called == [handle, handle]


@pytest.mark.asyncio
async def test_continuation_token_has_only_the_locator(rig, clock):
    poller, _ = rig
    handle = track(poller, clock, "run-7", 1.0)
    token = handle.continuation_token()
    assert token.startswith("za1.")
    assert "run-7" not in token  # opaque, but decodable by resume()
    assert pickle.loads(pickle.dumps(token)) == token


@pytest.mark.asyncio
async def test_callback_timers_run_on_the_clock_and_can_be_cancelled(rig, clock):
    poller, _ = rig
    fired: list[float] = []
    poller.call_later(2.0, lambda: fired.append(clock.monotonic()))
    cancelled = poller.call_later(1.0, lambda: fired.append(-1.0))
    cancelled.cancel()
    await clock.advance(5)
    assert fired == [2.0]


@pytest.mark.asyncio
async def test_a_raising_callback_is_logged_and_polling_continues(rig, clock, caplog):
    poller, _ = rig

    def boom() -> None:
        raise RuntimeError("bug")

    poller.call_later(1.0, boom)
    handle = track(poller, clock, "r", 2.0)
    await clock.advance(3)
    assert handle.done()
    assert "timer callback failed" in caplog.text


@pytest.mark.asyncio
async def test_aclose_cancels_in_flight_polls_and_the_runner(clock):
    gate = asyncio.Event()
    started = asyncio.Event()

    async def stuck(handle: RunHandle) -> None:
        started.set()
        await gate.wait()

    poller = Poller(clock=clock, poll=stuck)
    track(poller, clock, "r", 0.5)
    track(poller, clock, "s", 50)
    await clock.advance(1)
    assert started.is_set()
    assert poller.in_flight == 1
    await poller.aclose()
    assert poller.in_flight == 0
    assert tasks_named(POLL_TASK_NAME) == []
    assert tasks_named(POLLER_TASK_NAME) == []


@pytest.mark.asyncio
async def test_a_poll_due_now_with_a_free_slot_starts_without_the_runner(rig, clock):
    poller, script = rig
    script.gate = asyncio.Event()
    handle = track(poller, clock, "now", 0.0)
    # Started synchronously: a poll task exists and no runner was needed to start it.
    assert poller.in_flight == 1
    assert poller.scheduled == 0
    assert not poller.running
    await settle()
    assert script.calls == [(0.0, "now", False)]
    script.gate.set()
    await settle()
    assert handle.done()
    assert poller.in_flight == 0
    assert tasks_named(POLL_TASK_NAME) == []
    assert tasks_named(POLLER_TASK_NAME) == []


@pytest.mark.asyncio
async def test_a_poll_due_now_queues_behind_others_when_slots_are_full(rig, clock):
    poller, script = rig  # max_concurrent_polls=4
    script.gate = asyncio.Event()
    for i in range(4):
        track(poller, clock, f"busy{i}", 0.0)
    assert poller.in_flight == 4
    late = track(poller, clock, "late", 0.0)
    assert poller.in_flight == 4  # not a fifth: it waits for a slot in the heap
    await settle()
    assert [c[1] for c in script.calls] == ["busy0", "busy1", "busy2", "busy3"]
    script.gate.set()
    await until(lambda: late.done())
    assert [c[1] for c in script.calls][-1] == "late"
    assert script.max_active <= 4


@pytest.mark.asyncio
async def test_on_the_real_clock_an_earlier_timer_wakes_the_sleeping_runner():
    clock = SystemClock()
    polled: list[str] = []

    async def poll(handle: RunHandle) -> None:
        polled.append(handle.id)
        handle._update(Run(id=handle.id, status=RunStatus.SUCCESS))

    poller = Poller(clock=clock, poll=poll, max_concurrent_polls=1)
    try:

        def handle(run_id: str) -> RunHandle:
            return RunHandle(
                RunLocator(kind="action_run", run_id=run_id), poller, created_at=clock.monotonic()
            )

        late, busy, soon = handle("late"), handle("busy"), handle("soon")
        poller.schedule(late, 3600.0)  # the runner now sleeps for an hour ...
        await eventually(lambda: poller.running)
        poller.schedule(busy, 0.0)  # ... a free slot: started directly
        poller.schedule(soon, 0.05)  # ... an earlier timer must wake it
        await eventually(lambda: soon.done())
        assert polled == ["busy", "soon"]
        assert not late.done()
        assert poller.running  # asleep again, until the hour is up
    finally:
        await poller.aclose()
    assert tasks_named(POLLER_TASK_NAME) == []


@pytest.mark.asyncio
async def test_fake_clock_call_later_fires_on_advance_and_can_be_called_off():
    clock = FakeClock()
    calls: list[str] = []
    clock.call_later(2.0, lambda: calls.append("kept"))
    dropped = clock.call_later(1.0, lambda: calls.append("dropped"))
    clock.call_later(0.0, lambda: calls.append("now"))
    await settle()
    assert calls == ["now"]
    dropped.cancel()
    await clock.advance(1.5)
    assert calls == ["now"]
    await clock.advance(0.5)
    assert calls == ["now", "kept"]
    assert clock.sleepers == 0


class BucketScript:
    """Polls of runs named ``heavy-*`` wait for their budget (a gate); others answer at once."""

    def __init__(self, poller_ref: Callable[[], Poller]) -> None:
        self.poller_ref = poller_ref
        self.gate = asyncio.Event()
        self.waiting = 0
        self.light_done: list[str] = []

    async def __call__(self, handle: RunHandle) -> None:
        if handle.id.startswith("heavy"):
            self.waiting += 1
            await self.gate.wait()
            self.waiting -= 1
        else:
            self.light_done.append(handle.id)
        handle._update(Run(id=handle.id, status=RunStatus.SUCCESS))


@pytest.mark.asyncio
@pytest.mark.parametrize("per_bucket", [True, False])
async def test_one_buckets_waiting_polls_do_not_hold_back_another_buckets(clock, per_bucket):
    # Issue 16: the heavy user's polls all wait at the limiter for its own budget; with a cap
    # per bucket the light users' polls still start at once, without it they queue behind.
    poller: Poller
    script = BucketScript(lambda: poller)
    poller = Poller(
        clock=clock,
        poll=script,
        max_concurrent_polls=4,
        bucket_of=(lambda h: h.id.split("-")[0]) if per_bucket else None,
    )
    try:
        heavy = [track(poller, clock, f"heavy-{i}", 0.0) for i in range(10)]
        await settle()
        assert script.waiting == 4  # the heavy bucket's cap
        light = [track(poller, clock, f"light-{i}", 0.5) for i in range(6)]
        await clock.advance(1.0)
        await settle()
        if per_bucket:
            assert sorted(script.light_done) == sorted(h.id for h in light)
            assert all(h.done() for h in light)
        else:
            assert script.light_done == []  # stuck behind the heavy polls
        assert poller.in_flight == 4  # the heavy bucket's waiting polls only
        script.gate.set()
        await until(lambda: all(h.done() for h in heavy + light))
        await settle()
        assert poller.in_flight == 0
    finally:
        await poller.aclose()


@pytest.mark.asyncio
async def test_a_parked_handle_starts_when_its_bucket_frees_a_slot(clock):
    poller: Poller
    script = BucketScript(lambda: poller)
    poller = Poller(
        clock=clock, poll=script, max_concurrent_polls=2, bucket_of=lambda h: h.id.split("-")[0]
    )
    try:
        heavy = [track(poller, clock, f"heavy-{i}", 0.0) for i in range(5)]
        await clock.advance(0.1)
        await settle()
        assert script.waiting == 2
        assert poller.in_flight == 2  # the others are parked, not running
        script.gate.set()
        await until(lambda: all(h.done() for h in heavy))
        assert poller.polls_started == 5
    finally:
        await poller.aclose()


def test_the_total_cap_cannot_be_under_the_per_bucket_cap(clock):
    async def poll(handle: RunHandle) -> None:
        return None

    with pytest.raises(ValueError, match="max_total_polls"):
        Poller(clock=clock, poll=poll, max_concurrent_polls=8, max_total_polls=4)


@pytest.mark.asyncio
async def test_a_parked_handle_rescheduled_meanwhile_does_not_strand_the_others(clock):
    # Parked handles are started from their bucket's queue whenever it has a free slot; one
    # that was rescheduled (or ended) while parked is skipped without losing the slot.
    poller: Poller
    script = BucketScript(lambda: poller)
    poller = Poller(
        clock=clock, poll=script, max_concurrent_polls=1, bucket_of=lambda h: h.id.split("-")[0]
    )
    try:
        first = track(poller, clock, "heavy-0", 0.0)
        await settle()
        parked = [track(poller, clock, f"heavy-{i}", 0.0) for i in (1, 2, 3)]
        await clock.advance(0.1)
        await settle()
        assert poller.in_flight == 1
        poller.schedule(parked[0], 50.0)  # rescheduled while parked
        script.gate.set()
        await until(lambda: first.done() and parked[1].done() and parked[2].done())
        assert not parked[0].done()  # its own timer has not fired yet
        await clock.advance(50.0)
        await until(parked[0].done)
    finally:
        await poller.aclose()

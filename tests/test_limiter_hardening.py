"""Limiter hardening (issue 14): cancelled waiters, capped server waits, lone 503s."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web  # noqa: TID251 (a misbehaving server on loopback)

import zapier_async as za
from zapier_async._limiter import Limiter, Priority, Slot
from zapier_async._ratelimit import DEFAULT_MAX_SERVER_WAIT
from zapier_async.errors import InvalidRequestError, RateLimitedError
from zapier_async.testing import FakeClock

INTERACTIVE, POLL, BULK = Priority.INTERACTIVE, Priority.POLL, Priority.BULK
WALL = 1_700_000_000.0  # FakeClock's default wall clock at t=0


def budget(remaining: int, reset: str = "30", limit: int = 50) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset,
    }


async def settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


class Holder:
    """A task that takes a slot and keeps it until told to leave."""

    def __init__(
        self, limiter: Limiter, priority: Priority = INTERACTIVE, *, max_wait: Any = None
    ) -> None:
        self.limiter = limiter
        self.priority = priority
        self.slot: Slot | None = None
        self.leave = asyncio.Event()
        self.task = asyncio.create_task(self._run(priority, max_wait))

    async def _run(self, priority: Priority, max_wait: Any) -> None:
        async with self.limiter.slot(priority, max_wait=max_wait) as slot:
            self.slot = slot
            await self.leave.wait()

    @property
    def granted(self) -> bool:
        return self.slot is not None


async def finish(*holders: Holder) -> list[BaseException | None]:
    for h in holders:
        h.leave.set()
    results = await asyncio.gather(*(h.task for h in holders), return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


# ------------------------------------------------------------------ item 2: cancelled waiters


@pytest.mark.asyncio
@pytest.mark.parametrize("priority", [INTERACTIVE, BULK])
async def test_waiters_cancelled_in_the_dispatching_iteration_get_no_slot(priority) -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.granted
        assert limiter.snapshot().mode == "probe"
        waiters = [Holder(limiter, priority) for _ in range(5)]
        await settle()
        assert limiter.waiting == 5
        # The callers give up, and in the same loop iteration (before their tasks run) the
        # probe's answer arrives: the dispatch it triggers must skip them, and must not raise.
        for w in waiters:
            w.task.cancel()
        assert probe.slot is not None
        probe.slot.record(200, budget(40))
        await settle()
        assert all(w.task.cancelled() for w in waiters)
        assert not any(w.granted for w in waiters)
        assert (limiter.in_flight, limiter.waiting) == (0, 0)
        assert limiter.snapshot().cancelled == 5
        assert limiter.snapshot().grants == 1
        # A later caller is served at once: nothing was left counted.
        later = Holder(limiter)
        await settle()
        assert later.granted
        await finish(probe, later)
        assert limiter.in_flight == 0


@pytest.mark.asyncio
async def test_a_cancelled_waiter_does_not_take_the_probe() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        first, second = Holder(limiter), Holder(limiter)
        await settle()
        first.task.cancel()
        assert probe.slot is not None
        probe.slot.record(None, {})  # no answer: still probing, the next in line probes
        await settle()
        assert first.task.cancelled()
        assert second.slot is not None
        assert second.slot.probe
        assert limiter.in_flight == 1
        second.slot.record(200, {})
        await finish(probe, second)
        assert (limiter.in_flight, limiter.waiting) == (0, 0)


class JumpClock:
    """A FakeClock whose time can also jump without waking anybody (no loop turn between)."""

    def __init__(self) -> None:
        self.inner = FakeClock()
        self.skew = 0.0

    def monotonic(self) -> float:
        return self.inner.monotonic() + self.skew

    def time(self) -> float:
        return self.inner.time() + self.skew

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Any:
        return self.inner.call_later(seconds, callback)


@pytest.mark.asyncio
async def test_waiters_cancelled_as_their_max_wait_expires_are_not_failed_twice() -> None:
    clock = JumpClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        waiters = [Holder(limiter, max_wait=5.0) for _ in range(3)]
        await settle()
        for w in waiters:
            w.task.cancel()
        clock.skew = 6.0  # their deadlines pass in this same iteration...
        assert probe.slot is not None
        probe.slot.record(None, {})  # ... and a dispatch runs: it must not raise
        await settle()
        assert all(w.task.cancelled() for w in waiters)
        snap = limiter.snapshot()
        assert (snap.expired, snap.cancelled, snap.waiting, snap.in_flight) == (0, 3, 0, 0)
        later = Holder(limiter, max_wait=None)
        await settle()
        assert later.granted
        await finish(probe, later)
        assert limiter.in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", range(8))
async def test_a_cancellation_storm_leaves_nothing_counted(seed: int) -> None:
    """Random callers, random answers, random cancels landing in the dispatching iteration."""
    rng = random.Random(seed)
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        holders: list[Holder] = []
        for _ in range(80):
            for _ in range(rng.randint(0, 4)):
                priority = rng.choice([INTERACTIVE, POLL, BULK])
                holders.append(Holder(limiter, priority, max_wait=rng.choice([None, 3.0])))
            await settle(rng.randint(0, 3))
            waiting = [h for h in holders if not h.granted and not h.task.done()]
            waiting.sort(key=lambda h: h.priority)  # stable: next in line first
            for h in waiting[: rng.randint(0, 3)]:
                h.task.cancel()  # gives up; its task has not run yet
            granted = [h for h in holders if h.slot is not None and not h.leave.is_set()]
            for h in rng.sample(granted, k=min(len(granted), rng.randint(0, 2))):
                assert h.slot is not None
                remaining = rng.randint(0, 5)
                status = rng.choice([200, 200, 200, 429, 503])
                headers = {**budget(remaining, reset="2"), "Retry-After": "1"}
                h.slot.record(status, headers)  # dispatches now: must not raise
                h.leave.set()
            if rng.random() < 0.3:
                await clock.advance(rng.choice([0.5, 1.0, 2.5]))
        # Everybody left ends: granted ones leave, the rest are served or fail typed.
        for _ in range(10_000):
            for h in holders:
                if h.slot is not None:
                    h.leave.set()
            await settle(5)
            if all(h.task.done() for h in holders):
                break
            deadline = clock.next_deadline()
            if deadline is not None:
                await clock.advance_to(deadline)
        assert all(h.task.done() for h in holders)
        for h in holders:
            if not h.task.cancelled():
                exc = h.task.exception()
                assert exc is None or isinstance(exc, RateLimitedError), exc
        snap = limiter.snapshot()
        assert (snap.in_flight, snap.waiting) == (0, 0)
        assert snap.grants == sum(1 for h in holders if h.slot is not None)
        late = Holder(limiter, max_wait=None)
        for _ in range(100):
            await settle(5)
            if late.granted:
                break
            deadline = clock.next_deadline()
            assert deadline is not None
            await clock.advance_to(deadline)
        assert late.granted
        await finish(late)
        assert limiter.in_flight == 0


# A server that reports its budget, and a cold client whose callers give up at once.


@pytest_asyncio.fixture
async def budget_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"creates": 0, "hold_first": asyncio.Event(), "first_in": None}
    state["first_in"] = asyncio.Event()

    async def create(request: web.Request) -> web.Response:
        state["creates"] += 1
        n = state["creates"]
        if n == 1:
            state["first_in"].set()
            await state["hold_first"].wait()
        headers = {
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": str(1000 - n),
            "X-RateLimit-Reset": "60",
        }
        return web.json_response({"data": {"type": "run", "id": f"run-{n}"}}, headers=headers)

    async def read(request: web.Request) -> web.Response:
        return web.json_response(
            {"data": {"type": "run", "status": "waiting", "results": [], "errors": []}},
            headers={"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "900"},
        )

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_post("/v2/action-runs", create)
    app.router.add_get("/v2/action-runs/{id}", read)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", state
    finally:
        state["hold_first"].set()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_callers_giving_up_while_a_cold_client_probes_do_not_wedge_it(budget_server):
    url, state = budget_server
    visitors: list[asyncio.Task[Any]] = []

    def on_event(event: object) -> None:
        # The first create's answer is in: the five visitors give up in this very loop
        # iteration, before the client records the answer and hands the next slots out.
        if isinstance(event, za.RequestEvent) and event.status == 200 and visitors:
            for task in visitors:
                task.cancel()
            visitors.clear()

    async with za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=url,
        max_rate_limit_wait=10.0,
        on_event=on_event,
        poll_policy=za.PollPolicy(initial=60.0, cap=60.0),
    ) as client:

        async def visit(i: int) -> str:
            # No cap: the callers wait in the limiter's line (with one, admission control
            # would hold them before it until the probe's answer: tests/test_admission.py).
            handle = await client.run(
                "core:x", authentication=None, inputs={"i": i}, max_rate_limit_wait=None
            )
            return handle.id

        first = asyncio.create_task(visit(0))
        await asyncio.wait_for(state["first_in"].wait(), 10)
        late = [asyncio.create_task(visit(i)) for i in range(1, 6)]
        visitors.extend(late)
        await settle()
        assert client._limiter.waiting == 5  # type: ignore[attr-defined]
        state["hold_first"].set()
        assert await asyncio.wait_for(first, 10) == "run-1"  # no InvalidStateError
        results = await asyncio.gather(*late, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        # Later visitors reach the server and succeed (not RateLimitedError forever).
        ids = await asyncio.wait_for(asyncio.gather(*(visit(i) for i in range(6, 10))), timeout=10)
        assert sorted(ids) == ["run-2", "run-3", "run-4", "run-5"]
        assert state["creates"] == 5
        assert client._limiter.snapshot().cancelled == 5  # type: ignore[attr-defined]


# ------------------------------------------------------------------ item 8: one cap on waits

FAR = 253402300799.0  # 9999-12-31T23:59:59Z


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


# (status, headers, the time the server named)
DICTATED_PAST_THE_CAP = [
    pytest.param(429, {"Retry-After": "1000000000000"}, WALL + 1e12, id="429-retry-after-1e12"),
    pytest.param(429, {"Retry-After": http_date(FAR)}, FAR, id="429-retry-after-9999"),
    pytest.param(
        429,
        {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(FAR)},
        FAR + 1,
        id="429-reset-9999",
    ),
    pytest.param(
        503,
        {"Retry-After": "1000000000000", "X-RateLimit-Remaining": "0"},
        WALL + 1e12,
        id="503-spent-retry-after-1e12",
    ),
    pytest.param(
        200,
        {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(FAR)},
        FAR + 1,
        id="200-nothing-left-reset-9999",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "headers", "named"), DICTATED_PAST_THE_CAP)
async def test_a_wait_dictated_past_the_cap_fails_every_priority_at_once(
    status: int, headers: Mapping[str, str], named: float
) -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock) as limiter:  # the default cap: 900 s
        probe = Holder(limiter)
        await settle()
        queued = [Holder(limiter, p) for p in (INTERACTIVE, POLL, BULK)]
        await settle()
        assert probe.slot is not None
        probe.slot.record(status, headers)
        await settle()
        # Those in line fail at once, whatever their priority and max_wait (None here) ...
        for h in queued:
            assert h.task.done()
            with pytest.raises(RateLimitedError) as info:
                await h.task
            assert info.value.retry_at == pytest.approx(named)  # the server's time, honest
        # ... and so do new requests, without waiting.
        for priority in (INTERACTIVE, POLL, BULK):
            with pytest.raises(RateLimitedError) as info:
                async with limiter.slot(priority, max_wait=None):
                    pytest.fail("granted")
            assert info.value.retry_at == pytest.approx(named)
            assert info.value.retry_after > DEFAULT_MAX_SERVER_WAIT
            assert info.value.reason == "max_server_wait"
        assert limiter.snapshot().rejected == 6
        # Nothing is held for a day: once the cap has passed, one request probes again.
        await clock.advance(DEFAULT_MAX_SERVER_WAIT + 2.0)
        again = Holder(limiter)
        await settle()
        assert again.granted
        assert again.slot is not None
        assert again.slot.probe
        await finish(probe, again)
        assert (limiter.in_flight, limiter.waiting) == (0, 0)


@pytest.mark.asyncio
async def test_a_wait_within_the_cap_is_waited_for() -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock, max_server_wait=120.0) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        assert probe.slot.record(429, {"Retry-After": "100"}) is True
        assert limiter.frozen_until == 100.0
        waiter = Holder(limiter, BULK)
        await settle()
        assert not waiter.task.done()
        await clock.advance(100.0)
        await settle()
        assert waiter.granted
        await finish(probe, waiter)


@pytest.mark.asyncio
async def test_max_server_wait_is_the_limiters_knob() -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock, max_server_wait=60.0) as limiter:
        assert limiter.max_server_wait == 60.0
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        probe.slot.record(429, {"Retry-After": "61"})
        assert limiter.frozen_until == 60.0  # held for the cap only ...
        with pytest.raises(RateLimitedError) as info:  # ... failing meanwhile
            async with limiter.slot(BULK, max_wait=None):
                pytest.fail("granted")
        assert info.value.retry_at == pytest.approx(WALL + 61.0)
        await finish(probe)


@pytest.mark.asyncio
async def test_freeze_past_the_cap_fails_requests_instead_of_holding_them() -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock) as limiter:
        limiter.freeze(86_400.0)
        assert limiter.frozen_until == DEFAULT_MAX_SERVER_WAIT
        with pytest.raises(RateLimitedError) as info:
            async with limiter.slot(POLL, max_wait=None):
                pytest.fail("granted")
        assert info.value.retry_at == pytest.approx(WALL + 86_400.0)
        limiter.freeze(10.0)  # a shorter freeze does not lift the refusal
        with pytest.raises(RateLimitedError):
            async with limiter.slot(POLL, max_wait=None):
                pytest.fail("granted")
        await clock.advance(DEFAULT_MAX_SERVER_WAIT)
        async with limiter.slot(POLL, max_wait=None) as slot:
            assert slot.probe


@pytest.mark.asyncio
async def test_a_far_reset_with_budget_left_paces_to_the_cap() -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock, max_server_wait=100.0) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        probe.slot.record(200, budget(9, reset=str(FAR), limit=10))
        snap = limiter.snapshot()
        assert snap.mode == "window"
        assert snap.reset_in is not None
        assert snap.reset_in <= 100.0 + 2.0  # not a day, let alone 8,000 years
        # The nine requests left go out within the capped horizon; none fails.
        holders = [Holder(limiter, BULK) for _ in range(9)]
        await settle()
        while not all(h.granted for h in holders):
            deadline = clock.next_deadline()
            assert deadline is not None
            assert deadline <= 100.0 + 2.0
            await clock.advance_to(deadline)
            await settle()
        assert not any(h.task.done() for h in holders)  # granted, not failed
        await finish(probe, *holders)


@pytest.mark.asyncio
async def test_a_far_reset_stops_counting_once_a_fresh_answer_is_within_the_cap() -> None:
    clock = FakeClock(wall_start=WALL)
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        probe.slot.record(200, budget(2, reset=str(FAR), limit=10))
        a, b = Holder(limiter), Holder(limiter)
        await settle()
        while not b.granted:  # paced over the capped horizon
            deadline = clock.next_deadline()
            assert deadline is not None
            assert deadline <= DEFAULT_MAX_SERVER_WAIT + 2.0
            await clock.advance_to(deadline)
            await settle()
        assert a.slot is not None
        assert b.slot is not None
        a.slot.record(200, budget(1, reset="30", limit=10))
        b.slot.record(200, budget(0, reset="30", limit=10))
        # Nothing left, but the window ends in 30 s by the latest answers: wait, not fail.
        late = Holder(limiter, max_wait=None)
        await settle()
        assert not late.task.done()
        await clock.advance(40.0)
        await settle()
        assert late.granted
        await finish(probe, a, b, late)


@pytest.mark.parametrize("value", [0.0, -5.0, math.nan, math.inf, 86_401.0])
def test_max_server_wait_is_validated_at_construction(value: float) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Limiter(max_server_wait=value)
    assert info.value.field == "max_server_wait"


def test_the_limiters_arguments_fail_typed() -> None:
    with pytest.raises(InvalidRequestError):
        Limiter(max_wait=-1.0)
    with pytest.raises(InvalidRequestError):
        Limiter(rate=(0, 1.0))
    with pytest.raises(InvalidRequestError):
        Limiter(default_cooldown=0.0)


# ------------------------------------------------------------------ "Also": a lone 503


@pytest.mark.asyncio
async def test_a_lone_503_does_not_freeze_the_bucket() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        probe.slot.record(200, budget(40))
        a, b = Holder(limiter), Holder(limiter)
        await settle()
        assert a.slot is not None
        assert b.slot is not None
        assert a.slot.record(503, {**budget(39), "Retry-After": "1"}) is False
        assert limiter.frozen_until is None
        # The others keep going: a second caller is granted without waiting for a second.
        c = Holder(limiter)
        await settle()
        assert c.granted
        assert b.slot.record(200, budget(38)) is False
        await finish(probe, a, b, c)
        assert limiter.snapshot().freezes == 0


@pytest.mark.asyncio
async def test_a_503_saying_the_budget_is_spent_freezes_it() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        assert probe.slot.record(503, {**budget(0), "Retry-After": "5"}) is True
        assert limiter.frozen_until == 5.0
        await finish(probe)


@pytest.mark.asyncio
async def test_503s_in_a_row_freeze_the_bucket_and_any_other_answer_breaks_the_run() -> None:
    clock = FakeClock()
    unavailable = {"Retry-After": "4"}
    async with Limiter(clock=clock, rate=(100, 1.0)) as limiter:  # open: no probing
        holders = [Holder(limiter) for _ in range(7)]
        await settle()
        slots = [h.slot for h in holders]
        assert all(s is not None for s in slots)
        froze = [
            slots[0].record(503, unavailable),  # type: ignore[union-attr]
            slots[1].record(503, unavailable),  # type: ignore[union-attr]
            slots[2].record(200, {}),  # type: ignore[union-attr]  (breaks the run)
            slots[3].record(503, unavailable),  # type: ignore[union-attr]
            slots[4].record(None, {}),  # type: ignore[union-attr]  (no answer: neutral)
            slots[5].record(503, unavailable),  # type: ignore[union-attr]
        ]
        assert froze == [False] * 6
        assert limiter.frozen_until is None
        assert slots[6].record(503, unavailable) is True  # type: ignore[union-attr]
        assert limiter.frozen_until == 4.0
        await finish(*holders)


@pytest.mark.asyncio
async def test_a_5xx_without_budget_headers_does_not_end_probing() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        probe = Holder(limiter)
        await settle()
        assert probe.slot is not None
        probe.slot.record(503, {"Retry-After": "1"})  # a proxy's error page
        assert limiter.snapshot().mode == "probe"
        a, b = Holder(limiter), Holder(limiter)
        await settle()
        assert (a.granted, b.granted) == (True, False)  # still one at a time
        assert a.slot is not None
        a.slot.record(200, {})  # the API itself says nothing: open
        await settle()
        assert b.granted
        assert limiter.snapshot().mode == "open"
        await finish(probe, a, b)

"""Limiter hardening (issue 14): cancelled waiters, capped server waits, lone 503s."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web  # noqa: TID251 (a misbehaving server on loopback)

import zapier_async as za
from zapier_async._limiter import Limiter, Priority, Slot
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
        assert probe.granted and limiter.snapshot().mode == "probe"
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
        assert second.granted and second.slot is not None and second.slot.probe
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
            handle = await client.run("core:x", authentication=None, inputs={"i": i})
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

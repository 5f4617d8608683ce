"""A rate learnt from 429s (`zapier_async._learnt`), end to end: a `FakeZapier` that, as
Zapier's Partner OpenAPI declares it, puts the ``X-RateLimit-*`` headers on its 429s only
(``rate_limit_headers="on_429"``), on a `FakeClock`. The first 429 cannot be avoided without
``rate_limit=``; the ones after it can. (The pure rules: tests/test_budget.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from _util import client_for

import zapier_async as za
from zapier_async.testing import FakeClock, FakeZapier

WALL = 1_700_000_003.7  # not on a window's boundary


def on_429_server(clock: FakeClock, limit: int, window: float, **knobs: Any) -> FakeZapier:
    return FakeZapier(
        seed=1,
        clock=clock,
        rate_limit=(limit, window),
        rate_limit_headers="on_429",
        reset_format="delta",
        durations=(0.5, 1.5),
        **knobs,
    )


async def _bulk_job(
    limit: int, window: float, runs: int, *, step: float, **knobs: Any
) -> tuple[float, int, za.Pressure]:
    """``runs`` runs through ``run_many(concurrency=50)``: wall time, 429s, and the pressure
    of the client's budget at the end."""
    clock = FakeClock(wall_start=WALL)
    async with (
        on_429_server(clock, limit, window, **knobs) as fake,
        client_for(fake, clock=clock, poll_policy=za.PollPolicy()) as client,
    ):
        requests = [
            za.RunRequest(action="core:bulk", authentication=None, inputs={"i": i}, key=i)
            for i in range(runs)
        ]

        async def job() -> list[za.RunOutcome[Any]]:
            async with client.run_many(requests, concurrency=50) as outcomes:
                return [outcome async for outcome in outcomes]

        started = clock.monotonic()
        task = asyncio.ensure_future(job())
        while not task.done():
            await clock.advance(step)
        assert all(outcome.ok for outcome in task.result())
        return clock.monotonic() - started, fake.stats.rate_limited, client.limiter.pressure()


@pytest.mark.asyncio
async def test_a_bulk_job_is_refused_in_its_first_window_only():
    # 50 per 10 s, windows from their first request, no cool-down: 200 runs in 8 windows.
    # Before, every window began with a burst in open mode and ended with a freeze: 56 429s
    # (42 to 62 over server variants); now the first burst's, and nothing after it.
    wall, refused, pressure = await _bulk_job(50, 10.0, 200, step=0.01)
    assert refused <= 2
    assert wall <= 85.0
    assert (pressure.mode, pressure.limit) == ("open", 50)
    assert pressure.period == pytest.approx(10.0, abs=0.1)


@pytest.mark.asyncio
async def test_the_workflow_apis_cool_down_is_paid_once():
    # 150 per 60 s with a 60 s cool-down after a 429 (the Workflow API): 300 runs. Before:
    # 5 429s, each a 60 s freeze, 305 s and 894 requests; now 1, 247 s and 668 requests (the
    # planner prices polls by the rate learnt).
    wall, refused, pressure = await _bulk_job(150, 60.0, 300, step=0.05, cooldown_after_429=60.0)
    assert refused <= 1
    assert wall <= 260.0
    assert pressure.limit == 150
    assert pressure.period == pytest.approx(61.0, abs=0.5)  # + the first burst's length


@pytest.mark.asyncio
async def test_web_callers_after_a_429_are_answered_in_time_or_refused_at_once():
    # A request handler's `run(timeout=5)` then `await handle`, 100 at once, on a client that
    # has been refused once (50 per 10 s). Before: every caller was admitted (open mode),
    # half were refused by the server and half timed out waiting for reads the frozen
    # budget could not send: 0 answered. Now the budget before each deadline is known:
    # those it covers (create and reads) are answered in time, the others fail at once.
    clock = FakeClock(wall_start=WALL)
    async with (
        on_429_server(clock, 50, 10.0) as fake,
        client_for(fake, clock=clock, poll_policy=za.PollPolicy()) as client,
    ):

        async def prime(i: int) -> None:
            with contextlib.suppress(za.RateLimitedError):  # once the rate is learnt
                handle = await client.run("core:prime", authentication=None, inputs={"i": i})
                await handle

        primed = asyncio.gather(*(prime(i) for i in range(60)))
        while not primed.done():
            await clock.advance(0.01)
        await primed
        assert fake.stats.rate_limited > 0
        assert client.limiter.pressure().limit == 50
        await clock.advance(15.0)  # the learnt log has room again
        refused_before = fake.stats.rate_limited
        outcomes: list[tuple[str, float]] = []

        async def caller(i: int) -> None:
            started = clock.monotonic()
            try:
                handle = await client.run(
                    "core:web", authentication=None, inputs={"i": i}, timeout=5.0
                )
                await handle
                outcomes.append(("answered", clock.monotonic() - started))
            except za.RateLimitedError:
                outcomes.append(("refused", clock.monotonic() - started))
            except za.RunTimeoutError:
                outcomes.append(("timeout", clock.monotonic() - started))

        callers = asyncio.gather(*(caller(i) for i in range(100)))
        while not callers.done():
            await clock.advance(0.01)
        await callers
        kinds = [kind for kind, _ in outcomes]
        assert kinds.count("timeout") == 0
        assert kinds.count("answered") >= 10
        assert kinds.count("answered") + kinds.count("refused") == 100
        assert max(t for kind, t in outcomes if kind == "answered") <= 5.0
        assert max(t for kind, t in outcomes if kind == "refused") == 0.0  # at once
        assert fake.stats.rate_limited == refused_before

"""The scenario table (tests/limiter_scenarios.py) against `RedisLimiter`: one limiter per
simulated process on one real redis-server, all on one `FakeClock` (its ``time()`` is the
shared clock); losing the state is ``FLUSHALL``."""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Hashable
from typing import Any

import attrs
import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from limiter_scenarios import (  # noqa: E402
    KNIFE_EDGE_SCENARIOS,
    SCENARIOS,
    SPEND_SCENARIOS,
    LimiterUnderTest,
    Outcome,
    Scenario,
    run_async,
)

from zapier_async.redis import RedisLimiter  # noqa: E402
from zapier_async.testing import FakeClock  # noqa: E402
from zapier_async.testing._clock import settle  # noqa: E402


class _Keyed:
    """One `RedisLimiter` seen through one of its keys."""

    def __init__(self, limiter: RedisLimiter, key: Hashable) -> None:
        self.limiter, self.key = limiter, key

    def slot(self, priority, *, max_wait=None):  # type: ignore[no-untyped-def]
        return self.limiter.slot(priority, max_wait=max_wait, key=self.key)

    async def aclose(self) -> None:
        await self.limiter.aclose()


def _inner(limiter: LimiterUnderTest) -> RedisLimiter:
    inner = limiter.limiter if isinstance(limiter, _Keyed) else limiter
    assert isinstance(inner, RedisLimiter)
    return inner


def _busy(limiters: list[RedisLimiter]) -> bool:
    return any(lim.busy for lim in limiters)


def _hold_time_during_round_trips(clock: FakeClock, limiters: list[RedisLimiter]) -> None:
    """A Redis round trip takes no simulated time: the `FakeClock` does not move while one
    is out (nor while a limiter has work pending), at any step of ``advance_to``, and the
    harness sees a deadline "now" meanwhile (else it would find nobody sleeping and stop)."""
    plain_deadline = clock.next_deadline

    def next_deadline() -> float | None:
        if _busy(limiters):
            return float(clock.monotonic())
        deadline: float | None = plain_deadline()
        return deadline

    async def quiet() -> None:
        await settle()
        while _busy(limiters):
            await asyncio.sleep(0)  # the reply comes in on a later turn of the loop
            await settle()

    async def advance_to(target: float) -> None:
        await quiet()
        while (deadline := plain_deadline()) is not None and deadline <= target:
            _, _, fut = heapq.heappop(clock._sleepers)
            clock._now = max(clock._now, deadline)
            fut.set_result(None)
            await quiet()
        clock._now = max(clock._now, target)
        await quiet()

    clock.next_deadline = next_deadline  # type: ignore[method-assign]
    clock.advance_to = advance_to  # type: ignore[method-assign]


async def run_on_redis(
    scenario: Scenario, url: str, *, key: Hashable = None, **options: Any
) -> tuple[Outcome, list[RedisLimiter]]:
    """Run one scenario, one `RedisLimiter` (and one Redis connection) per process."""
    clients: list[aioredis.Redis] = []
    made: list[RedisLimiter] = []

    def factory(clock: Any, process: int) -> LimiterUnderTest:
        if not made:
            _hold_time_during_round_trips(clock, made)
        client = aioredis.from_url(url, socket_timeout=10)
        clients.append(client)
        limiter = RedisLimiter(client, name=name, clock=clock, **options)
        made.append(limiter)
        return limiter if key is None else _Keyed(limiter, key)

    async def forget(limiters: list[LimiterUnderTest]) -> None:
        await clients[0].flushall()

    # A budget left in Redis by an earlier run (same server) would carry its times over.
    name = f"scenario-{uuid.uuid4().hex}"
    try:
        outcome = await run_async(scenario, factory, forget=forget)
    finally:
        for client in clients:
            await client.aclose()
    return outcome, made


def _report(scenario: Scenario, outcome: Outcome, limiters: list[RedisLimiter]) -> None:
    trips = sum(lim.round_trips for lim in limiters)
    conflicts = sum(lim.conflicts for lim in limiters)
    print(
        f"\n{scenario.name}: {outcome.ratio:.3f}x the minimum, {outcome.refused} 429s, "
        f"{trips / max(outcome.sent, 1):.2f} round trips and "
        f"{conflicts / max(outcome.sent, 1):.2f} conflicts per request"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_the_redis_limiter_keeps_every_scenario(redis_server, scenario: Scenario) -> None:
    outcome, limiters = await run_on_redis(scenario, redis_server.url)
    _report(scenario, outcome, limiters)
    outcome.check(scenario)
    if scenario.processes > 1:
        # One budget in Redis counts every process's requests in flight: where independent
        # limiters (in memory) collect 429s, the shared one collects none.
        assert outcome.refused == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("scenario", SPEND_SCENARIOS, ids=lambda s: s.name)
async def test_spending_the_window_keeps_every_scenario(redis_server, scenario: Scenario) -> None:
    outcome, limiters = await run_on_redis(scenario, redis_server.url, spend_window=True)
    _report(scenario, outcome, limiters)
    outcome.check(scenario)


KEYED = ("2s-first-ceil", "2s-first-forgotten", "2s-two-processes")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.name in KEYED], ids=lambda s: s.name
)
async def test_a_keyed_bucket_keeps_the_scenarios(redis_server, scenario: Scenario) -> None:
    outcome, limiters = await run_on_redis(scenario, redis_server.url, key=("user", 7))
    outcome.check(scenario)
    assert outcome.refused == 0
    assert all(lim.snapshot().grants > 0 for lim in limiters)
    assert all(lim.pressure(("user", 7)).limit == scenario.limit for lim in limiters)
    assert limiters[0].pressure().limit is None  # the default bucket was never used


@pytest.mark.asyncio
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
async def test_the_redis_limiter_takes_the_window_length(redis_server, processes: int) -> None:
    # Exactly six windows' worth: told the length, the processes sharing the budget in Redis
    # fill each window to its last request (one request lost at a turn: a seventh window).
    scenario = attrs.evolve(KNIFE_EDGE_SCENARIOS[0], processes=processes, callers=50 // processes)
    told, _ = await run_on_redis(
        scenario, redis_server.url, spend_window=True, window_length=scenario.window
    )
    assert told.refused == 0
    assert told.windows == scenario.windows


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "300", True])
def test_a_bad_window_length_is_a_typed_error_before_any_round_trip(bad: object) -> None:
    from zapier_async.errors import InvalidRequestError

    client = aioredis.Redis(host="127.0.0.1", port=1)  # never contacted
    with pytest.raises(InvalidRequestError) as info:
        RedisLimiter(client, name="x", window_length=bad)  # type: ignore[arg-type]
    assert info.value.field == "window_length"

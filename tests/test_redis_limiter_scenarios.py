"""The scenario table (tests/limiter_scenarios.py) against `RedisLimiter`: one limiter per
simulated process on one real redis-server, all on one `FakeClock` (its ``time()`` is the
shared clock); losing the state is ``FLUSHALL``."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from limiter_scenarios import (  # noqa: E402
    SCENARIOS,
    SPEND_SCENARIOS,
    LimiterUnderTest,
    Outcome,
    Scenario,
    run_async,
)

from zapier_async.redis import RedisLimiter  # noqa: E402


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


async def run_on_redis(
    scenario: Scenario, url: str, *, key: Hashable = None, **options: Any
) -> tuple[Outcome, list[RedisLimiter]]:
    """Run one scenario, one `RedisLimiter` (and one Redis connection) per process."""
    clients: list[aioredis.Redis] = []
    made: list[RedisLimiter] = []

    def factory(clock: Any, process: int) -> LimiterUnderTest:
        if not made:
            # While a Redis command is out, time stands still: the harness advances the
            # FakeClock only when every task waits for it, and a round trip is not a wait.
            plain = clock.next_deadline

            def next_deadline() -> float | None:
                if any(lim.busy for lim in made):
                    return float(clock.monotonic())
                deadline: float | None = plain()
                return deadline

            clock.next_deadline = next_deadline
        client = aioredis.from_url(url, socket_timeout=10)
        clients.append(client)
        limiter = RedisLimiter(client, name="scenario", clock=clock, **options)
        made.append(limiter)
        return limiter if key is None else _Keyed(limiter, key)

    async def forget(limiters: list[LimiterUnderTest]) -> None:
        await clients[0].flushall()

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

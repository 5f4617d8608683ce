"""RedisLimiter against a real redis-server started by the fixture (skipped without one)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")


from _redis_limiter_state import redis_now, stored  # noqa: E402

import zapier_async as za  # noqa: E402
from zapier_async.redis import RedisLimiter, RedisSlot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),  # a delta: seconds until the reset
    }


def test_the_package_imports_without_redis() -> None:
    code = "import sys, zapier_async; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_issue_name_is_the_same_limiter() -> None:
    from zapier_async.redis import RedisLimiterBackend

    assert RedisLimiterBackend is RedisLimiter


@pytest.mark.asyncio
async def test_state_lives_in_redis_under_the_prefix(rclient):
    limiter = RedisLimiter(rclient, prefix="t", name="acct")
    async with limiter, limiter.slot(za.Priority.INTERACTIVE) as slot:
        assert isinstance(slot, RedisSlot)
        assert slot.probe  # nothing is known yet: the first request probes
        assert limiter.in_flight == 1
        _, in_flight, _ = await stored(rclient, "acct", prefix="t")
        assert len(in_flight) == 1
        slot.record(200, _headers(10, 9, 60))
    # The bucket's hash: the very `Budget` of the in-memory limiter, serialised.
    assert set(await rclient.hkeys("t:acct:bucket")) == {b"e", b"v", b"s"}
    budget, in_flight, epoch = await stored(rclient, "acct", prefix="t")
    view = budget.view(await redis_now(rclient))
    assert view.mode == "window"
    assert (budget.granted, budget.completed, budget.in_flight) == (1, 1, 0)
    # Remaining 9 + 0 answers before the grant + 1 = 10; 1 granted: 9 left.
    assert view.remaining == 9
    assert view.limit == 10
    assert in_flight == {}
    assert epoch
    assert 0 < await rclient.ttl("t:acct:bucket") <= 900  # bucket_idle
    assert limiter.in_flight == 0


@pytest.mark.asyncio
async def test_one_probe_at_a_time_across_limiters(rclient):
    async with (
        RedisLimiter(rclient, name="p") as first,
        RedisLimiter(rclient, name="p", poll_interval=0.005) as second,
    ):
        cm = first.slot()
        slot = await cm.__aenter__()
        assert slot.probe
        other = asyncio.ensure_future(second.slot().__aenter__())
        # The second process polls Redis, finds the probe taken, and keeps waiting.
        for _ in range(5):
            await asyncio.wait({other}, timeout=0.02)
        assert not other.done()
        assert second.waiting == 1
        slot.record(200, _headers(10, 9, 60))
        await cm.__aexit__(None, None, None)
        granted = await other
        assert isinstance(granted, RedisSlot)
        assert not granted.probe  # the budget is known now
        granted.record(200, _headers(10, 8, 60))


@pytest.mark.asyncio
async def test_a_cancelled_waiter_takes_nothing(rclient):
    async with (
        RedisLimiter(rclient, name="c") as holder,
        RedisLimiter(rclient, name="c", poll_interval=0.005) as limiter,
    ):
        cm = holder.slot()
        await cm.__aenter__()  # holds the probe: everybody else waits
        waiter = asyncio.ensure_future(limiter.slot().__aenter__())
        await asyncio.wait({waiter}, timeout=0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.waiting == 0
        assert limiter.in_flight == 0
        await cm.__aexit__(None, None, None)
    budget, in_flight, _ = await stored(rclient, "c")
    assert budget.granted == budget.completed == 1
    assert in_flight == {}


@pytest.mark.asyncio
async def test_slots_of_a_dead_process_expire_with_their_lease(rclient):
    dead = RedisLimiter(rclient, name="d", lease=0.2)
    await dead.slot().__aenter__()  # granted, never answered, never released
    await dead.aclose()  # nothing to flush: as if the process was killed
    _, in_flight, _ = await stored(rclient, "d")
    assert len(in_flight) == 1
    alive = RedisLimiter(rclient, name="d", poll_interval=0.01)
    # The probe and the in-flight entry lapse with the lease: the budget is not blocked
    # forever, and the lapsed slot counts as done.
    async with alive, alive.slot() as slot:
        assert slot.probe
        slot.record(None, {})
    budget, in_flight, _ = await stored(rclient, "d")
    assert budget.completed == 2
    assert in_flight == {}


@pytest.mark.asyncio
async def test_a_429_freezes_every_process(rclient):
    async with (
        RedisLimiter(rclient, name="f") as seen,
        RedisLimiter(rclient, name="f", max_wait=0.0) as other,
    ):
        async with seen.slot() as slot:
            slot.record(429, {"Retry-After": "30"})
        with pytest.raises(za.RateLimitedError):
            async with other.slot():
                pass
        assert other.frozen_until is not None


@pytest.mark.asyncio
async def test_a_lost_redis_degrades_to_local_pacing(redis_server, caplog):
    client = aioredis.from_url(redis_server.url, socket_timeout=2)
    try:
        async with RedisLimiter(client, name="g", fallback_rate=(1, 60.0)) as limiter:
            async with limiter.slot() as slot:
                slot.record(200, _headers(10, 9, 60))
            redis_server.stop()
            with caplog.at_level(logging.WARNING, logger="zapier_async"):
                async with limiter.slot() as local:
                    assert not isinstance(local, RedisSlot)  # the in-memory fallback's
                    local.record(200, {})
            assert limiter.degraded
            assert "Redis unreachable" in caplog.text
            # Never unlimited: the fallback paces at 1 request per minute.
            with pytest.raises(za.RateLimitedError):
                async with limiter.slot(max_wait=0.0):
                    pass
    finally:
        await client.aclose()


def test_worker_processes_share_one_budget_without_429s(redis_server):
    """A short version of benchmarks/redis_workers.py: 2 processes, one emulator (no timing)."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import redis_workers
    finally:
        sys.path.remove(str(ROOT))
    summary = redis_workers.run(workers=2, runs=40, rate="20/1", redis_url=redis_server.url)
    assert summary["ok"] == 40
    assert summary["rate_limited_429"] == 0
    assert summary["runs_created"] == 40
    assert summary["duplicate_submissions"] == 0

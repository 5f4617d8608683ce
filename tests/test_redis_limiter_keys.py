"""`RedisLimiter` runs the in-memory rules (`_budget.Budget`) on a state kept in Redis:
the codec is exact, the over-cap refusal, budgets per key, and what it costs (round trips
and requests/s through four limiters on one budget)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import attrs
import pytest

aioredis = pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")

from _redis_limiter_state import bucket_name, redis_now, stored  # noqa: E402
from _util import eventually  # noqa: E402
from limiter_scenarios import SCENARIOS, WALL_START, Server  # noqa: E402

import zapier_async as za  # noqa: E402
from zapier_async._budget import Budget, BudgetConfig, Priority  # noqa: E402
from zapier_async.redis import RedisLimiter  # noqa: E402
from zapier_async.redis._codec import StateError, dump, load  # noqa: E402

HEADERS = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "X-RateLimit-Reset": "60"}


# --- one set of rules: the budget read back from Redis is the budget that was written -----


@pytest.mark.parametrize(
    "name", ["2s-first-ceil", "2s-aligned-epoch", "2s-sliding-float", "2s-first-on429"]
)
@pytest.mark.parametrize("spend", [False, True])
def test_a_budget_read_back_after_every_event_decides_as_the_one_kept(name, spend) -> None:
    """Two budgets through the same events, one serialised and read back after each: every
    output (next time, refusal, estimate, view) is the same, so storing the state in Redis
    changes no rule."""
    scenario = {s.name: s for s in SCENARIOS}[name]
    config = BudgetConfig(spend_window=spend)
    server = Server(scenario)
    kept = Budget(config)
    text = dump(Budget(config), {})
    rng = random.Random(3)
    now, flying = 0.0, []  # (answer time, grant)
    for _ in range(1500):
        now += rng.choice([0.0, 0.001, 0.01, 0.04])
        moved, _ = load(text, config)
        for budget in (kept, moved):
            budget.advance(now)
        assert moved.next_time(now, Priority.BULK) == kept.next_time(now, Priority.BULK)
        assert moved.refusal(now) == kept.refusal(now)
        assert moved.estimate(now, 7, Priority.POLL) == kept.estimate(now, 7, Priority.POLL)
        assert moved.view(now) == kept.view(now)
        due = [item for item in flying if item[0] <= now]
        flying = [item for item in flying if item[0] > now]
        for _, grants in due:
            status, headers = server.handle(now - 0.005)
            for budget, grant in zip((kept, moved), grants, strict=True):
                budget.complete(grant, status, headers, now=now, wall=now + WALL_START)
        when = kept.next_time(now, Priority.BULK)
        if when is not None and when <= now and len(flying) < 60:
            flying.append((now + 0.01, (kept.grant(now), moved.grant(now))))
        text = dump(moved, {})
        assert dump(kept, {}) == text
    assert kept.completed > 300


def test_a_state_of_another_format_reads_as_lost() -> None:
    with pytest.raises(StateError):
        load('{"f": 0, "b": {}, "i": {}}', BudgetConfig())
    with pytest.raises(StateError):
        load("not json", BudgetConfig())
    text = dump(Budget(BudgetConfig()), {})
    with pytest.raises(StateError):  # a field this version does not have
        load(text.replace('"_mode"', '"_other"'), BudgetConfig())
    with pytest.raises(StateError):  # one it must have
        load(text.replace('"_mode":"probe",', ""), BudgetConfig())


def test_a_state_written_before_budgets_learnt_rates_reads_as_one_that_learnt_none() -> None:
    config = BudgetConfig()
    b = Budget(config)
    b.complete(b.grant(0.0), 200, {}, now=0.01, wall=WALL_START)  # open: no budget headers
    b.complete(b.grant(0.02), 429, {"Retry-After": "10"}, now=0.03, wall=WALL_START)
    assert load(dump(b, {}), config)[0].view(0.03) == b.view(0.03)  # limit 1, per ~10 s
    assert b.view(0.03).limit == 1
    data = json.loads(dump(b, {}))
    del data["b"]["_learnt_rate"]  # what the previous version wrote
    old, _ = load(json.dumps(data), config)
    assert old.view(0.03) == attrs.evolve(b.view(0.03), limit=None, remaining=None, period=None)


# --- the over-cap refusal, mirrored --------------------------------------------------------


@pytest.mark.asyncio
async def test_a_server_wait_past_the_cap_fails_every_priority_in_every_process(rclient):
    async with (
        RedisLimiter(rclient, name="over", max_server_wait=30.0) as seen,
        RedisLimiter(rclient, name="over", max_server_wait=30.0, poll_interval=0.005) as other,
    ):
        cm = seen.slot()
        slot = await cm.__aenter__()  # the probe: the other process's request waits for it
        assert slot.probe
        waiting = asyncio.ensure_future(other.slot(Priority.BULK).__aenter__())
        await asyncio.wait({waiting}, timeout=0.05)
        assert not waiting.done()
        assert slot.record(429, {"Retry-After": "1000000"}) is True
        await cm.__aexit__(None, None, None)
        # The waiter already in line fails, not waits 30 s: the server named a later time.
        with pytest.raises(za.RateLimitedError) as caught:
            await asyncio.wait_for(waiting, timeout=5)
        assert caught.value.reason == "max_server_wait"
        assert caught.value.retry_after > 999_000
        for limiter in (seen, other):
            for priority in Priority:
                with pytest.raises(za.RateLimitedError) as caught:
                    async with limiter.slot(priority, max_wait=None):
                        pass
                assert caught.value.reason == "max_server_wait"
            assert limiter.estimate_wait(Priority.BULK) > 999_000
        assert other.snapshot().rejected >= 4


@pytest.mark.asyncio
async def test_freeze_past_the_cap_refuses_and_within_it_holds(rclient):
    async with RedisLimiter(rclient, name="fz", max_server_wait=30.0, max_wait=0.0) as limiter:
        limiter.freeze(5.0, key="a")
        limiter.freeze(3600.0, key="b")
        with pytest.raises(za.RateLimitedError) as held:
            async with limiter.slot(key="a"):
                pass
        assert held.value.reason == "max_rate_limit_wait"
        assert 4.0 < held.value.retry_after <= 5.0
        with pytest.raises(za.RateLimitedError) as refused:
            async with limiter.slot(key="b", max_wait=None):
                pass
        assert refused.value.reason == "max_server_wait"
        async with limiter.slot(key="c") as slot:  # other keys go on
            slot.record(200, HEADERS)


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_429_freezes_only_its_key_in_every_process(rclient):
    token = "secret-token-of-user-a"  # a credential used as a key
    async with (
        RedisLimiter(rclient, name="k", bucket_idle=120.0) as first,
        RedisLimiter(rclient, name="k", bucket_idle=120.0, max_wait=0.0) as second,
    ):
        assert first.supports_keys
        async with first.slot(key=token) as slot:
            assert slot.record(429, {"Retry-After": "30"}) is True
        async with first.slot(key="user-b") as slot:
            slot.record(200, HEADERS)
        await _drained(first)
        with pytest.raises(za.RateLimitedError):  # the same key, another process
            async with second.slot(key=token):
                pass
        async with second.slot(key="user-b") as slot:  # another key: not frozen
            assert not slot.probe  # and its budget is known from the first process's answer
            slot.record(200, HEADERS)
        async with second.slot() as slot:  # the default bucket: its own, fresh
            assert slot.probe
        assert second.pressure(token).frozen_until is not None
        assert second.pressure("user-b").frozen_until is None
        assert second.pressure("user-b").limit == 10
        assert second.estimate_wait(Priority.POLL, 1, token) > 25
        assert second.estimate_wait(Priority.POLL, 1, "user-b") < 10  # paced, not frozen
    names = {key.decode() for key in await rclient.keys("zapier_async:ratelimit:k:bucket*")}
    assert names == {bucket_name("k"), bucket_name("k", token), bucket_name("k", "user-b")}
    assert not any(token in name for name in names)  # a credential never shows in Redis
    assert 100 < await rclient.ttl(bucket_name("k", "user-b")) <= 120  # bucket_idle
    budget, _, _ = await stored(rclient, "k", token)
    assert budget.view(await redis_now(rclient)).frozen_until is not None


@pytest.mark.asyncio
async def test_idle_buckets_are_forgotten_locally_and_read_again(rclient):
    async with RedisLimiter(rclient, name="lru", max_buckets=3) as limiter:
        for user in range(10):
            async with limiter.slot(key=("user", user)) as slot:
                slot.record(200, HEADERS)
            await _drained(limiter)
        assert limiter.snapshot().buckets <= 4  # three keyed ones and the default
        assert limiter.snapshot().evictions >= 6
        # A forgotten bucket is read again from Redis: its budget is still known.
        async with limiter.slot(key=("user", 0)) as slot:
            assert not slot.probe
            slot.record(200, HEADERS)


async def _drained(limiter: RedisLimiter) -> None:
    for _ in range(2000):
        if not limiter.busy and not any(bucket.ops for bucket in limiter._all()):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("recorded answers were not written")


# --- what it costs -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("processes", [1, 4])
async def test_throughput_through_four_processes(redis_server, capsys, processes):
    """Limiters (one connection each, as processes would have) on one budget of a server
    that never runs out (10**6 per hour, answers after 2 ms), 100 callers in all: requests/s
    and Redis round trips per slot, the cost of running the rules in Python under
    compare-and-set."""
    clients = [aioredis.from_url(redis_server.url, socket_timeout=10) for _ in range(processes)]
    limiters = [RedisLimiter(client, name="tp", spend_window=True) for client in clients]
    sent = [0]
    headers = {"X-RateLimit-Limit": "1000000", "X-RateLimit-Reset": "3600"}
    stop = time.monotonic() + 3.0

    async def caller(limiter: RedisLimiter) -> None:
        while time.monotonic() < stop:
            async with limiter.slot(Priority.BULK) as slot:
                sent[0] += 1
                await asyncio.sleep(0.002)
                remaining = 1_000_000 - sent[0]
                slot.record(200, {**headers, "X-RateLimit-Remaining": str(remaining)})

    try:
        start = time.monotonic()
        per = 100 // processes
        await asyncio.gather(*(caller(lim) for lim in limiters for _ in range(per)))
        elapsed = time.monotonic() - start
        for limiter in limiters:
            await limiter.aclose()
        trips = sum(lim.round_trips for lim in limiters)
        conflicts = sum(lim.conflicts for lim in limiters)
    finally:
        for client in clients:
            await client.aclose()
    with capsys.disabled():
        print(
            f"\n{processes} limiter(s), 100 callers: {sent[0] / elapsed:.0f} requests/s, "
            f"{trips / sent[0]:.2f} round trips and {conflicts / sent[0]:.2f} conflicts per slot"
        )
    assert sent[0] > 200  # under load on a shared 2-core machine; typically far more


@pytest.mark.asyncio
async def test_a_bucket_just_made_is_not_forgotten_while_the_older_ones_are_busy(rclient):
    # max_buckets=1 and the one bucket known is busy (a request in flight): the bucket a new
    # key makes is the least recently used idle one. Forgotten at once, its waiter would be
    # out of the limiter's sight: closing it would leave that waiter hanging.
    limiter = RedisLimiter(rclient, name="keep", max_buckets=1)
    async with limiter.slot(key="busy"):
        limiter.freeze(600, key="new")
        waiter = asyncio.ensure_future(limiter.slot(key="new").__aenter__())
        await eventually(lambda: limiter.waiting == 1)  # Redis answers: real I/O
        assert limiter.pressure("new").waiting_by_priority == (1, 0, 0)
        await limiter.aclose()
        with pytest.raises(za.LimiterClosedError):
            await asyncio.wait_for(waiter, 5.0)  # a guard against a hang, not a sync

"""Long-poll reads (GET /actions/v2/runs/{id}?wait_seconds=N) and their limiter accounting."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from _util import until

import zapier_async as za
from zapier_async.testing import FakeClock, FakeZapier


def test_next_delay_after_a_202():
    lp = za.LongPoll(wait_seconds=20)
    assert lp.next_delay(elapsed=20.0, retry_after=None) == 0.0  # the full wait: read again
    assert lp.next_delay(elapsed=0.5, retry_after=None) == 1.0  # early: pause about 1 s
    assert lp.next_delay(elapsed=0.5, retry_after=3.0) == 3.0  # early with Retry-After
    with pytest.raises(ValueError, match="wait_seconds"):
        za.LongPoll(wait_seconds=0)


@pytest.mark.asyncio
async def test_a_long_poll_is_parked_until_the_run_ends_without_holding_a_slot():
    clock = FakeClock()
    async with (
        FakeZapier(clock=clock, durations=50.0) as fake,
        za.ZapierClient(
            auth=za.BearerToken("t"),
            base_url=fake.url,
            clock=clock,
            rng=random.Random(2),
            long_poll=za.LongPoll(wait_seconds=20),
        ) as client,
    ):
        handle = await client.run_action(
            selected_api="A@1", action_key="k", action_type="write", inputs={}
        )
        await clock.advance(1.0)  # the first (plain-cadence) read goes out and parks
        await until(
            lambda: (
                client.limiter.in_flight == 0
                and fake.stats.polls == 0
                and (any(r.path.startswith("/actions/v2/") for r in fake.requests))
            )
        )
        # While it is parked, other requests get slots at once.
        again = await asyncio.wait_for(client.stored_actions.list(), timeout=5)
        assert again == []
        assert not handle.done()
        for _ in range(200):
            if handle.done():
                break
            deadline = clock.next_deadline()
            if deadline is not None:
                await clock.advance_to(deadline)
            else:
                await asyncio.sleep(0)
        result = await handle.result(timeout=1)
    assert result.status is za.RunStatus.SUCCESS
    reads = [r for r in fake.requests if r.path.startswith("/actions/v2/runs/")]
    assert all(r.query == {"wait_seconds": "20"} for r in reads)
    # 50 s of run with 20 s waits: a few reads, not dozens of short polls.
    assert 2 <= len(reads) <= 4
    assert fake.stats.responses_by_status.get(202, 0) == len(reads) - 1


@pytest.mark.asyncio
async def test_an_early_202_is_followed_by_a_pause_of_retry_after():
    clock = FakeClock()
    async with FakeZapier(clock=clock, durations=10.0) as fake:
        fake.actions.long_poll_early_rate = 1.0
        fake.actions.long_poll_early_after = 0.5
        fake.actions.long_poll_retry_after = 3
        async with za.ZapierClient(
            auth=za.BearerToken("t"),
            base_url=fake.url,
            clock=clock,
            rng=random.Random(2),
            long_poll=za.LongPoll(wait_seconds=20),
        ) as client:
            handle = await client.run_action(
                selected_api="A@1", action_key="k", action_type="read", inputs={}
            )
            for _ in range(500):
                if handle.done():
                    break
                deadline = clock.next_deadline()
                if deadline is not None:
                    await clock.advance_to(deadline)
                else:
                    await asyncio.sleep(0)
            await handle.result(timeout=1)
    reads = [r.received_at for r in fake.requests if r.path.startswith("/actions/v2/")]
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    # Each early 202 came after 0.5 s; the client waited Retry-After (3 s) before the next.
    assert gaps
    assert all(gap >= 3.5 - 1e-9 for gap in gaps)
    assert len(reads) <= 4

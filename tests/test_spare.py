"""Reads ahead of plan on budget a window would lose (`zapier_async._spare`, issue #15).

The pure bookkeeping is tested with a scripted limiter, poller and planner; the whole of it
end to end with the real client against the emulator on a fake clock: a window whose runs'
polls are all planned after it ends spends its leftover budget on them instead, and the
runs are seen ended a whole window sooner, with no 429.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from _util import client_for

import zapier_async as za
from zapier_async._budget import Budget, BudgetConfig, Priority
from zapier_async._cadence import PollRecord
from zapier_async._spare import SpareReads
from zapier_async.testing import FakeClock, FakeZapier

# --- the pure bookkeeping -----------------------------------------------------------------


class Run:
    def __init__(self, created_at: float, *, chance: float | None, done: bool = False) -> None:
        self.created_at = created_at
        self.chance = chance
        self._done = done
        self.reads = PollRecord(timer=object())  # waiting for its next poll

    def done(self) -> bool:
        return self._done


class Limiter:
    def __init__(self) -> None:
        self.answer: tuple[int, float, int] | None = None

    def spare(self, key: Hashable = None) -> tuple[int, float, int] | None:
        return self.answer


class Timer:
    def __init__(self, when: float, fn: Callable[..., object], args: tuple[object, ...]) -> None:
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Poller:
    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.timers: list[Timer] = []
        self.polled: list[Run] = []
        self.in_flight = 0

    def schedule(self, handle: Any, delay: float) -> None:
        assert delay == 0.0
        self.polled.append(handle)

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Timer:
        timer = Timer(self.now[0] + delay, callback, args)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        """Run the due timers that are not cancelled, as the poller would."""
        due = [t for t in self.timers if not t.cancelled and t.when <= self.now[0]]
        self.timers = [t for t in self.timers if t not in due]
        for t in due:
            t.fn(*t.args)


class Planner:
    def __init__(self) -> None:
        self.early: list[Run] = []

    def chance_ended(self, handle: Any, elapsed: float) -> float | None:
        return handle.chance  # type: ignore[no-any-return]

    def polled_early(self, handle: Any) -> None:
        self.early.append(handle)


def setup() -> tuple[SpareReads, Limiter, Poller, Planner, list[float]]:
    now = [0.0]
    limiter, poller, planner = Limiter(), Poller(now), Planner()
    spare = SpareReads(limiter, poller, planner, lambda: now[0])  # type: ignore[arg-type]
    return spare, limiter, poller, planner, now


def test_spare_budget_reads_the_likeliest_ended_runs_first_once_per_window() -> None:
    spare, limiter, poller, planner, now = setup()
    limiter.answer = (2, 4.0, 1)  # two requests left, spare from t = 4, window 1
    runs = [
        Run(0.0, chance=0.3),
        Run(0.0, chance=0.9),
        Run(1.0, chance=None),  # unlearnt: counts as 0.5
        Run(0.0, chance=0.05),  # below min_chance: never read early
        Run(0.0, chance=1.0, done=True),
    ]
    for run in runs:
        spare.follow(run, "user")  # type: ignore[arg-type]
    assert [t.when for t in poller.timers if not t.cancelled] == [4.0]  # armed once
    poller.fire()
    assert poller.polled == []  # not yet
    now[0] = 4.0
    poller.fire()
    assert poller.polled == [runs[1], runs[2]]  # the two likeliest, done runs skipped
    assert planner.early == poller.polled
    assert spare.reads == 2
    # The same window is not offered again, however often answers come.
    for _ in range(3):
        spare.check("user")
    assert not [t for t in poller.timers if not t.cancelled]
    # The next window is.
    limiter.answer = (5, 9.0, 2)
    spare.check("user")
    now[0] = 9.0
    poller.fire()
    assert poller.polled[2:] == [runs[1], runs[2], runs[0]]


def test_nothing_is_read_early_without_spare_budget_or_while_a_read_is_out() -> None:
    spare, limiter, poller, _planner, now = setup()
    run = Run(0.0, chance=0.9)
    spare.follow(run, None)  # type: ignore[arg-type]
    assert poller.timers == []  # the limiter cannot tell: nothing armed
    limiter.answer = (3, 1.0, 1)
    spare.check(None)
    run.reads.timer = None  # its read is on its way when the moment comes
    now[0] = 1.0
    poller.fire()
    assert poller.polled == []


def test_a_moment_that_moved_later_is_waited_for() -> None:
    spare, limiter, poller, _planner, now = setup()
    run = Run(0.0, chance=0.9)
    limiter.answer = (3, 1.0, 1)
    spare.follow(run, None)  # type: ignore[arg-type]
    limiter.answer = (3, 2.0, 1)  # slower answers: the reserve is released later
    now[0] = 1.0
    poller.fire()
    assert poller.polled == []
    now[0] = 2.0
    poller.fire()
    assert poller.polled == [run]


# --- the budget and the limiter -----------------------------------------------------------


def window_headers(limit: int, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{reset_after:.3f}",
    }


def test_budget_spare_is_what_background_work_may_spend_from_the_reserve_release() -> None:
    budget = Budget(BudgetConfig(spend_window=True))
    grant = budget.grant(0.0)
    budget.complete(grant, 200, window_headers(100, 99, 10.0), now=0.01, wall=1000.01)
    found = budget.spare(0.01)
    assert found is not None
    count, at, window = found
    assert count == 99  # nothing planned as boundary probes with a millisecond Reset
    assert 9.0 < at < 10.0  # just before the window may end, when the reserve goes too
    # Background requests may go at once until the reserve; the rest waits for `at`.
    assert budget.next_time(0.02, Priority.POLL) == 0.02
    assert budget.spare(0.02) == (99, at, window)
    paced = Budget(BudgetConfig())  # paced to the end of the window: nothing is spare
    grant = paced.grant(0.0)
    paced.complete(grant, 200, window_headers(100, 99, 10.0), now=0.01, wall=1000.01)
    assert paced.spare(0.01) is None
    assert Budget(BudgetConfig(spend_window=True)).spare(0.0) is None  # nothing known


def test_nothing_is_spare_for_ten_minutes_after_a_429() -> None:
    # A 429 says others spend this budget too: what looks left is not ours to read ahead on.
    budget = Budget(BudgetConfig(spend_window=True))
    grant = budget.grant(0.0)
    budget.complete(grant, 200, window_headers(100, 99, 10.0), now=0.01, wall=1000.01)
    assert budget.spare(0.01) is not None
    grant = budget.grant(0.02)
    refused = {**window_headers(100, 0, 9.9), "Retry-After": "1"}
    budget.complete(grant, 429, refused, now=0.1, wall=1000.1)
    budget.advance(1.2)  # the freeze is over: a probe, then a window again
    grant = budget.grant(1.2)
    budget.complete(grant, 200, window_headers(100, 50, 8.8), now=1.21, wall=1001.21)
    budget.advance(1.21)
    assert budget.spare(1.21) is None
    later = 0.1 + 600.0 + 0.5  # ten minutes after the 429 (more than ten 10 s windows)
    budget.advance(later)
    grant = budget.grant(later)
    budget.complete(grant, 200, window_headers(100, 99, 10.0), now=later + 0.01, wall=1600.6)
    assert budget.spare(later + 0.01) is not None


# --- end to end -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_windows_leftover_budget_reads_runs_whose_polls_come_after_it() -> None:
    # 20 requests per 10 s; runs of 3 s whose first poll the cadence puts at 30 s. Five
    # creates and the three at-once polls of an unlearnt action leave 12 requests that would
    # expire: they read the five runs before the window ends.
    clock = FakeClock()
    slow_first = za.PollPolicy(initial=30.0, factor=1.5, cap=60.0, jitter=0.0)
    fake = FakeZapier(seed=1, clock=clock, rate_limit=(20, 10.0), durations=3.0)
    async with fake, client_for(fake, clock=clock, poll_policy=slow_first) as client:
        handles = [
            await client.run("core:x", authentication=None, inputs={"i": i}) for i in range(5)
        ]
        while not all(h.done() for h in handles) and clock.monotonic() < 10.0:
            await clock.advance(0.25)
        assert all(h.done() for h in handles), "not read before the window ended"
        assert all(h.status is za.RunStatus.SUCCESS for h in handles)
        assert client._engine.spare.reads == 5
        assert fake.stats.rate_limited == 0


def test_a_bucket_whose_runs_ended_is_forgotten() -> None:
    spare, limiter, poller, _planner, _now = setup()
    limiter.answer = (3, 5.0, 1)
    runs = [Run(0.0, chance=0.5) for _ in range(2)]
    for run in runs:
        spare.follow(run, "user")  # type: ignore[arg-type]
    assert [t for t in poller.timers if not t.cancelled]
    assert (spare.following("user"), spare.following("other")) == (2, 0)  # the planner's count
    for run in runs:
        run._done = True
        spare.read(run, "user")  # type: ignore[arg-type]
    assert spare.following("user") == 0
    assert spare._runs == {}
    assert spare._armed == {}  # its timer is cancelled with it
    assert not [t for t in poller.timers if not t.cancelled]


@pytest.mark.asyncio
async def test_limiter_spare_leaves_out_the_requests_already_waiting() -> None:
    clock = FakeClock()
    limiter = za.Limiter(clock=clock, spend_window=True)
    async with limiter.slot(Priority.POLL, key="user") as slot:
        slot.record(200, window_headers(10, 9, 10.0))
    found = limiter.spare("user")
    assert found is not None
    count, at, window = found
    assert count == 9
    for left in range(8, 0, -1):  # background requests spend all but the reserve (1 of 10)
        async with limiter.slot(Priority.POLL, key="user") as slot:
            slot.record(200, window_headers(10, left, 10.0))
    assert limiter.spare("user") == (1, at, window)
    # A background request now waits for the reserve's release: the one left is its.
    waiter = asyncio.ensure_future(limiter.slot(Priority.POLL, key="user").__aenter__())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    assert limiter.spare("user") is None
    assert limiter.spare("nobody") is None  # an unknown bucket spares nothing
    waiter.cancel()
    await limiter.aclose()

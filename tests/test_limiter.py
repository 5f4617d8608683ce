"""The shared rate limiter, driven by a FakeClock: no real sleeps, deterministic."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import pickle
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import pytest

from zapier_async._limiter import (
    USE_DEFAULT,
    Limiter,
    LimiterClosedError,
    LimiterStats,
    Priority,
    Slot,
)
from zapier_async.errors import RateLimitedError
from zapier_async.testing import FakeClock

TIMER_NAME = "zapier_async.limiter"
INTERACTIVE, POLL, BULK = Priority.INTERACTIVE, Priority.POLL, Priority.BULK


def budget(remaining: int, reset: str = "30.000", limit: int = 50) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset,
    }


async def settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def timer_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task.get_name() == TIMER_NAME}


async def drive(clock: FakeClock, done: Callable[[], bool], *, limit: float = 1e6) -> None:
    """Move the clock deadline by deadline until ``done()``."""
    await settle()
    while not done():
        deadline = clock.next_deadline()
        if deadline is None or deadline > limit:
            raise AssertionError(f"stuck at t={clock.monotonic()} (next deadline {deadline})")
        await clock.advance_to(deadline)


class Caller:
    """A task that takes a slot, notes when, and holds it until released."""

    def __init__(
        self,
        limiter: Limiter,
        priority: Priority = INTERACTIVE,
        *,
        name: str = "",
        order: list[str] | None = None,
        max_wait: object = USE_DEFAULT,
    ) -> None:
        self.limiter = limiter
        self.name = name
        self.order = order
        self.slot: Slot | None = None
        self.granted_at: float | None = None
        self._release = asyncio.Event()
        self._response: tuple[int | None, Mapping[str, str]] | None = None
        self.task = asyncio.create_task(self._run(priority, max_wait))

    async def _run(self, priority: Priority, max_wait: object) -> None:
        async with self.limiter.slot(priority, max_wait=max_wait) as slot:  # type: ignore[arg-type]
            self.slot = slot
            self.granted_at = self.limiter._clock.monotonic()
            if self.order is not None:
                self.order.append(self.name)
            await self._release.wait()
            if self._response is not None:
                slot.record(*self._response)

    @property
    def granted(self) -> bool:
        return self.slot is not None

    def release(self, status: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        """Leave the slot: with a response if ``status`` is given, else without one."""
        if status is not None:
            self._response = (status, headers or {})
        self._release.set()


async def finish(*callers: Caller) -> None:
    for caller in callers:
        caller.release()
    await settle()
    for caller in callers:
        if not caller.task.done():
            caller.task.cancel()
    await asyncio.gather(*(c.task for c in callers), return_exceptions=True)


# ---------------------------------------------------------------------------- modes


@pytest.mark.asyncio
async def test_probe_one_request_until_the_first_answer() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        a, b, c = Caller(limiter), Caller(limiter), Caller(limiter)
        await settle()
        assert (a.granted, b.granted, c.granted) == (True, False, False)
        assert (limiter.in_flight, limiter.waiting) == (1, 2)
        assert limiter.snapshot().mode == "probe"

        a.release()  # no response (connect error): still probing
        await settle()
        assert (b.granted, c.granted) == (True, False)

        b.release(200, budget(47))  # the budget is known: pace instead
        await settle()
        assert c.granted
        assert limiter.snapshot().mode == "window"
        await finish(c)
    assert clock.monotonic() == 0.0  # nobody had to wait for time


@pytest.mark.asyncio
async def test_no_rate_limit_headers_means_no_restriction() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        first = Caller(limiter)
        await settle()
        first.release(200, {"Content-Type": "application/json"})
        await settle()
        callers = [Caller(limiter, BULK) for _ in range(25)]
        await settle()
        assert all(c.granted for c in callers)
        assert limiter.in_flight == 25
        assert limiter.snapshot().mode == "open"

        # ... but a 429 still freezes everybody.
        callers[0].release(429, {"Retry-After": "5"})
        await settle()
        late = Caller(limiter)
        await clock.advance(4.99)
        assert not late.granted
        await clock.advance(0.01)
        assert late.granted
        assert limiter.snapshot().rate_limited == 1
        await finish(late, *callers)


@pytest.mark.asyncio
async def test_a_priori_rate_is_a_sliding_window() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock, rate=(3, 1.0)) as limiter:
        callers = [Caller(limiter) for _ in range(7)]
        await settle()
        assert sum(c.granted for c in callers) == 3  # no probing: the budget is known
        await clock.advance(0.999)
        assert sum(c.granted for c in callers) == 3
        await clock.advance(0.001)
        assert sum(c.granted for c in callers) == 6
        await clock.advance(1.0)
        assert [c.granted_at for c in callers] == [0.0] * 3 + [1.0] * 3 + [2.0]
        await finish(*callers)


# ---------------------------------------------------------------------------- freezes


@pytest.mark.asyncio
async def test_a_429_freezes_all_waiters_until_retry_after() -> None:
    clock = FakeClock()
    order: list[str] = []
    async with Limiter(clock=clock) as limiter:
        first = Caller(limiter)
        await settle()
        first.release(200, budget(40))
        refused = Caller(limiter)
        await settle()
        refused.release(429, {**budget(0), "Retry-After": "5"})
        await settle()
        assert limiter.frozen_until == 5.0

        waiters = [
            Caller(limiter, BULK, name="bulk1", order=order),
            Caller(limiter, POLL, name="poll", order=order),
            Caller(limiter, INTERACTIVE, name="interactive", order=order),
            Caller(limiter, BULK, name="bulk2", order=order),
        ]
        await clock.advance(4.99)
        assert order == []  # nobody, whatever the priority, and although Remaining said 40
        await clock.advance(0.01)
        assert order == ["interactive"]  # one probe first, the most urgent
        assert limiter.frozen_until is None

        waiters[2].release(200, budget(44))
        await settle()
        assert order == ["interactive", "poll", "bulk1", "bulk2"]
        stats = limiter.snapshot()
        assert (stats.rate_limited, stats.freezes) == (1, 1)
        await finish(*waiters)


@pytest.mark.asyncio
async def test_a_429_without_retry_after_freezes_until_reset() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        first = Caller(limiter)
        await settle()
        first.release(429, budget(0, reset=str(int(clock.time()) + 12)))
        await settle()
        # Reset is in whole seconds: wait one more to be sure the window has turned.
        assert limiter.frozen_until == pytest.approx(13.0)

        bare = Caller(limiter)
        await clock.advance(13.0)
        bare.release(429, {})  # nothing said at all: the documented 60 s cool-down
        await settle()
        assert limiter.frozen_until == pytest.approx(73.0)
        await finish(bare)


@pytest.mark.asyncio
async def test_503_freezes_only_with_retry_after() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        a = Caller(limiter)
        await settle()
        a.release(503, {})
        await settle()
        assert limiter.frozen_until is None
        b = Caller(limiter)
        await settle()
        b.release(503, {"Retry-After": "7"})  # the second in a row: a lone fault still
        await settle()
        assert limiter.frozen_until is None
        c = Caller(limiter)
        await settle()
        c.release(503, {"Retry-After": "7"})  # the third in a row: the server is down
        await settle()
        assert limiter.frozen_until == 7.0


@pytest.mark.asyncio
async def test_freeze_never_shortens() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        limiter.freeze(10)
        limiter.freeze(5)
        assert limiter.frozen_until == 10.0
        limiter.freeze(20)
        assert limiter.frozen_until == 20.0
        assert limiter.snapshot().frozen_for == 20.0
        await clock.advance(20)
        assert limiter.frozen_until is None
        assert limiter.snapshot().freezes == 2


# ---------------------------------------------------------------------------- priorities


@pytest.mark.asyncio
async def test_priority_order_then_fifo() -> None:
    clock = FakeClock()
    order: list[str] = []
    async with Limiter(clock=clock) as limiter:
        holder = Caller(limiter)  # probing: one at a time
        await settle()
        callers = [
            Caller(limiter, BULK, name="b1", order=order),
            Caller(limiter, POLL, name="p1", order=order),
            Caller(limiter, BULK, name="b2", order=order),
            Caller(limiter, INTERACTIVE, name="i1", order=order),
            Caller(limiter, POLL, name="p2", order=order),
            Caller(limiter, INTERACTIVE, name="i2", order=order),
        ]
        await settle()
        assert limiter.waiting == 6
        holder.release()
        by_name = {c.name: c for c in callers}
        for _ in callers:
            await settle()
            by_name[order[-1]].release()  # no response: the next one probes
        await settle()
        assert order == ["i1", "i2", "p1", "p2", "b1", "b2"]
        await finish(*callers)


@pytest.mark.asyncio
async def test_new_interactive_request_overtakes_waiting_bulk() -> None:
    clock = FakeClock()
    order: list[str] = []
    async with Limiter(clock=clock) as limiter:
        limiter.freeze(1.0)
        bulk = [Caller(limiter, BULK, name=f"b{i}", order=order) for i in range(3)]
        await clock.advance(0.5)
        urgent = Caller(limiter, INTERACTIVE, name="i", order=order)
        await clock.advance(0.5)
        assert order == ["i"]
        await finish(urgent, *bulk)


# ---------------------------------------------------------------------------- cancellation


@pytest.mark.asyncio
async def test_cancelled_waiter_passes_its_turn() -> None:
    clock = FakeClock()
    order: list[str] = []
    async with Limiter(clock=clock) as limiter:
        holder = Caller(limiter)
        await settle()
        a, b, c = (Caller(limiter, name=n, order=order) for n in "abc")
        await settle()
        b.task.cancel()
        await settle()
        assert b.task.cancelled()
        assert limiter.waiting == 2
        holder.release()
        await settle()
        a.release()
        await settle()
        assert order == ["a", "c"]

        # Cancelling the head of the queue hands the turn to the next one.
        d, e = Caller(limiter, name="d", order=order), Caller(limiter, name="e", order=order)
        await settle()
        d.task.cancel()
        c.release()
        await settle()
        assert order == ["a", "c", "e"]
        assert limiter.snapshot().cancelled == 2
        assert limiter.in_flight == 1
        await finish(d, e)
        assert limiter.in_flight == 0


@pytest.mark.asyncio
async def test_grant_racing_with_cancel_gives_the_slot_back() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        holder = Caller(limiter)
        await settle()
        a, b = Caller(limiter, name="a"), Caller(limiter, name="b")
        await settle()
        assert holder.slot is not None
        holder.slot.record(None, {})  # synchronously grants ``a`` ...
        a.task.cancel()  # ... which is cancelled before it could run
        await settle()
        assert a.task.cancelled()
        assert a.slot is None
        assert b.granted  # the probe turn was not lost with ``a``
        assert limiter.in_flight == 1
        assert limiter.snapshot().grants == 2  # holder and b; a's grant was taken back
        await finish(holder, b)


@pytest.mark.asyncio
async def test_cancel_mid_request_releases_the_slot() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        a = Caller(limiter)
        b = Caller(limiter)
        await settle()
        a.task.cancel()  # inside the slot, waiting for its "response"
        await settle()
        assert b.granted  # no response means: the probe turn passes on
        assert limiter.in_flight == 1
        await finish(b)


# ---------------------------------------------------------------------------- pacing


def paced_bulk(
    limiter: Limiter, clock: FakeClock, *, window: float, requests: int
) -> tuple[list[asyncio.Task[None]], list[float], list[int]]:
    """`requests` bulk callers in a window of `window` s whose first answer said 49 left.

    Each records when it was granted (`times`) and answers with the budget `left[0]`, which
    counts down (a test may lower it to mimic another client spending the budget).
    """
    left = [48]
    times: list[float] = []

    async def one() -> None:
        async with limiter.slot(BULK) as slot:
            now = clock.monotonic()
            times.append(now)
            slot.record(200, budget(left[0], reset=f"{window - now:.3f}"))
            left[0] -= 1

    return [asyncio.create_task(one()) for _ in range(requests)], times, left


@pytest.mark.asyncio
async def test_pacing_spreads_a_window_instead_of_bursting() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        async with limiter.slot() as slot:
            slot.record(200, budget(49, reset="2.000"))
        tasks, times, _ = paced_bulk(limiter, clock, window=2.0, requests=49)
        await drive(clock, lambda: all(t.done() for t in tasks))
        assert len(times) == 49
        assert times[-1] < 2.0  # the whole budget used within the window, none wasted
        assert times[-1] > 1.8  # ... but spread over it
        assert sum(t == 0.0 for t in times) <= 5  # a small burst, not 49 at once
        assert sum(t < 1.0 for t in times) <= 30
        gaps = [b - a for a, b in itertools.pairwise(times[5:])]
        assert max(gaps) < 3 * 2.0 / 49


@pytest.mark.asyncio
async def test_pace_slows_as_remaining_falls() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        async with limiter.slot() as slot:
            slot.record(200, budget(49, reset="10.000"))
        tasks, times, left = paced_bulk(limiter, clock, window=10.0, requests=30)
        await clock.advance(2.0)
        steady = times[-1] - times[-2]
        assert steady == pytest.approx(10 / 45, rel=0.3)
        seen = len(times)
        left[0] -= 30  # another client spends most of the budget
        await clock.advance(7.5)
        later = times[seen:]
        assert 3 <= len(later) <= 10
        gaps = [b - a for a, b in itertools.pairwise(later[1:])]  # once the drop showed
        assert min(gaps) > 3 * steady
        assert left[0] >= -1  # the last answer said 0 left: never beyond the budget
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_requests_in_flight_are_subtracted_from_remaining() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        async with limiter.slot() as slot:
            slot.record(200, budget(3, reset="10.000"))
        callers = [Caller(limiter) for _ in range(4)]
        await clock.advance(9.9)
        # Three requests sent and unanswered: the server has not counted them yet, so the
        # fourth would exceed its Remaining of 3.
        assert [c.granted for c in callers] == [True, True, True, False]
        assert limiter.snapshot().remaining == 0
        await clock.advance(0.5)  # the window has certainly ended: probe
        assert callers[3].granted
        await finish(*callers)


@pytest.mark.asyncio
async def test_an_answer_arriving_late_does_not_refill_the_budget() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        async with limiter.slot() as slot:
            slot.record(200, budget(5, reset="10.000"))
        a = Caller(limiter)
        await settle()
        b = Caller(limiter)
        await clock.advance(2.0)
        assert a.granted_at == 0.0
        assert b.granted_at == pytest.approx(2.0, abs=0.01)
        # The server counted a before b, but a's answer arrives last: its Remaining looks
        # higher than b's, which is no sign of a new window.
        b.release(200, budget(3, reset="8.000"))
        await settle()
        estimate = limiter.snapshot().remaining
        assert estimate is not None
        assert estimate <= 3
        a.release(200, budget(4, reset="9.990"))
        await settle()
        # Not raised past what the freshest answer said (a was counted before b: 3 left).
        assert limiter.snapshot().remaining == 3
        assert limiter.snapshot().windows == 1  # and no new window seen in it
        more = [Caller(limiter) for _ in range(5)]
        await clock.advance(7.5)
        assert 1 <= sum(c.granted for c in more) <= 3  # what b said was left, no more
        await finish(*more)


# ---------------------------------------------------------------------------- max_wait


@pytest.mark.asyncio
async def test_max_wait_fails_fast_with_retry_at() -> None:
    clock = FakeClock(wall_start=1_800_000_000.0)
    async with Limiter(clock=clock, max_wait=5.0) as limiter:
        limiter.freeze(30)

        async def enter() -> None:
            async with limiter.slot():
                pytest.fail("must not be granted")

        with pytest.raises(RateLimitedError) as caught:
            # Raised at once: the fake clock does not move, so a wait would never end.
            await asyncio.wait_for(enter(), timeout=5.0)
        assert clock.monotonic() == 0.0
        assert caught.value.retry_after == pytest.approx(30.0)
        assert caught.value.retry_at == pytest.approx(1_800_000_030.0)
        with pytest.raises(RateLimitedError):
            await asyncio.wait_for(limiter.slot(BULK, max_wait=29.0).__aenter__(), timeout=5.0)
        patient = Caller(limiter, BULK, max_wait=None)
        also = Caller(limiter, POLL, max_wait=31.0)
        await clock.advance(30)
        assert also.granted  # within its cap (and POLL before BULK)
        assert limiter.snapshot().rejected == 2
        also.release(200, {})
        await settle()
        assert patient.granted
        await finish(patient, also)


@pytest.mark.asyncio
async def test_max_wait_runs_out_while_waiting() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        holder = Caller(limiter)  # probing, answer pending: no estimate beyond "soon"
        await settle()
        impatient = Caller(limiter, max_wait=2.0)
        await clock.advance(1.9)
        assert not impatient.task.done()
        await clock.advance(0.1)
        assert impatient.task.done()
        with pytest.raises(RateLimitedError):
            impatient.task.result()
        assert limiter.waiting == 0
        assert limiter.snapshot().expired == 1
        await finish(holder)


# ---------------------------------------------------------------------------- observability


@pytest.mark.asyncio
async def test_on_wait_hook_and_info_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zapier_async")
    clock = FakeClock()
    waits: list[tuple[float, Priority]] = []
    async with Limiter(clock=clock, on_wait=lambda s, p: waits.append((s, p))) as limiter:
        first = Caller(limiter)
        await settle()
        first.release(200, {})
        limiter.freeze(3)
        caplog.clear()
        slow = Caller(limiter, POLL)
        await clock.advance(3)
        assert slow.granted
        assert waits == [(3.0, POLL)]
        records = [r for r in caplog.records if "waited" in r.getMessage()]
        assert len(records) == 1
        assert records[0].levelno == logging.INFO
        assert records[0].name == "zapier_async"
        assert "3.0s" in records[0].getMessage()
        assert "frozen" in records[0].getMessage()
        assert "a poll request waited" in records[0].getMessage()

        slow.release(200, {})  # the probe after the freeze: answered, no budget headers
        await settle()
        limiter.freeze(0.5)
        quick = Caller(limiter, BULK)
        await clock.advance(0.5)
        assert quick.granted
        assert waits[-1] == (0.5, BULK)
        assert len([r for r in caplog.records if "waited" in r.getMessage()]) == 1
        stats = limiter.snapshot()
        assert (stats.waits, stats.wait_total, stats.wait_max) == (2, 3.5, 3.0)
        await finish(slow, quick)


@pytest.mark.asyncio
async def test_background_waits_are_summarised_and_interactive_ones_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zapier_async")
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        first = Caller(limiter)
        await settle()
        first.release(200, {})
        await settle()
        caplog.clear()
        for _ in range(100):  # a bulk job: every request waits 2 s, for 200 s in all
            limiter.freeze(2)
            caller = Caller(limiter, BULK)
            await clock.advance(2)
            assert caller.granted
            caller.release(200, {})
            await settle()
        waits = [r for r in caplog.records if "waited" in r.getMessage()]
        info = [r.getMessage() for r in waits if r.levelno == logging.INFO]
        debug = [r for r in waits if r.levelno == logging.DEBUG]
        # The first at once, then one summary a minute (at 62, 122 and 182 s), each line
        # counting the waits since the previous one; every wait is still at DEBUG.
        assert len(info) == 4
        assert "summarised every 60s" in info[0]
        assert [int(m.split()[2]) for m in info[1:]] == [30, 30, 30]
        assert len(debug) == 99
        caplog.clear()
        limiter.freeze(2)
        web = Caller(limiter, INTERACTIVE)
        await clock.advance(2)
        assert web.granted
        [record] = [r for r in caplog.records if "waited" in r.getMessage()]
        assert record.levelno == logging.INFO
        assert "interactive request waited 2.0s" in record.getMessage()
        await finish(web)


@pytest.mark.asyncio
async def test_a_failing_hook_does_not_break_the_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(seconds: float, priority: Priority) -> None:
        raise RuntimeError("boom")

    clock = FakeClock()
    async with Limiter(clock=clock, rate=(1, 1.0), on_wait=hook) as limiter:
        callers = [Caller(limiter) for _ in range(3)]
        await clock.advance(2)
        assert all(c.granted for c in callers)
        assert "on_wait hook failed" in caplog.text
        await finish(*callers)


@pytest.mark.asyncio
async def test_snapshot() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        assert limiter.snapshot() == LimiterStats(
            mode="probe",
            grants=0,
            immediate=0,
            waits=0,
            wait_total=0.0,
            wait_max=0.0,
            rejected=0,
            expired=0,
            cancelled=0,
            responses=0,
            rate_limited=0,
            freezes=0,
            windows=0,
            in_flight=0,
            waiting=0,
            limit=None,
            remaining=None,
            reset_in=None,
            frozen_for=None,
        )
        async with limiter.slot() as slot:
            slot.record(200, budget(30, reset="20.000"))
        stats = limiter.snapshot()
        assert (stats.mode, stats.grants, stats.immediate, stats.responses) == (
            "window",
            1,
            1,
            1,
        )
        assert (stats.limit, stats.remaining, stats.windows) == (50, 30, 1)
        assert stats.reset_in == pytest.approx(20.0, abs=0.5)
        assert "window" in repr(limiter)


# ---------------------------------------------------------------------------- the timer


@pytest.mark.asyncio
async def test_ten_thousand_waiters_in_order_with_one_timer() -> None:
    clock = FakeClock()
    order: list[int] = []
    seen: set[asyncio.Task[object]] = set()
    async with Limiter(clock=clock, rate=(100, 1.0)) as limiter:

        async def one(i: int, priority: Priority) -> None:
            async with limiter.slot(priority):
                order.append(i)

        def priority(i: int) -> Priority:
            return INTERACTIVE if i % 3 == 0 else BULK

        tasks = [asyncio.create_task(one(i, priority(i))) for i in range(10_000)]
        await settle()
        assert limiter.waiting == 9_900  # the first 100 went at once
        while not all(t.done() for t in tasks):
            seen |= timer_tasks()
            deadline = clock.next_deadline()
            assert deadline is not None
            await clock.advance_to(deadline)
        assert clock.monotonic() == 99.0
        assert len(seen) == 1  # one timer for everybody, never replaced
        assert timer_tasks() == set()  # and gone once nobody waits
        rest = range(100, 10_000)
        expected = [*range(100), *(i for i in rest if i % 3 == 0), *(i for i in rest if i % 3)]
        assert order == expected
        assert limiter.snapshot().grants == 10_000


@pytest.mark.asyncio
async def test_timer_ends_when_nobody_waits() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        assert timer_tasks() == set()
        limiter.freeze(60)
        waiter = Caller(limiter)
        await settle()
        assert len(timer_tasks()) == 1
        waiter.task.cancel()
        await settle()
        assert timer_tasks() == set()  # not left sleeping for a minute
        assert clock.sleepers == 0


@pytest.mark.asyncio
async def test_an_earlier_deadline_wakes_the_sleeping_timer() -> None:
    clock = FakeClock()
    async with Limiter(clock=clock) as limiter:
        limiter.freeze(60)
        slow = Caller(limiter, BULK)
        await settle()
        (timer,) = timer_tasks()
        quick = Caller(limiter, max_wait=5.0)  # estimated 60 s > 5: refused at once
        await settle()
        assert isinstance(quick.task.exception(), RateLimitedError)
        limiter.freeze(0)  # no earlier: nothing changes
        assert timer_tasks() == {timer}
        await clock.advance(60)
        assert slow.granted
        await finish(slow)


# ---------------------------------------------------------------------------- closing


@pytest.mark.asyncio
async def test_aclose_fails_waiters_and_stops_the_timer() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    limiter.freeze(30)
    holder = Caller(limiter)
    a, b = Caller(limiter), Caller(limiter, BULK)
    await settle()
    assert len(timer_tasks()) == 1
    await limiter.aclose()
    await settle()
    for caller in (holder, a, b):
        assert isinstance(caller.task.exception(), LimiterClosedError)
    assert "closed" in str(a.task.exception())
    assert timer_tasks() == set()
    assert limiter.closed
    with pytest.raises(LimiterClosedError):
        async with limiter.slot():
            pass
    await limiter.aclose()  # idempotent


@pytest.mark.asyncio
async def test_granted_slot_may_record_after_close() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    async with limiter.slot() as slot:
        await limiter.aclose()
        slot.record(200, budget(10))
    assert limiter.in_flight == 0


def test_limiter_closed_error_pickles() -> None:
    error = LimiterClosedError("closed while waiting")
    assert str(pickle.loads(pickle.dumps(error))) == "closed while waiting"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_wait": -1.0}, {"rate": (0, 1.0)}, {"rate": (5, 0.0)}, {"default_cooldown": 0.0}],
)
def test_limiter_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limiter(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- a simulated server


class WindowServer:
    """``limit`` requests per ``window`` s; a window starts with the first request after the
    previous one ended; every response carries the three headers, Reset written as ``fmt``."""

    def __init__(self, clock: FakeClock, fmt: str, limit: int = 50, window: float = 2.0) -> None:
        self.clock, self.fmt, self.limit, self.window = clock, fmt, limit, window
        self.end = -math.inf
        self.used = 0
        self.ok = 0
        self.refused = 0

    def handle(self) -> tuple[int, dict[str, str]]:
        now = self.clock.monotonic()
        if now >= self.end:
            self.end, self.used = now + self.window, 0
        self.used += 1
        left = self.end - now
        epoch = self.clock.time() + left
        reset = {
            "float": f"{left:.3f}",
            "ceil": str(math.ceil(left)),
            "floor": str(int(left)),
            "epoch": str(math.ceil(epoch)),
            "iso": datetime.fromtimestamp(math.ceil(epoch), timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }[self.fmt]
        headers = budget(max(self.limit - self.used, 0), reset=reset, limit=self.limit)
        if self.used > self.limit:
            self.refused += 1
            return 429, {**headers, "Retry-After": str(math.ceil(left))}
        self.ok += 1
        return 200, headers


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fmt", "jitter"),
    [("float", 0.0), ("ceil", 0.0), ("floor", 0.0), ("epoch", 0.0), ("iso", 0.0), ("ceil", 0.02)],
)
async def test_simulated_server_no_429s_near_minimal_time(fmt: str, jitter: float) -> None:
    """1,000 requests by 100 concurrent callers against 50 per 2 s: the theoretical minimum
    is 40 s; the limiter must get no 429 and stay within 10% of it."""
    clock = FakeClock(wall_start=1_700_000_000.37)
    server = WindowServer(clock, fmt)
    rng = random.Random(1)  # jitter makes answers arrive out of order
    jobs = list(range(1000))

    async with Limiter(clock=clock) as limiter:

        async def caller() -> None:
            while jobs:
                jobs.pop()
                async with limiter.slot(BULK) as slot:
                    await clock.sleep(0.005 + rng.random() * jitter)
                    status, headers = server.handle()
                    await clock.sleep(0.005 + rng.random() * jitter)
                    slot.record(status, headers)
                assert status == 200

        callers = [asyncio.create_task(caller()) for _ in range(100)]
        await drive(clock, lambda: all(t.done() for t in callers))
        await asyncio.gather(*callers)
        elapsed = clock.monotonic()

    assert server.refused == 0
    assert server.ok == 1000
    minimum = 1000 / (50 / 2.0)
    assert elapsed <= 1.10 * minimum, f"{elapsed:.2f}s for a minimum of {minimum:.0f}s"

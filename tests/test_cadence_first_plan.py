"""When an action's first plan is made (`AdaptivePolling.observe`'s censored-share gate).

The gate waits while most runs seen are still going (a plan of a burst's short runs alone
would poll its long ones at their pace). It compared the runs still going with the samples
kept, which are capped at `window` (128): with more than about 43 runs in flight it could
never open, and a steady job (scenario 2: 600 runs, 100 in flight) was polled at the cold
cadence to its end, never learning (live: no run of the 600 followed a plan).
"""

from __future__ import annotations

import random

from zapier_async._cadence import PollRecord
from zapier_async._polling import AdaptivePolling


class _Handle:
    def __init__(self, created_at: float) -> None:
        self.created_at = created_at
        self.reads = PollRecord()
        self._done = False

    def done(self) -> bool:
        return self._done


def _steady(polling: AdaptivePolling, *, in_flight: int, ended: int) -> None:
    """`ended` runs end one by one while `in_flight` others, each polled once, are going."""
    rng = random.Random(2)
    clock = 0.0
    going: list[_Handle] = []

    def start() -> None:
        handle = _Handle(clock)
        polling.first_delay(handle, "a", rng)  # type: ignore[arg-type]
        handle.reads.attempts = 1
        polling.next_delay(handle, 1, 0.1, rng, hint=None)  # type: ignore[arg-type]
        going.append(handle)

    for _ in range(in_flight):
        start()
    for _ in range(ended):
        clock += 0.01
        handle = going.pop(0)
        polling.observe(handle, 0.6, seen_at=handle.reads.due)  # type: ignore[arg-type]
        handle._done = True
        start()


def test_a_steady_job_with_more_runs_in_flight_than_a_third_of_the_window_gets_a_plan() -> None:
    polling = AdaptivePolling(at_once=False)
    # 100 runs in flight, each read once: a quarter of the runs seen once 300 have ended.
    _steady(polling, in_flight=100, ended=320)
    assert polling.plan("a") is not None


def test_the_first_plan_still_waits_while_most_runs_seen_are_going() -> None:
    polling = AdaptivePolling(at_once=False)
    _steady(polling, in_flight=100, ended=200)  # 100 going of 300 seen: a third
    assert polling.plan("a") is None

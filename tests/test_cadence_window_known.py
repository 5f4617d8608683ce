"""With the window known (the limiter reports its limit and length, as with
``ZapierClient(rate_window=...)``), an unlearnt run's poll that finds its run still going
costs a whole window when a job's requests fill its windows exactly: such polls are placed
no earlier than the longest run seen (issue #15)."""

from __future__ import annotations

import random

import attrs
import pytest
from _util import FakePressure, PlannerHandle

from tests import cadence_sim as sim
from zapier_async._backoff import PollPolicy
from zapier_async._polling import AdaptivePolling

_K = FakePressure
_Handle = PlannerHandle


_BOUND = _K(waiting_by_priority=(0, 0, 1))
_BOUND_KNOWN = _K(waiting_by_priority=(0, 0, 1), limit=100, period=5.0)


def _hits(polling: AdaptivePolling, n: int, rng: random.Random) -> None:
    """`n` runs whose bound cold first poll found them ended (answered when due)."""
    for _ in range(n):
        h = _Handle()
        due = polling.first_delay(h, "a", rng)  # type: ignore[arg-type]
        polling.observe(h, due, seen_at=due)  # type: ignore[arg-type]


@pytest.mark.parametrize("known", [False, True])
def test_a_bound_cold_first_poll_goes_no_earlier_than_the_longest_run_seen_when_the_window_is_known(
    known: bool,
) -> None:
    # Runs seen ending by 2.0 s; then 30 first polls that each found its run ended move the
    # learnt quantile 1% earlier each (1.46 s): about one first poll in twenty would find
    # its run still going there. With the window known, each such poll is a create not
    # sent (a whole window when the windows are full): the first poll stays at 2.0 s.
    policy = PollPolicy(initial=0.5, factor=1.5, jitter=0.0)
    pressure = _BOUND_KNOWN if known else _BOUND
    bound = AdaptivePolling(policy=policy, pressure=lambda: pressure, min_samples=1000)
    rng = random.Random(1)
    h = _Handle()
    assert bound.first_delay(h, "a", rng) == 2.0  # type: ignore[arg-type]
    bound.observe(h, 2.0, seen_at=2.0)  # type: ignore[arg-type]
    _hits(bound, 30, rng)
    first = bound.first_delay(_Handle(), "a", rng)  # type: ignore[arg-type]
    if known:
        assert first == pytest.approx(2.0)
    else:  # the learnt quantile, as before
        assert first == pytest.approx(1.98 * 0.99**30)


def test_a_run_seen_going_longer_than_the_quantile_moves_the_bound_first_poll_past_it() -> None:
    policy = PollPolicy(initial=0.5, factor=1.5, jitter=0.2)
    bound = AdaptivePolling(policy=policy, pressure=lambda: _BOUND_KNOWN, min_samples=1000)
    rng = random.Random(3)
    _hits(bound, 40, rng)
    h = _Handle()
    bound.first_delay(h, "a", rng)  # type: ignore[arg-type]
    bound.next_delay(h, 1, 2.3, rng, hint=None)  # type: ignore[arg-type]  # going at 2.3 s
    # Jitter (20% here) never brings a first poll back before the longest run seen.
    assert min(bound.first_delay(_Handle(), "a", rng) for _ in range(50)) >= 2.3  # type: ignore[arg-type]


def test_with_the_window_declared_no_300_run_job_needs_a_seventh_window() -> None:
    # 600 requests for 300 runs fill six windows exactly: one poll finding its run still
    # going costs a seventh (30.0 s = 1.20x). Seeds 1-30 before: 8 jobs did (all of them at
    # the last window, first polls at the learnt quantile, 1.3-1.4 s for runs of up to
    # 1.5 s), mean 1.108x; now none, mean 1.079x.
    results = [
        sim.simulate_library(
            attrs.evolve(sim.WORKLOADS["w300"], seed=s, rate_window=True), sim.library()
        )
        for s in range(1, 31)
    ]
    assert [r.polls for r in results] == [300] * 30
    assert max(r.ratio for r in results) <= 1.10

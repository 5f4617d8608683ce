"""Adaptive polling (`zapier_async._polling`): pure, driven by a simulated clock."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from _util import PlannerHandle

from zapier_async._backoff import PollPolicy
from zapier_async._polling import AdaptivePolling, plan_polls, turnbull

_Handle = PlannerHandle


def _simulate(
    polling: AdaptivePolling, durations: list[float], key: str | None = "a", *, seed: int = 7
) -> list[tuple[int, float]]:
    """Follow runs one after another; (polls, lag) per run."""
    rng = random.Random(seed)
    out = []
    for duration in durations:
        handle = _Handle()
        t = polling.first_delay(handle, key, rng)  # type: ignore[arg-type]
        polls = 1
        while t < duration:
            t += polling.next_delay(handle, polls, t, rng, hint=None)  # type: ignore[arg-type]
            polls += 1
        polling.observe(handle, t)  # type: ignore[arg-type]
        out.append((polls, t - duration))
    return out


def test_turnbull_masses_sum_to_one_and_follow_the_data() -> None:
    bounds, masses = turnbull([(0.0, 1.0), (0.5, 1.0), (0.5, 2.0), (1.0, 2.0)])
    assert bounds == [0.0, 0.5, 1.0, 2.0]
    assert sum(masses) == pytest.approx(1.0)
    assert all(m >= 0 for m in masses)


def test_turnbull_keeps_right_censored_mass_beyond() -> None:
    bounds, masses = turnbull([(0.0, 1.0), (0.5, 1.0), (1.0, math.inf)])
    assert math.isinf(bounds[-1])
    assert masses[-1] > 0
    assert sum(masses) == pytest.approx(1.0)
    plan = plan_polls(bounds, masses, 0.1)
    assert plan[-1] == 1.0  # the last finite end; beyond it is the fallback's job


def test_plan_for_a_uniform_distribution_shrinks_its_gaps() -> None:
    cells = 130
    bounds = [0.2 + 1.3 * k / cells for k in range(cells + 1)]
    plan = plan_polls(bounds, [1.0 / cells] * cells, 0.15)
    assert plan[-1] == pytest.approx(1.5)
    assert plan[0] > 0.5  # no poll where no run can have ended yet
    gaps = [b - a for a, b in itertools.pairwise(plan)]
    assert gaps == sorted(gaps, reverse=True)


def test_a_cheap_poll_buys_less_lag() -> None:
    bounds = [0.0, 1.0]
    cheap = plan_polls(bounds, [1.0], 0.01)
    dear = plan_polls(bounds, [1.0], 1.0)
    assert len(cheap) > len(dear) == 1


def test_uses_the_policy_until_enough_runs_ended() -> None:
    policy = PollPolicy(initial=0.5, jitter=0.0)
    polling = AdaptivePolling(policy=policy, min_samples=4)
    _simulate(polling, [0.3, 0.3, 0.3])
    assert polling.plan("a") is None
    handle = _Handle()
    assert polling.first_delay(handle, "a", random.Random(1)) == 0.5  # type: ignore[arg-type]
    _simulate(polling, [0.3])
    assert polling.plan("a") is not None


def test_learns_to_poll_at_once_for_instant_runs() -> None:
    polling = AdaptivePolling()
    results = _simulate(polling, [0.0] * 400)
    assert statistics.fmean(lag for _, lag in results[-100:]) < 0.02
    assert all(polls == 1 for polls, _ in results[-100:])


def test_fewer_polls_than_a_fixed_half_second_at_equal_lag() -> None:
    # Averaged over independent jobs: one job's figures depend on its random draws (the
    # exploration, the cold cadence's jitter) by about +-0.1 poll per run.
    polls, lags = [], []
    for seed in range(8):
        rng = random.Random(3 + seed)
        durations = [rng.uniform(0.2, 1.5) for _ in range(1200)]
        results = _simulate(AdaptivePolling(), durations, seed=7 + seed)[-600:]
        polls.append(statistics.fmean(p for p, _ in results))
        lags.append(statistics.fmean(lag for _, lag in results))
    # A fixed 0.5 s poll starting at t=0: 3.15 polls per run, 0.227 s mean lag.
    assert statistics.fmean(lags) <= 0.235
    assert statistics.fmean(polls) <= 0.7 * 3.15
    assert max(polls) <= 0.75 * 3.15


def test_runs_longer_than_the_plan_fall_back_and_are_learnt() -> None:
    polling = AdaptivePolling(min_samples=4, replan_every=4)
    _simulate(polling, [1.0] * 20)
    results = _simulate(polling, [5.0] * 40)
    plan = polling.plan("a")
    assert plan is not None
    assert plan[-1] >= 5.0
    assert results[-1][0] < results[0][0]


def test_a_server_hint_wins_over_the_plan() -> None:
    polling = AdaptivePolling(min_samples=2, replan_every=2)
    _simulate(polling, [1.0] * 10)
    handle = _Handle()
    rng = random.Random(1)
    polling.first_delay(handle, "a", rng)  # type: ignore[arg-type]
    assert polling.next_delay(handle, 1, 0.1, rng, hint=30.0) == 30.0  # type: ignore[arg-type]
    policy_cap = polling.policy.max_hint
    assert polling.next_delay(handle, 1, 0.1, rng, hint=1e9) == policy_cap  # type: ignore[arg-type]


def test_disabled_or_keyless_runs_use_the_policy() -> None:
    policy = PollPolicy(initial=0.25, factor=2.0, jitter=0.0)
    for polling, key in (
        (AdaptivePolling(policy=policy, enabled=False), "a"),
        (AdaptivePolling(policy=policy), None),
    ):
        _simulate(polling, [0.1] * 40, key=key)
        assert polling.plan("a") is None
        handle = _Handle()
        rng = random.Random(1)
        assert polling.first_delay(handle, key, rng) == 0.25  # type: ignore[arg-type]
        assert polling.next_delay(handle, 1, 0.25, rng, hint=None) == 0.5  # type: ignore[arg-type]


def test_forgets_the_oldest_action_beyond_max_actions() -> None:
    polling = AdaptivePolling(max_actions=2, min_samples=1)
    for key in ("a", "b", "c"):
        _simulate(polling, [0.1] * 2, key=key)
    assert polling.plan("a") is None
    assert polling.plan("b") is not None
    assert polling.plan("c") is not None


def _fresh(polling: AdaptivePolling, key: str = "a") -> tuple[_Handle, float]:
    handle = _Handle()
    return handle, polling.first_delay(handle, key, random.Random(1))  # type: ignore[arg-type]


def test_an_unlearnt_action_is_polled_at_once_until_a_few_misses() -> None:
    policy = PollPolicy(initial=0.5, factor=2.0, jitter=0.0)
    polling = AdaptivePolling(policy=policy, at_once_misses=2)
    rng = random.Random(1)
    for _ in range(2):
        handle, delay = _fresh(polling)
        assert delay == 0.0
        # The at-once poll found it still going: the cold cadence starts from the policy's
        # first interval, then waits at least (factor - 1) times the run's age.
        assert polling.next_delay(handle, 1, 0.01, rng, hint=None) == 0.5  # type: ignore[arg-type]
        assert polling.next_delay(handle, 2, 0.51, rng, hint=None) == 0.51  # type: ignore[arg-type]
        assert polling.next_delay(handle, 3, 2.0, rng, hint=None) == 2.0  # type: ignore[arg-type]
    _, delay = _fresh(polling)
    assert delay == 0.5  # two misses: slow action, no more at-once polls


def test_concurrent_unlearnt_runs_wait_for_the_first_at_once_answer() -> None:
    polling = AdaptivePolling(policy=PollPolicy(jitter=0.0), at_once_misses=3)
    handles = [_fresh(polling) for _ in range(10)]
    assert [d for _, d in handles] == [0.0] * 3 + [polling.policy.initial] * 7
    # The first at-once poll finds its run ended: the seven held back are polled now.
    moved = polling.observe(handles[0][0], 0.003)  # type: ignore[arg-type]
    assert sorted(id(h) for h, _ in moved) == sorted(id(h) for h, _ in handles[3:])
    assert all(delay == 0.0 for _, delay in moved)
    # From then on new runs are polled at once without waiting.
    assert _fresh(polling)[1] == 0.0


def test_runs_in_flight_switch_to_the_first_plan() -> None:
    polling = AdaptivePolling(min_samples=8, at_once=False)
    going = []
    for due in (9.0, 9.0, 0.15, 30.0):
        handle, _ = _fresh(polling)
        handle.reads.timer = object()  # scheduled, not in flight
        handle.reads.due = due  # its next poll, seconds after its create
        going.append(handle)
    going[0].created_at = going[1].created_at = going[2].created_at = 0.9  # 0.1 s old
    going[3].created_at = -9.0  # 10 s old: older than the whole plan
    moved: list[tuple[object, float]] = []
    for _ in range(8):
        handle, _ = _fresh(polling)
        moved = polling.observe(handle, 1.0)  # type: ignore[arg-type,assignment]
    plan = polling.plan("a")
    assert plan is not None
    assert plan[-1] < 10.0
    assert all(h.reads.plan == plan for h in going)
    delays = {id(h): delay for h, delay in moved}
    # Moved to the plan's next poll when that is sooner than the poll it has...
    assert delays[id(going[0])] == delays[id(going[1])] == pytest.approx(plan[0] - 0.1)
    # ...kept when it is not (0.05 s from now: moved later, it would hold its slot longer)...
    assert id(going[2]) not in delays
    # ...and older than the whole plan: its fallback's first step, not 20 s later.
    assert delays[id(going[3])] == pytest.approx(max(0.002, 0.1 * plan[-1]))


def test_replanning_backs_off_while_the_action_is_steady(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zapier_async._polling as polling_module

    calls = 0
    real = polling_module.plan_polls

    def counting(*args: object, **kwargs: object) -> list[float]:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(polling_module, "plan_polls", counting)
    # Every 16 runs would be 62 plans; backing off to every 64 makes about 20, plus a few
    # when a run outlived the plan (how many depends on the job's random draws).
    counts = []
    for seed in range(4):
        calls = 0
        polling = AdaptivePolling(min_samples=16, replan_every=16, window=128)
        rng = random.Random(5 + seed)
        _simulate(polling, [rng.uniform(0.2, 1.5) for _ in range(1000)], seed=7 + seed)
        counts.append(calls)
    assert max(counts) <= 31
    assert statistics.fmean(counts) <= 26
    # A run that outlives the plan brings re-planning back soon.
    before = calls
    _simulate(polling, [5.0] * 20)
    assert calls - before >= 1
    plan = polling.plan("a")
    assert plan is not None
    assert plan[-1] >= 5.0


def test_a_first_poll_within_half_a_round_trip_goes_at_once() -> None:
    polling = AdaptivePolling(min_samples=4, at_once=False, at_once_below=0.0, explore_every=1000)
    _simulate(polling, [0.04] * 8)
    plan = polling.plan("a")
    assert plan is not None
    assert 0.04 <= plan[0] < 0.5
    assert _fresh(polling)[1] == plan[0]
    for _ in range(50):
        polling.round_trip(1.0)  # answers take a second: a shorter timer saves nothing
    assert _fresh(polling)[1] == 0.0

"""Poll cadence, retry delays, the retry decision and the retry budget (pure)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapier_async._backoff import (
    PollPolicy,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    decide_retry,
    next_poll_delay,
)

RETRY = RetryDecision.RETRY
GIVE_UP = RetryDecision.GIVE_UP
UNKNOWN = RetryDecision.UNKNOWN_OUTCOME


class FixedRandom:
    """An rng that always draws the same value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


MID = FixedRandom(0.5)  # no jitter either way
LOW = FixedRandom(0.0)
HIGH = FixedRandom(0.999999)


# ---------------------------------------------------------------------------- PollPolicy


def test_poll_grows_geometrically_to_the_cap() -> None:
    policy = PollPolicy()
    delays = [policy.interval(n, elapsed=0.0, rng=MID) for n in range(12)]
    assert delays[:4] == pytest.approx([0.5, 0.75, 1.125, 1.6875])
    assert delays == sorted(delays)
    assert delays[-1] == 10.0
    assert max(delays) == 10.0


def test_poll_jitter_bounds() -> None:
    policy = PollPolicy(initial=2.0, jitter=0.1)
    assert policy.interval(0, elapsed=0.0, rng=LOW) == pytest.approx(1.8)
    assert policy.interval(0, elapsed=0.0, rng=HIGH) == pytest.approx(2.2, rel=1e-5)


def test_poll_jitter_spreads_runs_created_together() -> None:
    policy = PollPolicy()
    rng = random.Random(7)
    delays = {round(policy.interval(3, elapsed=1.0, rng=rng), 6) for _ in range(100)}
    assert len(delays) > 90  # not in lock-step


def test_poll_long_running_runs_are_polled_at_the_late_cap() -> None:
    policy = PollPolicy(late_after=180.0, late_cap=30.0)
    assert policy.interval(2, elapsed=179.0, rng=MID) == pytest.approx(1.125)
    assert policy.interval(2, elapsed=180.0, rng=MID) == 30.0


@given(st.integers(min_value=0, max_value=10**9), st.floats(0, 1e6), st.floats(0, 0.999999))
def test_poll_interval_is_bounded(attempt: int, elapsed: float, draw: float) -> None:
    policy = PollPolicy()
    delay = policy.interval(attempt, elapsed=elapsed, rng=FixedRandom(draw))
    assert math.isfinite(delay)
    assert 0.0 < delay <= max(policy.cap, policy.late_cap) * (1 + policy.jitter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": -1.0},
        {"cap": math.inf},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"factor": math.nan},
    ],
)
def test_poll_policy_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PollPolicy(**kwargs)


def test_next_poll_delay_hint_wins_when_longer() -> None:
    policy = PollPolicy()
    assert next_poll_delay(policy, 0, 0.0, MID, hint=None) == 0.5
    assert next_poll_delay(policy, 0, 0.0, MID, hint=0.1) == 0.5  # shorter hint: ignored
    assert next_poll_delay(policy, 0, 0.0, MID, hint=12.0) == 12.0  # throttled: wait longer
    assert next_poll_delay(policy, 0, 0.0, MID, hint=10**6) == policy.max_hint
    assert next_poll_delay(policy, 0, 0.0, MID, hint=math.nan) == 0.5
    assert next_poll_delay(policy, 0, 0.0, MID, hint=math.inf) == 0.5


# ---------------------------------------------------------------------------- RetryPolicy


def test_retry_delay_full_jitter() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    # Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].
    assert [policy.delay(n, HIGH) for n in (1, 2, 3, 4)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0], rel=1e-5
    )
    assert policy.delay(3, LOW) == 0.0
    assert policy.delay(3, MID) == pytest.approx(1.0)
    assert policy.delay(100, HIGH) == pytest.approx(30.0, rel=1e-5)
    assert policy.delay(10**9, HIGH) == pytest.approx(30.0, rel=1e-5)  # no overflow


def test_retry_delay_honours_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=120.0)
    assert policy.delay(1, HIGH, retry_after=7.0) == 7.0
    assert policy.delay(1, HIGH, retry_after=0.0) == 0.0
    assert policy.delay(1, HIGH, retry_after=3600.0) == 120.0
    assert policy.delay(1, HIGH, retry_after=-1.0) == 0.0


def test_retry_attempts() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 4
    assert [policy.can_retry(n) for n in range(1, 6)] == [True, True, True, False, False]
    assert not RetryPolicy(max_attempts=1).can_retry(1)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# ---------------------------------------------------------------------------- decide_retry

# The exhaustive table from DESIGN.md: (status, failure, has_retry_after) -> (GET, POST)
TABLE = [
    # No response at all.
    (None, "connect", False, RETRY, RETRY),  # provably never sent
    (None, "timeout", False, RETRY, UNKNOWN),
    (None, "reset", False, RETRY, UNKNOWN),
    # An answer over the body-size cap would come back the same.
    (200, "too_large", False, GIVE_UP, UNKNOWN),
    # Refusals: the request was not acted on.
    (429, None, False, RETRY, RETRY),
    (429, None, True, RETRY, RETRY),
    (503, None, True, RETRY, RETRY),
    # Server errors that may come after the run was created.
    (503, None, False, RETRY, UNKNOWN),
    (500, None, False, RETRY, UNKNOWN),
    (500, None, True, RETRY, UNKNOWN),
    (502, None, False, RETRY, UNKNOWN),
    (504, None, False, RETRY, UNKNOWN),
    (504, None, True, RETRY, UNKNOWN),
    (507, None, False, GIVE_UP, UNKNOWN),
    (599, None, False, GIVE_UP, UNKNOWN),
    (501, None, False, GIVE_UP, GIVE_UP),  # not implemented: never processed
    (505, None, False, GIVE_UP, GIVE_UP),
    # Client errors are raised as they are.
    (400, None, False, GIVE_UP, GIVE_UP),
    (401, None, False, GIVE_UP, GIVE_UP),
    (403, None, False, GIVE_UP, GIVE_UP),
    (404, None, False, GIVE_UP, GIVE_UP),
    (408, None, False, GIVE_UP, GIVE_UP),
    (409, None, False, GIVE_UP, GIVE_UP),
    (422, None, True, GIVE_UP, GIVE_UP),
    # Not failures.
    (200, None, False, GIVE_UP, GIVE_UP),
    (202, None, False, GIVE_UP, GIVE_UP),
    # A redirect after a POST may mean it was processed (Post/Redirect/Get).
    (302, None, False, GIVE_UP, UNKNOWN),
    (303, None, False, GIVE_UP, UNKNOWN),
    # A failure after the status line (the body, e.g. the new run's id, is lost).
    (200, "reset", False, RETRY, UNKNOWN),
    (201, "timeout", False, RETRY, UNKNOWN),
]


@pytest.mark.parametrize(("status", "failure", "has_retry_after", "get", "post"), TABLE)
def test_decide_retry_table(
    status: int | None,
    failure: str | None,
    has_retry_after: bool,
    get: RetryDecision,
    post: RetryDecision,
) -> None:
    kwargs = {"status": status, "failure": failure, "has_retry_after": has_retry_after}
    assert decide_retry(idempotent=True, **kwargs) is get  # type: ignore[arg-type]
    assert decide_retry(idempotent=False, **kwargs) is post  # type: ignore[arg-type]


@given(
    st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    st.sampled_from([None, "connect", "timeout", "reset", "too_large"]),
    st.booleans(),
)
def test_a_create_is_never_resent_unless_provably_safe(
    status: int | None, failure: str | None, has_retry_after: bool
) -> None:
    if status is None and failure is None:
        return
    decision = decide_retry(
        idempotent=False,
        status=status,
        failure=failure,  # type: ignore[arg-type]
        has_retry_after=has_retry_after,
    )
    safe = failure == "connect" or (
        failure is None and (status == 429 or (status == 503 and has_retry_after))
    )
    assert (decision is RETRY) == safe


def test_decide_retry_needs_an_outcome() -> None:
    with pytest.raises(ValueError, match="status or a failure"):
        decide_retry(idempotent=True, status=None, failure=None, has_retry_after=False)


# ---------------------------------------------------------------------------- RetryBudget


def test_budget_starts_full_and_runs_dry() -> None:
    budget = RetryBudget(capacity=3.0, ratio=0.5)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    assert budget.retries == 3
    assert budget.refused == 1
    budget.on_success()
    assert not budget.try_spend()  # half a token is not a retry
    budget.on_success()
    assert budget.try_spend()


def test_budget_refills_up_to_capacity_only() -> None:
    budget = RetryBudget(capacity=2.0, ratio=1.0)
    for _ in range(10):
        budget.on_success()
    assert budget.tokens == 2.0
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_budget_initial_tokens() -> None:
    assert RetryBudget(capacity=5.0).tokens == 5.0
    assert RetryBudget(capacity=5.0, tokens=0.0).try_spend() is False
    assert RetryBudget(capacity=5.0, tokens=99.0).tokens == 5.0
    with pytest.raises(ValueError, match="capacity"):
        RetryBudget(capacity=0.0)


def test_budget_stops_an_outage_from_multiplying_load() -> None:
    # 1,000 bulk items, each retried up to 3 times, into a server that fails everything.
    budget = RetryBudget()
    policy = RetryPolicy()
    sent = 0
    for _ in range(1000):
        attempts = 1
        sent += 1
        while policy.can_retry(attempts) and budget.try_spend():
            attempts += 1
            sent += 1
    assert sent == 1000 + 10  # instead of 4,000


@given(st.lists(st.booleans(), max_size=500))
def test_budget_bounds_retries_by_successes(events: list[bool]) -> None:
    budget = RetryBudget(capacity=10.0, ratio=0.1)
    successes = retries = 0
    for success in events:
        if success:
            successes += 1
            budget.on_success()
        elif budget.try_spend():
            retries += 1
    assert retries <= 10 + 0.1 * successes + 1e-9

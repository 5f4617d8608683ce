"""The pure budget state machine, driven synchronously: time is an argument."""

from __future__ import annotations

import pytest

from zapier_async._budget import Budget, BudgetConfig, Grant, Priority
from zapier_async.errors import InvalidRequestError

WALL = 1_700_000_000.0
INTERACTIVE, POLL, BULK = Priority.INTERACTIVE, Priority.POLL, Priority.BULK


def budget(remaining: int, reset: str = "30.000", limit: int = 50) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset,
    }


def answer(b: Budget, g: Grant, status: int | None, headers: dict[str, str], now: float) -> bool:
    """Complete ``g``; whether the answer froze the bucket."""
    return b.complete(g, status, headers, now=now, wall=WALL + now).wait is not None


def grants_now(b: Budget, now: float, priority: Priority = BULK, most: int = 10_000) -> list[Grant]:
    """Grant as many as may go at ``now``."""
    out: list[Grant] = []
    b.advance(now)
    while len(out) < most:
        when = b.next_time(now, priority)
        if when is None or when > now:
            break
        out.append(b.grant(now))
    return out


def warm(b: Budget, remaining: int = 49, reset: str = "30.000", limit: int = 50) -> None:
    probe = b.grant(0.0)
    answer(b, probe, 200, budget(remaining, reset, limit), 0.01)


# ---------------------------------------------------------------------------- modes


def test_probe_one_request_until_an_answer_states_the_budget() -> None:
    b = Budget(BudgetConfig())
    assert b.next_time(0.0) == 0.0
    first = b.grant(0.0)
    assert first.probe
    assert b.next_time(0.0) is None  # only after an answer
    answer(b, first, None, {}, 0.1)  # no answer at all: still probing
    second = b.grant(0.1)
    assert second.probe
    answer(b, second, 200, budget(47), 0.2)
    assert b.view(0.2).mode == "window"
    assert b.view(0.2).remaining == 47


def test_no_budget_headers_means_open() -> None:
    b = Budget(BudgetConfig())
    answer(b, b.grant(0.0), 200, {"Content-Type": "application/json"}, 0.1)
    assert b.view(0.1).mode == "open"
    assert len(grants_now(b, 0.1, most=500)) == 500


def test_a_5xx_without_budget_headers_keeps_probing() -> None:
    b = Budget(BudgetConfig())
    answer(b, b.grant(0.0), 502, {}, 0.1)
    assert b.view(0.1).mode == "probe"


def test_a_priori_rate_is_a_sliding_window() -> None:
    b = Budget(BudgetConfig(rate=(3, 1.0)))
    assert len(grants_now(b, 0.0)) == 3
    assert b.next_time(0.5) == 1.0
    assert b.estimate(0.0, 1) == pytest.approx(1.0)
    assert b.estimate(0.0, 4) == pytest.approx(2.0)


# ---------------------------------------------------------------------------- the budget


def test_requests_in_flight_are_taken_off_remaining() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=3, reset="10.000")
    assert len(grants_now(b, 0.01, INTERACTIVE)) <= 3
    b2 = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.0))
    warm(b2, remaining=3, reset="10.000")
    assert len(grants_now(b2, 0.01, INTERACTIVE)) == 3
    assert b2.next_time(0.01) == pytest.approx(10.01 + 0.01, abs=0.05)  # then: the window's end


def test_a_burst_in_flight_costs_no_budget_once_answered() -> None:
    """50 requests sent at once are counted by the server in any order; once all are
    answered, the lowest Remaining says exactly what is left (not 49 fewer)."""
    b = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.0))
    warm(b, remaining=149, reset="60", limit=150)
    burst = grants_now(b, 0.01, most=50)
    assert len(burst) == 50
    # The server counts them in reverse order of sending: the worst case for per-answer
    # bounds, since the first answer to arrive says the least.
    for i, g in enumerate(burst):
        answer(b, g, 200, budget(99 + i, reset="60", limit=150), 0.02)
    assert b.view(0.02).remaining == 99


def test_requests_granted_at_the_instant_a_window_opens_belong_to_it() -> None:
    """Answers are ordered by arrival number, not time: a tie of times is no doubt."""
    b = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.0))
    warm(b, remaining=149, reset="60", limit=150)
    same_instant = grants_now(b, 0.01, most=10)  # the opening answer arrived at 0.01 too
    for i, g in enumerate(same_instant):
        answer(b, g, 200, budget(148 - i, reset="60", limit=150), 0.02)
    assert b.view(0.02).remaining == 139


def test_a_late_answer_does_not_refill_the_budget() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=5, reset="10.000")
    a = b.grant(0.02)
    later = b.grant(2.0)
    answer(b, later, 200, budget(3, reset="8.000"), 2.01)
    assert b.view(2.01).remaining == 2  # a may still be counted after this answer
    answer(b, a, 200, budget(4, reset="9.990"), 2.02)
    # The late answer was counted before the one saying 3: no more than 3 are left.
    assert b.view(2.02).remaining == 3
    assert b.view(2.02).mode == "window"


def test_a_higher_remaining_after_an_answer_means_a_new_window() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=1, reset="2.000")
    g = b.grant(0.5)
    opened = b.complete(g, 200, budget(49, reset="1.990"), now=0.51, wall=WALL + 0.51).opened
    assert opened
    assert b.view(0.51).remaining == 49


def test_a_window_that_ran_out_sends_one_probe() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=0, reset="2.000")
    assert b.next_time(0.5) == pytest.approx(b.view(0.5).window_ends_at)
    b.advance(3.1)
    assert b.view(3.1).mode == "probe"
    assert b.grant(3.1).probe


# ---------------------------------------------------------------------------- freezes


def test_a_429_freezes_until_retry_after_then_probes() -> None:
    b = Budget(BudgetConfig())
    warm(b)
    assert answer(b, b.grant(0.1), 429, {**budget(0), "Retry-After": "5"}, 0.2)
    assert b.view(1.0).frozen_until == pytest.approx(5.2)
    assert b.next_time(1.0) == pytest.approx(5.2)
    assert b.reason(1.0) == "frozen"
    assert not b.idle(1.0)  # a freeze is state worth keeping
    b.advance(5.2)
    assert b.grant(5.2).probe


def test_a_lone_503_does_not_freeze_and_a_streak_does() -> None:
    b = Budget(BudgetConfig())
    warm(b)
    retry = {"Retry-After": "3"}
    assert not answer(b, b.grant(0.1), 503, retry, 0.2)
    assert not answer(b, b.grant(0.1), 503, retry, 0.3)
    assert answer(b, b.grant(0.1), 503, retry, 0.4)  # the third in a row


def test_a_wait_past_the_cap_is_refused_with_the_named_time() -> None:
    b = Budget(BudgetConfig(max_server_wait=60.0))
    warm(b)
    answer(b, b.grant(0.1), 429, {"Retry-After": "1000"}, 0.2)
    assert b.refusal(1.0) == pytest.approx(WALL + 0.2 + 1000)
    b.advance(60.3)
    assert b.refusal(60.3) is None


def test_freeze_never_shortens() -> None:
    b = Budget(BudgetConfig())
    assert b.freeze(10, now=0.0, wall=WALL).extended
    assert not b.freeze(5, now=0.0, wall=WALL).extended
    assert b.view(0.0).frozen_until == 10.0


# ---------------------------------------------------------------------------- spending


def test_pacing_spreads_the_window_by_default() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=49, reset="10.000")
    assert len(grants_now(b, 0.01)) <= 5  # a tenth as a burst, the rest paced


def test_spend_window_sends_background_work_at_once_down_to_the_reserve() -> None:
    b = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.1))
    warm(b, remaining=149, reset="60", limit=150)
    bulk = grants_now(b, 0.01, BULK)
    reserve = 15  # a tenth of the limit (no boundary probes on a 60 s window)
    assert len(bulk) == 149 - reserve
    assert b.estimate(0.01, 1, POLL) > 50  # background: not before the window may end
    # ... while an interactive request goes at once, and may use the reserve.
    assert len(grants_now(b, 0.01, INTERACTIVE)) == reserve
    assert b.estimate(0.01, 1, INTERACTIVE) > 50


def test_the_reserve_is_released_to_background_work_before_the_window_may_end() -> None:
    b = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.1))
    warm(b, remaining=149, reset="60", limit=150)
    grants_now(b, 0.01, BULK)
    release = b.next_time(0.01, BULK)
    assert release is not None
    assert 55.0 < release < 59.0 + 0.01  # before the earliest end (sent + Reset - 1 s)
    assert len(grants_now(b, release, BULK)) == 15


def test_the_reserve_is_at_least_one_request() -> None:
    b = Budget(BudgetConfig(spend_window=True, interactive_reserve=0.1))
    warm(b, remaining=4, reset="60", limit=5)
    assert len(grants_now(b, 0.01, BULK)) == 3
    assert len(grants_now(b, 0.01, INTERACTIVE)) == 1


def test_estimate_counts_whole_windows_beyond_the_budget() -> None:
    b = Budget(BudgetConfig())
    warm(b, remaining=9, reset="10.000", limit=10)
    assert b.estimate(0.01, 25) >= 10.0 + 10.0  # 9 now, 10 next window, 6 the one after


def test_config_is_validated_with_typed_errors() -> None:
    for kwargs in (
        {"rate": (0, 1.0)},
        {"default_cooldown": 0.0},
        {"interactive_reserve": 1.0},
        {"max_server_wait": 0.0},
    ):
        args = {
            "rate": None,
            "default_cooldown": 60.0,
            "max_server_wait": 900.0,
            "spend_window": False,
            "interactive_reserve": 0.1,
            **kwargs,
        }
        with pytest.raises(InvalidRequestError):
            BudgetConfig.checked(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- window length


def test_a_known_window_length_bounds_the_end_to_the_round_trip() -> None:
    # Reset "30" in whole seconds puts the end anywhere in [29, 31] s after the answer; a
    # window of 30 s that counted this request began before its answer arrived (0.01 s).
    known = Budget(BudgetConfig(window_length=30.0))
    warm(known, reset="30")
    assert known.view(0.02).window_ends_at == pytest.approx(30.01)
    assert known.view(0.02).period == 30.0  # what the poll planner prices plans by
    learnt = Budget(BudgetConfig())
    warm(learnt, reset="30")
    assert learnt.view(0.02).window_ends_at == pytest.approx(31.01)
    assert learnt.view(0.02).period == pytest.approx(31.0)  # the longest Reset, + its second


def test_a_window_length_the_reset_contradicts_is_dropped_for_good() -> None:
    b = Budget(BudgetConfig(window_length=20.0))
    warm(b, reset="30")  # the window ends 29 s or more after: not a 20 s window
    assert b.view(0.02).window_ends_at == pytest.approx(31.01)
    for g in grants_now(b, 31.5, most=1):  # the next window, Reset agreeing with 20 s now
        answer(b, g, 200, budget(49, "20"), 31.51)
    assert b.view(31.52).window_ends_at == pytest.approx(31.51 + 21.0)


def test_a_429_drops_the_window_length() -> None:
    b = Budget(BudgetConfig(window_length=30.0))
    warm(b, reset="30")
    (g,) = grants_now(b, 0.02, most=1)
    answer(b, g, 429, {**budget(0, "30"), "Retry-After": "1"}, 0.03)
    for g in grants_now(b, 1.1, most=1):
        answer(b, g, 200, budget(49, "30"), 1.11)
    assert b.view(1.12).window_ends_at == pytest.approx(32.11)  # Reset's bound alone


def test_a_window_that_has_not_turned_at_the_lengths_bound_drops_it() -> None:
    b = Budget(BudgetConfig(window_length=30.0))
    warm(b, remaining=0, reset="30")  # spent, and over by 30.01 if windows last 30 s
    (g,) = grants_now(b, 30.02, most=1)
    answer(b, g, 200, budget(0, "1"), 30.03)  # still counted in the old window: not 30 s
    (g,) = grants_now(b, 32.1, most=1)
    answer(b, g, 200, budget(49, "30"), 32.11)
    assert b.view(32.12).window_ends_at == pytest.approx(32.11 + 31.0)  # Reset's bound alone

"""The pure budget state machine, driven synchronously: time is an argument."""

from __future__ import annotations

import attrs
import pytest
from limiter_scenarios import Scenario, Server

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


# ---------------------------------------------------------------------------- a rate learnt


def opened(config: BudgetConfig | None = None, at: float = 0.0) -> Budget:
    """A budget whose first answer carried no budget headers: open, as against a server
    that declares them on 429s only (the probe sent at ``at``, answered 0.01 s later)."""
    b = Budget(config or BudgetConfig())
    answer(b, b.grant(at), 200, {}, at + 0.01)
    assert b.view(at + 0.01).mode == "open"
    return b


def refused(retry_after: str, limit: int | None = None) -> dict[str, str]:
    """A 429's headers: ``Retry-After``, and the budget's when ``limit`` is given."""
    if limit is None:
        return {"Retry-After": retry_after}
    return {"Retry-After": retry_after, **budget(0, retry_after, limit)}


def spend_first_window(b: Budget, limit: int | None) -> list[Grant]:
    """A 5-per-10-s server (a window from the first request, the probe at 0): four more go
    at 1.0, 1.1, 1.2 and 1.3 s; the one at 1.4 is refused (its 429 comes 0.05 s later,
    ``Retry-After: 9``: the window ends at 10 s), and the one at 1.5 too (a straggler)."""
    grants = [b.grant(1.0 + i / 10) for i in range(6)]
    for g in grants[:4]:
        answer(b, g, 200, {}, g.sent + 0.05)
    for g in grants[4:]:
        assert answer(b, g, 429, refused("9", limit), g.sent + 0.05)
    return grants


@pytest.mark.parametrize("limit", [5, None, 3600], ids=["limit", "counted", "limit-per-hour"])
def test_a_429_in_open_mode_teaches_a_rate_kept_as_a_sliding_log(limit: int | None) -> None:
    # count: the Limit when it is no more than the requests of ours the window can have
    # counted (the probe and four: 5), else that number (3600 is "per hour"). per: the window
    # ends at the retry time (1.45 + 9) and began no later than the earliest of the last 5
    # grants before the refused one (the probe at 0), + the 429's round trip.
    b = opened()
    spend_first_window(b, limit)
    view = b.view(1.55)
    assert (view.mode, view.limit, view.remaining) == ("open", 5, 0)
    assert view.period == pytest.approx(10.45 + 0.05)
    # Frozen until 10.55; then at most 5 grants in any 10.5 s: the fifth-last (1.1) says when.
    b.advance(10.55)
    assert b.next_time(10.55) == pytest.approx(1.1 + 10.5)
    probe = b.grant(12.0)
    answer(b, probe, 200, {}, 12.01)  # no Remaining on success: open again, and bounded
    assert len(grants_now(b, 12.02, INTERACTIVE)) == 4
    assert b.next_time(12.02) == pytest.approx(12.0 + 10.5)
    assert b.estimate(12.02, 1) == pytest.approx(12.0 + 10.5 - 12.02)
    assert b.estimate(12.02, 6) == pytest.approx(12.0 + 2 * 10.5 - 12.02)
    assert not b.idle(12.02)  # the log holds requests back: worth keeping


def test_a_learnt_rate_leaves_a_reserve_to_interactive_requests() -> None:
    b = opened()
    burst = [b.grant(0.02) for _ in range(60)]
    for g in burst[:49]:
        answer(b, g, 200, {}, 0.03)
    answer(b, burst[49], 429, refused("10", 50), 0.03)  # learnt: 50 per ~10 s
    assert b.view(0.03).limit == 50
    b.advance(20.0)
    answer(b, b.grant(20.0), 200, {}, 20.01)  # the probe after the freeze
    # Background work leaves a tenth of the count (5) to awaited calls, which go at once.
    assert len(grants_now(b, 20.01, BULK)) == 50 - 1 - 5
    assert b.next_time(20.01, POLL) > 29.0
    assert b.estimate(20.01, 1, BULK) > 9.0
    assert b.estimate(20.01, 5, INTERACTIVE) == 0.0
    assert b.estimate(20.01, 6, INTERACTIVE) > 9.0  # honest: the sixth waits for the log
    assert len(grants_now(b, 20.01, INTERACTIVE)) == 5


def _serve(b: Budget, server: Server, start: float, end: float) -> list[float]:
    """Requests always waiting from ``start`` to ``end`` (steps of 10 ms; each answered by
    ``server`` 50 ms after it was sent): the arrival times of the 429s."""
    refusals: list[float] = []
    flying: list[Grant] = []
    for step in range(round(start * 100), round(end * 100)):
        now = step / 100
        for g in [g for g in flying if g.sent + 0.05 <= now + 1e-9]:
            flying.remove(g)
            status, headers = server.handle(g.sent + 0.025)
            if status == 429:
                refusals.append(now)
            answer(b, g, status, headers, now)
        flying.extend(grants_now(b, now, INTERACTIVE, most=100))
    return refusals


def test_a_clock_aligned_first_window_is_corrected_by_the_next_429_never_loosened_by_one() -> None:
    # Windows of 10 s on the wall clock (they end at 9.63, 19.63... here): a client that
    # starts at 6.0 joins the first one 3.63 s before its end, so the first 429 tells a
    # window under 4 s long. The next 429 (a window that refused what the log allowed) says
    # better, and from then on nothing is refused; later evidence never loosens the rate.
    server = Server(Scenario(name="aligned", limit=5, window=10.0, kind="aligned", reset="ceil"))
    server.s = attrs.evolve(server.s, headers="on_429")
    b = opened(at=6.0)
    server.handle(6.005)  # the probe
    refusals = _serve(b, server, 6.02, 9.0)
    assert refusals
    first = b.view(9.0)
    assert first.limit == 5
    assert first.period is not None
    assert first.period < 5.0
    refusals = _serve(b, server, 9.0, 30.0)
    assert refusals
    assert max(refusals) - min(refusals) < 0.1  # one burst, one episode
    corrected = b.view(30.0)
    assert corrected.limit == 5
    assert corrected.period is not None
    assert 10.0 <= corrected.period <= 10.5  # Retry-After's whole second, the round trip
    assert _serve(b, server, 30.0, 120.0) == []
    assert server.windows >= 11
    # A 429 that would say "more, sooner" (Limit 50, retry in 1 s) changes nothing.
    rate = (b.view(120.0).limit, b.view(120.0).period)
    answer(b, b.grant(120.0), 429, refused("1", 50), 120.05)
    assert (b.view(120.05).limit, b.view(120.05).period) == rate


def test_a_declared_window_length_is_the_learnt_period() -> None:
    b = opened(BudgetConfig(window_length=10.0))
    spend_first_window(b, 5)
    assert b.view(1.55).period == pytest.approx(10.0 + 0.05)


def test_no_rate_is_learnt_from_a_429_outside_open_mode_or_with_a_rate_configured() -> None:
    window = Budget(BudgetConfig())
    warm(window)  # answers report the budget: the window says what is left
    answer(window, window.grant(0.1), 429, {**budget(0), "Retry-After": "5"}, 0.2)
    assert window.view(0.2).limit == 50
    assert window.view(0.2).period == pytest.approx(30.001)  # the window's, not learnt
    b = opened()
    old = b.grant(0.5)  # in flight when the 429 below comes: counted, and a straggler
    answer(b, b.grant(0.6), 429, refused("1"), 0.7)  # the probe and ``old``: 2 per 1.8 s
    assert (b.view(0.7).limit, b.view(0.7).period) == (2, pytest.approx(1.7 - 0.0 + 0.1))
    b.advance(1.8)  # the freeze is over: a new span
    answer(b, old, 429, refused("10", 1), 1.9)  # sent before it: teaches nothing
    assert (b.view(1.9).limit, b.view(1.9).period) == (2, pytest.approx(1.8))
    configured = opened(BudgetConfig(rate=(100, 1.0)))
    answer(configured, configured.grant(0.1), 429, refused("10", 5), 0.2)
    assert configured.view(0.2).limit is None


def test_a_learnt_wait_past_the_cap_is_refused_with_the_named_time() -> None:
    b = opened(BudgetConfig(max_server_wait=30.0))
    g = b.grant(0.1)
    answer(b, g, 429, refused("100"), 0.2)  # count 1 (the probe), per 100.2 - 0 + 0.1 s
    b.advance(31.0)  # the freeze is capped at 30 s; the log still holds the refused one
    assert b.refusal(31.0) == pytest.approx(WALL + 0.1 + 100.3, abs=1e-6)
    assert b.estimate(31.0, 1) == pytest.approx(0.1 + 100.3 - 31.0)


def test_an_awaited_request_spends_the_tokens_kept_for_boundary_probes() -> None:
    # Whole-second Reset on a 2 s window: the end is known to a second, so the last tokens
    # are kept to probe for it. A web request asking then waited for the probes' times (up
    # to the window's end: 4.4-9.4 s late at 50 per 10 s) though the window was not spent;
    # it goes at once now, and background work still waits for the turn.
    b = Budget(BudgetConfig(spend_window=True))
    warm(b, remaining=49, reset="2", limit=50)
    grants_now(b, 0.02, BULK)
    b.advance(0.02)
    kept = b.view(0.02).remaining
    assert kept is not None
    assert kept > 0
    assert b.next_time(0.02, BULK) > 0.5  # the interactive reserve, then the probes
    awaited = grants_now(b, 0.02, INTERACTIVE)
    assert len(awaited) == kept  # the reserve and the probes' tokens, at once
    assert b.next_time(0.02, INTERACTIVE) > 1.0  # the window is spent now


def test_a_learnt_period_ends_at_the_429s_reset_not_its_cool_down() -> None:
    # The Workflow API answers a 429 with a 60 s cool-down, whatever its window: read as
    # the window's end, one 429 on a 5-per-10-s server taught 5 per 61.5 s, for good.
    b = opened()
    grants = [b.grant(1.0 + i / 10) for i in range(6)]
    for g in grants[:4]:
        answer(b, g, 200, {}, g.sent + 0.05)
    cool_down = {"Retry-After": "60", **budget(0, "9", 5)}  # Reset: the window's end
    assert answer(b, grants[4], 429, cool_down, 1.45)
    view = b.view(1.45)
    assert view.limit == 5
    assert view.period is not None
    assert 9.0 <= view.period <= 11.0


def test_a_learnt_rate_is_dropped_once_answers_say_what_is_left() -> None:
    b = opened(BudgetConfig(spend_window=True))
    spend_first_window(b, 5)
    assert b.view(1.6).limit == 5
    b.advance(10.6)  # the freeze is over: a probe goes, and its answer reports the budget
    answer(b, b.grant(10.6), 200, budget(199, "10", 200), 10.65)
    assert (b.view(10.65).mode, b.view(10.65).limit) == ("window", 200)
    burst = grants_now(b, 10.65, BULK)
    assert len(burst) >= 150  # the window's budget, not the 5 per 10 s learnt before


@pytest.mark.parametrize(("named", "periods"), [(5, 100), (50, 10)], ids=["confirmed", "suspect"])
def test_a_learnt_rate_is_forgotten_after_a_quiet_while(named: int, periods: int) -> None:
    # Nothing but a 429 says the budget grew again (a limit lowered for a while, others
    # that stopped spending it): a rate whose count is not the Limit its 429 named is
    # forgotten after 10 periods without a 429, one whose count is after 100.
    b = opened()
    spend_first_window(b, named)
    view = b.view(1.6)
    assert view.limit == 5
    assert view.period is not None
    quiet = periods * view.period
    b.advance(1.5 + quiet - 1.0)
    assert b.view(1.5 + quiet - 1.0).limit == 5
    b.advance(1.5 + quiet + 1.0)
    later = 1.5 + quiet + 1.0
    assert b.view(later).limit is None
    probe = grants_now(b, later, BULK)  # the freeze long over: one probe, answered open
    assert len(probe) == 1
    answer(b, probe[0], 200, {}, later + 0.05)
    assert len(grants_now(b, later + 0.05, BULK)) > 5

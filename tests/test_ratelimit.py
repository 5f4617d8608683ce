"""Rate-limit header parsing and pacing decisions (pure functions)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapier_async._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    MAX_DELAY,
    UNAVAILABLE_STREAK,
    RateLimitState,
    ServerWait,
    cap_server_wait,
    check_max_server_wait,
    pace_interval,
    parse_reset,
    parse_retry_after,
    pause_after,
    reset_precision,
    server_wait,
)
from zapier_async.errors import InvalidRequestError

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, timezone.utc), usegmt=True)


# ---------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110, but unambiguous
        ("-3", 0.0),  # never a negative wait
        ("+4", 4.0),
        ("999999999", MAX_DELAY),  # clamped to a day
    ],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        http_date(NOW + 30),  # IMF-fixdate: "Tue, 14 Nov 2023 22:13:50 GMT"
        "Tuesday, 14-Nov-23 22:13:50 GMT",  # obsolete RFC 850
        "Tue Nov 14 22:13:50 2023",  # obsolete asctime (no zone: UTC)
        "Tue, 14 Nov 2023 22:13:50 -0000",
        "Tue, 14 Nov 2023 23:13:50 +0100",
    ],
)
def test_retry_after_http_dates(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after(http_date(NOW - 3600), now=NOW) == 0.0


def test_retry_after_far_future_date_is_clamped() -> None:
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) == MAX_DELAY


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "nan", "inf", "1e3", "1_0", "12s", "Sun, 31 Feb 1994 08:49:37 GMT"],
)
def test_retry_after_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@given(st.text(), st.floats(min_value=0, max_value=4e9))
def test_retry_after_never_raises(value: str, now: float) -> None:
    result = parse_retry_after(value, now=now)
    assert result is None or (math.isfinite(result) and 0.0 <= result <= MAX_DELAY)


@given(st.integers(min_value=0, max_value=10**12))
def test_retry_after_integers_round_trip(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=NOW) == min(float(seconds), MAX_DELAY)


# ---------------------------------------------------------------------------- X-RateLimit-Reset


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(int(NOW) + 42), 42.0),  # epoch seconds, as documented
        (f"{NOW + 1.25:.2f}", 1.25),  # epoch with decimals
        ("42", 42.0),  # a delta, as Zapier's SDK has seen
        ("0.5", 0.5),
        (str(int(NOW) - 10), 0.0),  # already reset
        ("2023-11-14T22:14:00Z", 40.0),  # ISO-8601, UTC
        ("2023-11-14T22:14:00z", 40.0),
        ("2023-11-14T23:14:00+01:00", 40.0),  # with an offset
        ("2023-11-14T22:14:00", 40.0),  # no offset: UTC
        ("2023-11-14T22:13:20.500Z", 0.5),
        ("2023-11-14 22:14:00Z", 40.0),
        (http_date(NOW + 40), 40.0),  # an HTTP-date, for good measure
    ],
)
def test_reset_forms(value: str, expected: float) -> None:
    assert parse_reset(value, now=NOW) == pytest.approx(expected)


def test_reset_epoch_threshold() -> None:
    # 1e9 and above is an epoch (2001-09-09 onwards); below it, a delta.
    assert parse_reset("1000000000", now=1_000_000_010.0) == 0.0
    assert parse_reset("999999999", now=NOW) == MAX_DELAY  # a huge delta, clamped


@pytest.mark.parametrize(
    "value", [None, "", "tomorrow", "2023-11-14", "NaN", "-inf", "2023-13-45T99:00:00Z"]
)
def test_reset_unreadable_is_none(value: str | None) -> None:
    assert parse_reset(value, now=NOW) is None


@given(st.text(), st.floats(min_value=0, max_value=4e9))
def test_reset_never_raises(value: str, now: float) -> None:
    result = parse_reset(value, now=now)
    assert result is None or (math.isfinite(result) and 0.0 <= result <= MAX_DELAY)


@given(st.datetimes(timezones=st.just(timezone.utc)))
def test_reset_iso_round_trip(when: datetime) -> None:
    result = parse_reset(when.isoformat(), now=NOW)
    expected = min(max(when.timestamp() - NOW, 0.0), MAX_DELAY)
    assert result == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("value", "precision"),
    [("42", 1.0), ("1700000042", 1.0), ("1.5", 0.1), ("1.25", 0.01), ("2.123456", 0.001)],
)
def test_reset_precision(value: str, precision: float) -> None:
    assert reset_precision(value) == pytest.approx(precision)


def test_reset_precision_of_dates_and_garbage() -> None:
    assert reset_precision("2023-11-14T22:14:00Z") == 1.0
    assert reset_precision("2023-11-14T22:14:00.250Z") == 0.001
    assert reset_precision("garbage") == 1.0
    assert reset_precision(None) == 1.0


# ---------------------------------------------------------------------------- RateLimitState


def test_state_from_headers_case_insensitive() -> None:
    state = RateLimitState.from_headers(
        {
            "x-ratelimit-limit": "60",
            "X-RATELIMIT-REMAINING": "17",
            "X-RateLimit-Reset": str(int(NOW) + 30),
            "retry-after": "5",
        },
        now=NOW,
    )
    assert state == RateLimitState(
        limit=60,
        remaining=17,
        reset_after=30.0,
        retry_after=5.0,
        reset_precision=1.0,
        retry_at=NOW + 5,
        reset_at=NOW + 30,
    )
    assert state.present
    assert state.has_budget


def test_state_without_headers() -> None:
    state = RateLimitState.from_headers({"Content-Type": "application/json"}, now=NOW)
    assert state == RateLimitState()
    assert not state.present
    assert not state.has_budget


@pytest.mark.parametrize(
    ("headers", "limit", "remaining"),
    [
        ({"X-RateLimit-Limit": "abc", "X-RateLimit-Remaining": "x"}, None, None),
        ({"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "0"}, None, 0),
        ({"X-RateLimit-Limit": "-5", "X-RateLimit-Remaining": "-3"}, None, 0),
        ({"X-RateLimit-Limit": "100, 100;w=60", "X-RateLimit-Remaining": "7;w=60"}, 100, 7),
        ({"X-RateLimit-Limit": "100.0", "X-RateLimit-Remaining": "7.5"}, 100, None),
        ({"X-RateLimit-Limit": "9" * 40, "X-RateLimit-Remaining": ""}, None, None),
        ({"RateLimit-Limit": "10", "RateLimit-Remaining": "3"}, 10, 3),  # IETF draft names
    ],
)
def test_state_bad_integers(
    headers: dict[str, str], limit: int | None, remaining: int | None
) -> None:
    state = RateLimitState.from_headers(headers, now=NOW)
    assert (state.limit, state.remaining) == (limit, remaining)


def test_state_reset_precision_follows_the_value() -> None:
    state = RateLimitState.from_headers({"X-RateLimit-Reset": "1.500"}, now=NOW)
    assert state.reset_after == 1.5
    assert state.reset_precision == pytest.approx(0.001)
    assert state.present
    assert not state.has_budget


def test_state_retry_after_alone_is_present() -> None:
    state = RateLimitState.from_headers({"Retry-After": "3"}, now=NOW)
    assert state.present
    assert state.retry_after == 3.0


@given(st.dictionaries(st.text(), st.text()))
def test_state_never_raises(headers: dict[str, str]) -> None:
    RateLimitState.from_headers(headers, now=NOW)


@given(
    st.dictionaries(
        st.sampled_from(
            ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]
        ),
        st.text(),
    )
)
def test_state_of_any_rate_limit_text_is_sane(headers: dict[str, str]) -> None:
    state = RateLimitState.from_headers(headers, now=NOW)
    assert state.limit is None or state.limit > 0
    assert state.remaining is None or state.remaining >= 0
    for value in (state.reset_after, state.retry_after):
        assert value is None or 0.0 <= value <= MAX_DELAY


# ---------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("status", "state", "expected"),
    [
        (429, RateLimitState(retry_after=7.0, reset_after=30.0), 7.0),
        (429, RateLimitState(reset_after=30.0), 31.0),  # + the whole-second rounding
        (429, RateLimitState(reset_after=2.5, reset_precision=0.1), 2.6),
        (429, RateLimitState(), DEFAULT_COOLDOWN),
        (503, RateLimitState(retry_after=12.0), None),  # one transient 503: no freeze
        (503, RateLimitState(retry_after=12.0, remaining=0), 12.0),  # the budget is spent
        (503, RateLimitState(retry_after=12.0, remaining=3), None),
        (503, RateLimitState(reset_after=30.0), None),  # 503 without Retry-After: no freeze
        (200, RateLimitState(remaining=0, reset_after=30.0), None),
        (500, RateLimitState(retry_after=5.0), None),
    ],
)
def test_pause_after(status: int, state: RateLimitState, expected: float | None) -> None:
    result = pause_after(status, state)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_pause_after_custom_cooldown() -> None:
    assert pause_after(429, RateLimitState(), default_cooldown=5.0) == 5.0


def test_pace_interval_spreads_the_budget() -> None:
    assert pace_interval(50, 100.0) == 2.0
    assert pace_interval(50, 100.0, in_flight=10) == 2.5  # in flight: not counted yet
    assert pace_interval(0, 100.0) == 100.0  # nothing left: wait for the reset
    assert pace_interval(5, 100.0, in_flight=5) == 100.0
    assert pace_interval(10, 0.0) == 0.0  # reset due: no wait


@given(st.integers(min_value=1, max_value=1000), st.floats(min_value=0.01, max_value=3600))
def test_pace_slows_as_remaining_falls(remaining: int, reset_after: float) -> None:
    gaps = [pace_interval(r, reset_after) for r in range(remaining, 0, -1)]
    assert gaps == sorted(gaps)
    assert all(gap <= reset_after for gap in gaps)


# ---------------------------------------------------------------------------- issue 14


@pytest.mark.parametrize("streak", [1, 2])
def test_a_lone_503_does_not_freeze_the_bucket(streak: int) -> None:
    state = RateLimitState(retry_after=1.0)
    assert pause_after(503, state, unavailable_streak=streak) is None


def test_a_streak_of_503s_freezes_the_bucket() -> None:
    state = RateLimitState(retry_after=1.0)
    assert pause_after(503, state, unavailable_streak=UNAVAILABLE_STREAK) == 1.0
    assert pause_after(503, state, unavailable_streak=UNAVAILABLE_STREAK + 5) == 1.0
    assert pause_after(503, RateLimitState(), unavailable_streak=10) is None  # no Retry-After


def test_a_429_freezes_whatever_the_streak() -> None:
    assert pause_after(429, RateLimitState(retry_after=3.0), unavailable_streak=0) == 3.0


HUGE_RETRY_AFTERS = [
    ("1000000000000", NOW + 1e12),
    ("99999999999999999999", NOW + 1e20),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0),
]


@pytest.mark.parametrize(("value", "named"), HUGE_RETRY_AFTERS)
def test_a_huge_retry_after_keeps_the_time_the_server_named(value: str, named: float) -> None:
    state = RateLimitState.from_headers({"Retry-After": value}, now=NOW)
    assert state.retry_after == MAX_DELAY  # what any wait is clamped to, at most
    assert state.retry_at == pytest.approx(named)
    wait = server_wait(429, state, now=NOW, max_server_wait=DEFAULT_MAX_SERVER_WAIT)
    assert wait is not None
    assert wait.over_cap
    assert wait.hold == DEFAULT_MAX_SERVER_WAIT
    assert wait.retry_at == pytest.approx(named)


@pytest.mark.parametrize("reset", ["253402300799", "9999-12-31T23:59:59Z", "1000000"])
def test_a_far_reset_on_a_429_is_past_the_cap(reset: str) -> None:
    state = RateLimitState.from_headers({"X-RateLimit-Reset": reset}, now=NOW)
    assert state.reset_at is not None
    wait = server_wait(429, state, now=NOW, max_server_wait=600.0)
    assert wait is not None
    assert (wait.hold, wait.over_cap) == (600.0, True)
    assert wait.retry_at == pytest.approx(state.reset_at + 1.0)  # + its rounding


def test_a_wait_within_the_cap_is_held_whole() -> None:
    state = RateLimitState.from_headers({"Retry-After": "120"}, now=NOW)
    wait = server_wait(429, state, now=NOW, max_server_wait=600.0)
    assert wait == ServerWait(hold=120.0, retry_at=NOW + 120.0, over_cap=False)
    lone = server_wait(503, state, now=NOW, max_server_wait=600.0)
    assert lone is None
    spent = RateLimitState.from_headers({"Retry-After": "1", "X-RateLimit-Remaining": "0"}, now=NOW)
    assert server_wait(503, spent, now=NOW, max_server_wait=600.0) == ServerWait(
        hold=1.0, retry_at=NOW + 1.0, over_cap=False
    )


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.001, max_value=MAX_DELAY),
)
def test_cap_server_wait_never_holds_past_the_cap(seconds: float, cap: float) -> None:
    wait = cap_server_wait(seconds, max_server_wait=cap, now=NOW)
    assert 0.0 <= wait.hold <= cap
    assert math.isfinite(wait.retry_at)
    assert wait.retry_at >= NOW + wait.hold
    assert wait.over_cap == (seconds > cap)  # NaN and negatives: nothing to wait


@given(st.text(max_size=40), st.text(max_size=40))
def test_named_times_are_never_in_the_past(retry_after: str, reset: str) -> None:
    state = RateLimitState.from_headers(
        {"Retry-After": retry_after, "X-RateLimit-Reset": reset}, now=NOW
    )
    for named, wait in ((state.retry_at, state.retry_after), (state.reset_at, state.reset_after)):
        assert (named is None) == (wait is None)
        if named is not None and wait is not None:
            assert math.isfinite(named)
            assert named >= NOW + wait - 1e-6


@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, math.inf, MAX_DELAY + 1, "60", True])
def test_max_server_wait_is_validated(value: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_max_server_wait(value)  # type: ignore[arg-type]
    assert info.value.field == "max_server_wait"


def test_max_server_wait_accepts_seconds() -> None:
    assert check_max_server_wait(1) == 1.0
    assert check_max_server_wait(MAX_DELAY) == MAX_DELAY
    assert check_max_server_wait(0.5, "wait") == 0.5
    assert 0 < DEFAULT_MAX_SERVER_WAIT <= MAX_DELAY

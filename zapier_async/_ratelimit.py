"""Rate-limit headers in, pacing decisions out: pure functions, no I/O, no clock.

Zapier reports its rate budget on responses and asks for pauses on refusals
(https://docs.zapier.com/powered-by-zapier/api-reference/rate-limiting.md):

- ``X-RateLimit-Limit``: requests allowed per window;
- ``X-RateLimit-Remaining``: requests left in the current window;
- ``X-RateLimit-Reset``: when the window resets. Documented as UTC epoch seconds, but Zapier's
  own SDK has seen seconds-until-reset (SDK CHANGELOG 0.102.1), and one Actions API page types
  it as a date-time; so a number >= 1e9 is an epoch, a smaller one a delta, and ISO-8601 is
  accepted too;
- ``Retry-After`` on 429 and 503: delta seconds or an HTTP-date (RFC 9110 section 10.2.3).

Every parser here takes the current wall-clock time as an argument (``now``), returns seconds
to wait, and never raises: a header we cannot read is treated as absent. The IETF draft names
without ``X-`` (``RateLimit-Limit`` ...) are read as a fallback.

Rules every limiter follows (the in-memory `Limiter` and the Redis one alike)
============================================================================

**When the bucket freezes** (`pause_after`). A 429 always freezes the whole bucket: for
``Retry-After``, else until ``X-RateLimit-Reset`` (plus its rounding), else the default
cool-down. A 503 is usually one overloaded server, not a spent budget: a single one must not
hold back every other request (at a 5% fault rate that tripled p95 latency). A 503 freezes the
bucket only when it carries ``Retry-After`` *and* either its headers say the budget is spent
(``X-RateLimit-Remaining: 0``) or it is the `UNAVAILABLE_STREAK`-th 503 in a row (no answer
with another status in between, counted in the order answers arrive; a request without any
HTTP answer neither counts nor breaks the run). A 503 that does not freeze is still honoured
by the client, for that one request: it waits its ``Retry-After`` before re-sending. A 503
without ``Retry-After`` never freezes. A 5xx answer carrying no budget headers says nothing
about the budget: it does not take a limiter out of probe mode.

**One cap on any server-dictated wait** (`cap_server_wait`, `DEFAULT_MAX_SERVER_WAIT`). A
freeze (from ``Retry-After``, ``Reset``, or a ``freeze()`` call) and the horizon a window is
paced to (``Reset``) are clamped to ``max_server_wait``. When the server dictates more than
that (``Retry-After: 1000000000000``, a date in 9999, a ``Reset`` that far with nothing
left), nothing waits for it: every request that would have to wait for it, whatever its
priority, fails at once with ``RateLimitedError`` whose ``retry_at`` is the time the server
named (honest, not capped). When ``max_server_wait`` has passed, one request probes again.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import math
import re
from collections.abc import Mapping

import attrs

from .errors import InvalidRequestError

__all__ = [
    "DEFAULT_COOLDOWN",
    "DEFAULT_MAX_SERVER_WAIT",
    "MAX_DELAY",
    "UNAVAILABLE_STREAK",
    "RateLimitState",
    "ServerWait",
    "cap_server_wait",
    "check_max_server_wait",
    "check_seconds",
    "pace_interval",
    "parse_reset",
    "parse_retry_after",
    "pause_after",
    "reset_precision",
    "server_wait",
]

MAX_DELAY = 86_400.0
"""No header can make us wait longer than a day: a larger value is a server bug or an attack."""

DEFAULT_COOLDOWN = 60.0
"""The Partner API's documented cool-down after a 429, used when a 429 says nothing else."""

DEFAULT_MAX_SERVER_WAIT = 900.0
"""The longest wait a server may dictate (``Retry-After``, ``X-RateLimit-Reset``) that is
waited for, in seconds: 15 minutes, three times the Actions API's 300 s window. A longer one
fails the request with ``RateLimitedError`` instead (see the module docs)."""

UNAVAILABLE_STREAK = 3
"""A 503 with ``Retry-After`` freezes the whole bucket when it is at least this many 503s in a
row (or when it says ``X-RateLimit-Remaining: 0``). At a 5% rate of random 503s three in a row
happen once in 8,000 answers; a server that is really down answers every request so."""

EPOCH_THRESHOLD = 1e9
"""A numeric `X-RateLimit-Reset` at least this large is epoch seconds (2001-09-09 onwards);
a smaller one is seconds until the reset (what Zapier's SDK observed)."""

# Plain decimal numbers only: `float()` would also accept "nan", "inf", "1_0" and "1e3",
# none of which is a header value a server means.
_NUMBER = re.compile(r"[+-]?(?:\d{1,20}(?:\.(\d{0,12}))?|\.(\d{1,12}))")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_MIN_PRECISION = 0.001


def _clamp(seconds: float) -> float | None:
    """Clamp a computed wait into [0, MAX_DELAY]; NaN (never meant) becomes None."""
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_DELAY)


def _number(text: str) -> tuple[float, float] | None:
    """A plain decimal number and its precision (1.0 for integers, 0.1 for one decimal...)."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    decimals = m.group(1) if m.group(1) is not None else m.group(2)
    precision = max(10.0 ** -len(decimals), _MIN_PRECISION) if decimals else 1.0
    return float(text), precision


def _http_date(text: str) -> float | None:
    """Epoch seconds of an HTTP-date (IMF-fixdate, RFC 850 or asctime), or None."""
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # asctime and "-0000" carry no zone: HTTP-dates are UTC
            when = when.replace(tzinfo=_dt.timezone.utc)
        return when.timestamp()
    except (ValueError, TypeError, IndexError, OverflowError, OSError):
        return None


def _iso_date(text: str) -> tuple[float, float] | None:
    """Epoch seconds and precision of an ISO-8601 date-time, or None."""
    if "T" not in text and "t" not in text and " " not in text:
        return None  # a bare date is not a reset time
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat rejects the "Z" suffix
        text = text[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(text)
        if when.tzinfo is None:  # a reset time without an offset is UTC, like the epoch form
            when = when.replace(tzinfo=_dt.timezone.utc)
        stamp = when.timestamp()
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    return stamp, (_MIN_PRECISION if when.microsecond else 1.0)


def _retry_after_detail(value: str | None, now: float) -> float | None:
    """Seconds to wait per ``Retry-After``, not clamped (a date in the past: negative)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    number = _number(text)
    if number is not None:
        return number[0]
    when = _http_date(text)
    return None if when is None else when - now


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header.

    Args:
        value: The header value: delta seconds (an integer; a decimal is tolerated) or an
            HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms).
        now: The current wall-clock time, epoch seconds (to turn a date into a wait).

    Returns:
        Seconds to wait, clamped to ``[0, MAX_DELAY]``; None when absent or unreadable.
        A date in the past means "now" (0.0).
    """
    seconds = _retry_after_detail(value, now)
    return None if seconds is None else _clamp(seconds)


def _reset_detail(value: str | None, now: float) -> tuple[float, float] | None:
    """Seconds until reset (unclamped) and the value's precision in seconds, or None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    number = _number(text)
    if number is not None:
        reset, precision = number
        if reset >= EPOCH_THRESHOLD:
            return reset - now, precision
        return reset, precision
    iso = _iso_date(text)
    if iso is not None:
        return iso[0] - now, iso[1]
    when = _http_date(text)
    if when is not None:
        return when - now, 1.0
    return None


def parse_reset(value: str | None, *, now: float) -> float | None:
    """Seconds until the rate-limit window resets, from an ``X-RateLimit-Reset`` header.

    Args:
        value: The header value: a number >= 1e9 is epoch seconds, a smaller one is seconds
            until the reset; an ISO-8601 date-time (``2026-11-21T10:00:00Z``, with or without
            an offset; none means UTC) and an HTTP-date are accepted too.
        now: The current wall-clock time, epoch seconds.

    Returns:
        Seconds until the reset, clamped to ``[0, MAX_DELAY]``; None when absent or unreadable.
    """
    detail = _reset_detail(value, now)
    return None if detail is None else _clamp(detail[0])


def reset_precision(value: str | None) -> float:
    """How coarse an ``X-RateLimit-Reset`` value is, in seconds.

    A whole number of seconds may have been rounded down, up or to nearest by the server, so
    the real reset lies within this many seconds of the stated one either way. Unreadable
    values report 1.0.

    Args:
        value: The header value.

    Returns:
        1.0 for whole seconds, 0.1 for one decimal, ... never below 0.001.
    """
    detail = _reset_detail(value, 0.0)
    return 1.0 if detail is None else detail[1]


def _header(lowered: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = lowered.get(name)
        if value is not None:
            return value
    return None


def _first_integer(value: str | None) -> int | None:
    """The leading integer of a header: ``"100"``, ``"100, 100;w=60"`` (IETF draft) -> 100."""
    if value is None:
        return None
    text = value.split(",", 1)[0].split(";", 1)[0].strip()
    if _INTEGER.fullmatch(text) is None:
        number = _number(text)  # "100.0" is sloppy but unambiguous
        if number is None or not number[0].is_integer():
            return None
        return int(number[0])
    return int(text)


@attrs.frozen(kw_only=True)
class RateLimitState:
    """What one response said about the rate budget.

    Attributes:
        limit: Requests allowed per window (``X-RateLimit-Limit``), if stated and positive.
        remaining: Requests left in the current window (``X-RateLimit-Remaining``); a negative
            value is read as 0.
        reset_after: Seconds from ``now`` until the window resets (``X-RateLimit-Reset``).
        retry_after: Seconds the server asked us to wait (``Retry-After``).
        reset_precision: How coarse ``reset_after`` is, in seconds (1.0 for whole seconds):
            the real reset lies within this much of it either way.
        retry_at: The wall-clock time (epoch seconds) ``Retry-After`` names, *not* clamped:
            what to tell a caller when the wait is refused as too long. Never before ``now``.
        reset_at: The same for ``X-RateLimit-Reset``.
    """

    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None
    retry_after: float | None = None
    reset_precision: float = 1.0
    retry_at: float | None = None
    reset_at: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: float) -> RateLimitState:
        """Read the rate-limit headers of a response.

        Args:
            headers: Response headers; names are matched case-insensitively.
            now: The current wall-clock time, epoch seconds.

        Returns:
            The state; fields whose header is absent or unreadable are None.
        """
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            lowered.setdefault(name.lower(), value)
        if not _RELEVANT.intersection(lowered):
            return _NOTHING
        limit = _first_integer(_header(lowered, "x-ratelimit-limit", "ratelimit-limit"))
        remaining = _first_integer(_header(lowered, "x-ratelimit-remaining", "ratelimit-remaining"))
        reset_raw = _header(lowered, "x-ratelimit-reset", "ratelimit-reset")
        detail = _reset_detail(reset_raw, now)
        retry = _retry_after_detail(lowered.get("retry-after"), now)
        if retry is not None and math.isnan(retry):
            retry = None
        if detail is not None and math.isnan(detail[0]):
            detail = None
        return cls(
            limit=limit if limit is not None and limit > 0 else None,
            remaining=None if remaining is None else max(remaining, 0),
            reset_after=None if detail is None else _clamp(detail[0]),
            retry_after=None if retry is None else _clamp(retry),
            reset_precision=1.0 if detail is None else detail[1],
            retry_at=None if retry is None else now + max(retry, 0.0),
            reset_at=None if detail is None else now + max(detail[0], 0.0),
        )

    @property
    def present(self) -> bool:
        """Whether the response carried any rate-limit information at all."""
        return (
            self.limit is not None
            or self.remaining is not None
            or self.reset_after is not None
            or self.retry_after is not None
        )

    @property
    def has_budget(self) -> bool:
        """Whether the response stated the remaining budget (what pacing needs)."""
        return self.remaining is not None


# The headers `from_headers` reads; a response with none of them needs no parsing.
_RELEVANT = frozenset(
    {
        "x-ratelimit-limit",
        "ratelimit-limit",
        "x-ratelimit-remaining",
        "ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-reset",
        "retry-after",
    }
)
_NOTHING = RateLimitState()


def pause_after(
    status: int,
    state: RateLimitState,
    *,
    default_cooldown: float = DEFAULT_COOLDOWN,
    unavailable_streak: int = 1,
) -> float | None:
    """How long the whole bucket must stop sending after a response, if at all.

    A 429 means the budget is gone for everybody sharing it, not just for the request that
    got it, so the caller freezes its whole limiter for this long. A lone 503 is a transient
    fault of one request, not a rate signal (see the module docs): it freezes the bucket only
    when it says the budget is spent or it is one of `UNAVAILABLE_STREAK` 503s in a row.

    The result is what the server asked for (at most `MAX_DELAY`); cap it with
    `cap_server_wait` before waiting.

    Args:
        status: The HTTP status of the response.
        state: Its rate-limit headers.
        default_cooldown: The pause after a 429 that says neither ``Retry-After`` nor
            ``X-RateLimit-Reset`` (the Partner API documents a 60 s cool-down).
        unavailable_streak: How many answers in a row, this one included, were 503s (the
            caller counts; 1 when it does not).

    Returns:
        For a 429: ``Retry-After``, else the time to reset (plus its rounding, to be sure the
        window has turned), else ``default_cooldown``. For a 503 with ``Retry-After`` that
        says ``X-RateLimit-Remaining: 0`` or ends a streak of at least `UNAVAILABLE_STREAK`:
        its ``Retry-After``. Otherwise None.
    """
    if status == 429:
        if state.retry_after is not None:
            return state.retry_after
        if state.reset_after is not None:
            return min(state.reset_after + state.reset_precision, MAX_DELAY)
        return default_cooldown
    if (
        status == 503
        and state.retry_after is not None
        and (state.remaining == 0 or unavailable_streak >= UNAVAILABLE_STREAK)
    ):
        return state.retry_after
    return None


def _named_time(status: int, state: RateLimitState, pause: float, *, now: float) -> float:
    """The wall-clock time a `pause_after` result stands for, as the server named it.

    ``pause`` may have been clamped to `MAX_DELAY`; the time returned is not: a
    ``Retry-After`` of 1e12 s gives ``now + 1e12``, a date in 9999 that date.

    Args:
        status: The HTTP status of the response.
        state: Its rate-limit headers.
        pause: What `pause_after` returned for them.
        now: The current wall-clock time, epoch seconds.

    Returns:
        Epoch seconds, never before ``now + pause``.
    """
    named: float | None = None
    if state.retry_after is not None and pause == state.retry_after:
        named = state.retry_at
    elif status == 429 and state.retry_after is None and state.reset_after is not None:
        named = None if state.reset_at is None else state.reset_at + state.reset_precision
    return max(now + pause, named if named is not None else -math.inf)


@attrs.frozen(kw_only=True)
class ServerWait:
    """A wait the server dictated, measured against ``max_server_wait``.

    Attributes:
        hold: Seconds to actually hold requests back: the dictated wait, capped.
        retry_at: Wall-clock epoch seconds the server named (honest, not capped).
        over_cap: Whether the server asked for more than the cap: then requests that would
            wait for it fail with ``RateLimitedError(retry_at=retry_at)`` instead.
    """

    hold: float
    retry_at: float
    over_cap: bool


def cap_server_wait(
    seconds: float, *, max_server_wait: float, now: float, retry_at: float | None = None
) -> ServerWait:
    """Cap a server-dictated wait.

    Args:
        seconds: What the server asked for (negative: nothing; NaN: nothing).
        max_server_wait: The cap, seconds (see `check_max_server_wait`).
        now: The current wall-clock time, epoch seconds.
        retry_at: The time the server named, if known more exactly than ``now + seconds``
            (`server_wait` passes the unclamped time from the headers).

    Returns:
        The capped hold, the honest retry time and whether the cap was exceeded.
    """
    if math.isnan(seconds) or seconds < 0.0:
        seconds = 0.0
    named = now + seconds if retry_at is None else max(retry_at, now + seconds)
    if not math.isfinite(named):
        named = now + MAX_DELAY
    over = seconds > max_server_wait or named > now + max_server_wait
    return ServerWait(hold=float(min(seconds, max_server_wait)), retry_at=named, over_cap=over)


def check_max_server_wait(value: float, field: str = "max_server_wait") -> float:
    """Validate a ``max_server_wait`` setting (`check_seconds`)."""
    return check_seconds(value, field)


def check_seconds(value: float, field: str) -> float:
    """Validate a duration setting (``max_server_wait``, a window's length).

    Args:
        value: Seconds; finite, above 0 and at most `MAX_DELAY` (a day).
        field: The argument name to blame.

    Returns:
        The value as a float.

    Raises:
        InvalidRequestError: The value is not a number in ``(0, MAX_DELAY]``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"must be a number of seconds, got {value!r}", field)
    if not (math.isfinite(value) and 0.0 < value <= MAX_DELAY):
        raise InvalidRequestError(
            f"must be above 0 and at most {MAX_DELAY:.0f} seconds, got {value!r}", field
        )
    return float(value)


def pace_interval(remaining: int, reset_after: float, in_flight: int = 0) -> float:
    """The gap between sends that spreads what is left of the budget until the reset.

    Requests in flight have been sent but not yet counted by the server, so they are taken
    off ``remaining`` first. As the budget falls, the gap grows: pacing slows down instead of
    bursting to zero and then stalling.

    Args:
        remaining: Requests the server says are left in the window.
        reset_after: Seconds until the window resets.
        in_flight: Requests sent that the server has not answered yet.

    Returns:
        Seconds between sends: ``reset_after / (remaining - in_flight)``, or the whole
        ``reset_after`` when nothing is left (wait for the reset); 0.0 when the reset is due.
    """
    if not reset_after > 0.0:
        return 0.0
    available = remaining - in_flight
    if available <= 0:
        return reset_after
    return reset_after / available


def server_wait(
    status: int,
    state: RateLimitState,
    *,
    now: float,
    max_server_wait: float,
    default_cooldown: float = DEFAULT_COOLDOWN,
    unavailable_streak: int = 1,
) -> ServerWait | None:
    """Whether a response freezes the bucket, for how long, and whether past the cap.

    `pause_after` then `cap_server_wait`: the one decision a limiter needs per answer.

    Args:
        status: The HTTP status of the response.
        state: Its rate-limit headers, read with the same ``now``.
        now: The current wall-clock time, epoch seconds.
        max_server_wait: The cap on any server-dictated wait, seconds.
        default_cooldown: See `pause_after`.
        unavailable_streak: See `pause_after`.

    Returns:
        None when the bucket does not freeze; else the capped hold, the honest retry time
        and whether the server asked for more than the cap.
    """
    pause = pause_after(
        status, state, default_cooldown=default_cooldown, unavailable_streak=unavailable_streak
    )
    if pause is None:
        return None
    named = _named_time(status, state, pause, now=now)
    return cap_server_wait(pause, max_server_wait=max_server_wait, now=now, retry_at=named)

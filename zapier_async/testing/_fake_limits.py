"""FakeZapier's rate limiter: fixed windows, per server or per bearer token, and its headers.

Theory of operation
-------------------
A budget is `limit` requests per `window` seconds, counted in fixed windows; every request
that reaches the limiter counts, refused ones included. Two ways a window can start, because
servers we did not write differ:

- ``"first_request"`` (the default): a window starts with the first request after the
  previous one ended, so its boundaries depend on when the client started;
- ``"aligned"``: windows are aligned to the wall clock, ``[k * window, (k + 1) * window)``
  in epoch seconds, so the first window a client sees is usually a partial one.

A bucket holds one budget's state. By default the server has one bucket; with
``per_token`` every bearer token gets its own (as Zapier's Actions API gives each user's
token its own budget), sized by `budget_for(token)` when that is given (the partner JWT's
``rate_limit`` claim) and otherwise by the default budget. Requests without a bearer token
share one anonymous bucket. A bucket whose window and cool-down have both ended is the same
as a fresh one, so idle buckets are dropped once the table has doubled since the last sweep:
memory stays bounded by the tokens active within one window.

Answers use the emulator's monotonic clock; the wall clock only places aligned windows and
formats `X-RateLimit-Reset`/`Retry-After`.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final, Literal

import attrs

from zapier_async.testing._fake_knobs import _is_number
from zapier_async.testing._fake_wire import _error, _Reply

__all__ = ["RateLimitWindow"]

RateLimitWindow = Literal["first_request", "aligned"]
"""Where a rate-limit window starts; see `FakeZapier.rate_limit_window`."""

Budget = tuple[int, float]
"""`(limit, window_seconds)`."""

_MIN_SWEEP: Final = 1024  # below this many buckets, never sweep


def _budget_problem(value: object) -> str | None:
    """Why `value` is not a `(limit >= 1, window seconds > 0)` pair, or None if it is."""
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or value[0] < 1
        or not _is_number(value[1])
        or not 0 < value[1] < math.inf
    ):
        return f"(limit >= 1, window seconds > 0), got {value!r}"
    return None


def _check_rate_limit(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    problem = None if value is None else _budget_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name} must be None or {problem}")


@attrs.frozen
class _Admission:
    """The rate limiter's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # monotonic
    retry_at: float | None = None  # monotonic; only when refused


@attrs.define
class _Bucket:
    """One budget: `limit` requests per fixed `window` seconds, with an optional cool-down.

    With a cool-down, the request that exceeds the limit refuses everything for `cooldown`
    seconds (the Partner API documents 60 s:
    https://docs.zapier.com/powered-by-zapier/api-reference/rate-limiting); requests during
    the cool-down do not extend it.
    """

    limit: int
    window: float
    cooldown: float
    aligned: bool
    window_end: float = -math.inf  # monotonic
    index: int | None = None  # aligned windows: which epoch multiple we are in
    used: int = 0
    cooldown_until: float = -math.inf

    def admit(self, now: float, wall: float) -> _Admission:
        self._roll(now, wall)
        self.used += 1
        if now < self.cooldown_until:
            until = self.cooldown_until
            return _Admission(False, self.limit, 0, max(self.window_end, until), until)
        if self.used > self.limit:
            retry_at = self.window_end
            if self.cooldown > 0:
                self.cooldown_until = now + self.cooldown
                retry_at = max(retry_at, self.cooldown_until)
            return _Admission(False, self.limit, 0, retry_at, retry_at)
        return _Admission(True, self.limit, self.limit - self.used, self.window_end)

    def _roll(self, now: float, wall: float) -> None:
        """Start a new window if the current one has ended."""
        if not self.aligned:
            if now >= self.window_end:
                self.window_end = now + self.window
                self.used = 0
            return
        # Decided by the window's index, not by comparing times: a float boundary can land
        # a hair after `now` and would otherwise open the same window twice.
        index = math.floor(wall / self.window)
        if index != self.index:
            self.index = index
            self.used = 0
            self.window_end = now + max(0.0, (index + 1) * self.window - wall)

    def idle(self, now: float) -> bool:
        """Whether this bucket is indistinguishable from a fresh one from `now` on."""
        return now >= self.window_end and now >= self.cooldown_until


@attrs.define
class _RateLimiter:
    """Every bucket of one emulator, keyed by bearer token (or one shared bucket)."""

    default: Budget | None
    cooldown: float
    aligned: bool
    per_token: bool
    budget_for: Callable[[str], Budget | None] | None
    _buckets: dict[str | None, _Bucket | None] = attrs.field(init=False, factory=dict)
    _sweep_at: int = attrs.field(init=False, default=_MIN_SWEEP)

    @property
    def buckets(self) -> int:
        """Buckets held now (idle ones are dropped lazily)."""
        return len(self._buckets)

    def admit(self, token: str | None, now: float, wall: float) -> _Admission | None:
        """Count one request of `token`; None when its budget is unlimited (no headers)."""
        key = token if self.per_token else None
        buckets = self._buckets
        try:
            bucket = buckets[key]
        except KeyError:
            if len(buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = buckets[key] = self._new_bucket(key)
        return None if bucket is None else bucket.admit(now, wall)

    def _new_bucket(self, key: str | None) -> _Bucket | None:
        budget = self.default
        if self.budget_for is not None and key is not None:
            custom = self.budget_for(key)
            if custom is not None:
                problem = _budget_problem(custom)
                if problem is not None:
                    raise ValueError(f"rate_limit_for returned a budget that is not {problem}")
                budget = custom
        if budget is None:
            return None
        return _Bucket(budget[0], float(budget[1]), self.cooldown, self.aligned)

    def _sweep(self, now: float) -> None:
        """Drop idle buckets (unlimited ones too: `budget_for` is asked again)."""
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if bucket is not None and not bucket.idle(now)
        }
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._buckets))


def _throttled(admission: _Admission, now: float) -> _Reply:
    """The 429 that refuses a request over its budget."""
    wait = math.ceil(max(0.0, (admission.retry_at or 0.0) - now))
    return _error(
        429,
        "throttled",
        "Throttled",
        f"Request was throttled. Expected available in {wait} seconds.",
        retry_at=admission.retry_at,
    )


def _format_reset(
    reset_at: float, now: float, wall: float, reset_format: Literal["epoch", "delta", "iso"]
) -> str:
    """`X-RateLimit-Reset` for a window ending at monotonic `reset_at`; rounds up."""
    delta = max(0.0, reset_at - now)
    if reset_format == "delta":
        return str(math.ceil(delta))
    epoch = math.ceil(wall + delta)
    if reset_format == "epoch":
        return str(epoch)
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_retry_after(
    retry_at: float, now: float, wall: float, retry_after_format: Literal["seconds", "http-date"]
) -> str:
    """`Retry-After` for monotonic `retry_at`, in seconds (rounded up) or as an HTTP-date."""
    delta = max(0.0, retry_at - now)
    if retry_after_format == "seconds":
        return str(math.ceil(delta))
    return email.utils.formatdate(math.ceil(wall + delta), usegmt=True)

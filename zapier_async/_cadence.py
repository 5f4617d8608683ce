"""The price of a poll, read from the live rate budget, and each run's polling record.

Theory of operation
-------------------
Requests per run is the throughput when the rate budget binds: a poll that finds a run still
going is a create not sent. When nothing waits for the budget, a poll costs nothing but the
server's goodwill, and spending it on lower lag is right (a `run_many` slot is held until its
run is seen ended, so lag is throughput when concurrency binds: Little's law). The planner
(`_polling.AdaptivePolling`) therefore plans with a cost per poll (seconds of mean lag one
poll is worth) that moves between two ends:

- **slack** (its own `cost`, 0.16 s): ~2 polls per run for 0.2-1.5 s runs;
- **bound** (`bound_cost` times the longest duration the action is known to take): about one
  poll per run, placed late in the learnt distribution.

Where between them is decided by `BudgetPrice.level` in ``[0, 1]``, a smoothed indicator of
"the budget binds" sampled at each planning decision from the limiter's `PressureLike`:

- requests wait at the limiter (any priority), or
- the window's remaining budget is no more than the runs in flight plus the requests on the
  wire (each run needs one more request at least: polling any of them twice takes the
  budget of a create).

It rises fast (a bulk job must not blow its first window on early polls) and falls slowly;
a run of an action with no plan yet follows the sample itself (the bound cold cadence as soon
as one sample binds).
This is a feedback loop, not a model: when concurrency binds rather than the budget (runs of
2-8 s, C = 100, 200 requests per 5 s), a late single poll holds slots longer, creates stop
waiting at the limiter, the level falls and plans buy lag back with polls until the budget
binds again; it settles where the two constraints cross, which is where completed runs per
second peak (``min(R / (1 + polls), C / (duration + lag))``).

When the limiter reports its window (``limit`` and ``period``: `window_rate`; the length
learnt from how the window's end moves, `WindowLength`, as ``period`` is an upper bound), a
run with a plan is priced by a model instead (`best_level`): of the plans at each level, the one
whose expected polls and lag (from the estimate) complete the most runs per second under
both constraints. One more option than the levels is offered to it: one poll at the latest
end seen (no tail left to the fallback), which wins when the budget binds for every plan (it
expects exactly one poll; a trimmed plan's polls that find their run still going are creates
not sent, and when a job's requests fill its last window exactly each costs a whole window).
A window whose remainder covers twice what the runs in flight would spend at the slack plan
is priced slack whatever its long-run rate (a user's few runs in 200 per 5 minutes). The
feedback above remains for limiters that do not report them and for runs with no plan yet.

**Per bucket.** Each limiter bucket (a credential's budget) is priced on its own: its budget
against its own runs in flight (every action's, counted by the engine), with its own smoothed
level, so one user's bound budget does not slow another user's reads.

**When a run is read next** is decided in one place, `ReadCadence`: the first read (the
callback safety net, or the planner), whether a read is a long poll, the next read after an
answer that found the run still going (the safety net, the long poll's rule, or the
planner's plan, a server's hint winning), and the next read after a failed one (the retry
policy, up to the failures allowed). The engine only sends the reads and reports answers.

**Each run's polling record** (`PollRecord`) lives on its handle, in one slot
(``handle.reads``): its action, reads sent and failed, the poller's timer and the planner's
state (plan, price level, when its next read is due). The handle itself keeps its run's
status and its waiters; the planner keeps no per-run table of its own.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import attrs

from ._backoff import RetryPolicy, SupportsRandom
from ._runs import CallbackPolling, LongPoll

__all__ = [
    "BudgetPrice",
    "PollRecord",
    "PressureLike",
    "ReadCadence",
    "WindowLength",
    "best_level",
    "window_rate",
]


class PressureLike(Protocol):
    """What the planner reads of a limiter's bucket (`zapier_async._limits.Pressure` fits)."""

    @property
    def waiting_by_priority(self) -> tuple[int, int, int]: ...

    @property
    def remaining_estimate(self) -> int | None: ...

    @property
    def in_flight(self) -> int: ...


@attrs.define(slots=True, eq=False, weakref_slot=False)
class PollRecord:
    """One run's polling record: everything about its reads (none of it is public API).

    Each `RunHandle` holds its own, created with it, in one slot (``handle.reads``): the
    handle keeps only its run's status and its waiters. The poller writes the timer, the
    engine the counters, the planner (`_polling.AdaptivePolling`) the rest; metrics and logs
    read the key there.

    Attributes:
        key: The action the run belongs to (its learnt durations), or None: set by the
            planner when it plans the run's first read.
        attempts: Reads sent so far.
        failures: Failed reads in a row (reset by an answer).
        timer: The poller's entry for the next read, or None while one is on its way (or
            none is planned: the run ended or is no longer followed).
        plan: The poll times (seconds after the create) the run last followed, or None.
        scale: The exploration factor applied to every plan it follows.
        pending_at: Seconds after the create when a poll last found it still going.
        skew: 1 if its first poll was an at-once probe, which the cold cadence ignores.
        level: The price level of its last planning decision (0 = slack).
        due: Seconds after the create its next poll was planned for; None while the planner
            has planned none (a run resumed at once, or one read on a callback's safety net,
            is not the planner's).
        bucket: The limiter key its reads spend (its credential's bucket): the live budget
            its plan is priced by.
        beyond: Reads sent past its plan's last poll (the fallback cadence's step).
    """

    key: str | None = None
    attempts: int = 0
    failures: int = 0
    timer: object | None = None
    plan: tuple[float, ...] | None = None
    scale: float = 1.0
    pending_at: float = 0.0
    skew: int = 0
    level: int = 0
    due: float | None = None
    bucket: Hashable = None
    beyond: int = 0


def _unit(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{attribute.name} must be in (0, 1], got {value!r}")


@attrs.define(kw_only=True)
class BudgetPrice:
    """How much the rate budget binds, smoothed over planning decisions (see the module).

    Args:
        rise: Weight of one binding sample when the level goes up.
        fall: Weight of one slack sample when the level goes down.
        levels: Distinct price levels plans are made for (0 = slack ... levels - 1 = bound).
    """

    rise: float = attrs.field(default=0.25, validator=_unit)
    fall: float = attrs.field(default=1 / 32, validator=_unit)
    levels: int = 6
    level: float = 0.0

    @staticmethod
    def binds(pressure: PressureLike | None, in_flight: int, per_run: float = 1.0) -> bool:
        """Whether one more request now would take the place of another one.

        `per_run`: the requests each run in flight (and each request on the wire, which may
        be a create bringing one more) is counted for: 1 for runs with a plan; more for
        runs polled at a slack cadence, so that a window holding one poll per run in flight
        and not one more (where the first wave of a job sits) reads as binding.
        """
        if pressure is None:
            return False
        if sum(pressure.waiting_by_priority) > 0:
            return True
        remaining = pressure.remaining_estimate
        if remaining is None:
            return False
        if per_run == 1.0:
            return remaining <= in_flight + pressure.in_flight
        return remaining <= per_run * (in_flight + pressure.in_flight)

    def update(
        self, pressure: PressureLike | None, in_flight: int, per_run: float = 1.0
    ) -> tuple[int, bool]:
        """Sample the budget once: the price level (0 = slack), and whether it binds now."""
        binds = self.binds(pressure, in_flight, per_run)
        if binds:
            self.level += self.rise * (1.0 - self.level)
        else:
            self.level -= self.fall * self.level
        return self.current(), binds

    def current(self) -> int:
        """The price level now, without sampling."""
        return min(self.levels - 1, math.floor(self.level * self.levels))

    def cost(self, level: int, slack: float, bound: float) -> float:
        """The cost of a poll at `level`: geometric between `slack` and `bound`."""
        if level <= 0 or bound <= slack:
            return slack
        return float(slack * (bound / slack) ** (level / (self.levels - 1)))


def window_rate(pressure: PressureLike | None) -> float | None:
    """Requests per second the budget allows, if the limiter knows its window, else None.

    Reads the optional ``limit`` and ``period`` (window length in seconds; ``window`` is
    accepted too) of the pressure: a limiter that does not report them leaves the planner
    on `BudgetPrice`'s feedback.
    """
    if pressure is None:
        return None
    limit = getattr(pressure, "limit", None)
    period = getattr(pressure, "period", None) or getattr(pressure, "window", None)
    if not limit or not period or not math.isfinite(limit) or period <= 0:
        return None
    return float(limit) / float(period)


@attrs.define(kw_only=True)
class WindowLength:
    """The windows' length as the budget's windows follow one another, per limiter bucket.

    A limiter's ``period`` is what its ``Reset`` values bound: with whole-second ``Reset``
    the longest one seen plus its precision, a second or more over the truth (6-6.5 s for
    5 s windows: the rate `window_rate` reads is 17-23% short, and plans were priced for a
    budget that binds sooner than it does). Each window's end (``window_ends_at``) moves by
    the true length from one window to the next (more when windows start at the first
    request after a gap): the median of the last few such steps, never over ``period``, is
    the length `rate` prices by.

    Args:
        steps: Steps kept per bucket (the median of them is taken).
        max_buckets: Buckets remembered (the oldest is forgotten first).
    """

    steps: int = 5
    max_buckets: int = 1024
    _seen: dict[Hashable, tuple[float, tuple[float, ...]]] = attrs.field(init=False, factory=dict)

    def rate(self, bucket: Hashable, pressure: PressureLike | None) -> float | None:
        """Requests per second the budget of `bucket` allows (see `window_rate`), its
        window's length learnt from the steps of its end."""
        rate = window_rate(pressure)
        end = getattr(pressure, "window_ends_at", None)
        if rate is None or end is None:
            return rate
        limit = float(getattr(pressure, "limit", 0))
        period = limit / rate
        last, steps = self._seen.pop(bucket, (None, ()))
        if last is not None and end - last > 0.5 * period:
            steps = (*steps[1 - self.steps :], end - last)  # a new window
        elif len(self._seen) >= self.max_buckets:
            del self._seen[next(iter(self._seen))]
        self._seen[bucket] = (end, steps)
        if not steps:
            return rate
        length = sorted(steps)[len(steps) // 2]
        return limit / min(period, length)


def best_level(
    options: Sequence[tuple[float, float]],
    *,
    mean: float,
    slots: int,
    rate: float,
    rtt: float = 0.0,
    remaining: int | None = None,
) -> int:
    """The plan that completes the most runs per second under both constraints.

    Little's law: `slots` runs held each for ``mean + lag + rtt`` (a `run_many` slot is held
    until its run is seen ended) complete ``slots / (mean + lag + rtt)`` runs per second;
    a budget of `rate` requests per second completes ``rate / (1 + polls)``. The plan
    maximising the smaller wins (the first of equals). When the budget binds for every
    plan that is the one with the fewest polls; with no budget, the one with the least lag.
    It ignores the window's quantisation: a poll that misses after the window is spent
    waits for the next one (measured in ``tests/cadence_sim.py``).

    Args:
        options: ``(expected polls, expected lag)`` of each candidate plan.
        mean: The mean duration of the runs.
        slots: Runs that may be in flight at once (in flight now plus creates waiting).
        rate: Requests per second the budget allows.
        rtt: A request's round trip (a slot is held for the create's too).
        remaining: What is left of the window now, if known and nothing waits for it. When
            it covers twice what the `slots` runs would spend at the first plan, the budget
            cannot bind before they end, whatever its long-run `rate` (a user's few runs in
            a 200-per-5-minutes budget): the first plan.
    """
    if remaining is not None and options and remaining >= 2.0 * slots * options[0][0]:
        return 0
    best, best_tp = 0, -math.inf
    for i, (polls, lag) in enumerate(options):
        tp = min(slots / max(mean + lag + rtt, 1e-9), rate / (1.0 + polls))
        if tp > best_tp * (1.0 + 1e-9):
            best, best_tp = i, tp
    return best


class Planner(Protocol):
    """The learnt plans `ReadCadence` follows (`zapier_async._polling.AdaptivePolling`)."""

    def first_delay(
        self, handle: Any, key: str | None, rng: SupportsRandom, *, bucket: Hashable = None
    ) -> float: ...

    def next_delay(
        self,
        handle: Any,
        attempt: int,
        elapsed: float,
        rng: SupportsRandom,
        *,
        hint: float | None,
    ) -> float: ...


@attrs.define(kw_only=True, eq=False)
class ReadCadence:
    """When a run is read next: the one place that decides it (see the module docstring).

    Args:
        planner: Plans the reads of polled runs from their action's learnt durations.
        callback: The safety-net cadence of runs that take a completion callback.
        long_poll: Long-poll reads of Actions API runs, or None.
        retry: The backoff after a failed read.
        max_failures: Consecutive failed reads after which a run is given up.
    """

    planner: Planner
    callback: CallbackPolling
    long_poll: LongPoll | None
    retry: RetryPolicy
    max_failures: int

    def first(
        self,
        handle: Any,
        key: str | None,
        rng: SupportsRandom,
        *,
        bucket: Hashable,
        callback: bool,
    ) -> float:
        """The delay before a new run's first read."""
        if callback:
            return self.callback.delay(0, rng)
        return self.planner.first_delay(handle, key, rng, bucket=bucket)

    def long_polls(self, kind: str, *, callback: bool) -> LongPoll | None:
        """The long poll a read of a run of `kind` makes, or None for a plain read."""
        if self.long_poll is not None and kind == "actions_v1" and not callback:
            return self.long_poll
        return None

    def after_read(
        self,
        handle: Any,
        *,
        attempt: int,
        elapsed: float,
        rng: SupportsRandom,
        hint: float | None,
        callback: bool,
        long_polled: bool,
        read_took: float,
        retry_after: float | None,
    ) -> float:
        """The delay before the next read of a run a read found still going.

        Args:
            attempt: Reads made so far (the next one's number).
            elapsed: Seconds since the create's answer.
            hint: A server's hint (a throttled run's ``delay``), capped; it wins.
            callback: The run takes a completion callback: reads are a safety net.
            long_polled: That read was a long poll.
            read_took: Seconds that read took (a long poll's early 202).
            retry_after: Its ``Retry-After``, if any.
        """
        if callback:
            return self.callback.delay(attempt, rng)
        if long_polled and self.long_poll is not None:
            delay = self.long_poll.next_delay(elapsed=read_took, retry_after=retry_after)
            return delay if hint is None else max(delay, hint)
        return self.planner.next_delay(handle, attempt, elapsed, rng, hint=hint)

    def after_failure(self, failures: int, rng: SupportsRandom) -> float | None:
        """The delay before reading again after `failures` failed reads in a row; None: give
        the run up."""
        if failures >= self.max_failures:
            return None
        return self.retry.delay(failures, rng)

"""Adaptive polling: learn how long an action's runs take, and poll when they end.

Theory of operation
-------------------
A fixed cadence cannot know that one action always takes 0.2 to 1.5 s and another one 40 s,
so it either polls too early (wasting rate budget) or too late (adding lag). This module
learns, per action, when runs end, and plans each new run's polls for that distribution.

**What is observed.** A poll that finds a run still going says it ends later; the poll that
finds it ended says it ended earlier. So each run yields an interval ``(lo, hi]`` (seconds
after the create) holding its duration, never the duration itself. Those of the last
`window` runs of an action *created* are kept (not of the last to end: the last runs of a
burst to end are its longest), and the runs created since the oldest of them that are still
going count as longer than their last poll: a cohort chosen by when its runs started, which
says nothing of how long they take.

**Estimate.** The duration distribution is estimated from the intervals with Turnbull's
self-consistency algorithm (the nonparametric maximum-likelihood estimate for
interval-censored data): mass lives on the elementary cells between interval endpoints, and
each run's unit of mass is spread over the cells of its interval in proportion to their
current mass. It starts from a flat density and stops after six iterations on purpose:
the exact NPMLE piles the mass onto the narrowest cells, and a plan for such spikes polls at
every one of them. Endpoints are rounded to a 2% grid so that there are few cells.

**Plan.** Given the estimate ``F``, the poll times ``t_1 < ... < t_k`` minimise
``cost * E[polls] + E[lag]``: poll ``i`` is sent iff the run was still going at ``t_{i-1}``
(probability ``1 - F(t_{i-1})``), and a run ending in ``(t_{i-1}, t_i]`` is detected at
``t_i``. ``cost`` (seconds of mean lag one poll is worth) prices the trade-off. This is a
shortest path over candidate times (cell boundaries and cell midpoints, mass uniform within
a cell), solved by dynamic programming in O(candidates^2). The last planned poll is at the
longest duration seen; a run that outlives the plan falls back to `PollPolicy`'s growing
cadence: a tenth of the plan's length, growing by `PollPolicy.factor`, up to its cap.

**Exploring.** Censored data says nothing about where in ``(lo, hi]`` a run ended, and the
estimate puts the mass of a wide interval where narrower ones place it: if every run were
polled at the same times, mass between two planned polls could never be seen, and a first
poll placed late would stay late. So one run in `explore_every` has its plan scaled by a
random factor in ``[1 - explore, 1 + explore]``, which varies the inspection times (the
others follow the plan exactly: jittering every run costs about 5% more polls at the same
lag). Scaled down, a poll before a gap in the plan (the next one over `GAP` times later) is
also kept where the plan has it: the runs ending between the two are not left to the far
one. And when most runs are found ended by their first poll, every fourth run also polls
once at a quarter of that time, so the estimate can move a lot earlier at once (this is how
a zero-duration action converges to polling almost at once).

**Before anything is learnt** (fewer than `min_samples` runs of the action ended) a new
run is polled once at once, right after its create returned (what a hand-written
"check, then sleep" loop does), and then at the plain `PollPolicy` cadence. An action whose
runs end instantly is so learnt from its very first runs, instead of every one of them waiting
out the policy's first interval; once `at_once_misses` such polls of an action found its run
still going, its other unlearnt runs skip the at-once poll, so a slow action pays a few polls
for it, not one per run. A learnt plan whose first poll falls within `at_once_below` of the
create, or within half a poll's round trip (`round_trip`, a moving average), is likewise
sent at once: the answer could not come back sooner, and the plan of an instant action
otherwise settles at the client's own latency (each observation's upper end is when its
answer arrived). A server hint (a
throttled run's ``delay``) always wins.

While the budget binds, an unlearnt run is polled once late instead (four times the
policy's first interval, then doubling), and that first poll learns from its answers: a
stochastic approximation of a high quantile of the durations (`_learn_cold`), moved 1%
earlier by each such poll that found its run ended and 20% later by each that found it still
going (about one in twenty misses), never later than the cadence's own first poll. When
the limiter reports its window (limit and length), such a miss is a create not sent, and a
whole window when a job's requests fill its windows exactly: that first poll then goes no
earlier than the longest the action's runs were seen taking (`_window_late`).

**Strays.** A run seen going more than `stray` times the longest any run was seen ended
by (one stuck for minutes among runs of a second) is not learnt from unless such runs recur
(`strays_learnt` within `strays_within`): one would price every plan for it, and the one
poll of a budget that binds hard would wait for it. The longest duration seen (`longest`,
that one poll's time) is of the last `memory` runs seen ended; runs seen going count only
until one was seen ended.

**Re-planning** costs O(candidates^2) (about half a millisecond), so it is not done per run:
every `replan_every` new observations at first, then twice as seldom after each plan (up to
every `window / 2` observations); a run that outlived its plan (the action got slower) brings the
interval back to `replan_every`.

Pure: no clock, no I/O; the client tells it what happened (`observe`) and asks for delays.
"""

from __future__ import annotations

import bisect
import collections
import math
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final

import attrs

from ._backoff import PollPolicy, SupportsRandom, next_poll_delay
from ._cadence import BudgetPrice, PollRecord, PressureLike, WindowLength, best_level
from ._estimate import FLOOR, RESOLUTION, cdf, expect, plan_polls, quantise, trim_tail, turnbull

if TYPE_CHECKING:
    from ._handle import RunHandle

__all__ = ["AdaptivePolling", "plan_polls", "turnbull"]

GAP: Final = 2.0  # see `AdaptivePolling._plan_for`
# A plan's time within this of a read's answer counts as passed: a read answered at the very
# time it was planned (a fake clock, no latency: `elapsed` one float step short) is that read,
# not one more due at once.
PAST: Final = 1e-6


class SlidingMax:
    """The largest value pushed with a count above the latest count less `memory`: a deque
    of ``(count, value)``, values falling and counts rising (amortised O(1) per push)."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: collections.deque[tuple[int, float]] = collections.deque()

    @property
    def value(self) -> float:
        return self._kept[0][1] if self._kept else 0.0

    def values(self) -> list[float]:
        return [value for _, value in self._kept]

    def push(self, count: int, value: float, memory: int) -> None:
        kept = self._kept
        while kept and kept[-1][1] <= value:
            kept.pop()
        kept.append((count, value))
        while kept[0][0] <= count - memory:
            kept.popleft()


@attrs.define(eq=False)
class _Action:
    # ``(created_at, seen, lo, hi)`` of the last `window` runs seen ended, by when they were
    # created (not when they ended: a burst's last runs to end are its longest), then seen.
    samples: list[tuple[float, int, float, float]]
    replan_every: int
    pending: weakref.WeakSet[RunHandle] = attrs.Factory(weakref.WeakSet)
    fresh: int = 0
    plan: tuple[float, ...] | None = None
    # The estimate the plans were made from, and the plans made from it per price level.
    estimate: tuple[list[float], list[float]] | None = None
    intervals: list[tuple[float, float]] = attrs.Factory(list)
    sharp: tuple[list[float], list[float]] | None = None
    plans: dict[int, tuple[float, ...]] = attrs.Factory(dict)
    # (E[polls], E[lag]) of each level's plan, and the mean duration, from the estimate.
    options: list[tuple[float, float]] | None = None
    mean: float = 0.0
    first_hits: int = 0
    seen: int = 0  # runs observed ended, all told (`samples` keeps the last `window`)
    ended: int = 0  # runs observed ended, those whose poll waited for the budget too
    started: int = 0
    at_once_misses: int = 0
    at_once_hits: int = 0
    # Unlearnt runs whose at-once poll is out, and those held back until one of them hits.
    probing: weakref.WeakSet[RunHandle] = attrs.Factory(weakref.WeakSet)
    deferred: weakref.WeakSet[RunHandle] = attrs.Factory(weakref.WeakSet)
    # The bound cold cadence's first poll (seconds after the create), moved by what such
    # polls found (see `AdaptivePolling._learn_cold`); None until one of them answered.
    cold_first: float | None = None
    # How long its runs were seen going, or ended by (answers that did not wait for the
    # budget), over the last `AdaptivePolling.memory` runs seen ended (see `longest`); and
    # how long they were seen ended by alone (what a stray is measured against).
    reach: SlidingMax = attrs.Factory(SlidingMax)
    ends: SlidingMax = attrs.Factory(SlidingMax)
    # The `ended` counts at which strays (see `AdaptivePolling.stray`) were seen ended.
    strays: collections.deque[int] = attrs.Factory(collections.deque)

    @property
    def longest(self) -> float:
        """The longest a run of the action was seen ended by among the last
        `AdaptivePolling.memory` runs seen ended (or seen going, until one was seen ended;
        strays left out: see `AdaptivePolling.stray`): where the one-poll plan (`ALL_ENDED`) and
        a bound cold first poll go when a miss costs a window. Not of every run ever seen:
        one slow run (a 20 s hiccup among runs of 0.2-1.5 s) would put that one poll at
        20 s for the client's life, and every later bulk job would pay for it."""
        return self.reach.value

    def stretch(self, seconds: float, memory: int, *, ended: bool = False) -> None:
        """A run was seen going at, or (`ended`) ended by, `seconds` after its create."""
        self.reach.push(self.ended, seconds, memory)
        if ended:
            self.ends.push(self.ended, seconds, memory)


@attrs.define(kw_only=True, eq=False)
class AdaptivePolling:
    """Per-action poll plans learnt from how long runs took (see the module docstring).

    Args:
        policy: The cadence before anything is learnt, and after a plan runs out.
        cost: Seconds of mean detection lag one poll is worth while the budget is slack.
            0.16 gives, for runs of 0.2 to 1.5 s, a mean lag under a fixed 0.5 s poll's with
            about the same polls as "at once, then every 0.5 s" (2.10 polls at 218 ms in
            ``tests/cadence_sim.py``; see `benchmarks/results.md`).
        bound_cost: While the rate budget binds, one poll is worth this many times the
            longest duration the action is known to take (about one poll per run).
        pressure: Reads the limiter's live budget (`zapier_async._cadence.PressureLike`), or
            None for a budget always slack. See `zapier_async._cadence`.
        pressure_of: Reads the live budget of one limiter bucket (the key a run's reads
            spend, given to `first_delay` as ``bucket``): each credential's runs are priced
            by their own bucket. When set, it is used instead of `pressure`.
        runs_of: Counts the runs in flight whose reads spend a bucket (the engine's
            `SpareReads.following`): what a bucket's budget is weighed against. None: the
            runs in flight of the action being planned, in every bucket.
        creating_of: Counts the creates under way whose runs' reads will spend a bucket,
            from their send to their run being followed (the engine's). A create answered
            is no longer on the wire, and its run is not followed until its caller's task
            resumes: the answers of a burst arrive together, and without these its first
            runs would read as a job of a few runs (priced slack).
        price: The smoothed "budget binds" level (see `zapier_async._cadence.BudgetPrice`)
            of the default bucket (None); each other bucket gets its own copy of it, so one
            user's bound budget does not price another user's reads.
        min_samples: Runs of an action that must have ended before its plan is used.
        window: Most recent runs per action the estimate is made from.
        replan_every: New observations between two plans at first (the interval doubles
            after each plan, up to half the `window`).
        explore_every: One run in this many follows a randomly scaled plan.
        explore: The relative spread of that scaling.
        max_actions: Actions remembered (the oldest is forgotten first).
        enabled: False to always use `policy`.
        at_once: Poll a run of an action with no plan yet once right after its create.
        at_once_misses: At-once polls of an action that may find its run still going before
            its other unlearnt runs stop getting one.
        at_once_below: A planned first poll sooner than this (seconds), or than half the
            polls' mean round trip, is sent at once.
        tail: While the budget binds, runs outliving this share of the estimate are left to
            the fallback cadence instead of being planned for.
        censored_share: The first plan of an action waits until runs still going are at
            most this share of those seen (a plan of the short runs of a burst alone would
            poll the long ones at the short ones' pace).
        cold_polls: Requests a run with no plan yet is counted for when deciding whether
            the budget binds (see `zapier_async._cadence.BudgetPrice.binds`): the slack cold
            cadence spends about two polls on a run.
        cold_down: The factor on the bound cold first poll for each such poll that found
            its run ended (no later than the current one).
        cold_up: The factor on it for each one that found its run still going.
        memory: Runs seen ended over which the longest duration seen is kept (the one
            poll a run gets when every poll that finds a run still going costs a create):
            one slow run is forgotten after this many. A run outliving all those remembered
            costs a whole window when a job fills its windows exactly, but the ends seen are
            the times of the polls that found them (late by up to a poll's spacing, and the
            plans end at the longest seen), so a steady action does not drift down: the
            simulator's and `FakeZapier`'s bulk jobs are the same from 128 to 1,024 (every
            run since the client started). Twice `window`: the runs the estimate keeps, and
            as many again for the answers it does not learn from (polls that waited for the
            budget).
        stray: A run seen going more than this many times the longest duration seen is a
            stray: not learnt from (its own reads follow the fallback cadence), unless
            `strays_learnt` of them ended within `strays_within` runs seen ended.
        strays_learnt: See `stray`.
        strays_within: See `stray`.
    """

    policy: PollPolicy = attrs.field(factory=PollPolicy)
    cost: float = 0.16
    bound_cost: float = 1.0
    pressure: Callable[[], PressureLike | None] | None = None
    pressure_of: Callable[[Hashable], PressureLike | None] | None = None
    runs_of: Callable[[Hashable], int] | None = None
    creating_of: Callable[[Hashable], int] | None = None
    price: BudgetPrice = attrs.field(factory=BudgetPrice)
    min_samples: int = 32
    window: int = 128
    replan_every: int = 16
    max_actions: int = 256
    explore_every: int = 4
    explore: float = 0.2
    enabled: bool = True
    at_once: bool = True
    at_once_misses: int = 3
    at_once_below: float = 0.01
    censored_share: float = 0.25
    tail: float = 0.02
    cold_polls: float = 2.0
    cold_down: float = 0.99
    cold_up: float = 1.2
    memory: int = 256
    stray: float = 4.0
    strays_learnt: int = 3
    strays_within: int = 64
    _actions: dict[str, _Action] = attrs.field(init=False, factory=dict)
    _rtt: float | None = attrs.field(init=False, default=None)
    _lengths: WindowLength = attrs.field(init=False, factory=WindowLength)
    _prices: dict[Hashable, BudgetPrice] = attrs.field(init=False, factory=dict)

    # --- the client's hooks -----------------------------------------------------------------

    def first_delay(
        self,
        handle: RunHandle,
        key: str | None,
        rng: SupportsRandom,
        *,
        bucket: Hashable = None,
    ) -> float:
        """The delay before a new run's first poll; plans it in the run's record (`reads`).

        `bucket`: the limiter key the run's reads spend (priced through `pressure_of`).
        """
        delay = handle.reads.due = self._first_delay(handle, key, rng, bucket)
        return delay

    def next_delay(
        self,
        handle: RunHandle,
        attempt: int,
        elapsed: float,
        rng: SupportsRandom,
        *,
        hint: float | None,
    ) -> float:
        """The delay before the next poll of a run found still going at `elapsed`."""
        delay = self._next_delay(handle, attempt, elapsed, rng, hint=hint)
        record = handle.reads
        if record.due is not None:  # a run the planner plans
            record.due = elapsed + delay
        return delay

    def _first_delay(
        self, handle: RunHandle, key: str | None, rng: SupportsRandom, bucket: Hashable
    ) -> float:
        record = handle.reads
        record.key, record.bucket = key, bucket
        state = self._state(key, create=True) if self.enabled and key is not None else None
        if state is None:
            return self.policy.interval(0, elapsed=0.0, rng=rng)
        state.pending.add(handle)
        level = record.level = self._sample(state, record, cold=not state.plan)
        if state.plan:
            state.started += 1
            if state.started % self.explore_every == 0 and level < self.price.levels:
                # Scale the whole plan: spreads runs created together, and varies the times
                # at which runs are inspected, without which the estimate cannot see mass
                # between two planned polls (see "Exploring").
                record.scale = 1.0 + self.explore * (2.0 * rng.random() - 1.0)
            plan = record.plan = self._plan_for(state, record, level)
            if level == 0 and plan[0] < max(self.at_once_below, 0.5 * (self._rtt or 0.0)):
                # Runs end (nearly) instantly: poll as soon as the create returned.
                return 0.0
            probe = plan[0] / 4  # a probe earlier than the plan (see "Exploring")
            if (
                level == 0
                and state.first_hits * 2 > len(state.samples)
                and state.started % 4 == 0
                and probe >= FLOOR
            ):
                return probe
            return plan[0]
        if level == 0 and self.at_once and state.at_once_misses < self.at_once_misses:
            # Nothing learnt yet: look once right away (the cold cadence follows, from
            # its first interval), so instant runs are neither slow nor unlearnt. Until one
            # such poll found its run ended, only a few go out; the others wait on the policy
            # and are brought forward by the first hit (`observe` returns them).
            outstanding = sum(1 for h in state.probing if not h.done())
            if state.at_once_hits or outstanding < self.at_once_misses:
                record.skew = 1
                state.probing.add(handle)
                return 0.0
            state.deferred.add(handle)
        floor = None
        if level >= self.price.levels - 1 and state.longest > 0.0:
            floor = self._window_late(state, record)
        return self._cold(0.0, level, rng, first=state.cold_first, floor=floor)

    def _next_delay(
        self,
        handle: RunHandle,
        attempt: int,
        elapsed: float,
        rng: SupportsRandom,
        *,
        hint: float | None,
    ) -> float:
        record = handle.reads
        if record.due is None:  # its first read was not the planner's
            return next_poll_delay(self.policy, attempt, elapsed, rng, hint=hint)
        record.pending_at = elapsed
        state = self._state(record.key) if self.enabled else None
        if state is not None and state.ends.value <= 0.0:
            state.stretch(elapsed, self.memory)
        if record.plan is not None and state is not None and state.plan:
            # The price may have moved since the last poll: then follow its plan (at the
            # same price the run keeps the plan it started with, so a re-plan does not
            # add polls mid-run).
            level = self._sample(state, record)
            if level != record.level:
                record.level = level
                record.plan = self._plan_for(state, record, level)
        plan = record.plan
        if plan:
            for t in plan:
                if t > elapsed + PAST:
                    delay = t - elapsed
                    record.beyond = 0
                    break
            else:
                # Longer than any run seen: poll again soon (a tenth of the longest duration
                # known), backing off geometrically, so the plan learns the longer tail. (By
                # the polls past the plan's end, not every poll the run had: a probe, an
                # early read on spare budget would start the fallback further out.)
                beyond = record.beyond
                record.beyond += 1
                delay = min(
                    self.policy.cap, max(FLOOR, 0.1 * plan[-1]) * self.policy.factor**beyond
                )
            if hint is not None and math.isfinite(hint) and hint > delay:
                return max(min(hint, self.policy.max_hint), delay)
            return delay
        skew = record.skew
        if skew and attempt == skew and state is not None and handle in state.probing:
            # The at-once poll found the run still going.
            state.probing.discard(handle)
            state.at_once_misses += 1
            if state.at_once_misses >= self.at_once_misses:
                state.deferred.clear()
        if state is None:
            return next_poll_delay(self.policy, attempt - skew, elapsed, rng, hint=hint)
        if attempt == 1 and not skew and record.level > 0:
            self._learn_cold(state, record.due, ended=False)
        level = record.level = self._sample(state, record, cold=True)
        delay = self._cold(elapsed, level, rng)
        if hint is not None and math.isfinite(hint) and hint > delay:
            return max(min(hint, self.policy.max_hint), delay)
        return delay

    def observe(
        self, handle: RunHandle, elapsed: float, *, seen_at: float | None = None
    ) -> list[tuple[RunHandle, float]]:
        """A poll found the run ended at `elapsed` seconds after its create.

        Args:
            handle: The run.
            elapsed: Seconds from its create's answer to this poll's answer.
            seen_at: Seconds from its create's answer to when this poll was sent, if known:
                a poll that waited long for the rate budget (a quarter past when it was due)
                is not learnt from; without it that wait is learnt as duration.

        Returns:
            ``(run, delay)`` for runs of the same action whose next poll moves (usually
            none): unlearnt runs held back from an at-once poll, polled now when this run's
            at-once poll found it ended; and, when this observation made the action's first
            plan, the unlearnt runs still going, which switch to the plan.
        """
        record = handle.reads
        key, due = record.key, record.due
        if not self.enabled or due is None or key is None:
            return []
        end = elapsed if seen_at is None else min(max(seen_at, record.pending_at), elapsed)
        lo, hi = quantise(record.pending_at), quantise(end)
        if hi <= lo:
            hi = lo + max(FLOOR, RESOLUTION * lo)
        state = self._state(key, create=True)
        assert state is not None
        state.pending.discard(handle)
        state.ended += 1
        moved: list[tuple[RunHandle, float]] = []
        if handle in state.probing:
            state.probing.discard(handle)
            state.at_once_hits += 1
            for h in state.deferred:
                if not h.done() and h.reads.attempts == 0:
                    h.reads.skew = 1
                    state.probing.add(h)
                    moved.append((h, 0.0))
            state.deferred.clear()
        if seen_at is not None and end > due + max(0.05, 0.25 * due):
            # The poll waited for the rate budget: "ended before the wait was over" says
            # little, and such samples would teach the plan the limiter's wait.
            return moved
        if self._stray(state, record.pending_at, ended=True):
            return moved
        if record.plan is None and not record.skew and record.level > 0 and lo == 0.0:
            self._learn_cold(state, due, ended=True)
        bisect.insort(state.samples, (handle.created_at, state.seen, lo, hi))
        state.seen += 1
        # Not the end a poll an exploring plan placed later found (it found its run ended
        # wherever it went, and `ALL_ENDED` would follow it out, 1.96 -> 2.21 s in a warm
        # job of `tests/cadence_sim.py`'s 300 runs of 0.2-1.5 s): the run was seen going
        # at its previous poll.
        if record.scale <= 1.0:
            state.stretch(end, self.memory, ended=True)
        else:
            state.stretch(record.pending_at, self.memory)
        if lo == 0.0:
            state.first_hits += 1
        if len(state.samples) > self.window and state.samples.pop(0)[2] == 0.0:
            state.first_hits -= 1
        state.fresh += 1
        plan = record.plan
        if plan and record.pending_at >= plan[-1]:
            # Still going at the plan's last poll (not merely read late): learn it soon.
            state.replan_every = self.replan_every
        if len(state.samples) >= self.min_samples and (
            state.plan is None or state.fresh >= state.replan_every
        ):
            # Runs still going count too (as "longer than their last pending poll"): without
            # them the first runs to end, the shortest, would look like the whole story.
            # Those created since the oldest run kept: with the runs kept, every run created
            # since then (a cohort chosen by when runs started, not by how long they took).
            # Before the first plan, a gate: at most `censored_share` of the runs seen may be
            # still going. Against every run seen ended, not the `window` kept (with more
            # runs in flight than a third of it, it could never open), and every run found
            # going, not those among the first `window` in flight (counting at most 128 of
            # a burst of 2,000, it opened on its shortest runs: 4.6 polls per run, not 2.2).
            # Counted until it is known shut: each observation would otherwise walk every
            # run in flight (2.8 ms each with 10,000 of them).
            if state.plan is None:
                share = self.censored_share
                limit = share * state.seen / (1.0 - share) if share < 1.0 else math.inf
                going = 0
                for h in state.pending:
                    if h.reads.pending_at > 0.0:
                        going += 1
                        if going > limit:
                            return moved  # most of the burst is still going: too early
            since = state.samples[0][0]
            censored = [
                (quantise(h.reads.pending_at), math.inf)
                for h in state.pending
                if h.reads.pending_at > 0.0
                and h.created_at >= since
                and not self._stray(state, h.reads.pending_at)
            ]
            state.fresh = 0
            state.intervals = [*((lo, hi) for _, _, lo, hi in state.samples), *censored]
            bounds, masses = state.estimate = turnbull(state.intervals)
            new = tuple(plan_polls(bounds, masses, self.cost))
            state.plans = {0: new} if new else {}
            state.sharp = None
            state.options = None
            state.replan_every = min(2 * state.replan_every, self.window // 2)
            first_plan = state.plan is None
            state.plan = new
            if first_plan and new:
                moved = self._adopt(state, now=handle.created_at + elapsed, moved=moved)
        return moved

    def _adopt(
        self,
        state: _Action,
        *,
        now: float,
        moved: list[tuple[RunHandle, float]],
    ) -> list[tuple[RunHandle, float]]:
        """Switch the action's unlearnt runs still going to its first plan."""
        rescheduled = {id(h) for h, _ in moved}
        for h in state.pending:
            record = h.reads
            if h.done() or record.plan is not None or id(h) in rescheduled:
                continue
            level = self._price_of(record.bucket).current()
            plan = record.plan = self._plan_for(state, record, level)
            if record.timer is None:
                continue  # a poll is in flight: its answer reschedules it by the plan
            age = now - h.created_at
            # Its plan's next poll; older than the whole plan, its fallback's first step (as
            # `next_delay` would). Only ever sooner than the next poll it has: moved later, a
            # run holds its `run_many` slot longer (and one already past the plan waited
            # out the cold cadence's growing step, up to seconds).
            later = next((t - age for t in plan if t > age + PAST), max(FLOOR, 0.1 * plan[-1]))
            if record.due is None or age + later < record.due:
                moved.append((h, later))
        state.deferred.clear()
        return moved

    def round_trip(self, seconds: float) -> None:
        """A poll took `seconds` from being started to its answer (a moving average is kept)."""
        rtt = self._rtt
        self._rtt = seconds if rtt is None else rtt + 0.1 * (seconds - rtt)

    def plan(self, key: str, *, level: int = 0) -> tuple[float, ...] | None:
        """The plan of `key` (poll times after the create) at a price level, or None."""
        state = self._actions.get(key)
        if state is None or not state.plan:
            return None if state is None else state.plan
        return self._plan_at(state, level)

    def expected_polls(self, key: str | None, *, bucket: Hashable = None) -> float | None:
        """Polls a new run of `key` is expected to need at the live price (None: no plan yet).

        For admission control: a create is admitted only when the budget also covers the
        reads its run will need. Reads the live budget of `bucket` like a new run would.
        """
        state = self._actions.get(key) if key is not None and self.enabled else None
        if state is None or not state.plan:
            return None
        level = self._sample(state, PollRecord(key=key, bucket=bucket))
        if self.pressure is None and self.pressure_of is None:
            return expect(*(state.estimate or ([0.0, 1.0], [1.0])), state.plan)[0]
        return self._options(state)[level][0]

    def chance_ended(self, handle: RunHandle, elapsed: float) -> float | None:
        """How likely the run has ended by `elapsed` seconds after its create, given that
        its last poll found it still going (from its action's estimate; mass uniform within
        a cell). None: nothing is learnt of its action yet."""
        record = handle.reads
        state = self._actions.get(record.key) if record.key else None
        if state is None or state.estimate is None:
            return None
        bounds, masses = state.estimate
        before = cdf(bounds, masses, record.pending_at)
        if before >= 1.0:
            return 1.0
        return max(cdf(bounds, masses, elapsed) - before, 0.0) / (1.0 - before)

    def polled_early(self, handle: RunHandle) -> None:
        """The run is read ahead of its plan (on budget that would expire unspent): its
        answer teaches the estimate, but not the bound cold cadence (whose rule is about
        polls sent when it planned them)."""
        record = handle.reads
        if record.due is not None and record.plan is None and record.attempts == 0:
            record.skew = 1

    def level(self) -> int:
        """The default bucket's price level now: 0 while the budget is slack (see `_cadence`)."""
        return self.price.current()

    # --- internals --------------------------------------------------------------------------

    def _sample(self, state: _Action, record: PollRecord, *, cold: bool = False) -> int:
        """Read the live budget once; the price level for a planning decision now.

        A run with no plan yet (`cold`) is priced by this sample alone: the first runs of a
        bulk job must not spend its first window on early polls while the level rises.
        """
        if self.pressure_of is not None:
            pressure = self.pressure_of(record.bucket)
        elif self.pressure is not None:
            pressure = self.pressure()
        else:
            return 0
        rate = self._lengths.rate(record.bucket, pressure)
        # The bucket's runs in flight (any action: they all spend its budget; not the
        # action's in other buckets: one user's job is not another's). Processes sharing the
        # budget (a RedisLimiter's `processes`): alike, each holds its share of the runs in
        # flight, and the line (waiting_by_priority) is all of theirs.
        runs = len(state.pending) if self.runs_of is None else self.runs_of(record.bucket)
        if self.creating_of is not None and pressure is not None:
            # Creates answered whose runs are not followed yet: neither in line nor on the
            # wire (what is, request of any kind, is taken for a create counted there).
            line, wire = sum(pressure.waiting_by_priority), pressure.in_flight
            runs += max(0, self.creating_of(record.bucket) - line - wire)
        pending = runs * max(1, getattr(pressure, "processes", 1) or 1)
        if rate is not None and state.plan and not cold:
            # The window is known: the plan that completes the most runs per second.
            assert pressure is not None
            options = self._options(state)
            # Creates on the wire hold slots too (a warm client's first wave leaves at once:
            # without them its first runs read as a job of one run, priced slack).
            slots = pending + pressure.waiting_by_priority[2] + pressure.in_flight
            waiting = sum(pressure.waiting_by_priority)
            remaining = None if waiting else pressure.remaining_estimate
            return best_level(options, mean=state.mean, slots=slots, rate=rate, remaining=remaining)
        # A run with no plan yet is polled at the hand-written loop's pace while the budget
        # is slack: about `cold_polls` polls each, which the window must cover for the runs
        # in flight and those the creates on the wire bring (one each would make "binds" a
        # knife edge the first wave of a job sits on exactly: a window holding one poll per
        # run in flight and not one more).
        per_run = self.cold_polls if cold else 1.0
        level, binds = self._price_of(record.bucket).update(pressure, pending, per_run)
        if cold and binds:
            # (Not also while the smoothed level is above slack: it is one level for every
            # bucket, and one user's bound budget then slowed every other user's runs.)
            return self.price.levels - 1
        return level

    def _price_of(self, bucket: Hashable) -> BudgetPrice:
        """The smoothed level of `bucket` (`price` for the default bucket, None)."""
        if bucket is None:
            return self.price
        price = self._prices.pop(bucket, None)  # (re-inserted: the oldest goes first)
        if price is None:
            if len(self._prices) >= self._lengths.max_buckets:
                del self._prices[next(iter(self._prices))]
            price = attrs.evolve(self.price, level=0.0)
        self._prices[bucket] = price
        return price

    def _options(self, state: _Action) -> list[tuple[float, float]]:
        """``(E[polls], E[lag])`` of the plan at each price level (once per estimate)."""
        if state.options is None:
            assert state.sharp is not None or state.plan
            plans = [self._plan_at(state, level) for level in range(self.price.levels + 1)]
            assert state.sharp is not None or not state.plans
            bounds, masses = state.estimate or state.sharp  # type: ignore[misc]
            state.options = []
            for plan in plans:
                polls, lag, mean = expect(bounds, masses, plan)
                state.options.append((polls, lag))
            state.mean = mean
        return state.options

    def _plan_at(self, state: _Action, level: int) -> tuple[float, ...]:
        """The action's plan at a price level (made once per estimate).

        Above level 0 the plan is made from a sharper estimate (more self-consistency
        iterations: polls that waited for the budget leave wide intervals, which a few
        iterations spread over the whole wait), with its last `tail` share left to the
        fallback cadence: one poll late in the distribution, not at the longest wait seen.
        """
        assert state.plan
        plan = state.plans.get(level)
        if plan is None and level >= self.price.levels:
            # Beyond the levels (`ALL_ENDED`): one poll when every run seen had ended, for
            # when a poll finding its run still going costs a create (a whole window when
            # the windows are full), which the priced plans' tail does not see.
            # The latest end seen (polls that waited for the budget are not learnt): with
            # only "ended by then" to go on, no estimate can safely place it earlier. Of
            # the last `memory` runs seen (`longest`), not only the `window` the estimate
            # keeps: the last runs created are not the longest, and one run outliving it
            # costs a whole window.
            # (Those the estimate keeps are in `longest` but for exploring polls placed
            # later, which it leaves out; their ends count only when nothing else is known.)
            ends = [b for iv in state.intervals for b in iv if math.isfinite(b)]
            plan = state.plans[level] = (state.longest or max(ends),)
        if plan is None:
            if state.sharp is None:
                state.sharp = trim_tail(turnbull(state.intervals, iterations=32), self.tail)
            bounds, masses = state.sharp
            finite = bounds[-2] if math.isinf(bounds[-1]) else bounds[-1]
            cost = self.price.cost(level, self.cost, self.bound_cost * finite)
            plan = tuple(plan_polls(bounds, masses, cost)) or state.plan
            state.plans[level] = plan
        return plan

    def _plan_for(self, state: _Action, record: PollRecord, level: int) -> tuple[float, ...]:
        plan = self._plan_at(state, level)
        scale = record.scale
        if scale == 1.0:
            return plan
        # Scaled down, a poll before a gap (the next one over `GAP` times as late) is kept
        # where the plan has it too: the runs ending between the two would otherwise wait
        # for the far one. One run of 20 s among runs of 0.2-1.5 s gives plans such as
        # (0.75, 1.22, 1.47, 1.56, 23.8); scaled by 0.82, a run ending at 1.45 s was read
        # at 19.5 s (`tests/test_cadence.py`).
        scaled: list[float] = []
        for i, t in enumerate(plan):
            scaled.append(t * scale)
            if scale < 1.0 and i + 1 < len(plan) and plan[i + 1] * scale > GAP * t:
                scaled.append(t)
        return tuple(scaled)

    def _stray(self, state: _Action, going: float, *, ended: bool = False) -> bool:
        """Whether a run seen going `going` s after its create is a stray, not learnt from.

        A stray was seen going more than `stray` times the longest a run of its action was
        seen ended by (once `min_samples` were): one run stuck for minutes among runs of a
        second (a third party's bad minute) would otherwise price every plan for it. Its own
        reads follow the fallback cadence. Strays are learnt once `strays_learnt` of them
        ended within `strays_within` runs seen ended (the action got slower): `ended`
        records this one.
        """
        longest = state.ends.value
        if state.ended < self.min_samples or longest <= 0.0 or going <= self.stray * longest:
            return False
        if not ended:
            return True
        strays = state.strays
        strays.append(state.ended)
        while strays[0] <= state.ended - self.strays_within:
            strays.popleft()
        return len(strays) < self.strays_learnt

    def _learn_cold(self, state: _Action, due: float, *, ended: bool) -> None:
        """A bound cold first poll, due `due` s after its create, found its run `ended` or not.

        A stochastic approximation of a high quantile of the durations, from "ended by
        then" answers alone (all a single poll tells): a poll that found its run ended
        no later than the current first poll moves it 1% earlier; one that found it still
        going no earlier than 90% of it moves it 20% later. It settles where about one
        first poll in twenty misses (``0.01 (1 - p) = 0.18 p``). Answers to polls placed
        later (or, for misses, much earlier) say nothing about the current time and are
        ignored, so a burst whose first polls were all placed at once moves it once.
        """
        current = state.cold_first
        if ended:
            if current is None or due <= current:
                state.cold_first = max(FLOOR, min(current or due, due) * self.cold_down)
        elif current is None or due >= 0.9 * current:
            state.cold_first = min(self.policy.cap, max(current or due, due) * self.cold_up)

    def _window_late(self, state: _Action, record: PollRecord) -> float | None:
        """The earliest a bound cold first poll may go when the window is known, or None.

        With the window known (the limiter reports its limit and length), a poll that finds
        its run still going is a create not sent, and when a job's requests fill its windows
        exactly it costs a whole window (its last request alone in a window of its own). The
        learnt quantile (`_learn_cold`) accepts about one first poll in twenty finding its
        run still going; so no earlier than the longest the action's runs were seen taking
        (the latest end seen, or seen going: answers that did not wait for the budget), nor
        than that quantile.
        """
        if self.pressure_of is not None:
            pressure = self.pressure_of(record.bucket)
        elif self.pressure is not None:
            pressure = self.pressure()
        else:
            return None
        if self._lengths.rate(record.bucket, pressure) is None:
            return None
        return max(state.longest, state.cold_first or 0.0)

    def _cold(
        self,
        elapsed: float,
        level: int,
        rng: SupportsRandom,
        *,
        first: float | None = None,
        floor: float | None = None,
    ) -> float:
        """The cadence of a run of an action with no plan yet.

        While the budget is slack, that of a hand-written loop (every `policy.initial`
        seconds), stretching once the run is old: the next poll is at least a share
        ``factor - 1`` of its age later. While the budget binds, it starts four times later
        and doubles; its first poll at `first` once the action's bound cold first polls
        taught one (`_learn_cold`). Only the first poll is jittered (by `policy.jitter`), never
        below `floor` (a first poll placed past every run seen, `_window_late`).
        """
        p = self.policy
        if elapsed >= p.late_after:
            base = p.late_cap
        else:
            bound = level / max(self.price.levels - 1, 1)
            spacing = p.initial * (1.0 + 3.0 * bound)
            growth = (p.factor - 1.0) * (1.0 + bound)
            base = min(p.cap, max(spacing, growth * elapsed))
            if elapsed <= 0.0 and first is not None and level > 0:
                # Earlier only: a slower action is left to the growing cadence (and its plan),
                # whose later polls hold fewer `run_many` slots than one late first poll.
                base = min(base, first)
        if elapsed > 0.0:
            return base
        # Only the first poll is jittered: it spreads runs created together, and they keep
        # their phase after it (jitter at every poll makes each run's polls a random walk,
        # whose mean lag is more than half the spacing for the same number of polls).
        jittered = base * (1.0 + p.jitter * (2.0 * rng.random() - 1.0))
        return max(jittered, min(floor, p.cap) if floor is not None else 0.0)

    def _state(self, key: str | None, *, create: bool = False) -> _Action | None:
        if key is None:
            return None
        state = self._actions.get(key)
        if state is None and create:
            if len(self._actions) >= self.max_actions:
                del self._actions[next(iter(self._actions))]
            state = self._actions[key] = _Action([], self.replan_every)
        return state

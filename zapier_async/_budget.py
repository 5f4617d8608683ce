"""One rate budget as a pure state machine: answers and time in, "send at t" out.

Theory of operation
===================

A `Budget` is what one client believes about one server-side bucket (one credential, one
endpoint family...). It does no I/O, owns no clock and no task: every method takes the time
as an argument (``now``: monotonic seconds; ``wall``: epoch seconds, only to read absolute
``Reset``/``Retry-After`` values). `zapier_async._limiter.Limiter` drives one per key with a
waiter heap and one timer; the Redis limiter is to run the same rules; the scenario table in
``tests/limiter_scenarios.py`` runs against both. Its inputs are `grant` (a request is sent),
`ungrant` (it was not after all), `complete` (its answer, or none) and `freeze`; its outputs
are `next_time` ("the next request of this priority may go at t", None: "after an answer"),
`refusal` ("refuse, retry at t") and `estimate`.

**Modes.** *probe*: nothing is known (at start, after a freeze, after a window ran out): one
request at a time, so a burst of 1,000 creates at start-up does not collect 999 429s; its
answer decides the next mode. *open*: answers carry no ``X-RateLimit-Remaining``, so nothing
limits us (an a-priori ``rate`` still applies, a 429 still freezes) until a 429 teaches a
rate, kept as a sliding-window log (`zapier_async._learnt`: Zapier's Partner
OpenAPI declares the budget headers on 429s only). *window*: answers report the budget:
spend it within the window.

**Budget.** The server's ``Remaining`` does not count requests still on the wire. Two lower
bounds on what is left, the better one holds. Per answer *j*: every request granted and not
yet answered when *j* was sent may be counted after it, so ``available >= Remaining_j +
(answers received before j was sent) + 1 - (grants so far)``; the freshest answer wins
(another client spending the same budget only shows in fresh answers), except that among
answers sent within two round trips the highest wins. Per window: within one window
``Remaining`` only falls, so the answer with the lowest was counted after every other answer
of the window, and only requests still unanswered can be counted after it: ``available >=
min(Remaining) - (in flight) - (answers set aside as maybe from the previous window)``. The
first bound is tight when requests go one by one; the second when they go in bursts (with
the first alone, a burst of 50 in flight would cost up to 49 requests of every window).

**Where a window ends.** Each answer bounds the end of its window to ``[sent + Reset - p,
received + Reset + p]``, ``p`` the precision of the value (1 s for whole seconds: a server
may round either way; epoch, delta and ISO forms alike). Intersected over the window's
answers: ``lo <= end <= hi``. A new window is recognised without waiting for ``hi``: within
one window ``Remaining`` only falls, so an answer to a request sent after another answer
arrived that reports a *higher* ``Remaining`` comes from a later window. At ``hi`` a window
that did not visibly turn is over for sure: back to probe; the budget is never refilled
blind.

**Spending.** By default the available budget is spread evenly until the earliest possible
end (``pace_interval``) with a burst allowance of a tenth, so pacing slows as ``Remaining``
falls instead of bursting to zero and stalling (what a budget shared with unknown others
needs). With ``spend_window`` the window is spent as fast as answers allow (what a job
alone on its budget needs: a short job finishes in its first window), except that
background requests (POLL, BULK) leave ``interactive_reserve`` of the limit (at least one
request) to INTERACTIVE ones until the earliest possible end.

**Boundary probes.** When ``hi - lo`` is worth more than a few requests, a reserve of
tokens (2, or 1 for a limit under 40) is held back and sent inside ``[lo, hi]``: a probe that
lands in the old window spends a token that was really there, the first that lands in the
new one starts it. Before anything is learnt, whole-unit ``Reset`` steps pin the end to
``lo``, the middle or ``hi`` (rounding up, to nearest, down): the first probes go there.
With ``spend_window`` an awaited request (INTERACTIVE, not raised by a lane) does not wait
for them: it spends a kept token at once, and the probes make do with fewer.

**Learning the boundary** (``boundary="learn"``). Each turn of a window says when it really
ended: after the last request seen landing in it was sent, before the first answer from the
next arrived. That span is recorded relative to two references: the send time of the
window's first request (a window that starts with its first request lasts a fixed time) and
``hi`` (clock-aligned windows, consistently rounded deltas). Each keeps a learnt interval and
a score, and probes go where the better one says: bisecting while it is wide, at its two ends
once it is a few round trips narrow.

What each mechanism earns, measured by the scenario table (``python
tests/limiter_scenarios.py``): wall time to the last send over the physical minimum, for
(n - 1/2) windows' worth of requests by 100 (50 for long windows) callers, 5 ms each way;
"bounds" waits for ``hi``, "steps" adds the probes, "learn" adds the learning; 0 429s in
every run. Long-window figures are without the ``_WORTH_PROBING`` gate::

    server (limit / window, Reset)          bounds   steps   learn    spend_window
    50 / 2 s, from first request, ceil      1.520    1.136   1.085    1.082
    50 / 2 s, from first request, epoch     2.015    1.241   1.071
    50 / 2 s, clock-aligned, epoch          1.371    1.074   1.054
    150 / 60 s, clock-aligned, epoch        1.055    1.071   1.065    1.002
    150 / 60 s, from first request, ceil    1.070    1.070   1.070    1.017
    150 / 60 s, from first request, ISO     1.086    1.076   1.070
    200 / 300 s, from first request, ceil   1.099    1.099   1.099    1.003
    200 / 300 s, clock-aligned, epoch       1.110    1.110   1.110

On Zapier's real windows (60 s, 300 s) the probes and the learning earn between -1.6% and
+1.6%: a whole-second rounding is under 2% of the window, and what remains of the gap to
1.0 is pacing's spreading of the last window (``spend_window`` removes it). On a 2 s window
they earn 1.4x to 1.9x. So both run only where the end of the window is uncertain by more
than 5% of it (``_WORTH_PROBING``): short windows.

**A window's length known beforehand** (``window_length``; ``ZapierClient(rate_window=)``).
Every window that counted a request began before that request's answer arrived, so with its
length W known it ends by ``received + W`` (``BudgetWindow.length_hi``, the least over its
answers): whatever the anchoring (from the first request or on the clock), the end is
bounded to the round trip, where whole-second ``Reset`` values leave a second. No boundary
probe is then planned: a token held back for one only delays the work it carries (for a
job's last requests, by up to the window) or, landing in the next window, is lost; and the
budget is spent until a few round trips before that end. Where that costs: windows on the
clock may end earlier than the bound and that earlier end is not searched for. On exactly
m windows' worth of requests with 5 s windows (the budget benchmark's 300-run job), learnt
from headers alone every kind of whole-second ``Reset`` takes m + 1 windows; told the length,
m (``tests/test_limiter_scenarios.py``). The length is dropped for the bucket when an answer
contradicts it: a ``Reset`` later than ``received + W`` by more than its precision, an answer
counted in the old window (``Remaining`` not higher) that was sent after the bound or whose
``Reset`` puts the end past it, or any 429; the window's end is then the headers' again
(``headers_hi``). A length shorter than the server's by less than ``Reset``'s precision is
not caught before such a request, so it can cost one 429. One longer than the server's by
more than that precision changes nothing (the headers' bound is earlier); by less, each turn
waits up to the excess (the scenario table's 5.5 s for 5 s windows: 1.10x against 1.01x).

**Freezes.** A 429 freezes the bucket until ``Retry-After``, else ``Reset``, else the
default cool-down; a 503 only per `zapier_async._ratelimit.pause_after` (one transient 503
is not a rate signal). Every server-dictated wait is capped at ``max_server_wait``; past
it, `refusal` names the time the server named, and nobody waits. When a freeze ends, one
probe goes first.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import math
from collections.abc import Mapping
from typing import Final

import attrs

from ._budget_config import BudgetConfig
from ._learnt import LearntRate, slide
from ._ratelimit import (
    RateLimitState,
    ServerWait,
    cap_server_wait,
    pace_interval,
    server_wait,
)
from ._windows import BudgetWindow, LearntBoundary

__all__ = [
    "Answer",
    "Budget",
    "BudgetConfig",
    "BudgetView",
    "BudgetWindow",
    "Grant",
    "LearntBoundary",
    "Priority",
]

_BURST_FRACTION: Final = 0.1
"""Share of the available budget that may be sent at once when pacing."""

_RESERVE: Final = 2
"""Tokens held back for boundary probes when the end of a window is uncertain (1 for a
limit under 40; more, up to a tenth of the limit, while the end is poorly known)."""

_NARROW_RTTS: Final = 3
"""A learnt boundary narrower than this many round trips (or one token's time) is probed at
both ends rather than bisected further."""

_WORTH_PROBING: Final = 0.05
"""Boundary probes and learning only when the end of the window is uncertain by more than
this share of it: the scenario table shows they earn nothing below (see the module docs)."""


_CALIBRATION_DRIFT: Final = 0.01
"""Per window, the learnt boundary offset is widened by this share of the window length."""

_SHARED_WINDOWS: Final = 10
_SHARED_FOR: Final = 600.0
"""After a 429, nothing is spare for `_SHARED_WINDOWS` windows or `_SHARED_FOR` seconds,
whichever is longer (see `Budget.spare`): others spend that budget too."""

PROBE: Final = "probe"
OPEN: Final = "open"
WINDOW: Final = "window"


class Priority(enum.IntEnum):
    """Who is waiting for a request: lower values are served first."""

    INTERACTIVE = 0
    """Someone awaits this request now: a create from ``client.run()``, a poll of a handle
    being awaited, a discovery call."""
    POLL = 1
    """A background poll of a run in flight."""
    BULK = 2
    """A new submission from a bulk fan-out (``run_many``)."""


@attrs.frozen
class Grant:
    """One request granted: what its answer is read against.

    Attributes:
        sent: Monotonic time of the grant.
        completions: Answers (or releases) counted before it was granted.
        probe: Whether it probes the budget (the only one in flight until answered).
    """

    sent: float
    completions: int
    probe: bool


@attrs.frozen
class Answer:
    """What an answer changed, for the driver to count and log.

    Attributes:
        wait: The freeze it asked for (None: it did not freeze the bucket).
        extended: Whether that freeze lengthened the bucket's freeze.
        opened: Whether it opened a new window.
    """

    wait: ServerWait | None = None
    extended: bool = False
    opened: bool = False


_QUIET: Final = Answer()
_OPENED: Final = Answer(opened=True)


@attrs.frozen(kw_only=True)
class BudgetView:
    """A bucket's budget as seen now (times monotonic).

    Attributes:
        mode: ``"probe"``, ``"open"`` or ``"window"``.
        limit: Requests per window, if known (with no window known: the count of the rate
            learnt from 429s, if any).
        remaining: Requests that may still be sent in the current window, if known (with the
            rate learnt: what its log allows now).
        window_ends_at: When the current window certainly ends, if known.
        frozen_until: When the current freeze ends, if frozen.
        period: The window's length in seconds as learnt (the longest Reset seen), if known
            (with no window known: the rate learnt's seconds).
    """

    mode: str
    limit: int | None
    remaining: int | None
    window_ends_at: float | None
    frozen_until: float | None
    period: float | None = None


class Budget:
    """What one client believes about one server-side rate budget (see the module docs).

    Args:
        config: Settings shared by every bucket of a limiter.
    """

    __slots__ = (
        "_config",
        "_frozen_until",
        "_last_429",
        "_last_grant",
        "_learnt",
        "_learnt_rate",
        "_length",
        "_mode",
        "_period",
        "_prev_window",
        "_probe_out",
        "_probe_since",
        "_rate_log",
        "_refused_at",
        "_rtt",
        "_streak",
        "_tat",
        "_window",
        "completed",
        "granted",
        "in_flight",
    )

    def __init__(self, config: BudgetConfig) -> None:
        self._config = config
        self.granted = 0  # grants standing (an undone grant is taken back)
        self.completed = 0  # slots finished (answered, or released without an answer)
        self.in_flight = 0
        self._mode = OPEN if config.rate is not None else PROBE
        self._probe_out = False
        self._probe_since = -math.inf
        self._window: BudgetWindow | None = None
        self._prev_window: BudgetWindow | None = None
        self._period: float | None = None  # longest window seen (the largest Reset)
        # Learnt boundary (see _calibrate): offsets and scores of the references, or None.
        self._learnt: LearntBoundary | None = None
        # The window length declared in the config, until an answer contradicts it.
        self._length = config.window_length
        self._frozen_until: float | None = None
        self._refused_at: float | None = None  # named time of a freeze past the cap
        self._streak = 0  # 503 answers in a row
        self._last_429: float | None = None  # when the server last refused us
        self._tat = -math.inf  # pacing: theoretical time of the next grant
        self._last_grant = -math.inf
        self._rtt = 0.0  # smoothed time from grant to answer
        self._rate_log: collections.deque[float] | None = (
            None if config.rate is None else collections.deque()
        )
        # A rate learnt from 429s in open mode (see _learnt): kept while not in window mode
        # (unless a rate is configured), until forgotten (`LearntRate.expired`).
        self._learnt_rate: LearntRate | None = None

    # ------------------------------------------------------------------ inputs

    def grant(self, now: float) -> Grant:
        """A request is sent now (the caller checked `next_time`)."""
        probe = self._mode == PROBE
        if probe:
            self._probe_out = True
        elif self._mode == WINDOW and self._window is not None:
            # Pacing clock: the next grant is one gap later (GCRA, see next_time).
            self._tat = max(self._tat, now) + self._gap(self._window, now)
        self._last_grant = now
        learnt = self._learnt_rate
        if learnt is None and self._mode != WINDOW and self._config.rate is None:
            learnt = self._learnt_rate = LearntRate()
        if learnt is not None:
            learnt.granted(now, self._probe_since)
        if self._rate_log is not None:
            assert self._config.rate is not None
            self._rate_log.append(now)
            while len(self._rate_log) > self._config.rate[0]:
                self._rate_log.popleft()
        self.granted += 1
        self.in_flight += 1
        return Grant(now, self.completed, probe)

    def ungrant(self, grant: Grant) -> None:
        """A granted request was not sent after all: give its token back."""
        self.granted -= 1
        self.in_flight -= 1
        if grant.probe:
            self._probe_out = False
        if self._rate_log is not None:
            with contextlib.suppress(ValueError):  # it may have slid out of the window
                self._rate_log.remove(grant.sent)
        if self._learnt_rate is not None:
            self._learnt_rate.ungranted(grant.sent)

    def complete(
        self,
        grant: Grant,
        status: int | None,
        headers: Mapping[str, str],
        *,
        now: float,
        wall: float,
    ) -> Answer:
        """A granted request ended: with an HTTP answer, or none (``status`` None)."""
        self.completed += 1
        self.in_flight -= 1
        if grant.probe:
            self._probe_out = False
        if status is None:
            return _QUIET
        state = RateLimitState.from_headers(headers, now=wall)
        if status == 429:
            self._last_429 = now
            # Refused: the windows are not what the declared length says (or others spend
            # this budget); from now on only the headers bound their ends.
            self._drop_length()
        self._streak = self._streak + 1 if status == 503 else 0
        wait = server_wait(
            status,
            state,
            now=wall,
            max_server_wait=self._config.max_server_wait,
            default_cooldown=self._config.default_cooldown,
            unavailable_streak=self._streak,
        )
        if wait is not None:
            learnt = self._learnt_rate
            # Refused while open: learn the rate (not from a straggler sent before a freeze).
            if (
                status == 429
                and learnt is not None
                and self._mode == OPEN
                and grant.sent >= self._probe_since
            ):
                learnt.learn(  # the window ends at Reset (Retry-After may add a cool-down)
                    grant.sent,
                    since=self._probe_since,
                    retry_at=now
                    + (wait.retry_at - wall if state.reset_after is None else state.reset_after),
                    limit=state.limit,
                    margin=now - grant.sent,
                    declared=self._config.window_length,
                    wall=wall - now,
                )
            return Answer(wait, self._hold(wait, now))
        if state.remaining is None:
            # No budget headers: this API is not limiting us. Trust that only for answers to
            # requests sent since probing began, not for stragglers from before a freeze, and
            # not for a server error (a proxy's 503 page says nothing about the budget).
            if self._mode == PROBE and grant.sent >= self._probe_since and status < 500:
                self._mode = OPEN
            return _QUIET
        return _OPENED if self._observe(grant, state, now, wall) else _QUIET

    def freeze(self, seconds: float, *, now: float, wall: float) -> Answer:
        """Hold every request back for ``seconds`` (capped); never shortens a freeze."""
        wait = cap_server_wait(seconds, max_server_wait=self._config.max_server_wait, now=wall)
        return Answer(wait, self._hold(wait, now))

    # ------------------------------------------------------------------ outputs

    def advance(self, now: float) -> None:
        """Apply what the passing of time changes: a freeze ends, a window runs out, a rate
        learnt from 429s is forgotten."""
        learnt, last_429 = self._learnt_rate, self._last_429
        if learnt is not None and last_429 is not None and learnt.expired(now, last_429):
            learnt.forget()
        if self._frozen_until is not None and now >= self._frozen_until:
            self._frozen_until = None
            self._refused_at = None
            self._enter_probe(now)
        w = self._window
        if w is not None and now >= w.hi:
            self._enter_probe(now)

    def refusal(self, now: float) -> float | None:
        """The wall-clock time the server named when a request now would wait past the cap.

        Call after `advance`. None: a request may wait.
        """
        if self._frozen_until is not None and now < self._frozen_until:
            return self._refused_at
        if self._learnt_rate is not None:
            refused = self._learnt_rate.refusal(now, self._config.max_server_wait)
            if refused is not None:
                return refused
        w = self._window
        if w is not None and w.beyond_at is not None and self._available(w) <= 0:
            return w.beyond_at
        return None

    def next_time(
        self, now: float, priority: Priority = Priority.INTERACTIVE, *, raised: bool = False
    ) -> float | None:
        """When the next request of ``priority`` may be sent (<= now: at once); None: only
        after an answer. ``raised``: its priority was raised by a lane (a drained bulk job's
        request), not asked for by an awaited caller. Call after `advance`."""
        if self._frozen_until is not None:
            return self._frozen_until
        earliest = self._log_time(now, now, 1, priority)
        if self._mode == OPEN:
            return earliest
        if self._mode == PROBE:
            return None if self._probe_out else earliest
        w = self._window
        assert w is not None
        available = self._available(w)
        if available <= 0:
            return max(earliest, w.hi)
        start, probes = self._plan(w)
        spendable = available - len(probes)
        if spendable <= 0 and now < start and not raised and self._awaited(priority):
            # An awaited request does not wait for the turn behind the tokens kept for
            # boundary probes: the window is not spent, and the probes make do with fewer
            # (with none, the turn is waited for at ``hi``). Not a raised one: a drained job
            # taking them would wait for ``hi`` at every turn (a 50-per-10-s job with a web
            # request every 2 s: 4-6 s slower).
            return earliest
        if spendable > 0 and now < start:
            if self._config.spend_window:
                if priority != Priority.INTERACTIVE and spendable <= self._reserve(w):
                    # The rest is the interactive reserve, released just in time to be spent
                    # before the window may end.
                    release = start - max(4 * self._rtt, self._token_time(w))
                    return max(earliest, release)
                return earliest
            # Spread the spendable budget until the boundary; allow a small burst.
            gap = pace_interval(spendable, start - now)
            burst = max(1, int(spendable * _BURST_FRACTION))
            return max(earliest, self._tat - (burst - 1) * gap)
        if spendable > 0:
            # Past the earliest possible end with budget to spare: spend it until the end.
            latest = self._latest_send(w)
            end = probes[-1] if probes else w.hi if latest is None else latest
            return max(earliest, self._last_grant + max(end - now, 0.0) / available)
        # Only the reserve is left: it goes out as boundary probes, then comes ``hi``. Short
        # of tokens, the last probes are kept: they are the likeliest to find the new window.
        for probe in probes[-available:]:
            if probe > self._last_grant:
                return max(earliest, probe)
        return max(earliest, w.hi)

    def _awaited(self, priority: Priority) -> bool:
        """Whether ``priority`` is an awaited one that spending the window serves first."""
        return self._config.spend_window and priority == Priority.INTERACTIVE

    def spare(self, now: float) -> tuple[int, float, int] | None:
        """Requests the window holds that background work may spend, from when nothing else
        is entitled to them, and which window that is: ``(count, at, window)`` (``window``
        tells windows apart); None when no window is known or nothing is left beyond the
        boundary probes. Call after `advance`.

        With ``spend_window`` the interactive reserve is released to background work just
        before the window may end (``at``); whatever is still unspent then expires with the
        window, so optional work (a read ahead of its plan) costs nothing there. Without
        ``spend_window`` the budget is paced to its end: nothing is spare. Nor is it for ten
        windows or ten minutes after a 429 (the budget is shared with requests not seen here).
        """
        if not self._config.spend_window or self._mode != WINDOW or self._frozen_until:
            return None
        last_429 = self._last_429
        if last_429 is not None and now - last_429 < max(
            _SHARED_WINDOWS * (self._period or self._config.default_cooldown), _SHARED_FOR
        ):
            # Refused lately: others spend this budget too, and what looks left is not ours
            # to spend on optional reads.
            return None
        w = self._window
        assert w is not None
        start, probes = self._plan(w)
        spendable = self._available(w) - len(probes)
        if spendable <= 0:
            return None
        return spendable, start - max(4 * self._rtt, self._token_time(w)), w.opened_at

    def estimate(
        self, now: float, position: int, priority: Priority = Priority.INTERACTIVE
    ) -> float:
        """Rough seconds until the ``position``-th next grant (1 = the next one)."""
        start = now
        if self._frozen_until is not None and self._frozen_until > now:
            start = self._frozen_until
        t = start
        w = self._window if start == now else None  # after a freeze comes a probe
        if w is None:
            # Probing: one request at a time; the last window known says how fast it may go.
            known = self._window or self._prev_window
            if known is not None and known.limit:
                t += (position - 1) * self._token_time(known)
        else:
            available = max(self._available(w), 0)
            if self._config.spend_window and priority != Priority.INTERACTIVE:
                available = max(available - self._reserve(w), 0)
            if position <= available:
                gap = 0.0 if self._config.spend_window else self._gap(w, now)
                t = max(t, now + position * gap)
            else:
                extra = position - available
                per_window = w.limit or max(available, 1)
                if now >= w.lo and w.limit:
                    # The window may have turned already: what looks left may be the next
                    # window's budget, so it is not counted on top of the next one's.
                    extra = position
                period = self._period or self._config.default_cooldown
                t = max(t, w.hi + (extra - 1) // per_window * period)
        return max(t, self._log_time(now, start, position, priority)) - now

    def _log_time(self, now: float, start: float, n: int, priority: Priority) -> float:
        """When the ``n``-th next grant of ``priority`` may go by the rate configured or
        learnt (sliding-window logs), never before ``start``."""
        t = start
        rate, log = self._config.rate, self._rate_log
        if rate is not None and log is not None:
            t = slide(log, rate[0], rate[1], start, n)
        if self._learnt_rate is not None:
            interactive = priority == Priority.INTERACTIVE
            share = self._config.interactive_reserve
            t = max(t, self._learnt_rate.earliest(start, n, interactive, share))
        return t

    def reason(self, now: float) -> str:
        """Why a request waits now: ``"frozen"``, ``"probe"`` or ``"paced"``."""
        if self._frozen_until is not None and now < self._frozen_until:
            return "frozen"
        return "probe" if self._mode == PROBE else "paced"

    def view(self, now: float) -> BudgetView:
        """The budget as seen now."""
        w = self._window
        frozen = self._frozen_until
        limit = w.limit if w is not None else None
        remaining = max(self._available(w), 0) if w is not None else None
        period = self._period
        learnt = self._learnt_rate
        if w is None and learnt is not None and learnt.rate is not None:
            # No window known: the rate learnt from 429s is what is known of the budget.
            (limit, period), remaining = learnt.rate, learnt.left(now)
        return BudgetView(
            mode=self._mode,
            limit=limit,
            remaining=remaining,
            window_ends_at=w.hi if w is not None else None,
            frozen_until=frozen if frozen is not None and frozen > now else None,
            period=period,
        )

    def idle(self, now: float) -> bool:
        """Whether forgetting this budget loses nothing a request waits on."""
        learnt = self._learnt_rate
        return (
            self.in_flight == 0
            and (self._frozen_until is None or self._frozen_until <= now)
            and (learnt is None or learnt.idle(now))
        )

    # ------------------------------------------------------------------ internals

    def _hold(self, wait: ServerWait, now: float) -> bool:
        """Freeze for ``wait.hold`` (already capped); never shorten a freeze."""
        until = now + wait.hold
        if self._frozen_until is None or until > self._frozen_until:
            self._frozen_until = until
            self._refused_at = wait.retry_at if wait.over_cap else None
            return True
        if wait.over_cap:
            self._refused_at = max(self._refused_at or wait.retry_at, wait.retry_at)
        return False

    def _enter_probe(self, now: float) -> None:
        if self._window is not None:
            self._prev_window = self._window
        self._window = None
        self._mode = PROBE
        self._probe_since = now
        if self._learnt_rate is not None:
            self._learnt_rate.new_span()

    def _available(self, w: BudgetWindow) -> int:
        # Two lower bounds (see "Budget" in the module docs); the better one holds.
        answered = w.arrived_min[-1] - self.in_flight - w.ignored
        available = max(w.anchor - self.granted, answered)
        return min(available, w.limit) if w.limit is not None else available

    def _reserve(self, w: BudgetWindow) -> int:
        """Requests background work leaves to INTERACTIVE ones (``spend_window``)."""
        share = self._config.interactive_reserve
        if share <= 0:
            return 0
        return max(1, math.ceil(share * (w.limit or w.anchor)))

    def _observe(self, grant: Grant, state: RateLimitState, now: float, wall: float) -> bool:
        """Take in an answer that states the budget; True when it opened a window."""
        assert state.remaining is not None
        sent, remaining = grant.sent, state.remaining
        self._rtt += 0.2 * ((now - sent) - self._rtt)
        anchor = remaining + grant.completions + 1
        reset_after = state.reset_after
        beyond_at: float | None = None
        cap = self._config.max_server_wait
        if reset_after is not None and reset_after > cap:
            # A Reset past the cap: pace to the cap, and with nothing left fail, not wait.
            beyond_at = (state.reset_at or wall + reset_after) + state.reset_precision
            reset_after = cap
        if reset_after is not None:
            slack = max(state.reset_precision, 0.005)
            if self._period is not None:
                slack = max(slack, min(0.01 * self._period, 1.0))
            # A capped Reset bounds nothing from below: the end is only known to be later.
            lo = sent + reset_after - slack if beyond_at is None else sent
            hi = now + reset_after + slack
            self._period = max(self._period or 0.0, reset_after + state.reset_precision)
        else:
            lo, hi = sent, now + self._config.default_cooldown  # assume at most a cool-down
        w = self._window
        prev = self._prev_window if w is None else None
        contradicted = self._contradicts_length(w or prev, grant, state, lo)
        headers_hi = hi
        length_hi = self._length_bound(state, sent, now)
        if length_hi is not None:
            if length_hi <= hi:  # it binds: the window's length, not the longest Reset seen
                self._period = self._length
            hi = max(min(hi, length_hi), lo)
        bounds = (lo, hi, state.reset_precision)

        if w is None:
            if hi <= now:
                return False  # describes a window that has already ended
            if contradicted:
                pass
            elif prev is not None and self._is_newer(prev, grant.completions, remaining, lo):
                self._calibrate(prev, now)
            elif prev is not None and sent < self._probe_since:
                return False  # a straggler, likely from the window that just ended
            self._open(state.limit, anchor, sent, now, remaining, bounds, beyond_at)
            self._window_length_hi(length_hi, headers_hi)
            return True
        if self._is_newer(w, grant.completions, remaining, lo):
            self._calibrate(w, now)
            self._open(state.limit or w.limit, anchor, sent, now, remaining, bounds, beyond_at)
            self._window_length_hi(length_hi, headers_hi)
            return True
        if grant.completions < w.opened_at:
            w.ignored += 1
            return False  # sent before this window was known: it may belong to the previous
        # A member of the current window. Every anchor is a lower bound as far as our own
        # requests go, so the highest is the best; but another client spending the same
        # budget shows only in fresher answers, so only near-simultaneous ones compete.
        fresh_for = 2 * self._rtt
        if sent > w.anchor_sent:
            if anchor > w.anchor or sent - w.anchor_sent > fresh_for:
                w.anchor = anchor
            w.anchor_sent = sent
        elif anchor > w.anchor and w.anchor_sent - sent <= fresh_for:
            w.anchor = anchor
        if state.limit is not None:
            w.limit = state.limit
        w.precision = max(w.precision, state.reset_precision)
        w.lo = max(w.lo, lo)
        w.hi = max(min(w.hi, hi), w.lo)  # inconsistent bounds: keep the later end
        w.headers_hi = max(min(w.headers_hi, headers_hi), w.lo)
        if length_hi is not None:
            w.length_hi = length_hi if w.length_hi is None else min(w.length_hi, length_hi)
        if w.beyond_at is not None:  # past the cap only while every answer says so
            w.beyond_at = None if beyond_at is None else min(w.beyond_at, beyond_at)
        w.arrived.append(self.completed)
        w.arrived_min.append(min(w.arrived_min[-1], remaining))
        w.last_member_sent = max(w.last_member_sent, sent)
        return False

    def _length_bound(self, state: RateLimitState, sent: float, now: float) -> float | None:
        """The latest end the declared window length allows for this answer's window: it
        counted the request, so it began before the answer arrived. None when no length is
        declared, or once an answer contradicted it (its ``Reset`` put the end later than
        that, by more than the value's precision): a server with longer windows than
        declared would otherwise be sent into."""
        length = self._length
        if length is None:
            return None
        if state.reset_after is not None:
            slack = max(state.reset_precision, 0.005)
            if sent + state.reset_after - slack > now + length:
                self._drop_length()
                return None
        return now + length

    def _window_length_hi(self, length_hi: float | None, headers_hi: float) -> None:
        w = self._window
        if w is not None:
            w.length_hi = length_hi
            w.headers_hi = max(headers_hi, w.lo)

    def _contradicts_length(
        self, w: BudgetWindow | None, grant: Grant, state: RateLimitState, lo: float
    ) -> bool:
        """Whether this answer shows the declared length wrong, dropping it if so: counted as
        in window ``w`` (``Remaining`` not higher than before it was sent) though sent after
        the end the length allowed ``w``, or with a ``Reset`` whose earliest end is later.
        ``w``'s end is then the headers' alone, and, turned or not, it teaches nothing."""
        if w is None or w.length_hi is None or self._length is None:
            return False
        assert state.remaining is not None
        before = w.min_remaining_before(grant.completions)
        same = before is not None and state.remaining <= before
        if not same or state.remaining >= (state.limit or w.limit or 0) - 1:
            return False  # a later window, or not enough answers to tell
        if grant.sent < w.length_hi and lo <= w.length_hi:
            return False
        self._drop_length()
        return True

    def _drop_length(self) -> None:
        """Forget the declared length: the windows known end where their headers say."""
        self._length = None
        for w in (self._window, self._prev_window):
            if w is not None and w.length_hi is not None:
                w.length_hi = None
                w.hi = w.headers_hi

    def _is_newer(self, w: BudgetWindow, completions: int, remaining: int, lo: float) -> bool:
        """Whether an answer provably comes from a window after ``w``."""
        if lo > w.hi:
            return True  # it says its window ends after ``w`` certainly ended
        # Sent after an answer from ``w`` arrived, so processed after it; within one window
        # Remaining only falls, so a higher one means the window turned.
        before = w.min_remaining_before(completions)
        return before is not None and remaining > before

    def _open(
        self,
        limit: int | None,
        anchor: int,
        sent: float,
        now: float,
        remaining: int,
        bounds: tuple[float, float, float],
        beyond_at: float | None,
    ) -> None:
        self._window = BudgetWindow(
            limit, anchor, sent, self.completed, remaining, bounds, beyond_at
        )
        self._prev_window = None
        self._mode = WINDOW
        self._tat = now
        # The answers say what is left: nothing to learn, and a rate learnt while they did
        # not (from a 429) would hold the window below what they report.
        self._learnt_rate = None

    def _calibrate(self, old: BudgetWindow, turned_by: float) -> None:
        """Learn where windows end from how ``old`` ended (``boundary="learn"`` only)."""
        if self._config.boundary != "learn":
            return
        if self._learnt is None:
            self._learnt = LearntBoundary()
        drift = _CALIBRATION_DRIFT * (self._period or 0.0)
        self._learnt.calibrate(old, turned_by, drift)

    def _ladder(self, w: BudgetWindow) -> tuple[float, float, bool]:
        """Where the window's end is expected, ``lo <= start <= end <= hi``, and whether that
        is learnt (False: only the sound bounds are known)."""
        if self._learnt is None:
            return w.lo, w.hi, False
        span = self._learnt.expect(w)
        if span is None:
            return w.lo, w.hi, False
        start, end = span
        # Probes all sent at one instant would learn nothing: keep the ladder a little open.
        end = min(max(end, start + max(self._token_time(w), 2 * self._rtt)), w.hi)
        return start, end, True

    def _token_time(self, w: BudgetWindow) -> float:
        """Seconds of window per request of the limit."""
        return (self._period or 0.0) / (w.limit or 1)

    def _plan(self, w: BudgetWindow) -> tuple[float, tuple[float, ...]]:
        """When regular spending stops, and when the boundary probes go (`_probe_plan`).

        With the window's length known there are none where it bounds the end: that is known
        from above to the round trip, and a token held back for a probe only delays the work
        it carries (by up to the window, for a job's last requests) or, landing in the next
        window, is lost. (A length longer than the server's bounds nothing: probes as usual.)
        """
        if self._latest_send(w) is not None:
            return w.lo, ()
        return self._probe_plan(w)

    def _latest_send(self, w: BudgetWindow) -> float | None:
        """With the window's length known, the latest time a request may be sent and still
        land in this window (None: no length known)."""
        if w.length_hi is None or w.length_hi > w.hi:
            return None  # none known, or the headers bound the end more tightly
        return w.hi - max(_NARROW_RTTS * self._rtt, 0.001)

    def _probe_plan(self, w: BudgetWindow) -> tuple[float, tuple[float, ...]]:
        """When regular spending stops, and when the boundary probes go.

        Probes are only planned when the end of the window is uncertain by more than the
        tokens they hold back are worth: before anything is learnt and with whole-unit
        ``Reset`` steps, just after ``lo`` and the middle (a server rounding up or to
        nearest); a learnt interval narrower than a few round trips, at both its ends;
        otherwise evenly over it (bisection), R probes for a delay of about width / 2R,
        smallest at R = sqrt(width / token time).

        Returns:
            ``(start, probes)``: spending stops at ``start``; the probe times increase, and
            ``hi`` follows them.
        """
        if (
            w.limit is None
            or w.limit < 2
            or not self._period
            or self._config.boundary == "bounds"
            or w.hi - w.lo <= _WORTH_PROBING * self._period
        ):
            return w.lo, ()
        start, end, learnt = self._ladder(w)
        base = _RESERVE if w.limit >= 40 else 1
        token_time = self._token_time(w)
        if w.hi - w.lo <= 2 * base * token_time:
            return start, ()
        width = end - start
        if not learnt and w.hi - w.lo <= 1.5 * w.precision:
            margin = 2 * (token_time + self._rtt)
            return start, (w.lo + margin, (w.lo + w.hi) / 2 + margin)[:base]
        if learnt and width <= max(token_time, _NARROW_RTTS * self._rtt):
            return start, (start, end) if base > 1 else (end,)
        count = max(base, min(round(math.sqrt(width / token_time)), w.limit // 10))
        return start, tuple(start + width * (i + 1) / count for i in range(count))

    def _gap(self, w: BudgetWindow, now: float) -> float:
        """The pacing gap now: what is left before the boundary, spread until it."""
        if self._config.spend_window:
            return 0.0
        start, probes = self._plan(w)
        spendable = self._available(w) - len(probes)
        if now >= start or spendable <= 0:
            return 0.0
        return pace_interval(spendable, start - now)

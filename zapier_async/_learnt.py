"""A rate learnt from 429s, for a budget whose answers do not say what is left.

Theory of operation
===================

Zapier's Partner OpenAPI declares the ``X-RateLimit-*`` headers on 429 and 503 answers only,
and the Workflow API limits 60 requests a minute per IP and 150 per partner, with a 60 s
cool-down after a 429. Against such a server a `zapier_async._budget.Budget` sees no
``Remaining`` on success and goes *open* (nothing seems to limit us): it bursts, is
refused, freezes until ``Retry-After``, probes, is answered without ``Remaining``, goes open
again and bursts again, every window (a 50-per-10-s bulk job took 42 to 62 429s). So a 429
that arrives in open mode, with no ``rate`` configured, teaches a rate, kept from then on as
a sliding-window log like ``BudgetConfig.rate``: at most ``count`` grants in any ``per``
seconds (`LearntRate`). The first 429 cannot be avoided without ``rate_limit=``; the second
can.

**count.** The requests of ours the refused window counted are at most the grants of the
current *span* (since the last freeze ended: the window that froze us had ended by then)
sent before the refused one and not refused themselves: its ``X-RateLimit-Limit`` when it is
no more than that (a larger one describes something else: the Partner OpenAPI calls it
requests per hour, and others may spend the budget too), else that number.

**per.** The declared ``window_length`` when there is one. Otherwise: the refused window ends
at the 429's ``Reset``, else its retry time (``Retry-After``, which may add a cool-down,
else the default cool-down), and
it counted ``count`` requests of ours, all sent before the refused one, so it began no later
than the earliest of the last ``count`` grants before it: ``per >= retry_at - that grant's
send time``, plus the refused request's round trip for the skew between our send times and
the server's arrival times.
Exact (to the rounding of ``Retry-After``) for windows that start at their first request;
an under-estimate when the client's first window was a clock-aligned one joined part-way.

**Tightened by 429s, forgotten after a quiet while.** Each later 429 while the rate holds
(a straggler of the same burst, or a refusal in a later window: the aligned case above) is
read the same way with the count learnt so far, and may only lower ``count`` and raise
``per``: an under-estimate costs one more refusal, not one per window. Nothing but a 429
says the budget is larger again, so a rate is forgotten after `SUSPECT_FOR` periods without
a 429 when its count is not the limit its 429 named (learnt while others spent part of the
window, or from a squeeze), after `CONFIRMED_FOR` when it is: the next 429 learns it again.
An answer that reports ``Remaining`` drops it at once (the window is then spent by what
the answers say).

**The interactive reserve.** Background requests (POLL, BULK) leave a share of ``count``
(``interactive_reserve``, at least one, fewer than ``count``) to INTERACTIVE ones within the
log, as ``spend_window``'s reserve does within a window, so awaited calls are not starved by
a job. Its price: background work alone gets ``count - reserve`` per ``per``.

**What it keeps.** The send times of the span's grants (at most `HISTORY`, and only while
the budget is not in *window* mode: nothing for a budget whose answers report what is left),
then, once a rate is learnt, the log (twice ``count`` and `SLACK` more, for the stragglers
of a later 429) and the send times of the span's refused grants. The Redis limiter stores it
with the rest of the budget. A keyed bucket forgotten when idle (its log holding nothing
back) forgets its rate too, as it forgets a window.

**What it earns** (``FakeZapier(rate_limit_headers="on_429")``, ``run_many`` of 50 on a
`FakeClock`, tests/test_learnt.py): 200 runs at 50 per 10 s, 56 429s -> 2 (80 s either
way: the freezes ended with the windows); 300 runs at 150 per 60 s with the 60 s cool-down,
5 429s -> 1, 305 s -> 247 s, 894 requests -> 668 (the poll planner prices reads by the rate
learnt). Clock-aligned 10 s windows joined 6.3 s before a turn: 56 -> 12 (the second burst
is refused whole: the requests waiting when the log first turned). The scenario table's
``*-on429`` rows: no 429 after the first burst, where there were 525 and 300.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Sequence
from typing import Final

__all__ = ["CONFIRMED_FOR", "HISTORY", "HORIZON", "SLACK", "SUSPECT_FOR", "LearntRate", "slide"]

HISTORY: Final = 1024
"""Send times kept before a rate is learnt: a count is learnt up to this many (a burst's
requests all go before its first 429 comes back)."""

HORIZON: Final = 120.0
"""Nor older than this (seconds) before a rate is learnt: twice the Workflow API's minute,
the window of the budgets that answer without ``Remaining``; a longer window is learnt with
a smaller count. What a bucket of a server that never refuses keeps, in memory and in Redis,
is the requests of its last two minutes, at most `HISTORY`."""

SUSPECT_FOR: Final = 10
"""Periods without a 429 after which a rate is forgotten when its count is not the
``X-RateLimit-Limit`` its 429 named (others spent the rest of the window, or it named none):
learnt from a squeeze, it would hold the client below the budget for good."""

CONFIRMED_FOR: Final = 100
"""The same for a rate whose count is the limit the server named: a limit lowered for a
while is not kept for good either, at the price of one 429 every so many periods (Workflow
API, 150 a minute: one per 1.7 hours)."""

SLACK: Final = 64
"""Send times kept beyond twice ``count`` once a rate is learnt: a later 429 is read against
the ``count`` grants before the refused one, and up to ``count`` more (what the log allows
in a period) may have gone before its 429 arrived."""


def slide(log: Sequence[float], capacity: int, per: float, start: float, n: int) -> float:
    """When the ``n``-th next grant may go, never before ``start``, if at most ``capacity``
    may go in any ``per`` seconds and ``log`` holds the send times so far (ascending).

    The ``n``-th waits for the ``capacity``-th grant before it to be ``per`` old; a grant
    still to come (``i >= len(log)``) went ``per`` after the one ``capacity`` before it.
    """
    size = len(log)
    i = size + n - 1 - capacity  # the grant it waits out
    if i < 0:
        return start
    rounds = 0
    if i >= size:
        rounds = (i - size) // capacity + 1
        i -= rounds * capacity
    base = start if i < 0 else max(start, log[i] + per)
    return base + rounds * per


class LearntRate:
    """The rate a budget in open mode learnt from its 429s (see the module docs).

    ``rate`` is ``(count, per)`` once learnt, else None; ``sent`` and ``refused`` the send
    times kept; ``skew`` the wall clock less the monotonic one at the last 429 (to name a
    time in `refusal`).
    """

    __slots__ = ("named", "rate", "refused", "sent", "skew")

    def __init__(self) -> None:
        self.rate: tuple[int, float] | None = None
        self.named: int | None = None  # the X-RateLimit-Limit of the 429 it came from
        self.sent: list[float] = []
        self.refused: list[float] = []
        self.skew = 0.0

    # ------------------------------------------------------------------ inputs

    def granted(self, now: float, since: float) -> None:
        """A grant at ``now``, in the span that began at ``since``."""
        sent, rate = self.sent, self.rate
        bisect.insort_right(sent, now)  # at the end, unless a shared clock stepped back
        drop = len(sent) - (HISTORY if rate is None else 2 * rate[0] + SLACK)
        if rate is None:  # an earlier span's grants were counted by no window of this one
            drop = max(drop, bisect.bisect_left(sent, max(since, now - HORIZON)))
        if drop > 0:
            del sent[:drop]

    def ungranted(self, sent: float) -> None:
        """A grant at ``sent`` was not sent after all."""
        with contextlib.suppress(ValueError):  # it may have been trimmed
            self.sent.remove(sent)

    def new_span(self) -> None:
        """A freeze ended (or a window ran out): what follows is another span."""
        self.refused.clear()

    def learn(
        self,
        sent: float,
        *,
        since: float,
        retry_at: float,
        limit: int | None,
        margin: float,
        declared: float | None,
        wall: float,
    ) -> None:
        """A 429 in open mode to the grant sent at ``sent``, in the span that began at
        ``since``: learn a rate, or tighten the one learnt (a 429 never loosens it).

        Args:
            sent: The refused grant's send time.
            since: When its span began.
            retry_at: The time the 429 named (monotonic).
            limit: Its ``X-RateLimit-Limit``, if any.
            margin: Its round trip: the skew between send and arrival times.
            declared: The window length configured, if any.
            wall: The wall clock less the monotonic one (to name times in `refusal`).
        """
        history = self.sent
        lo = bisect.bisect_left(history, since)
        hi = bisect.bisect_right(history, sent)
        before = hi - lo - (1 if hi > lo and history[hi - 1] == sent else 0)
        counted = before - sum(1 for t in self.refused if since <= t <= sent)
        self.refused.append(sent)
        rate = self.rate
        count = counted if limit is None else min(limit, counted)
        if rate is not None:
            count = min(count, rate[0])
        if count < 1:
            return  # nothing of ours was counted before it: nothing to learn
        derived = retry_at - history[lo + before - count] + margin
        if rate is None:
            per = derived if declared is None else declared + margin
        else:
            per = max(rate[1], derived)
        if math.isfinite(per) and per > 0:
            self.rate, self.skew, self.named = (count, per), wall, limit

    def expired(self, now: float, last_429: float) -> bool:
        """Whether the rate is to be forgotten ``now``, the last 429 having come at
        ``last_429`` (see `SUSPECT_FOR`, `CONFIRMED_FOR`)."""
        rate = self.rate
        if rate is None:
            return False
        periods = CONFIRMED_FOR if rate[0] == self.named else SUSPECT_FOR
        return now - last_429 > periods * rate[1]

    def forget(self) -> None:
        """Forget the rate (the send times stay: the next 429 learns from them)."""
        self.rate = self.named = None

    # ------------------------------------------------------------------ outputs

    def capacity(self, interactive: bool, share: float) -> int:
        """Grants a priority may have in the log: background ones leave the reserve."""
        assert self.rate is not None
        count = self.rate[0]
        if interactive or share <= 0:
            return count
        return count - min(max(1, math.ceil(share * count)), count - 1)

    def earliest(self, start: float, n: int, interactive: bool, share: float) -> float:
        """When the ``n``-th next grant of a priority may go by the learnt rate, never before
        ``start`` (``start`` when none is learnt)."""
        rate = self.rate
        if rate is None:
            return start
        return slide(self.sent, self.capacity(interactive, share), rate[1], start, n)

    def refusal(self, now: float, cap: float) -> float | None:
        """The wall-clock time the next grant may go, when that is more than ``cap``
        seconds away (the rate came from a 429 that named a wait past it); else None."""
        rate = self.rate
        if rate is None:
            return None
        at = slide(self.sent, rate[0], rate[1], now, 1)
        return at + self.skew if at - now > cap else None

    def left(self, now: float) -> int | None:
        """Grants the log allows now (None: no rate learnt)."""
        rate = self.rate
        if rate is None:
            return None
        recent = len(self.sent) - bisect.bisect_right(self.sent, now - rate[1])
        return max(rate[0] - recent, 0)

    def idle(self, now: float) -> bool:
        """Whether the log holds back nothing now (forgetting it loses only the rate)."""
        rate = self.rate
        return rate is None or not self.sent or self.sent[-1] <= now - rate[1]

"""What one client knows of one server-side rate window, and where windows end.

Pure data for `zapier_async._budget.Budget` (see its module docs, "Where a window ends",
"Learning the boundary" and "A window's length known beforehand"): `BudgetWindow` is what
the answers of one window said, `LearntBoundary` where windows have been seen to end relative
to two references. No I/O, no clock: times are the budget's monotonic seconds.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = ["BudgetWindow", "LearntBoundary"]

_SCORE_WEIGHT: Final = 0.5
_SCORE_MARGIN: Final = 0.2


class BudgetWindow:
    """What the answers of one server-side window said."""

    __slots__ = (
        "anchor",
        "anchor_sent",
        "arrived",
        "arrived_min",
        "beyond_at",
        "first_sent",
        "headers_hi",
        "hi",
        "ignored",
        "last_member_sent",
        "length_hi",
        "limit",
        "lo",
        "opened_at",
        "precision",
    )

    def __init__(
        self,
        limit: int | None,
        anchor: int,
        sent: float,
        opened: int,
        remaining: int,
        bounds: tuple[float, float, float],
        beyond_at: float | None,
    ) -> None:
        self.limit = limit
        self.lo, self.hi, self.precision = bounds  # lo <= end <= hi; coarsest Reset step
        self.anchor = anchor  # available = anchor - grants
        self.anchor_sent = sent
        # Answers are numbered in arrival order (the budget's ``completed`` count), and a
        # grant knows how many had arrived before it: no tie between equal times. A request
        # granted after answer `opened_at` arrived comes from this window or a later one.
        self.opened_at = opened
        # Arrival numbers and the running minimum of Remaining, to recognise a later window.
        self.arrived = [opened]
        self.arrived_min = [remaining]
        # Latest send time of a request known to have landed here: the end is later.
        self.last_member_sent = sent
        # The window's first request's send time, if the opening answer was it.
        self.first_sent = sent if limit is not None and remaining == limit - 1 else None
        # The wall-clock reset named when every answer put it past max_server_wait.
        self.beyond_at = beyond_at
        self.ignored = 0  # answers not taken in (sent before the window was known)
        # With the window's length known: the end its answers allow by that length alone,
        # and the end their headers allow (``hi`` is the earlier of the two).
        self.length_hi: float | None = None
        self.headers_hi = self.hi

    def min_remaining_before(self, completions: int) -> int | None:
        """The lowest Remaining among the first ``completions`` answers (those that arrived
        before a grant)."""
        i = bisect.bisect_right(self.arrived, completions) - 1
        return self.arrived_min[i] if i >= 0 else None


class LearntBoundary:
    """Where windows end relative to two references, learnt from the windows seen.

    ``first``: the send time of the window's first request (a window that starts with its
    first request ends a fixed time after it, however coarsely ``Reset`` is written). ``hi``:
    the latest end the ``Reset`` values allow (clock-aligned windows, deltas rounded the same
    way every time). Each keeps an interval that only shrinks, except that its early side
    slides a little earlier every window so an earlier end is found again (a contradiction
    restarts it), and a score: how often the window had ended by the end of its interval.
    """

    __slots__ = ("first", "first_score", "hi", "hi_score")

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None
        self.hi: tuple[float, float] | None = None
        self.first_score = 0.0
        self.hi_score = 0.0

    @staticmethod
    def _predict(
        w: BudgetWindow, ref: float | None, offset: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        if ref is None or offset is None:
            return None
        start, end = max(ref + offset[0], w.lo), min(ref + offset[1], w.hi)
        return (start, end) if start <= end else None  # contradicts the bounds: not this one

    def expect(self, w: BudgetWindow) -> tuple[float, float] | None:
        """Where the better reference puts the end of ``w``; None: nothing learnt."""
        first = self._predict(w, w.first_sent, self.first)
        hi = self._predict(w, w.hi, self.hi)
        if first is None or hi is None:
            return first or hi
        lead = self.first_score - self.hi_score
        if lead > _SCORE_MARGIN:
            return first
        if lead < -_SCORE_MARGIN:
            return hi
        return min(first[0], hi[0]), max(first[1], hi[1])  # no clear winner: cover both

    def calibrate(self, old: BudgetWindow, turned_by: float, drift: float) -> None:
        """``old`` ended after its last known member was sent, by ``turned_by``."""
        low = old.last_member_sent
        high = max(turned_by, low)
        for name, ref in (("first", old.first_sent), ("hi", old.hi)):
            if ref is None:
                continue
            learnt: tuple[float, float] | None = getattr(self, name)
            predicted = self._predict(old, ref, learnt)
            if predicted is not None:
                # The costly miss: a request sent at or after the predicted end still landed
                # in the old window, so every boundary probe would have been too early.
                hit = float(low < predicted[1])
                score = getattr(self, name + "_score")
                setattr(self, name + "_score", score + _SCORE_WEIGHT * (hit - score))
            seen = (low - ref, high - ref)
            if learnt is not None:
                merged = (max(learnt[0] - drift, seen[0]), min(learnt[1], seen[1]))
                if merged[0] <= merged[1]:
                    seen = merged
            setattr(self, name, seen)

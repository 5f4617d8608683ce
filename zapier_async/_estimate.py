"""The estimate and the plan of `_polling.AdaptivePolling`: pure functions of numbers.

- `turnbull`: the duration distribution from interval-censored observations ``(lo, hi]``;
- `plan_polls`: the poll times minimising ``cost * E[polls] + E[lag]`` for it;
- `expect`: what following a plan costs (expected polls, lag and duration);
- `quantise`, `trim_tail`, `cdf`: the grid endpoints live on, the tail left to a fallback,
  and ``F(t)``.

See `zapier_async._polling`'s module documentation for what they are for and why.
"""

from __future__ import annotations

import bisect
import math

__all__ = [
    "FLOOR",
    "RESOLUTION",
    "cdf",
    "expect",
    "plan_polls",
    "quantise",
    "trim_tail",
    "turnbull",
]

RESOLUTION = 0.02  # endpoints are rounded to 2% of their value ...
FLOOR = 0.002  # ... or 2 ms, whichever is larger
_MAX_CANDIDATES = 64  # poll times the plan chooses from (the plan is O(candidates^2))


_LOG_STEP = math.log1p(RESOLUTION)
_LINEAR_BELOW = FLOOR / RESOLUTION  # below this, a fixed step; above, a geometric grid


def quantise(t: float) -> float:
    """`t` on a fixed grid (2 ms steps up to 0.1 s, then 2% steps), so endpoints coincide."""
    if t <= 0:
        return 0.0
    if t < _LINEAR_BELOW:
        return round(t / FLOOR) * FLOOR
    return _LINEAR_BELOW * math.exp(round(math.log(t / _LINEAR_BELOW) / _LOG_STEP) * _LOG_STEP)


def turnbull(
    intervals: list[tuple[float, float]], *, iterations: int = 6
) -> tuple[list[float], list[float]]:
    """The NPMLE of a distribution from interval-censored observations ``(lo, hi]``.

    Args:
        intervals: One ``(lo, hi)`` per observation, ``lo < hi``; ``hi`` may be infinite
            (a run still going at ``lo``).
        iterations: Self-consistency iterations from a flat start (few on purpose: see below).

    Returns:
        ``(bounds, masses)``: the cells ``(bounds[i], bounds[i + 1]]`` and the probability mass
        of each (they sum to 1).
    """
    bounds = sorted({b for iv in intervals for b in iv})
    cells = len(bounds) - 1
    index = {b: i for i, b in enumerate(bounds)}
    spans = [(index[lo], index[hi]) for lo, hi in intervals]
    n = len(spans)
    # Start from a flat density over the support, and stop after a few iterations: the exact
    # NPMLE piles all mass onto the narrowest cells (spikes between two nearby endpoints),
    # which would make the plan poll at every spike; a few steps keep it smooth.
    finite = bounds[:-1] if math.isinf(bounds[-1]) else bounds
    width = (finite[-1] - finite[0]) or 1.0
    masses = [(finite[c + 1] - finite[c]) / width for c in range(len(finite) - 1)]
    if len(finite) < len(bounds):  # right-censored runs: some mass beyond every end seen
        beyond = sum(1 for _, hi in intervals if math.isinf(hi)) / len(intervals)
        masses = [m * (1.0 - beyond) for m in masses] + [beyond]
    for _ in range(iterations):
        # new[c] = masses[c] * sum over the intervals covering c of 1 / (their mass), summed
        # with prefix sums and a difference array: O(n + cells) per iteration.
        prefix = [0.0]
        for m in masses:
            prefix.append(prefix[-1] + m)
        weights = [0.0] * (cells + 1)
        for a, b in spans:
            total = prefix[b] - prefix[a]
            w = 1.0 / total if total > 0.0 else 0.0
            weights[a] += w
            weights[b] -= w
        running = 0.0
        new = []
        for c in range(cells):
            running += weights[c]
            new.append(masses[c] * running / n)
        total = sum(new)
        masses = [m / total for m in new] if total > 0.0 else [1.0 / cells] * cells
    return bounds, masses


def plan_polls(bounds: list[float], masses: list[float], cost: float) -> list[float]:
    """Poll times minimising ``cost * E[polls] + E[mean lag]`` for a cell distribution.

    Mass is taken as uniform within each cell. Candidate poll times are the cell boundaries
    and cell midpoints; the last poll is at the last boundary, so every run seen is caught.

    Args:
        bounds: Cell boundaries, ascending (see `turnbull`).
        masses: Probability of each cell. A last cell ending at infinity (runs still going)
            is left to the fallback cadence: its mass only counts as runs polled on.
        cost: Seconds of mean lag that one poll is worth.

    Returns:
        The poll times, ascending, in seconds after the create.
    """
    if math.isinf(bounds[-1]):
        bounds, masses = bounds[:-1], masses[:-1]
    xs = [0.0]
    fs = [0.0]
    areas = [0.0]  # integral of F from 0 to xs[k]
    f = 0.0
    previous = 0.0
    if bounds[0] > 0.0:
        # No mass before the first boundary: F stays 0 up to it.
        xs.append(bounds[0])
        fs.append(0.0)
        areas.append(0.0)
        previous = bounds[0]
    for i, mass in enumerate(masses):
        lo, hi = bounds[i], bounds[i + 1]
        for x, g in (((lo + hi) / 2, f + mass / 2), (hi, f + mass)):
            areas.append(areas[-1] + (x - previous) * (fs[-1] + g) / 2)
            xs.append(x)
            fs.append(g)
            previous = x
        f += mass
    if len(xs) > _MAX_CANDIDATES:
        # Thin by index: candidates are densest where the data are, so resolution stays there.
        step = math.ceil((len(xs) - 1) / (_MAX_CANDIDATES - 1))
        keep = [*range(0, len(xs) - 1, step), len(xs) - 1]
        xs = [xs[k] for k in keep]
        fs = [fs[k] for k in keep]
        areas = [areas[k] for k in keep]
    count = len(xs)
    best = [math.inf] * count
    back = [0] * count
    best[0] = 0.0
    for j in range(1, count):
        xj, aj = xs[j], areas[j]
        bj = math.inf
        bi = 0
        for i in range(j):
            if best[i] == math.inf:
                continue
            fi = fs[i]
            c = best[i] + cost * (1.0 - fi) + (aj - areas[i]) - fi * (xj - xs[i])
            if c < bj:
                bj, bi = c, i
        best[j], back[j] = bj, bi
    plan: list[float] = []
    j = count - 1
    while j > 0:
        plan.append(xs[j])
        j = back[j]
    plan.reverse()
    # Drop polls that would catch nothing (a zero-mass stretch before them).
    return [t for k, t in enumerate(plan) if k == len(plan) - 1 or t > 0.0]


def trim_tail(
    estimate: tuple[list[float], list[float]], tail: float
) -> tuple[list[float], list[float]]:
    """The estimate with its last `tail` of mass moved beyond every end (to infinity)."""
    bounds, masses = estimate
    total = 0.0
    for i, m in enumerate(masses):
        total += m
        if total >= 1.0 - tail and i < len(masses) - 1:
            return [*bounds[: i + 2], math.inf], [*masses[: i + 1], 1.0 - total]
    return bounds, masses


def cdf(bounds: list[float], masses: list[float], t: float) -> float:
    """F(t) of a cell distribution (mass uniform within each finite cell)."""
    total = 0.0
    for i, m in enumerate(masses):
        lo, hi = bounds[i], bounds[i + 1]
        if t >= hi:
            total += m
        elif t > lo and math.isfinite(hi):
            total += m * (t - lo) / (hi - lo)
            break
        else:
            break
    return min(total, 1.0)


def expect(
    bounds: list[float], masses: list[float], plan: tuple[float, ...] | list[float]
) -> tuple[float, float, float]:
    """``(E[polls], E[lag], E[duration])`` of following `plan` for a cell distribution.

    Mass is uniform within a cell; a run outliving the plan is counted one poll more and
    a lag of a twentieth of the plan's length (the fallback cadence's first step is a tenth).
    """
    polls = lag = mean = 0.0
    last = plan[-1] if plan else 0.0
    for i, m in enumerate(masses):
        if m <= 0.0:
            continue
        lo, hi = bounds[i], bounds[i + 1]
        if math.isinf(hi):
            mean += m * 1.1 * max(lo, last)
            polls += m * (len(plan) + 2)
            lag += m * 0.1 * last
            continue
        mean += m * (lo + hi) / 2
        a = lo
        k = bisect.bisect_left(plan, a) if a > 0.0 else 0
        while a < hi:
            # The stretch (a, b] is caught by plan[k], the first poll at or after b.
            while k < len(plan) and plan[k] <= a:
                k += 1
            if k >= len(plan):
                share = m * (hi - a) / (hi - lo)
                polls += share * (len(plan) + 1)
                lag += share * 0.05 * last
                break
            b = min(hi, plan[k])
            share = m * (b - a) / (hi - lo) if hi > lo else m
            polls += share * (k + 1)
            lag += share * (plan[k] - (a + b) / 2)
            a = b
            if b == hi:
                break
    return polls, lag, mean

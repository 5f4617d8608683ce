"""What ANY deterministic client-side poll schedule can achieve, for durations ~ U[a, b].

A schedule is a list of poll times ``t_1 < t_2 < ...`` after the create. A run of duration D
is detected at the first ``t_i >= D`` after ``i`` polls, with lag ``t_i - D`` (zero network
latency). For D uniform on ``[a, b]`` both expectations have closed forms: with
``s_0 = a`` and segments ``(s_{i-1}, s_i]`` clipped to ``[a, b]``,

    E[polls] = sum_i i * len_i / (b - a)        E[lag] = sum_i len_i^2 / (2 (b - a))

(polls at or before ``a`` catch nothing and only add one poll to every run).

Minimising ``E[polls] + E[lag] / cost`` gives segments that shrink linearly (``len_i -
len_{i+1} = cost``): early polls are cheap (every run pays them anyway), so they are spaced
widely, and later ones tightly. Scanning ``cost`` traces the lower convex frontier "fewest
polls per run at a given mean lag"; `frontier` does that with the same planner the library
uses (`zapier_async._polling.plan_polls`) on the exact distribution.

Run: ``python -m benchmarks.polling_math [--low 0.2] [--high 1.5] [--interval 0.5]``
"""

from __future__ import annotations

import argparse

from zapier_async._polling import plan_polls

from ._common import fmt_table


def evaluate(times: list[float], a: float, b: float) -> tuple[float, float]:
    """(E[polls], E[lag]) of poll `times` for D ~ U[a, b]; the last time must be >= b."""
    width = b - a
    polls = lag = 0.0
    covered = a  # runs ending up to here were already detected
    previous_t = 0.0
    for t in sorted(times):
        polls += 1.0 if previous_t <= a else max(0.0, (b - previous_t) / width)
        hi = min(t, b)
        if hi > covered:
            seg = hi - covered
            lag += (seg * (t - covered) - seg * seg / 2) / width
            covered = hi
        previous_t = t
        if t >= b:
            break
    return polls, lag


def fixed(interval: float, a: float, b: float, *, first: float) -> list[float]:
    """Poll times of a fixed-interval loop whose first poll is at `first`."""
    times = [first]
    while times[-1] < b:
        times.append(times[-1] + interval)
    return times


def frontier(a: float, b: float, cells: int = 260) -> list[tuple[float, float, float, list[float]]]:
    """(cost, E[polls], E[lag], plan) for a scan of the planner's poll cost."""
    bounds = [a + (b - a) * k / cells for k in range(cells + 1)]
    masses = [1.0 / cells] * cells
    out = []
    for cost in (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0):
        plan = plan_polls(bounds, masses, cost)
        polls, lag = evaluate(plan, a, b)
        out.append((cost, polls, lag, plan))
    return out


def best_at_lag(a: float, b: float, max_lag: float) -> tuple[float, float, list[float]]:
    """The fewest mean polls of a schedule with mean lag <= `max_lag` (on the frontier)."""
    bounds = [a + (b - a) * k / 260 for k in range(261)]
    masses = [1.0 / 260] * 260
    lo, hi = 0.001, 2.0
    best: tuple[float, float, list[float]] | None = None
    for _ in range(40):  # bisect the cost: lag grows with it
        mid = (lo + hi) / 2
        plan = plan_polls(bounds, masses, mid)
        polls, lag = evaluate(plan, a, b)
        if lag <= max_lag:
            best = (polls, lag, plan)
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best


def analysis(a: float = 0.2, b: float = 1.5, interval: float = 0.5) -> str:
    """The Markdown section of results.md on what the math allows."""
    cts = evaluate(fixed(interval, a, b, first=0.0), a, b)
    stc = evaluate(fixed(interval, a, b, first=interval), a, b)
    rows: list[list[object]] = [
        [f"baseline check-then-sleep ({interval} s)", cts[0], cts[1], "-", "-"],
        [f"baseline sleep-then-check ({interval} s)", stc[0], stc[1], "-", "-"],
    ]
    polls, lag, plan = best_at_lag(a, b, cts[1])
    rows.append(
        [
            "best possible schedule at the same mean lag",
            polls,
            lag,
            f"{1 - polls / cts[0]:.0%}",
            f"{1 - polls / stc[0]:.0%}",
        ]
    )
    need_stc = 0.7 * stc[0]
    lines = [
        "## Analysis: what any deterministic poll schedule can achieve",
        "",
        f"Durations uniform on [{a}, {b}] s, zero latency, {interval} s fixed interval. "
        "A schedule is a list of poll times after the create; E[polls] = sum_i P(D > t_(i-1)), "
        "E[lag] = sum over segments of len^2 / (2 (b - a)). Minimising "
        "E[polls] + E[lag] / cost gives segments that shrink linearly by `cost` from one poll "
        "to the next (every run pays the early polls, few pay the late ones), which is what "
        "`zapier_async._polling.plan_polls` computes.",
        "",
        fmt_table(
            ("schedule", "polls/run", "mean lag s", "fewer polls vs c-t-s", "vs s-t-c"), rows
        ),
        "",
        f"Best schedule at that lag: polls at {', '.join(f'{t:.2f}' for t in plan)} s.",
        "",
        f"- Against **check-then-sleep** ({cts[0]:.2f} polls, its first poll at t=0 can never "
        f"find a run of >= {a} s done) the target (>= 30% fewer polls at equal lag) is "
        f"reachable: the optimum is {1 - polls / cts[0]:.0%} fewer.",
        f"- Against **sleep-then-check** ({stc[0]:.2f} polls) it is **not reachable by any "
        f"client-side schedule**: 30% fewer would be {need_stc:.2f} polls/run at "
        f"<= {stc[1]:.3f} s mean lag, and the best possible is {polls:.2f} "
        f"({1 - polls / stc[0]:.0%} fewer). With two polls at most, the least mean lag is "
        f"{(b - a) / 4:.3f} s (two equal segments). Fewer polls at that lag need "
        "information the client does not have: server-side waiting (the Actions API v2 "
        "`wait_seconds` long poll: one request, lag ~0) or callbacks (zero polls).",
        "",
        "Frontier (the planner's cost scanned):",
        "",
        fmt_table(
            ("cost (s of lag per poll)", "polls/run", "mean lag s", "poll times s"),
            [[c, p, lg, ", ".join(f"{t:.2f}" for t in pl)] for c, p, lg, pl in frontier(a, b)],
        ),
        "",
        "A learnt plan does a little worse than this optimum: it learns from censored "
        "observations (a run is only known to have ended between two polls), and each run's "
        "plan is jittered by +-10% so that the estimate can see between planned polls.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.polling_math", description=__doc__)
    parser.add_argument("--low", type=float, default=0.2)
    parser.add_argument("--high", type=float, default=1.5)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(analysis(args.low, args.high, args.interval))


if __name__ == "__main__":
    main()

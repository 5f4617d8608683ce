"""Scenario 3: rate-limited bulk: requests, 429s and wall time against the theoretical minimum.

The emulator (own process, `_server`) enforces a fixed-window limit (default 50 requests per
2 s) and sends the three `X-RateLimit-*` headers. A job of N runs (durations U[0.2, 1.5] s)
is fanned out by the library (`client.run` + ``await handle``, waiting on the budget) and by
the hand-written baseline (sleep ``Retry-After`` on 429), in both loop shapes. The emulator
counts every request it saw (creates, polls, refused ones) and the 429s it answered.

Wall time is judged against the physical minimum of the JOB, not of the requests a client
chose to send (issue #15): ``max((2 * N - L) / (L / W), N * E[duration] / C)``, the least
any polling client needs (one create and one poll per run; the first window's L requests
are free at t = 0; C = N here, everything is submitted at once). ``own requests / rate`` is
also shown, clearly apart: it is what the client's own request count would take at the
allowed rate, and a client that sends extra polls gets a larger one, so it cannot judge
them (the figure the #7 target was set on, kept for comparison).

Run: ``python -m benchmarks.ratelimited [--runs 200] [--limit 50] [--window 2]
[--reset-formats epoch,delta,iso]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import baseline
from ._common import Report, Target, library_run_all, make_client
from ._server import emulator

ARMS = ("library", *baseline.SHAPES)


async def measure_one(
    arm: str,
    *,
    runs: int = 200,
    limit: int = 50,
    window: float = 2.0,
    reset_format: str = "epoch",
    durations: tuple[float, float] = (0.2, 1.5),
    seed: int = 1,
) -> dict[str, Any]:
    inputs = [{"i": i} for i in range(runs)]
    async with emulator(
        seed=seed,
        durations=list(durations),
        rate_limit=[limit, window],
        reset_format=reset_format,
    ) as emu:
        started = time.perf_counter()
        if arm == "library":
            async with make_client(emu.url) as client:
                await library_run_all(client, inputs, concurrency=runs)
        else:
            await baseline.run_all(
                emu.url,
                inputs,
                concurrency=runs,
                shape=arm,  # type: ignore[arg-type]
            )
        wall = time.perf_counter() - started
        stats = await emu.stats()
    rate = limit / window
    return {
        "requests": stats["requests"],
        "polls_per_run": stats["requests_by_endpoint"]["poll"] / runs,
        "429s": stats["rate_limited"],
        "duplicates": stats["duplicate_submissions"],
        "wall": wall,
        "own": stats["requests"] / rate,
        "minimum": physical_minimum(runs, limit, window, durations, concurrency=runs),
    }


def physical_minimum(
    runs: int,
    limit: int,
    window: float,
    durations: tuple[float, float],
    *,
    concurrency: int,
    requests_per_run: int = 2,
) -> float:
    """``max((k*N - L) / (L / W), N * E[duration] / C)``: no client finishes the job sooner."""
    mean = sum(durations) / 2
    budget = (requests_per_run * runs - limit) / (limit / window)
    return max(budget, runs * mean / concurrency, 0.0)


async def measure(
    *,
    runs: int = 200,
    limit: int = 50,
    window: float = 2.0,
    reset_formats: tuple[str, ...] = ("epoch",),
) -> Report:
    report = Report(
        number=3,
        title=f"Rate-limited bulk ({limit} requests per {window:g} s window)",
        method=(
            f"{runs} runs, all submitted at once, durations U[0.2, 1.5] s. 'physical minimum' "
            "= max((2N - L) / (L / W), N * E[d] / C): the least any polling client needs "
            "(one create and one poll per run, the first window free). 'own requests / rate' "
            "= the client's own requests at the allowed rate (it grows with every extra poll, "
            "so it cannot judge them: shown apart, for comparison with #7)."
        ),
        headers=(
            "client",
            "reset",
            "requests",
            "polls/run",
            "429s",
            "req/run",
            "wall s",
            "physical minimum s",
            "wall/physical minimum",
            "own requests / rate s",
            "wall/(own requests / rate)",
        ),
    )
    for fmt in reset_formats:
        results = {}
        for arm in ARMS:
            results[arm] = r = await measure_one(
                arm, runs=runs, limit=limit, window=window, reset_format=fmt
            )
            report.rows.append(
                (
                    arm if arm == "library" else f"baseline {arm}",
                    fmt,
                    r["requests"],
                    r["polls_per_run"],
                    r["429s"],
                    r["requests"] / runs,
                    r["wall"],
                    r["minimum"],
                    r["wall"] / r["minimum"],
                    r["own"],
                    r["wall"] / r["own"],
                )
            )
        lib = results["library"]
        report.targets.append(
            Target(
                "3",
                f"zero 429s after the first response ({fmt} reset)",
                lib["429s"] == 0,
                f"{lib['429s']} 429s in all",
            )
        )
        report.targets.append(
            Target(
                "3",
                f"wall time <= 1.10x the physical minimum ({fmt} reset)",
                lib["wall"] <= 1.10 * lib["minimum"],
                f"{lib['wall'] / lib['minimum']:.3f}x; "
                f"{lib['wall'] / lib['own']:.3f}x its own requests / rate",
            )
        )
        fastest = min(results[s]["wall"] for s in baseline.SHAPES)
        report.notes.append(
            f"{fmt}: library wall time {lib['wall']:.1f} s vs the faster baseline "
            f"{fastest:.1f} s ({lib['wall'] / fastest:.2f}x); the baselines collected "
            + ", ".join(f"{results[s]['429s']} ({s})" for s in baseline.SHAPES)
            + " 429s."
        )
    report.notes.append(
        "The physical minimum counts the first window's L requests as free at t = 0 (a fixed "
        "window need not elapse after the last request), which is how the baselines can "
        "come close to it while collecting hundreds of 429s: every refused request is one, "
        "which this emulator does not punish, but the Partner API answers with a 60 s "
        "cool-down. Issue #15 measures this on realistic budgets, beside the hand-written "
        "loop: scenario 6 (`benchmarks.budget`)."
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ratelimited", description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--reset-formats", default="epoch,delta,iso")
    args = parser.parse_args(argv)
    report = asyncio.run(
        measure(
            runs=args.runs,
            limit=args.limit,
            window=args.window,
            reset_formats=tuple(f for f in args.reset_formats.split(",") if f),
        )
    )
    print(report.text())
    for note in report.notes:
        print("  " + note)


if __name__ == "__main__":
    main()

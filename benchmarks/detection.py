"""Scenario 2: polls per run and detection lag, run durations drawn from U[0.2, 1.5] s.

Detection lag is measured, not estimated: the emulator (own process, `_server`) records when
each run ends on the server (`RunRecord.ends_at`, on `time.monotonic()`, the machine-wide
``CLOCK_MONOTONIC``), and the client side records `time.monotonic()` when the caller's
``await`` returned the finished run. Lag = resolved - ends_at. Polls per run are the
emulator's own count of GETs per run.

The library learns each action's durations (`zapier_async._polling`), so its first runs use
the plain cadence: the table shows all runs and, separately, the second half (warm). The
baselines do not learn, so both halves are alike for them.

Run: ``python -m benchmarks.detection [--runs 400] [--concurrency 100] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from . import baseline
from ._common import Report, Target, library_run_all, make_client, median, percentile
from ._server import emulator

ARMS = ("library", *baseline.SHAPES)
DURATIONS = (0.2, 1.5)


async def _one_arm(arm: str, runs: int, concurrency: int, seed: int) -> dict[str, Any]:
    inputs = [{"i": i} for i in range(runs)]
    async with emulator(durations=list(DURATIONS), seed=seed) as emu:
        if arm == "library":
            async with make_client(emu.url) as client:
                results = await library_run_all(client, inputs, concurrency=concurrency)
        else:
            results = await baseline.run_all(
                emu.url,
                inputs,
                concurrency=concurrency,
                shape=arm,  # type: ignore[arg-type]
            )
        records = {row[0]: row for row in await emu.runs()}
    resolved = {run_id: t for run_id, _status, t in results}
    # In creation order, so that "the second half" means the runs started later.
    ordered = sorted(records.values(), key=lambda row: row[1])
    lags = [resolved[row[0]] - row[2] for row in ordered]
    polls = [row[3] for row in ordered]
    half = len(ordered) // 2
    return {"lags": lags, "polls": polls, "half": half}


def _summary(samples: list[dict[str, Any]], *, warm: bool) -> dict[str, float]:
    polls, means, p95s = [], [], []
    for s in samples:
        lags = s["lags"][s["half"] :] if warm else s["lags"]
        pl = s["polls"][s["half"] :] if warm else s["polls"]
        polls.append(statistics.fmean(pl))
        means.append(statistics.fmean(lags))
        p95s.append(percentile(lags, 95))
    return {"polls": median(polls), "lag": median(means), "p95": median(p95s)}


async def measure(*, runs: int = 400, concurrency: int = 100, repeats: int = 2) -> Report:
    samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for rep in range(repeats):
        for arm in ARMS:
            samples[arm].append(await _one_arm(arm, runs, concurrency, seed=rep + 1))
    report = Report(
        number=2,
        title="Polls per run and detection lag, durations U[0.2, 1.5] s",
        method=(
            f"{runs} runs, {concurrency} in flight, median of {repeats} interleaved repeats. "
            "Lag = caller's `await` returned - `RunRecord.ends_at` (server truth, same "
            "monotonic clock); polls counted by the emulator. 'warm' = the second half of "
            "the runs (after the library has learnt the action)."
        ),
        headers=(
            "client",
            "polls/run",
            "mean lag s",
            "p95 lag s",
            "warm polls/run",
            "warm mean lag s",
            "warm p95 lag s",
        ),
    )
    summary = {
        arm: (_summary(samples[arm], warm=False), _summary(samples[arm], warm=True)) for arm in ARMS
    }
    for arm in ARMS:
        full, warm = summary[arm]
        name = arm if arm == "library" else f"baseline {arm}"
        report.rows.append(
            (name, full["polls"], full["lag"], full["p95"], warm["polls"], warm["lag"], warm["p95"])
        )
    lib_full, lib_warm = summary["library"]
    for shape in baseline.SHAPES:
        b_full, b_warm = summary[shape]
        for label, lib, base in (("all runs", lib_full, b_full), ("warm", lib_warm, b_warm)):
            fewer = 1 - lib["polls"] / base["polls"]
            report.targets.append(
                Target(
                    "2",
                    f">= 30% fewer polls at <= mean lag vs baseline {shape} ({label})",
                    fewer >= 0.30 and lib["lag"] <= base["lag"],
                    f"{fewer:.0%} fewer polls, lag {lib['lag']:.3f} vs {base['lag']:.3f} s",
                )
            )
    report.notes.append(
        "Against sleep-then-check the 30% target is out of reach of any client-side "
        "schedule (see the analysis section): the best possible at its lag is ~16% fewer."
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(
        asyncio.run(
            measure(runs=args.runs, concurrency=args.concurrency, repeats=args.repeats)
        ).text()
    )


if __name__ == "__main__":
    main()

"""Scenario 4: 10,000 runs in flight: memory per run, event-loop lag, tasks alive.

Each client runs in a fresh child process (so that ``ru_maxrss``, the peak RSS, is its own),
against the emulator in another process (`_server`) whose runs last 10 minutes, so all of
them stay in flight. The child:

1. starts a loop-lag probe (a coroutine asking to wake every 10 ms, recording how late it
   fires: see `_common.LoopLagProbe`) and reads its RSS (``/proc/self/statm``);
2. starts N runs: the library with 100 worker coroutines calling `client.run()` and keeping
   the handles (no task per run: the client's one poller follows them all); the baseline
   with `baseline.run_all` (one coroutine per run, as users write it);
3. waits until the emulator has created all N runs, then keeps following them for a
   steady-state window;
4. reports the peak RSS minus the RSS before the runs, divided by N; the probe's p99 lag
   during the steady window (and during the ramp-up); the tasks alive, and among them the
   library's poller tasks (named ``zapier_async-poller``); and the polls the emulator saw.

Run: ``python -m benchmarks.scale [--runs 10000] [--steady 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import zapier_async as za

from . import baseline
from ._common import (
    LoopLagProbe,
    Report,
    Target,
    make_client,
    percentile,
    rss_now_kb,
    rss_peak_kb,
)
from ._server import Emulator, emulator

ARMS = ("library", *baseline.SHAPES)
POLLER_TASK_NAME = "zapier_async-poller"


async def _wait_created(emu: Emulator, runs: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await emu.stats())["runs_created"] >= runs:
            return time.monotonic()
        await asyncio.sleep(0.25)
    raise TimeoutError(f"not all {runs} runs were created within {timeout} s")


async def child(
    arm: str, url: str, admin: str, runs: int, steady: float, polls: int | None = None
) -> dict[str, Any]:
    emu = Emulator(None, url, admin)  # type: ignore[arg-type]  # only its admin side door
    probe = LoopLagProbe(0.010)
    probe.start()
    await asyncio.sleep(0.2)
    rss_before = rss_now_kb()
    started = time.monotonic()
    out: dict[str, Any] = {}
    if arm == "library":
        kwargs = {} if polls is None else {"max_concurrent_polls": polls}
        async with make_client(url, **kwargs) as client:
            handles: list[za.RunHandle] = []
            items = iter(range(runs))

            async def worker() -> None:
                for i in items:
                    handles.append(
                        await client.run("core:bench", authentication=None, inputs={"i": i})
                    )

            ramp = probe.mark()
            creators = asyncio.gather(*(worker() for _ in range(100)))
            created = await _wait_created(emu, runs, timeout=120)
            await creators
            out["ramp_lag"] = probe.since(ramp)
            mark = probe.mark()
            polls_before = (await emu.stats())["polls"]
            await asyncio.sleep(steady)
            out["steady_lag"] = probe.since(mark)
            out["polls"] = (await emu.stats())["polls"] - polls_before
            out["in_flight"] = client.in_flight
            tasks = asyncio.all_tasks()
            out["tasks"] = len(tasks)
            out["pollers"] = sum(1 for t in tasks if t.get_name() == POLLER_TASK_NAME)
            out["rss_peak"] = rss_peak_kb()
    else:
        ramp = probe.mark()
        job = asyncio.ensure_future(
            baseline.run_all(url, [{"i": i} for i in range(runs)], concurrency=runs, shape=arm)  # type: ignore[arg-type]
        )
        created = await _wait_created(emu, runs, timeout=120)
        out["ramp_lag"] = probe.since(ramp)
        mark = probe.mark()
        polls_before = (await emu.stats())["polls"]
        await asyncio.sleep(steady)
        out["steady_lag"] = probe.since(mark)
        out["polls"] = (await emu.stats())["polls"] - polls_before
        out["in_flight"] = runs
        tasks = asyncio.all_tasks()
        out["tasks"] = len(tasks)
        out["pollers"] = 0
        out["rss_peak"] = rss_peak_kb()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    await probe.stop()
    return {
        "rss_per_run_kb": (out["rss_peak"] - rss_before) / runs,
        "ramp_s": created - started,
        "ramp_p99_ms": 1000 * percentile(out["ramp_lag"], 99),
        "steady_p99_ms": 1000 * percentile(out["steady_lag"], 99),
        "steady_max_ms": 1000 * max(out["steady_lag"], default=0.0),
        "polls_per_s": out["polls"] / steady,
        "tasks": out["tasks"],
        "pollers": out["pollers"],
        "in_flight": out["in_flight"],
    }


async def _run_child(
    arm: str, emu: Emulator, runs: int, steady: float, polls: int | None = None
) -> dict[str, Any]:
    extra = [] if polls is None else ["--max-concurrent-polls", str(polls)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--child",
        arm,
        "--url",
        emu.url,
        "--admin",
        emu.admin,
        "--runs",
        str(runs),
        "--steady",
        str(steady),
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"scale child {arm} failed with exit code {process.returncode}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def sweep(runs: int, steady: float, values: list[int], repeats: int) -> None:
    """The library alone at several `max_concurrent_polls`, interleaved, printed as found."""
    for rep in range(repeats):
        for polls in values:
            async with emulator(durations=600.0, seed=1) as emu:
                r = await _run_child("library", emu, runs, steady, polls)
            print(
                f"max_concurrent_polls={polls:>3} rep={rep} p99 steady {r['steady_p99_ms']:.1f} "
                f"ms, max {r['steady_max_ms']:.1f} ms, p99 ramp {r['ramp_p99_ms']:.1f} ms, "
                f"{r['polls_per_s']:.0f} polls/s, RSS {r['rss_per_run_kb']:.2f} KB/run",
                flush=True,
            )


async def measure(*, runs: int = 10_000, steady: float = 10.0) -> Report:
    results = {}
    for arm in ARMS:
        async with emulator(durations=600.0, seed=1) as emu:
            results[arm] = await _run_child(arm, emu, runs, steady)
    report = Report(
        number=4,
        title=f"Scale: {runs:,} runs in flight",
        method=(
            f"Each client in a fresh process; runs last 600 s so all {runs:,} stay in flight; "
            f"steady window {steady:g} s after the last create. RSS per run = (peak RSS - RSS "
            "before) / runs. Loop lag = how late a 10 ms periodic timer fires."
        ),
        headers=(
            "client",
            "RSS KB/run",
            "ramp-up s",
            "lag p99 ramp ms",
            "lag p99 steady ms",
            "lag max steady ms",
            "polls/s steady",
            "tasks alive",
            "poller tasks",
        ),
    )
    for arm in ARMS:
        r = results[arm]
        report.rows.append(
            (
                arm if arm == "library" else f"baseline {arm}",
                r["rss_per_run_kb"],
                r["ramp_s"],
                r["ramp_p99_ms"],
                r["steady_p99_ms"],
                r["steady_max_ms"],
                r["polls_per_s"],
                r["tasks"],
                r["pollers"],
            )
        )
    lib = results["library"]
    report.targets += [
        Target(
            "4",
            "<= 4 KB RSS per in-flight run",
            lib["rss_per_run_kb"] <= 4.0,
            f"{lib['rss_per_run_kb']:.2f} KB",
        ),
        Target(
            "4",
            "event-loop lag p99 <= 20 ms (steady state)",
            lib["steady_p99_ms"] <= 20.0,
            f"{lib['steady_p99_ms']:.1f} ms; during ramp-up {lib['ramp_p99_ms']:.1f} ms",
        ),
        Target("4", "one poller task", lib["pollers"] == 1, f"{lib['pollers']}"),
    ]
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steady", type=float, default=10.0)
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    parser.add_argument("--max-concurrent-polls", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sweep",
        default=None,
        help="comma-separated max_concurrent_polls values: run the library alone at each",
    )
    parser.add_argument("--repeats", type=int, default=1, help="repeats of --sweep")
    args = parser.parse_args(argv)
    if args.child:
        result = asyncio.run(
            child(
                args.child,
                args.url,
                args.admin,
                args.runs,
                args.steady,
                args.max_concurrent_polls,
            )
        )
        print(json.dumps(result))
        return
    if args.sweep:
        values = [int(v) for v in args.sweep.split(",") if v.strip()]
        asyncio.run(sweep(args.runs, args.steady, values, args.repeats))
        return
    print(asyncio.run(measure(runs=args.runs, steady=args.steady)).text())


if __name__ == "__main__":
    main()

"""Scenario 1: throughput (runs/s) and CPU seconds per 1,000 runs, no rate limit.

The emulator (in its own process, see `_server`) answers at once and every run is over the
moment it is created (``durations=0``), so what is left is the client's own cost: building
requests, the connection pool, parsing, and when it polls. N runs are fanned out with at most
`concurrency` in flight by the library (`client.run` + ``await handle``) and by the
hand-written baseline in both loop shapes (`baseline.run_all`).

Measured in this process: wall time (`time.perf_counter`) and CPU time (`time.process_time`,
user + system of this process only, the emulator's process excluded) around the whole
fan-out, client or session set-up included. The arms run interleaved, `repeats` times, each
against a fresh emulator, after one small warm-up round; medians are reported.

Run: ``python -m benchmarks.throughput [--runs 2000] [--concurrency 100] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import baseline
from ._common import Report, Target, library_run_all, make_client, median
from ._server import emulator

ARMS = ("library", *baseline.SHAPES)


async def _one_arm(
    arm: str, runs: int, concurrency: int, client_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    inputs = [{"i": i} for i in range(runs)]
    async with emulator(durations=0.0, seed=1) as emu:
        job: Callable[[], Awaitable[object]]
        if arm == "library":

            async def job() -> object:
                async with make_client(emu.url, **(client_kwargs or {})) as client:
                    return await library_run_all(client, inputs, concurrency=concurrency)

        else:

            async def job() -> object:
                return await baseline.run_all(
                    emu.url,
                    inputs,
                    concurrency=concurrency,
                    shape=arm,  # type: ignore[arg-type]
                )

        cpu = time.process_time()
        wall = time.perf_counter()
        await job()
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        stats = await emu.stats()
    return {
        "wall": wall,
        "cpu": cpu,
        "requests": stats["requests"],
        "polls": stats["requests_by_endpoint"]["poll"],
        "duplicates": stats["duplicate_submissions"],
    }


async def measure(
    *, runs: int = 2000, concurrency: int = 100, repeats: int = 3, warmup: int = 100
) -> Report:
    samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        await _one_arm(arm, warmup, concurrency)
    for _ in range(repeats):
        for arm in ARMS:
            samples[arm].append(await _one_arm(arm, runs, concurrency))

    def agg(arm: str) -> dict[str, float]:
        s = samples[arm]
        return {
            "tput": median([runs / x["wall"] for x in s]),
            "cpu_k": median([1000 * x["cpu"] / runs for x in s]),
            "req": median([x["requests"] / runs for x in s]),
            "polls": median([x["polls"] / runs for x in s]),
        }

    results = {arm: agg(arm) for arm in ARMS}
    lib = results["library"]
    report = Report(
        number=1,
        title="Throughput and CPU, no rate limit, zero-latency emulator (durations 0)",
        method=(
            f"{runs} runs, {concurrency} in flight, median of {repeats} interleaved repeats; "
            "CPU is this process only (the emulator runs in its own process)."
        ),
        headers=(
            "client",
            "runs/s",
            "CPU s / 1k runs",
            "requests/run",
            "polls/run",
            "runs/s ratio",
            "CPU ratio",
        ),
    )
    for arm in ARMS:
        r = results[arm]
        report.rows.append(
            (
                arm if arm == "library" else f"baseline {arm}",
                r["tput"],
                r["cpu_k"],
                r["req"],
                r["polls"],
                lib["tput"] / r["tput"] if arm != "library" else 1.0,
                lib["cpu_k"] / r["cpu_k"] if arm != "library" else 1.0,
            )
        )
    for shape in baseline.SHAPES:
        b = results[shape]
        report.targets.append(
            Target(
                "1",
                f"throughput >= 1.0x baseline {shape}",
                lib["tput"] >= b["tput"],
                f"{lib['tput'] / b['tput']:.2f}x",
            )
        )
        report.targets.append(
            Target(
                "1",
                f"CPU per run <= 1.0x baseline {shape}",
                lib["cpu_k"] <= b["cpu_k"],
                f"{lib['cpu_k'] / b['cpu_k']:.2f}x",
            )
        )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    report = asyncio.run(
        measure(runs=args.runs, concurrency=args.concurrency, repeats=args.repeats)
    )
    print(report.text())


if __name__ == "__main__":
    main()

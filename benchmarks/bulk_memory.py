"""Bulk memory: does `run_many` over a lazy input stay bounded by `concurrency`?

The emulator runs in its own process (`python -m zapier_async serve-fake --durations 0`), so
its records of every run do not count against the client. For each concurrency, a fresh
child process fans N lazily generated requests out through `client.run_many` and reports
the tracemalloc peak (Python allocations) and the peak RSS of the process. If memory is
bounded by concurrency, the peak does not grow with N, only with concurrency.

Run: ``python -m benchmarks.bulk_memory [--runs 100000] [--concurrency 10,100,1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import zapier_async as za


async def child(url: str, runs: int, concurrency: int) -> dict[str, Any]:
    def requests() -> Iterator[za.RunRequest]:
        for i in range(runs):
            yield za.RunRequest(action="core:bench", authentication=None, inputs={"i": i})

    ok = failed = 0
    tracemalloc.start()
    started = time.perf_counter()
    cpu = time.process_time()
    async with za.ZapierClient(
        auth=za.BearerToken("bench"),
        base_url=url,
        max_rate_limit_wait=None,
        poll_policy=za.PollPolicy(initial=0.005, factor=1.5, cap=0.05),
    ) as client:
        async for outcome in client.run_many(requests(), concurrency=concurrency):
            if outcome.ok:
                ok += 1
            else:
                failed += 1
        metrics = client.metrics()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "runs": runs,
        "concurrency": concurrency,
        "ok": ok,
        "failed": failed,
        "tracemalloc_peak_mib": peak / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "cpu_ms_per_run": 1000 * cpu / runs,
        "polls_per_run": metrics.polls_per_run,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--concurrency", default="10,100,1000")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(child(args.child, args.runs, int(args.concurrency)))
        print(json.dumps(result))
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "zapier_async", "serve-fake", "--durations", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"emulator {url}; {args.runs} lazily generated runs per row\n")
        header = f"{'concurrency':>11} {'ok':>8} {'tracemalloc peak':>17} {'peak RSS':>10}"
        header += f" {'wall':>8} {'CPU/run':>9} {'polls/run':>9}"
        print(header)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bulk_memory", "--child", url,
                 "--runs", str(args.runs), "--concurrency", str(concurrency)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            r = json.loads(out)
            print(
                f"{concurrency:>11} {r['ok']:>8} {r['tracemalloc_peak_mib']:>13.1f} MiB"
                f" {r['peak_rss_mib']:>6.1f} MiB {r['wall_s']:>6.1f} s"
                f" {r['cpu_ms_per_run']:>6.3f} ms {r['polls_per_run'] or 0:>9.2f}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

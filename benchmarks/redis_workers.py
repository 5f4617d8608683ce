"""Issue #9: N worker processes sharing one rate budget through Redis (`RedisLimiter`).

Starts a private ``redis-server`` (or uses ``--redis-url``), one emulator process
(``python -m zapier_async serve-fake --rate-limit 50/2``) and ``--workers`` worker processes,
each running its share of ``--runs`` runs with ``client.run_many`` through a `RedisLimiter`
on the same Redis. The workers wait at a barrier, so the wall time is from the first worker's
start to the last worker's end. The emulator counts every request it saw and every 429.

``minimum_s`` is ``requests the emulator saw / (limit / window)``; ``physical_minimum_s`` the
least any polling client needs, as in `benchmarks.budget`: ``max((2 N - L) / (L / W), N E[d] /
C)`` (one create and one read per run, the first window free; C the concurrency of all workers
together), which does not grow with every extra read.

``--durations LOW,HIGH`` sets how long runs take (emulator), ``--concurrency`` each worker's
``run_many`` concurrency (default: all its runs at once), ``--spend-window`` the limiters'
``spend_window`` (then reads ahead of plan on budget a window would lose, `RedisLimiter.spare`;
``--no-spare`` turns them off, to measure what they earn).

Run: ``python -m benchmarks.redis_workers [--workers 4] [--runs 1000] [--rate 50/2]``; a
concurrency-bound job: ``--runs 1000 --rate 200/5 --durations 2,8 --concurrency 25
--spend-window``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from zapier_async.testing import _redis as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1 (`zapier_async.testing._redis`); yields its URL."""
    try:
        with launcher.redis_server() as server:
            yield server.url
    except launcher.RedisServerNotFoundError as exc:
        raise SystemExit(str(exc)) from None


@contextlib.contextmanager
def fake_server(
    rate: str, seed: int, durations: str = "0,0.05"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The emulator in its own process; yields its URL and a dict filled with its stats."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zapier_async",
            "serve-fake",
            "--rate-limit",
            rate,
            "--seed",
            str(seed),
            "--durations",
            durations,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    stats: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise SystemExit("serve-fake did not start")
        yield url, stats
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            stats.update(json.loads(lines[-1]))


async def worker_main(args: argparse.Namespace) -> None:
    """One worker: wait for "go" on stdin, run its share, print one JSON line."""
    import redis.asyncio as aioredis

    import zapier_async as za
    from zapier_async.redis import RedisLimiter

    client_redis = aioredis.from_url(args.redis_url, socket_timeout=5)
    try:
        limiter = RedisLimiter(
            client_redis, name=args.name, lease=args.lease, spend_window=args.spend_window
        )
        if args.no_spare:
            limiter.spare = lambda key=None: None  # type: ignore[method-assign]
        async with (
            limiter,
            za.ZapierClient(
                auth=za.BearerToken("bench"),
                base_url=args.url,
                limiter=limiter,
            ) as client,
        ):
            requests = [
                za.RunRequest(
                    action="core:bench", authentication=None, inputs={"i": args.offset + i}
                )
                for i in range(args.count)
            ]
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            started = time.time()
            ok = failed = 0
            concurrency = args.concurrency or max(args.count, 1)
            async for outcome in client.run_many(requests, concurrency=concurrency):
                if outcome.error is None:
                    ok += 1
                else:
                    failed += 1
            ended = time.time()
            stats = limiter.snapshot()
        print(
            json.dumps(
                {
                    "started": started,
                    "ended": ended,
                    "ok": ok,
                    "failed": failed,
                    "grants": stats.grants,
                    "rate_limited": stats.rate_limited,
                    "spare_reads": client._engine.spare.reads,
                }
            ),
            flush=True,
        )
    finally:
        await client_redis.aclose()


def run(
    *,
    workers: int = 4,
    runs: int = 1000,
    rate: str = "50/2",
    seed: int = 1,
    redis_url: str | None = None,
    durations: str = "0,0.05",
    concurrency: int = 0,
    spend_window: bool = False,
    spare: bool = True,
) -> dict[str, Any]:
    """Run the scenario; returns the summary printed by `main`."""
    limit, window = rate.split("/")
    per_second = int(limit) / float(window)
    name = f"bench-{os.getpid()}-{time.time_ns()}"
    with contextlib.ExitStack() as stack:
        url_redis = redis_url or stack.enter_context(redis_server())
        url, fake_stats = stack.enter_context(fake_server(rate, seed, durations))
        procs = []
        share, extra = divmod(runs, workers)
        offset = 0
        for w in range(workers):
            count = share + (1 if w < extra else 0)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.redis_workers",
                        "--worker",
                        "--url",
                        url,
                        "--redis-url",
                        url_redis,
                        "--name",
                        name,
                        "--offset",
                        str(offset),
                        "--count",
                        str(count),
                        "--concurrency",
                        str(concurrency),
                        *(["--spend-window"] if spend_window else []),
                        *([] if spare else ["--no-spare"]),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
            offset += count
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("a worker failed to start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a worker failed with exit code {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    seen = fake_stats["requests"]
    minimum = seen / per_second
    low, _, high = durations.partition(",")
    mean_duration = (float(low) + float(high or low)) / 2
    slots = min(concurrency * workers or runs, runs)
    physical = max((2 * runs - int(limit)) / per_second, runs * mean_duration / slots)
    return {
        "workers": workers,
        "runs": runs,
        "rate": rate,
        "durations": durations,
        "concurrency_per_worker": concurrency or None,
        "spend_window": spend_window,
        "spare": spare and spend_window,
        "spare_reads": sum(r["spare_reads"] for r in results),
        "ok": sum(r["ok"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "requests_seen": seen,
        "rate_limited_429": fake_stats["rate_limited"],
        "runs_created": fake_stats["runs_created"],
        "duplicate_submissions": fake_stats["duplicate_submissions"],
        "wall_s": round(wall, 3),
        "minimum_s": round(minimum, 3),
        "wall_over_minimum": round(wall / minimum, 4),
        "physical_minimum_s": round(physical, 3),
        "wall_over_physical_minimum": round(wall / physical, 4),
        "requests_per_run": round(seen / max(runs, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rate", default="50/2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--durations", default="0,0.05", metavar="SECONDS|LOW,HIGH")
    parser.add_argument("--concurrency", type=int, default=0, help="per worker (0: all at once)")
    parser.add_argument("--spend-window", action="store_true")
    parser.add_argument("--no-spare", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lease", type=float, default=30.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker_main(args))
        return
    summary = run(
        workers=args.workers,
        runs=args.runs,
        rate=args.rate,
        seed=args.seed,
        redis_url=args.redis_url,
        durations=args.durations,
        concurrency=args.concurrency,
        spend_window=args.spend_window,
        spare=not args.no_spare,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

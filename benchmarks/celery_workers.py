"""Issue #18: Celery workers (prefork) sharing one budget and creating each run once.

Starts a private ``redis-server`` (broker, result backend, `RedisRunStore`, `RedisLimiter`),
the emulator in its own process (``--rate`` enforced, run durations ``--durations``) and
``--workers`` ``celery worker -P prefork -c --concurrency`` processes of the test app
(tests/_celery_app.py: one ``zapier_async.celery`` task per item, the task id as idempotency
key), through the harness the test suite uses (tests/_celery_harness.py). Once every worker
is ready, sends ``--tasks`` tasks and waits for every outcome in the result backend.

Wall time is from the first send to the last outcome. The physical minimum at 2 requests per
run is ``(2 * tasks - limit) / (limit / window)`` (the issue's formula: the first window's
budget is free); also printed: the floor for the requests actually seen, spread evenly (our
limiter never bursts, so its own floor is ``requests / rate``).

Run: ``python -m benchmarks.celery_workers [--tasks 300] [--workers 2] [--concurrency 4]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parents[1] / "tests"


def _harness() -> Any:
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    return importlib.import_module("_celery_harness")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.celery_workers", description=__doc__
    )
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", default="50/2", metavar="LIMIT/SECONDS")
    parser.add_argument("--durations", default="0.05,0.15", metavar="LOW,HIGH")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    from zapier_async.testing import _redis as launcher

    harness = _harness()
    limit, _, window = args.rate.partition("/")
    rate = int(limit) / float(window)
    names = [f"w{i + 1}" for i in range(args.workers)]
    with launcher.redis_server() as server, tempfile.TemporaryDirectory() as tmp:
        cluster = harness.Cluster(server.url, rate=args.rate, durations=args.durations)
        with cluster.running(Path(tmp)):
            try:
                for name in names:
                    cluster.start_worker(name, concurrency=args.concurrency)
                cluster.wait_ready(names)
                started = time.monotonic()
                ids = cluster.send(args.tasks)
                outcomes = cluster.collect(ids, timeout=args.timeout)
                wall = time.monotonic() - started
            finally:
                cluster.close_client()
            stats = cluster.stop_fake()

    kinds = Counter(
        v["status"] if isinstance(v, dict) else type(v).__name__ for v in outcomes.values()
    )
    per_worker = Counter(
        v["worker"].split("@")[0] for v in outcomes.values() if isinstance(v, dict)
    )
    runs_per_item = Counter(run["item"] for run in stats["runs"])
    minimum = max(0.0, (2 * args.tasks - int(limit)) / rate)
    even_floor = stats["requests"] / rate
    report = {
        "tasks": args.tasks,
        "workers": f"{args.workers} x {args.concurrency} (prefork)",
        "rate": args.rate,
        "wall_s": round(wall, 2),
        "physical_min_s": round(minimum, 2),
        "ratio": round(wall / minimum, 3) if minimum else None,
        "floor_for_requests_seen_s": round(even_floor, 2),
        "ratio_to_that_floor": round(wall / even_floor, 3),
        "requests": stats["requests"],
        "requests_per_run": round(stats["requests"] / args.tasks, 3),
        "by_endpoint": stats["by_endpoint"],
        "rate_limited_429": stats["rate_limited"],
        "runs_created": stats["runs_created"],
        "duplicate_submissions": stats["duplicate_submissions"],
        "items_with_more_than_one_run": sum(1 for n in runs_per_item.values() if n > 1),
        "outcomes": dict(kinds),
        "tasks_per_worker": dict(per_worker),
    }
    print(json.dumps(report, indent=2))
    ok = (
        len(outcomes) == args.tasks
        and kinds == Counter({"success": args.tasks})
        and stats["duplicate_submissions"] == 0
        and report["items_with_more_than_one_run"] == 0
        and stats["rate_limited"] <= 3
    )
    target = "PASS" if minimum and wall <= 1.25 * minimum else "MISS"
    print(f"one outcome per task, 0 duplicates, <= 3 429s: {'PASS' if ok else 'FAIL'}")
    print(f"wall <= 1.25x physical minimum: {target} ({report['ratio']}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

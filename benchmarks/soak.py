"""Soak: the chaos suite's harness at scale (default 10,000 runs at a 10% fault rate).

The real `ZapierClient` drives N runs against a `FakeZapier` that injects connection resets,
5xx, 503 + Retry-After, non-JSON bodies and slow answers beyond the client's timeout. Every
invariant of `tests/chaos/harness.py` is checked at the end (no lost run, no duplicate, every
caller ends in a `Run` or a typed error, nothing leaked), and the numbers are printed.

Run: ``python -m benchmarks.soak [--runs 10000] [--fault-rate 0.1] [--seed 1]``
Exits 1 when an invariant is violated.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parents[1] / "tests"


def _harness() -> Any:
    # The harness lives with the chaos tests (tests/chaos/harness.py), so the suite and the
    # soak check the same invariants.
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    return importlib.import_module("chaos.harness")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument(
        "--faults",
        default="500,502,503,504,reset,non_json,slow",
        help="comma-separated fault kinds (see FakeZapier)",
    )
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--request-timeout", type=float, default=1.0)
    # The cancellation storm (issue #14): callers cancelled at random awaits, creates given up
    # by asyncio.wait_for, and the client closed with runs and creates in flight.
    parser.add_argument("--cancel-rate", type=float, default=0.2)
    parser.add_argument("--cancel-within", type=float, default=1.0)
    parser.add_argument("--create-timeout", type=float, default=1.0)
    parser.add_argument(
        "--close-after-creates",
        type=int,
        default=None,
        help="close the client once this many creates were answered (default: runs - 50)",
    )
    parser.add_argument("--no-storm", action="store_true", help="faults only, no cancellations")
    args = parser.parse_args(argv)
    storm = not args.no_storm
    close_after = args.close_after_creates
    if close_after is None and storm:
        close_after = max(args.runs - 50, 1)

    harness = _harness()
    config = harness.ChaosConfig(
        runs=args.runs,
        concurrency=args.concurrency,
        seed=args.seed,
        fault_rate=args.fault_rate,
        faults=frozenset(k.strip() for k in args.faults.split(",") if k.strip()),
        slow_delay=args.slow_delay,
        request_timeout=args.request_timeout,
        durations=(0.0, 0.2),
        error_rate=0.05,
        max_poll_failures=50,
        cancel_rate=args.cancel_rate if storm else 0.0,
        cancel_within=args.cancel_within,
        create_timeout=args.create_timeout if storm else None,
        close_after_creates=close_after,
        deadline=max(600.0, args.runs / 10),
    )
    # Resource warnings (an unclosed session or socket) are failures here, as in the tests.
    warnings.simplefilter("error", ResourceWarning)
    report = asyncio.run(harness.run_chaos(config))
    print(
        f"soak: {args.runs} runs, fault rate {args.fault_rate:.0%}, faults {sorted(config.faults)}"
    )
    if storm:
        print(
            f"  cancellation storm: {args.cancel_rate:.0%} of callers cancelled within "
            f"{args.cancel_within:g} s, creates given up after {args.create_timeout:g} s, "
            f"client closed after {close_after} creates"
        )
    for line in report.lines():
        print("  " + line)
    if report.violations:
        print("INVARIANTS VIOLATED:")
        for violation in report.violations[:50]:
            print("  " + violation)
        return 1
    print("invariants: all hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line: ``python -m zapier_async`` / ``zapier-async``.

``demo`` starts the emulator in-process and fans runs out through the public API, so a fresh
checkout shows the library working without a Zapier account.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TextIO

import anyio

from . import errors
from ._auth import BearerToken
from ._backoff import PollPolicy
from ._client import ZapierClient
from .testing import FakeZapier

__all__ = ["main"]


def _parse_rate(text: str) -> tuple[int, float]:
    try:
        count, _, window = text.partition("/")
        limit, seconds = int(count), float(window or "1")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LIMIT/SECONDS like 50/2, got {text!r}"
        ) from None
    if limit < 1 or seconds <= 0:
        raise argparse.ArgumentTypeError("LIMIT must be >= 1 and SECONDS > 0")
    return limit, seconds


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapier-async", description="An asyncio client for Zapier's action-run APIs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run actions against an in-process Zapier emulator and print a summary",
        description="Start FakeZapier on 127.0.0.1, fan out runs through ZapierClient, "
        "and print what happened.",
    )
    demo.add_argument("--runs", type=int, default=200, help="how many runs (default 200)")
    demo.add_argument(
        "--concurrency", type=int, default=100, help="runs in flight at most (default 100)"
    )
    demo.add_argument(
        "--error-rate", type=float, default=0.05, help="share of runs that fail (default 0.05)"
    )
    demo.add_argument(
        "--rate-limit",
        type=_parse_rate,
        default=None,
        metavar="LIMIT/SECONDS",
        help="make the emulator enforce a rate limit, e.g. 100/1",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    return parser


class _Progress:
    """A dependency-free progress line on a stream (a bar on a terminal, lines otherwise)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.failed = 0
        self.tty = stream.isatty()
        self._last_decile = -1

    def update(self, *, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.tty:
            width = 30
            filled = width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(
                f"\r[{bar}] {self.done}/{self.total}  failed {self.failed}"
                + ("\n" if self.done == self.total else "")
            )
            self.stream.flush()
        else:
            decile = 10 * self.done // max(1, self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.done}/{self.total} done, {self.failed} failed\n")


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.runs < 1 or args.concurrency < 1:
        err.write("--runs and --concurrency must be at least 1\n")
        return 2
    if not 0.0 <= args.error_rate <= 1.0:
        err.write("--error-rate must be between 0 and 1\n")
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    progress = _Progress(args.runs, err)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    async with FakeZapier(
        durations=(0.2, 1.5), error_rate=args.error_rate, rate_limit=args.rate_limit, seed=seed
    ) as fake:
        err.write(f"emulator on {fake.url} (seed {seed}); {args.runs} runs\n")
        started = time.perf_counter()
        async with ZapierClient(
            auth=BearerToken("demo-token"),
            base_url=fake.url,
            max_rate_limit_wait=None,  # a script: wait for the budget rather than fail
            poll_policy=PollPolicy(),
            rng=random.Random(seed),
        ) as client:
            limit = anyio.Semaphore(args.concurrency)

            async def one(i: int) -> None:
                async with limit:
                    t0 = time.perf_counter()
                    try:
                        handle = await client.run(
                            "core:demo_send_email",
                            authentication="demo_auth",
                            inputs={"to": f"user{i}@example.com", "subject": f"Hello #{i}"},
                        )
                        await handle
                    except errors.RunFailedError:
                        outcomes["failed (run error)"] += 1
                        failed = True
                    except errors.ZapierError as exc:
                        outcomes[f"error: {type(exc).__name__}"] += 1
                        failed = True
                    else:
                        outcomes["succeeded"] += 1
                        failed = False
                    latencies.append(time.perf_counter() - t0)
                    progress.update(failed=failed)

            async with anyio.create_task_group() as tg:
                for i in range(args.runs):
                    tg.start_soon(one, i)
        wall = time.perf_counter() - started
        stats = fake.stats
    rows = [
        ("runs", f"{args.runs}"),
        *((k, f"{v}") for k, v in sorted(outcomes.items())),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{args.runs / wall:.1f} runs/s"),
        (
            "latency p50 / p95 / max",
            " / ".join(f"{_percentile(latencies, q):.2f} s" for q in (0.5, 0.95, 1.0)),
        ),
        ("requests sent", f"{stats.requests}"),
        ("polls per run", f"{stats.polls / args.runs:.2f}"),
        ("429 responses", f"{stats.rate_limited}"),
        ("duplicate submissions", f"{stats.duplicate_submissions}"),
    ]
    width = max(len(k) for k, _ in rows)
    out.write("\nsummary\n")
    for key, value in rows:
        out.write(f"  {key.ljust(width)}  {value}\n")
    return 0 if outcomes["succeeded"] + outcomes["failed (run error)"] == args.runs else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        return asyncio.run(_demo(args, sys.stdout, sys.stderr))
    raise AssertionError(f"unhandled command {args.command}")  # argparse enforces the choice

"""``demo`` and ``serve-fake``: the only commands that import the emulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from typing import Final, TextIO

from zapier_async._auth import BearerToken
from zapier_async._backoff import PollPolicy
from zapier_async._bulk import RunRequest
from zapier_async._client import ZapierClient

from ._common import EXIT_FAILED, EXIT_OK, UsageError, dumps
from ._output import make_progress, metrics_rows, write_table

DEMO_ACTION: Final = "core:demo_send_email"


# --- demo ---------------------------------------------------------------------------------------


async def demo_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from zapier_async.testing import FakeZapier  # the emulator: only for the commands that serve it

    seed = args.seed if args.seed is not None else random.randrange(2**32)

    def requests() -> Iterator[RunRequest]:
        for i in range(args.runs):
            yield RunRequest(
                action=DEMO_ACTION,
                authentication="demo_auth",
                inputs={"to": f"user{i}@example.com", "subject": f"Hello #{i}"},
                key=i,
            )

    outcomes = 0
    async with FakeZapier(
        durations=(0.2, 1.5),
        error_rate=args.error_rate,
        fault_rate=args.fault_rate,
        rate_limit=args.rate_limit,
        seed=seed,
        record_requests=False,
    ) as fake:
        limit = (
            "no rate limit"
            if args.rate_limit is None
            else "rate limit {}/{:g}s".format(*args.rate_limit)
        )
        err.write(
            f"emulator on {fake.url} (seed {seed}, {limit}, fault rate {args.fault_rate:g}); "
            f"{args.runs} runs, concurrency {args.concurrency}\n"
        )
        started = time.perf_counter()
        progress = make_progress(args.runs, err, plain=args.json)
        try:
            async with ZapierClient(
                auth=BearerToken("demo-token"),
                base_url=fake.url,
                max_rate_limit_wait=None,  # a script: wait for the budget rather than fail
                poll_policy=PollPolicy(),
                rng=random.Random(seed),
            ) as client:
                async with client.run_many(
                    requests(),
                    concurrency=args.concurrency,
                    progress=lambda o: progress.update(failed=not o.ok),
                ) as stream:
                    async for _ in stream:
                        outcomes += 1
                metrics = client.metrics()
        finally:
            progress.close()
        wall = time.perf_counter() - started
        stats = fake.stats
    rows = [
        ("runs", f"{args.runs}"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{args.runs / wall:.1f} runs/s"),
        *metrics_rows(metrics),
        ("duplicate submissions (emulator)", f"{stats.duplicate_submissions}"),
    ]
    if args.json:
        summary = {
            "runs": args.runs,
            "outcomes": outcomes,
            "wall_time": wall,
            "seed": seed,
            "metrics": metrics.as_dict(),
            "emulator": {
                "requests": stats.requests,
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "rate_limited": stats.rate_limited,
                "faults": dict(stats.faults),
            },
        }
        out.write(json.dumps(summary, default=str) + "\n")
    else:
        write_table(out, "summary", rows)
    # The demo's faults are part of the show: it succeeds when every run got exactly one
    # outcome and the emulator saw no duplicate submission.
    ok = outcomes == args.runs and stats.duplicate_submissions == 0
    return EXIT_OK if ok else EXIT_FAILED


# --- serve-fake ---------------------------------------------------------------------------------


async def serve_fake_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from zapier_async.testing import FakeZapier  # the emulator: only for the commands that serve it

    try:
        fake = FakeZapier(
            host=args.host,
            port=args.port,
            seed=args.seed,
            durations=args.durations,
            error_rate=args.error_rate,
            fault_rate=args.fault_rate,
            rate_limit=args.rate_limit,
            tokens=args.tokens,
            record_requests=False,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with fake:
        out.write(fake.url + "\n")
        out.flush()
        err.write(f"FakeZapier listening on {fake.url}; stop with Ctrl-C or SIGTERM\n")
        err.flush()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    stats = fake.stats
    out.write(
        dumps(
            {
                "requests": stats.requests,
                "requests_by_endpoint": dict(stats.requests_by_endpoint),
                "runs_created": stats.runs_created,
                "duplicate_submissions": stats.duplicate_submissions,
                "rate_limited": stats.rate_limited,
                "polls": stats.polls,
            }
        )
        + "\n"
    )
    out.flush()
    return EXIT_OK

"""Rate-limited bulk: how close does the client get to the budget's theoretical minimum?

The emulator enforces a fixed-window limit and sends the three `X-RateLimit-*` headers. A
job of N runs is fanned out through one client; we count every request the emulator saw
(creates and polls), the 429s it answered, and the wall time. The theoretical minimum is
``requests / (limit / window)``: no client can finish those requests faster without 429s.

Run: ``python -m benchmarks.ratelimited [--runs 300] [--limit 50] [--window 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import zapier_async as za
from zapier_async.testing import FakeZapier


async def measure(
    *,
    runs: int = 300,
    limit: int = 50,
    window: float = 2.0,
    reset_format: str = "epoch",
    durations: tuple[float, float] = (0.2, 1.5),
    seed: int = 1,
) -> dict[str, Any]:
    async with FakeZapier(
        seed=seed,
        durations=durations,
        rate_limit=(limit, window),
        reset_format=reset_format,  # type: ignore[arg-type]
        record_requests=False,
    ) as fake:
        first_window_429s = 0
        started = time.perf_counter()
        async with za.ZapierClient(
            auth=za.BearerToken("bench"),
            base_url=fake.url,
            max_rate_limit_wait=None,
            rng=random.Random(seed),
        ) as client:

            async def one(i: int) -> str:
                handle = await client.run("core:x", authentication=None, inputs={"i": i})
                try:
                    await handle
                except za.RunFailedError:
                    return "failed"
                return "ok"

            outcomes = await asyncio.gather(*(one(i) for i in range(runs)), return_exceptions=True)
        wall = time.perf_counter() - started
        stats = fake.stats
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    minimum = stats.requests / (limit / window)
    return {
        "runs": runs,
        "reset_format": reset_format,
        "requests": stats.requests,
        "creates": stats.requests_by_endpoint["create"],
        "polls": stats.requests_by_endpoint["poll"],
        "polls_per_run": stats.requests_by_endpoint["poll"] / runs,
        "429s": stats.rate_limited,
        "first_window_429s": first_window_429s,
        "duplicates": stats.duplicate_submissions,
        "errors": len(errors),
        "wall_s": wall,
        "minimum_s": minimum,
        "ratio": wall / minimum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=2.0)
    args = parser.parse_args()
    print(
        f"{'reset':>6} {'runs':>5} {'requests':>8} {'polls/run':>9} {'429s':>5} {'dups':>4} "
        f"{'errors':>6} {'wall s':>7} {'min s':>7} {'ratio':>6}  target <= 1.15"
    )
    for fmt in ("epoch", "delta", "iso"):
        r = asyncio.run(
            measure(runs=args.runs, limit=args.limit, window=args.window, reset_format=fmt)
        )
        ok = "yes" if r["ratio"] <= 1.15 and r["429s"] == 0 else "NO"
        print(
            f"{fmt:>6} {r['runs']:>5} {r['requests']:>8} {r['polls_per_run']:>9.2f} "
            f"{r['429s']:>5} {r['duplicates']:>4} {r['errors']:>6} {r['wall_s']:>7.2f} "
            f"{r['minimum_s']:>7.2f} {r['ratio']:>6.3f}  {ok}"
        )


if __name__ == "__main__":
    main()

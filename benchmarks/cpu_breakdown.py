"""Where scenario 1's CPU per run goes: ablations of the client, and the HTTP floor.

Two measurements, each interleaved against one emulator process (``durations=0``, no rate
limit), medians of ``--repeats``:

- ``ablate``: CPU per run of the library with parts of the client replaced by do-nothing
  stand-ins (``nolim``: the limiter; ``nomet``: the metrics wrapper; ``mcp``:
  ``max_concurrent_polls=100``; ``noplan``: a fixed 22 ms first poll instead of the planner),
  next to the hand-written baseline. Shows whether one component explains the gap.
- ``transport``: CPU per request of 20,000 GETs at 100 in flight through a bare
  `aiohttp.ClientSession` and through `AiohttpTransport`: the floor any aiohttp-based client
  pays, and what our transport adds to it.

Not part of ``python -m benchmarks`` (it pokes at private attributes); see the history section
of `results.md` for what it found.

Run: ``python -m benchmarks.cpu_breakdown ablate`` or ``... transport``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from types import TracebackType
from typing import Any

import aiohttp  # noqa: TID251 (the HTTP floor is measured on bare aiohttp)

from zapier_async import _protocol as proto
from zapier_async._backoff import PollPolicy
from zapier_async._transport import AiohttpTransport

from . import baseline
from ._common import library_run_all, make_client
from ._server import emulator

ARMS = ("baseline", "library", "nolim", "nomet", "mcp", "noplan", "mcp-noplan-nolim-nomet")


class _NullSlot:
    def record(self, status: int | None, headers: object) -> None:
        pass


class _NullSlotRequest:
    async def __aenter__(self) -> _NullSlot:
        return _NullSlot()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


class _NullLimiter:
    def slot(self, *args: object, **kwargs: object) -> _NullSlotRequest:
        return _NullSlotRequest()

    async def aclose(self) -> None:
        pass


async def _arm(url: str, arm: str, inputs: list[dict[str, Any]]) -> float:
    """CPU seconds of one fan-out of `inputs` (after a warm-up round for the library)."""
    if arm == "baseline":
        cpu = time.process_time()
        await baseline.run_all(url, inputs, concurrency=100)
        return time.process_time() - cpu
    async with make_client(url, max_concurrent_polls=100 if "mcp" in arm else 8) as client:
        if "nolim" in arm:
            client._limiter = _NullLimiter()  # type: ignore[assignment]
        if "nomet" in arm:
            client._transport = client._transport.inner  # type: ignore[assignment]
        if "noplan" in arm:
            client._polling.enabled = False
            client._polling.policy = PollPolicy(initial=0.022, jitter=0.0)
        await library_run_all(client, inputs[:300], concurrency=100)
        cpu = time.process_time()
        await library_run_all(client, inputs, concurrency=100)
        return time.process_time() - cpu


async def ablate(runs: int, repeats: int) -> None:
    inputs = [{"i": i} for i in range(runs)]
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    async with emulator(durations=0.0, seed=1) as emu:
        for _ in range(repeats):
            for arm in ARMS:
                samples[arm].append(await _arm(emu.url, arm, inputs))
    for arm in ARMS:
        print(f"{arm:24s} {1000 * statistics.median(samples[arm]) / runs:.3f} ms CPU per run")


async def _bare(url: str, n: int) -> float:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as session:
        semaphore = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with semaphore, session.get(f"{url}/v2/action-runs/r{i}") as resp:
                await resp.read()

        cpu = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.process_time() - cpu


async def _ours(url: str, n: int) -> float:
    transport = AiohttpTransport()
    headers = {"Authorization": "Bearer bench"}
    semaphore = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        async with semaphore:
            request = proto.get_action_run(f"r{i}")
            await transport.send(request, base_url=url, headers=headers, timeout=30.0)

    try:
        cpu = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.process_time() - cpu
    finally:
        await transport.aclose()


async def transport_floor(n: int, repeats: int) -> None:
    samples: dict[str, list[float]] = {"bare aiohttp": [], "AiohttpTransport": []}
    async with emulator(durations=0.0, seed=1) as emu:
        for _ in range(repeats):
            samples["bare aiohttp"].append(await _bare(emu.url, n))
            samples["AiohttpTransport"].append(await _ours(emu.url, n))
    for name, values in samples.items():
        print(f"{name:18s} {1e6 * statistics.median(values) / n:.1f} us CPU per request")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_breakdown", description=__doc__)
    parser.add_argument("what", choices=("ablate", "transport"))
    parser.add_argument("--runs", type=int, default=2000, help="runs per arm (ablate)")
    parser.add_argument("--requests", type=int, default=20_000, help="GETs per arm (transport)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "ablate":
        asyncio.run(ablate(args.runs, args.repeats))
    else:
        asyncio.run(transport_floor(args.requests, args.repeats))


if __name__ == "__main__":
    main()

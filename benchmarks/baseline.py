"""The hand-written baseline: the aiohttp script a competent user writes instead of the library.

One `aiohttp.ClientSession` (keep-alive pool of 100 connections, aiohttp's default), an
`asyncio.Semaphore` bounding the runs in flight, fixed-interval polling, and a sleep of
``Retry-After`` seconds on a 429 (then the same request again). No strawman: the JSON is read
with `resp.json()`, nothing is re-created per request, and every run is a plain coroutine.

Both common shapes of the polling loop are offered:

- ``check-then-sleep``: GET at once; while not done, sleep `interval` and GET again (polls at
  t = 0, 0.5, 1.0, ... after the create);
- ``sleep-then-check``: sleep `interval` first (polls at t = 0.5, 1.0, ...).

`run_one` is the whole user script; `run_all` fans it out with `asyncio.gather`, as users do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import aiohttp  # noqa: TID251 (the baseline is the hand-written aiohttp code we compare against)

__all__ = ["CHECK_THEN_SLEEP", "SHAPES", "SLEEP_THEN_CHECK", "Result", "run_all", "run_one"]

Shape = Literal["check-then-sleep", "sleep-then-check"]
CHECK_THEN_SLEEP: Shape = "check-then-sleep"
SLEEP_THEN_CHECK: Shape = "sleep-then-check"
SHAPES: tuple[Shape, ...] = (CHECK_THEN_SLEEP, SLEEP_THEN_CHECK)

TERMINAL = ("success", "error")

Result = tuple[str, str, float]
"""(run id, final status, `time.monotonic()` when the script saw the terminal status)."""


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, json: Any = None
) -> dict[str, Any]:
    """One request; on 429 sleep ``Retry-After`` seconds and send it again."""
    while True:
        async with session.request(method, url, json=json) as resp:
            if resp.status == 429:
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            resp.raise_for_status()
            body: dict[str, Any] = await resp.json()
            return body


async def run_one(
    session: aiohttp.ClientSession,
    base_url: str,
    action: str,
    inputs: dict[str, Any],
    *,
    interval: float = 0.5,
    shape: Shape = CHECK_THEN_SLEEP,
) -> Result:
    """Create one run and poll it every `interval` seconds until it ends."""
    created = await _call(
        session,
        "POST",
        f"{base_url}/v2/action-runs",
        {"data": {"action": action, "authentication": None, "inputs": inputs}},
    )
    run_id = created["data"]["id"]
    if shape == SLEEP_THEN_CHECK:
        await asyncio.sleep(interval)
    while True:
        body = await _call(session, "GET", f"{base_url}/v2/action-runs/{run_id}")
        status = body["data"]["status"]
        if status in TERMINAL:
            return run_id, status, time.monotonic()
        await asyncio.sleep(interval)


async def run_all(
    base_url: str,
    inputs: Sequence[dict[str, Any]],
    *,
    concurrency: int = 100,
    interval: float = 0.5,
    shape: Shape = CHECK_THEN_SLEEP,
    token: str = "bench",
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run every input through `run_one`, at most `concurrency` runs in flight."""
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def bounded(item: dict[str, Any]) -> Result:
            async with semaphore:
                result = await run_one(
                    session, base_url, "core:bench", item, interval=interval, shape=shape
                )
            if on_result is not None:
                on_result(result)
            return result

        return await asyncio.gather(*(bounded(item) for item in inputs))

"""The emulator in a process of its own, with a side door for the server-side truth.

Every benchmark talks to a `FakeZapier` running in a child process, so that the CPU time,
memory and event-loop lag measured in the benchmark's process are the client's alone (the
emulator's request handling and its record of every run would otherwise be counted against
whichever client is being measured).

The child serves the emulator on one port and a tiny admin app on another:

- ``GET /stats``: `FakeZapier.stats` as JSON;
- ``GET /runs``: one row per run from `FakeZapier.runs()`: ``[id, created_at, ends_at,
  polls, first_terminal_poll_at]``;
- ``GET /front``: the counts of the fixed-window front (`_window.WindowFront`), when the
  config asks for one (``"front"``), else null.

Times are `time.monotonic()` of the child (the emulator's default `SystemClock`). On Linux
that is ``CLOCK_MONOTONIC``, one clock for every process of the machine, so a run's
``ends_at`` compares directly with `time.monotonic()` in the benchmark's process.

Run alone: ``python -m benchmarks._server '{"durations": [0.2, 1.5]}'`` prints one JSON line
``{"url": ..., "admin": ...}`` and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp  # noqa: TID251 (the admin side door is plain aiohttp, outside the library)
from aiohttp import web  # noqa: TID251

from zapier_async.testing import FakeZapier

from ._window import WindowFront

__all__ = ["Emulator", "emulator"]


def _fake_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(config)
    durations = kwargs.get("durations")
    if durations == "inf":
        kwargs["durations"] = math.inf
    elif isinstance(durations, list):
        kwargs["durations"] = tuple(durations)
    for key in ("rate_limit", "latency"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.pop("actions", None)
    kwargs.pop("front", None)
    kwargs["record_requests"] = False
    return kwargs


async def _serve(config: dict[str, Any]) -> None:
    fake = FakeZapier(**_fake_kwargs(config))
    # Knobs of the Actions API side (e.g. ``callback_loss_rate``) are set on `fake.actions`.
    for name, value in dict(config.get("actions") or {}).items():
        setattr(fake.actions, name, value)

    async def stats(_: web.Request) -> web.Response:
        s = fake.stats
        return web.json_response(
            {
                "requests": s.requests,
                "requests_by_endpoint": dict(s.requests_by_endpoint),
                "responses_by_status": {str(k): v for k, v in s.responses_by_status.items()},
                "rate_limited": s.rate_limited,
                "runs_created": s.runs_created,
                "duplicate_submissions": s.duplicate_submissions,
                "polls": s.polls,
            }
        )

    async def runs(_: web.Request) -> web.Response:
        rows = [
            [r.id, r.created_at, r.ends_at, r.polls, r.first_terminal_poll_at] for r in fake.runs()
        ]
        return web.json_response(rows)

    front_config = config.get("front")
    front: WindowFront | None = None

    async def front_stats(_: web.Request) -> web.Response:
        return web.json_response(front.stats() if front is not None else None)

    admin = web.Application()
    admin.router.add_get("/stats", stats)
    admin.router.add_get("/runs", runs)
    admin.router.add_get("/front", front_stats)
    runner = web.AppRunner(admin, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The parent closing our stdin (or dying) also stops us.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(watch_stdin())
    front_runner: web.AppRunner | None = None
    async with fake:
        url = fake.url
        if front_config:
            front = WindowFront(
                fake.url,
                limit=int(front_config["limit"]),
                window=float(front_config["window"]),
                align=front_config.get("align", "first"),
            )
            front_runner = web.AppRunner(front.app(), access_log=None)
            await front_runner.setup()
            front_site = web.TCPSite(front_runner, "127.0.0.1", 0)
            await front_site.start()
            fhost, fport = front_runner.addresses[0][:2]
            url = f"http://{fhost}:{fport}"
        info = {"url": url, "direct": fake.url, "admin": f"http://{host}:{port}"}
        print(json.dumps(info), flush=True)
        await stop.wait()
        if front_runner is not None:
            await front_runner.cleanup()
        if front is not None:
            await front.close()
    watcher.cancel()
    await runner.cleanup()


class Emulator:
    """A running emulator child process (see `emulator`)."""

    def __init__(
        self, process: asyncio.subprocess.Process, url: str, admin: str, direct: str | None = None
    ) -> None:
        self.process = process
        self.url = url
        self.admin = admin
        self.direct = direct if direct is not None else url
        """The emulator itself, bypassing the front (JWKS, callbacks' keys)."""

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.admin + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def stats(self) -> dict[str, Any]:
        """`FakeZapier.stats` now."""
        return dict(await self._get("/stats"))

    async def front(self) -> dict[str, Any] | None:
        """The window front's counts (see `_window.WindowFront.stats`), or None without one."""
        value = await self._get("/front")
        return dict(value) if value is not None else None

    async def runs(self) -> list[list[Any]]:
        """``[id, created_at, ends_at, polls, first_terminal_poll_at]`` per run."""
        return list(await self._get("/runs"))


@asynccontextmanager
async def emulator(**config: Any) -> AsyncIterator[Emulator]:
    """Start `FakeZapier(**config)` in a child process; stop it on exit.

    `durations` may be ``"inf"``; tuples may be given as lists (the config crosses as JSON);
    ``actions={...}`` sets knobs of `FakeZapier.actions` (e.g. ``callback_loss_rate``);
    ``front={"limit": L, "window": W, "align": "first" | "aligned"}`` puts a
    `_window.WindowFront` in front of the emulator: `Emulator.url` is then the front and
    `Emulator.direct` the emulator itself.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._server",
        json.dumps(config),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the emulator process exited before it was ready")
        info = json.loads(line)
        yield Emulator(process, info["url"], info["admin"], info.get("direct"))
    finally:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()

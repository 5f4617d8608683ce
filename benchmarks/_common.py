"""Shared pieces of the benchmarks: the library-side runner, statistics, targets, tables.

`library_run_all` is the library's counterpart of `baseline.run_all`: the same fan-out (a
semaphore bounding the runs in flight, one coroutine per run), with `client.run()` and
``await handle`` in place of the hand-written create-and-poll loop, so that the two differ
only in what the issue compares.
"""

from __future__ import annotations

import asyncio
import math
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

import zapier_async as za

__all__ = [
    "LoopLagProbe",
    "Report",
    "Target",
    "fmt_table",
    "library_run_all",
    "make_client",
    "median",
    "percentile",
    "rss_now_kb",
]

Result = tuple[str, str, float]


def make_client(url: str, **kwargs: Any) -> za.ZapierClient:
    """A client as a script would build it: default policies, waiting on the rate budget."""
    kwargs.setdefault("max_rate_limit_wait", None)
    return za.ZapierClient(auth=za.BearerToken("bench"), base_url=url, **kwargs)


async def library_run_all(
    client: za.ZapierClient,
    inputs: Sequence[dict[str, Any]],
    *,
    concurrency: int = 100,
    on_result: Callable[[Result], None] | None = None,
    **run_kwargs: Any,
) -> list[Result]:
    """Run every input through the client, at most `concurrency` runs in flight.

    `run_kwargs` go to every `client.run` call (e.g. ``callback_url``).
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: dict[str, Any]) -> Result:
        async with semaphore:
            handle = await client.run("core:bench", authentication=None, inputs=item, **run_kwargs)
            try:
                run = await handle
                status = run.status.value
            except za.RunFailedError as exc:
                status = exc.run.status.value
            result = (handle.id, status, time.monotonic())
        if on_result is not None:
            on_result(result)
        return result

    return await asyncio.gather(*(one(item) for item in inputs))


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def rss_now_kb() -> int:
    """The resident set size of this process now, in KiB (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def rss_peak_kb() -> int:
    """The peak resident set size of this process, in KiB (`ru_maxrss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class LoopLagProbe:
    """Measures how late a periodic timer fires: the event loop's responsiveness.

    A coroutine asks to wake every `period` seconds; each wake-up records ``actual -
    scheduled``. Anything that holds the loop (CPU work between awaits) shows up as lag.
    """

    def __init__(self, period: float = 0.010) -> None:
        self.period = period
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            self.samples.append(max(0.0, now - due))
            due = now + self.period

    def mark(self) -> int:
        """An index into `samples`, to take the lag of a phase with `since`."""
        return len(self.samples)

    def since(self, mark: int) -> list[float]:
        return self.samples[mark:]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@attrs.frozen
class Target:
    """One target of an issue (#7, #15) and whether it holds."""

    scenario: str
    text: str
    holds: bool | None  # None: not measured
    detail: str = ""
    words: tuple[str, str] = ("HOLDS", "MISSED")
    """How `verdict` says it holds / is missed (issue #15's targets read PASS / MISS)."""

    @property
    def verdict(self) -> str:
        if self.holds is None:
            return "n/a"
        return self.words[0] if self.holds else self.words[1]


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@attrs.define
class Report:
    """What one scenario found: a table, the targets it checks, and notes."""

    number: int
    title: str
    method: str = ""
    headers: Sequence[str] = ()
    rows: list[Sequence[object]] = attrs.Factory(list)
    targets: list[Target] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    unavailable: str | None = None

    def markdown(self) -> str:
        out = [f"## {self.number}. {self.title}", ""]
        if self.unavailable is not None:
            out += [f"not available: {self.unavailable}", ""]
            return "\n".join(out)
        if self.method:
            out += [self.method, ""]
        if self.rows:
            out += [fmt_table(self.headers, self.rows), ""]
        for t in self.targets:
            out.append(
                f"- target: {t.text}: **{t.verdict}**" + (f" ({t.detail})" if t.detail else "")
            )
        if self.targets:
            out.append("")
        for note in self.notes:
            out += [note, ""]
        return "\n".join(out)

    def text(self) -> str:
        out = [f"== {self.number}. {self.title}"]
        if self.unavailable is not None:
            out.append(f"not available: {self.unavailable}")
            return "\n".join(out)
        if self.rows:
            out.append(fmt_table(self.headers, self.rows))
        for t in self.targets:
            out.append(f"  [{t.verdict:>6}] {t.text}" + (f" ({t.detail})" if t.detail else ""))
        return "\n".join(out)

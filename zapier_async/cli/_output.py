"""Progress bars, tables and the plain lines the commands print.

Progress and summaries
----------------------
``demo`` and ``bulk`` draw a progress bar (rich: done/total, rate, ETA, failures so far) on
stderr and print the summary as a table when that stream is a terminal; otherwise, and
always with ``--json``, they print plain lines (a progress line every tenth of the job) that
logs and pipes can keep. rich's switches apply: ``TTY_COMPATIBLE=1`` (or ``FORCE_COLOR``)
forces the terminal form, ``TTY_COMPATIBLE=0`` the plain one. The emulator (and rich) are
imported only by the commands that use them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from zapier_async._metrics import Metrics

if TYPE_CHECKING:
    from rich.console import Console

# --- progress -----------------------------------------------------------------------------------


class ProgressBar(Protocol):
    def update(self, *, failed: bool) -> None: ...

    def close(self) -> None: ...


def console_on(stream: TextIO) -> Console:
    """A rich console on `stream` (it knows whether that is a terminal, and rich's switches)."""
    from rich.console import Console

    return Console(file=stream)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class PlainProgress:
    """A progress line every tenth of the job, for logs and pipes (no control characters)."""

    def __init__(self, total: int, stream: TextIO, *, initial: int = 0) -> None:
        self.total = total
        self.stream = stream
        self.initial = initial
        self.done = initial
        self.failed = 0
        self._started = time.monotonic()
        self._last_decile = -1

    def update(self, *, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        decile = 10 * self.done // max(1, self.total)
        if decile == self._last_decile:
            return
        self._last_decile = decile
        elapsed = time.monotonic() - self._started
        # No rate from the first moments: a burst of instant failures is not a rate.
        rate = (self.done - self.initial) / elapsed if elapsed >= 0.5 else None
        eta = max(0, self.total - self.done) / rate if rate else None
        rate_text = "-" if rate is None else f"{rate:,.1f}"
        self.stream.write(
            f"{self.done}/{self.total} done, {self.failed} failed, {rate_text} runs/s, "
            f"ETA {_fmt_eta(eta)}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        pass


class RichProgress:
    """rich's progress bar: done/total, rate, ETA, failures so far."""

    def __init__(self, total: int, console: Console, *, initial: int = 0) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("- runs/s" if speed is None else f"{speed:,.1f} runs/s")

        self._failed = 0
        self._progress = Progress(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("failed {task.fields[failed]}"),
            console=console,
            refresh_per_second=4,
            # Our output goes to streams held since before the bar: do not swap sys.std*.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task("runs", total=total, completed=initial, failed=0)
        self._progress.start()

    def update(self, *, failed: bool) -> None:
        self._failed += failed
        self._progress.update(self._task, advance=1, failed=self._failed)

    def close(self) -> None:
        self._progress.stop()


class NoProgress:
    def update(self, *, failed: bool) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(
    total: int,
    stream: TextIO,
    *,
    initial: int = 0,
    plain: bool = False,
    console: Console | None = None,
) -> ProgressBar:
    """A bar on a terminal, plain lines otherwise (or when `plain`: ``--json``)."""
    if not plain:
        console = console if console is not None else console_on(stream)
        if console.is_terminal:
            return RichProgress(total, console, initial=initial)
    return PlainProgress(total, stream, initial=initial)


# --- output helpers -----------------------------------------------------------------------------


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _fmt_counts(counts: Mapping[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def metrics_rows(m: Metrics) -> list[tuple[str, str]]:
    """The metrics summary as (name, value) rows."""
    return [
        ("runs started", f"{m.runs_started}"),
        ("runs succeeded", f"{m.runs_succeeded}"),
        ("runs failed", f"{m.runs_failed}"),
        ("runs in flight", f"{m.runs_in_flight}"),
        ("outcome unknown", f"{m.outcome_unknown}"),
        ("success / failure rate", f"{_fmt_share(m.success_rate)} / {_fmt_share(m.failure_rate)}"),
        ("runs per day (at this rate)", f"{m.runs_per_day:,.0f}"),
        (
            "latency avg / p50 / p95 / max",
            " / ".join(
                _fmt_seconds(v)
                for v in (m.latency_mean, m.latency_p50, m.latency_p95, m.latency_max)
            ),
        ),
        ("polls per run", "-" if m.polls_per_run is None else f"{m.polls_per_run:.2f}"),
        ("requests by endpoint", _fmt_counts(m.requests_by_endpoint)),
        ("responses by status", _fmt_counts(m.responses_by_status)),
        ("transport errors / retries", f"{m.transport_errors} / {m.retries}"),
        ("429 responses", f"{m.rate_limited}"),
        (
            "limiter waits (total / max)",
            f"{m.limiter_waits} ({m.limiter_wait_total:.2f} s / {m.limiter_wait_max:.2f} s)",
        ),
        ("errors by code", _fmt_counts(m.errors_by_code)),
    ]


def write_table(
    stream: TextIO,
    title: str,
    rows: Sequence[tuple[str, str]],
    *,
    plain: bool = False,
    console: Console | None = None,
) -> None:
    """A rich table on a terminal; aligned plain lines otherwise (or when `plain`)."""
    if not plain:
        console = console if console is not None else console_on(stream)
        if console.is_terminal:
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title, title_justify="left", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for key, value in rows:
                table.add_row(Text(key), Text(value))
            console.print()
            console.print(table)
            return
    width = max(len(k) for k, _ in rows)
    stream.write(f"\n{title}\n")
    for key, value in rows:
        stream.write(f"  {key.ljust(width)}  {value}\n")
    stream.flush()
